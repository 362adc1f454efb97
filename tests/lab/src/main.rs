//! `circ-lab`: builds the real-Xen lab and runs scenarios in it. Test
//! infrastructure: it runs on the host that builds Circular (a developer's
//! machine, CI), never in dom0, and is not shipped.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context as _};
use circ_cli_support::{init_logging, Exit};
use circ_lab::{Artifacts, LabConfig, RunOptions, Suite, XenChoice};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "circ-lab",
    version,
    about = "Circular's lab: real Xen and a Debian dom0 under QEMU (test infrastructure)"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `debug`.
    #[arg(long, global = true, env = "CIRC_LOG", default_value = "info")]
    log_filter: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build (or find in the cache) everything a run boots.
    Build {
        #[command(flatten)]
        common: Common,
        /// Which hypervisors to build.
        #[arg(long, default_value = "both")]
        xen: XenChoice,
        /// Print each hypervisor's artifact paths as one JSON line (nothing
        /// else on stdout), for scripts that reuse the lab's cache.
        #[arg(long)]
        json: bool,
    },
    /// Boot Xen + dom0 under QEMU and run a scenario from tests/lab/scenarios.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        runs: RunArgs,
        /// Scenario name (tests/lab/scenarios/NAME.sh).
        scenario: String,
        /// Which hypervisors to run it on, one after the other.
        #[arg(long, default_value = "stock")]
        xen: XenChoice,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a suite of lab.toml (`ci`: what scripts/test runs; `demo`), every
    /// scenario even after one fails; fails if any did.
    Suite {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        runs: RunArgs,
        /// Suite name (`[suites]` in tests/lab/lab.toml).
        name: String,
        /// Run only these scenarios of the suite (space- or comma-separated);
        /// a name the suite does not hold is an error.
        #[arg(long, env = "CIRC_LAB_SCENARIOS", value_delimiter = ',')]
        only: Option<Vec<String>>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// The project checkout (default: the nearest ancestor of the current directory with tests/lab/lab.toml).
    #[arg(long, env = "CIRC_ROOT")]
    root: Option<PathBuf>,
    /// Cache of built artifacts, keyed by their inputs.
    #[arg(long, env = "CIRC_LAB_CACHE", default_value = "/var/cache/circ-lab")]
    cache: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Where run directories (serial log, guest consoles, report) are kept
    /// [default: lab-runs/ in the checkout].
    #[arg(long, env = "CIRC_LAB_RUNS")]
    runs_dir: Option<PathBuf>,
    /// Where the binaries under test are (circ, the daemons, the static
    /// guest agent) [default: beside circ-lab].
    #[arg(long, env = "CIRC_LAB_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_filter);
    match run(cli.command) {
        Ok(()) => Exit::Success.into(),
        Err(err) => {
            eprintln!("circ-lab: {err:#}");
            Exit::Failure.into()
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build { common, xen, json } => {
            let config = common.config()?;
            for &flavor in xen.flavors() {
                let started = Instant::now();
                let artifacts = circ_lab::build(&config, flavor)?;
                if json {
                    println!("{}", serde_json::to_string(&artifacts)?);
                    continue;
                }
                print_artifacts(&artifacts);
                println!(
                    "built lab for {flavor} Xen in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        Command::Run {
            common,
            runs,
            scenario,
            xen,
            json,
        } => {
            let config = common.config()?;
            circ_lab::scenario_script(&config, &scenario)?;
            let options = runs.options(&config, scenario)?;
            let failed = run_scenario(&config, &options, xen, json)?;
            if !failed.is_empty() {
                bail!("lab scenario failed: {}", failed.join("; "));
            }
            Ok(())
        }
        Command::Suite {
            common,
            runs,
            name,
            only,
        } => {
            let config = common.config()?;
            let only: Vec<String> = only
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_owned)
                .collect();
            let suite = Suite::load(&config, &name)?.only(&only)?;
            // Find the binaries once, before anything boots.
            let options = runs.options(&config, String::new())?;
            let mut failed = Vec::new();
            let mut times = Vec::new();
            for entry in &suite.entries {
                println!(
                    "\n=== lab scenario {} (Xen: {}) ===",
                    entry.scenario, entry.xen
                );
                let started = Instant::now();
                let options = RunOptions {
                    scenario: entry.scenario.clone(),
                    ..options.clone()
                };
                let outcome = run_scenario(&config, &options, entry.xen, false);
                let secs = started.elapsed().as_secs_f64();
                let verdict = match outcome {
                    Ok(f) if f.is_empty() => "pass".to_owned(),
                    Ok(f) => {
                        failed.extend(f);
                        "FAIL".to_owned()
                    }
                    Err(err) => {
                        failed.push(format!("{}: {err:#}", entry.scenario));
                        "FAIL".to_owned()
                    }
                };
                times.push((entry, secs, verdict));
            }
            println!("\nsuite {}:", suite.name);
            for (entry, secs, verdict) in &times {
                println!(
                    "  {verdict:<4}  {:<18} {:<8} {:>6.0} s",
                    entry.scenario,
                    entry.xen.to_string(),
                    secs
                );
            }
            if !failed.is_empty() {
                bail!("lab suite {} failed: {}", suite.name, failed.join("; "));
            }
            Ok(())
        }
    }
}

/// Runs one scenario on each chosen hypervisor; returns what failed.
fn run_scenario(
    config: &LabConfig,
    options: &RunOptions,
    xen: XenChoice,
    json: bool,
) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    for &flavor in xen.flavors() {
        let artifacts = circ_lab::build(config, flavor)?;
        let (report, run_dir) = circ_lab::run(config, &artifacts, options)?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", report.summary());
            println!("logs: {}", run_dir.display());
        }
        if let Some(why) = report.failure() {
            eprintln!(
                "--- last lines of {}/serial.log ---\n{}\n---",
                run_dir.display(),
                circ_lab::console_tail(&run_dir, 6000)
            );
            failed.push(format!("{} on {flavor}: {why}", options.scenario));
        }
    }
    Ok(failed)
}

impl Common {
    fn config(&self) -> anyhow::Result<LabConfig> {
        let root = match &self.root {
            Some(root) => root.clone(),
            None => {
                let cwd = std::env::current_dir().context("no current directory")?;
                LabConfig::find_root(&cwd).with_context(|| {
                    format!(
                        "{} is not inside a Circular checkout (use --root)",
                        cwd.display()
                    )
                })?
            }
        };
        Ok(LabConfig::load(&root, self.cache.clone())?)
    }
}

impl RunArgs {
    fn options(&self, config: &LabConfig, scenario: String) -> anyhow::Result<RunOptions> {
        let bin_dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .context("cannot locate the running circ-lab binary")?
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
        };
        Ok(RunOptions {
            scenario,
            runs_dir: self
                .runs_dir
                .clone()
                .unwrap_or_else(|| config.root.join("lab-runs")),
            binaries: circ_lab::binaries_under_test(&bin_dir)?,
        })
    }
}

fn print_artifacts(artifacts: &Artifacts) {
    println!(
        "xen ({}):      {}",
        artifacts.flavor,
        artifacts.xen.display()
    );
    println!(
        "kernel {}: {}",
        artifacts.kernel_version,
        artifacts.vmlinuz.display()
    );
    println!("dom0 initramfs: {}", artifacts.dom0_initramfs.display());
    println!("dom0 rootfs:    {}", artifacts.rootfs.display());
    println!("guest initrd:   {}", artifacts.guest_initrd.display());
}
