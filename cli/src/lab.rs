//! `circ lab`: build the real-Xen lab and run scenarios in it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use circ_lab::{Artifacts, LabConfig, RunOptions, XenFlavor};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build (or find in the cache) everything a run boots.
    Build {
        #[command(flatten)]
        common: Common,
        /// Which hypervisors to build.
        #[arg(long, value_enum, default_value_t = XenChoice::Both)]
        xen: XenChoice,
    },
    /// Boot Xen + dom0 under QEMU and run a scenario from tests/lab/scenarios.
    Run {
        #[command(flatten)]
        common: Common,
        /// Scenario name (tests/lab/scenarios/NAME.sh).
        scenario: String,
        /// Which hypervisors to run it on, one after the other.
        #[arg(long, value_enum, default_value_t = XenChoice::Stock)]
        xen: XenChoice,
        /// Where run directories (serial log, guest consoles, report) are kept.
        #[arg(long, env = "CIRC_LAB_RUNS")]
        runs_dir: Option<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// The project checkout (default: the nearest ancestor of the current directory with tests/lab/lab.toml).
    #[arg(long, env = "CIRC_ROOT")]
    root: Option<PathBuf>,
    /// Cache of built artifacts, keyed by their inputs.
    #[arg(long, env = "CIRC_LAB_CACHE", default_value = "/var/cache/circ-lab")]
    cache: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XenChoice {
    Stock,
    Patched,
    Both,
}

impl XenChoice {
    fn flavors(self) -> &'static [XenFlavor] {
        match self {
            XenChoice::Stock => &[XenFlavor::Stock],
            XenChoice::Patched => &[XenFlavor::Patched],
            XenChoice::Both => &[XenFlavor::Stock, XenFlavor::Patched],
        }
    }
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

pub fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Build { common, xen } => {
            let config = common.config()?;
            for &flavor in xen.flavors() {
                let started = std::time::Instant::now();
                let artifacts = circ_lab::build(&config, flavor)?;
                print_artifacts(&artifacts);
                println!(
                    "built lab for {flavor} Xen in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Run {
            common,
            scenario,
            xen,
            runs_dir,
            json,
        } => {
            let config = common.config()?;
            circ_lab::scenario_script(&config, &scenario)?;
            let options = RunOptions {
                scenario,
                runs_dir: runs_dir.unwrap_or_else(|| config.root.join("lab-runs")),
                binaries: binaries_under_test()?,
            };
            let mut failed = Vec::new();
            for &flavor in xen.flavors() {
                let artifacts = circ_lab::build(&config, flavor)?;
                let (report, run_dir) = circ_lab::run(&config, &artifacts, &options)?;
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
                    failed.push(format!("{flavor}: {why}"));
                }
            }
            if !failed.is_empty() {
                bail!("lab scenario failed: {}", failed.join("; "));
            }
            Ok(ExitCode::SUCCESS)
        }
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

/// The binaries copied into dom0: this very `circ` and the daemons built beside it.
fn binaries_under_test() -> anyhow::Result<Vec<PathBuf>> {
    let circ = std::env::current_exe().context("cannot locate the running circ binary")?;
    let dir = circ.parent().map(PathBuf::from).unwrap_or_default();
    let mut binaries = vec![circ];
    for daemon in circ_lab::DAEMONS.iter().chain(circ_lab::GUEST_BINARIES) {
        let path = dir.join(daemon);
        if path.is_file() {
            binaries.push(path);
        }
    }
    Ok(binaries)
}
