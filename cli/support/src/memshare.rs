//! The flags of a page-sharing run, in one place for the two mains that take
//! them: the `circ-memshare` daemon and `circ share scan` (feature
//! `memshare`). They become the library's plain [`MemshareConfig`]; a value
//! the library refuses is a usage error (status 2, [`crate::Exit::CannotRun`]),
//! with the library's words.

use std::path::PathBuf;

use circ_memshare::config::{
    check_cpu_budget, check_interval, MemshareConfig, DEFAULT_CPU_BUDGET, DEFAULT_DOM0_MIN_MIB,
    DEFAULT_ENOMEM_BALLOON_MIB, DEFAULT_ENOMEM_RESUME_MIB, DEFAULT_INTERVAL_SECS,
    DEFAULT_PAGES_PER_SEC,
};
use circ_memshare::status::DEFAULT_STATUS_FILE;
use circ_memshare::{DEFAULT_LOCK_FILE, LOCK_FILE_ENV};

/// Options of a scanning run (flags of `circ-memshare` and `circ share scan`).
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// Scan only this domain (name or domid; repeatable). Default: every
    /// opted-in domain. A domain must be opted in either way.
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// One round, then exit. Pages equal now are shared at once (no
    /// waiting for a second round to see them unchanged).
    #[arg(long)]
    pub once: bool,
    /// Stop after this many rounds (default: run until killed).
    #[arg(long, value_name = "N")]
    pub rounds: Option<u64>,
    /// Seconds to rest between rounds.
    #[arg(long, default_value_t = DEFAULT_INTERVAL_SECS, value_name = "SECONDS",
          value_parser = parse_interval)]
    pub interval: f64,
    /// Pages read per second at most (0: no limit).
    #[arg(long, default_value_t = DEFAULT_PAGES_PER_SEC)]
    pub pages_per_sec: u64,
    /// Fraction of one CPU the scan may use, in (0, 1].
    #[arg(long, default_value_t = DEFAULT_CPU_BUDGET, value_parser = parse_budget)]
    pub cpu_budget: f64,
    /// Share pages that are equal in one round, without waiting for a
    /// second round to see them unchanged.
    #[arg(long)]
    pub no_stability_wait: bool,
    /// Status file rewritten after every round (read by `circ share status`).
    #[arg(long, default_value = DEFAULT_STATUS_FILE, value_name = "PATH")]
    pub status_file: PathBuf,
    /// Also write Prometheus metrics (text format) to this file.
    #[arg(long, value_name = "PATH")]
    pub prometheus: Option<PathBuf>,
    /// Print each round's summary as one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// When a copy-on-write break finds no free memory (the vCPU is then
    /// paused, see docs/memshare.md), balloon dom0 down by this many MiB
    /// per step.
    #[arg(long, default_value_t = DEFAULT_ENOMEM_BALLOON_MIB, value_name = "MIB")]
    pub enomem_balloon_mib: u64,
    /// Never balloon dom0 below this many MiB.
    #[arg(long, default_value_t = DEFAULT_DOM0_MIN_MIB, value_name = "MIB")]
    pub dom0_min_mib: u64,
    /// Resume vCPUs paused for memory once Xen has this many MiB free.
    #[arg(long, default_value_t = DEFAULT_ENOMEM_RESUME_MIB, value_name = "MIB")]
    pub enomem_resume_mib: u64,
}

/// A number the library's `check` accepts; its refusal is clap's message.
fn parse_checked(s: &str, check: fn(f64) -> Result<f64, &'static str>) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    check(v).map_err(str::to_owned)
}

fn parse_budget(s: &str) -> Result<f64, String> {
    parse_checked(s, check_cpu_budget)
}

fn parse_interval(s: &str) -> Result<f64, String> {
    parse_checked(s, check_interval)
}

impl ScanArgs {
    /// The library's configuration, validated. A refused value is a clap
    /// usage error naming its flag (`error.exit()` ends with status 2).
    pub fn to_config(&self) -> Result<MemshareConfig, clap::Error> {
        let config = MemshareConfig {
            domains: self.domains.clone(),
            once: self.once,
            rounds: self.rounds,
            interval: self.interval,
            pages_per_sec: self.pages_per_sec,
            cpu_budget: self.cpu_budget,
            no_stability_wait: self.no_stability_wait,
            status_file: self.status_file.clone(),
            prometheus: self.prometheus.clone(),
            json: self.json,
            enomem_balloon_mib: self.enomem_balloon_mib,
            dom0_min_mib: self.dom0_min_mib,
            enomem_resume_mib: self.enomem_resume_mib,
        };
        config.validate().map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value for '--{}': {}\n",
                    e.field.replace('_', "-"),
                    e.reason
                ),
            )
        })?;
        Ok(config)
    }
}

/// The flag of every scanning command (`circ-memshare`, `circ share scan`):
/// where the host's single-scanner lock lives ([`circ_memshare::ScannerLock`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LockArgs {
    /// The host's single-scanner lock: a second scanner is refused (exit
    /// status 4) while a process holds it.
    #[arg(long, env = LOCK_FILE_ENV, default_value = DEFAULT_LOCK_FILE, value_name = "PATH")]
    pub lock_file: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        scan: ScanArgs,
    }

    fn parse(args: &[&str]) -> Result<MemshareConfig, clap::Error> {
        let argv = std::iter::once("x").chain(args.iter().copied());
        Cli::try_parse_from(argv)?.scan.to_config()
    }

    #[test]
    fn no_flags_are_the_library_defaults() {
        assert_eq!(parse(&[]).unwrap(), MemshareConfig::default());
    }

    #[test]
    fn every_flag_reaches_its_field() {
        let c = parse(&[
            "--domain",
            "g1",
            "--domain",
            "7",
            "--once",
            "--rounds",
            "3",
            "--interval",
            "0.5",
            "--pages-per-sec",
            "0",
            "--cpu-budget",
            "1",
            "--no-stability-wait",
            "--status-file",
            "/s.json",
            "--prometheus",
            "/m.prom",
            "--json",
            "--enomem-balloon-mib",
            "32",
            "--dom0-min-mib",
            "256",
            "--enomem-resume-mib",
            "8",
        ])
        .unwrap();
        assert_eq!(
            c,
            MemshareConfig {
                domains: vec!["g1".into(), "7".into()],
                once: true,
                rounds: Some(3),
                interval: 0.5,
                pages_per_sec: 0,
                cpu_budget: 1.0,
                no_stability_wait: true,
                status_file: "/s.json".into(),
                prometheus: Some("/m.prom".into()),
                json: true,
                enomem_balloon_mib: 32,
                dom0_min_mib: 256,
                enomem_resume_mib: 8,
            }
        );
    }

    #[test]
    fn refused_values_are_usage_errors_with_the_librarys_words() {
        for (flag, value, words) in [
            ("--cpu-budget", "0", "must be in (0, 1]"),
            ("--cpu-budget", "2", "must be in (0, 1]"),
            ("--cpu-budget", "NaN", "must be in (0, 1]"),
            ("--interval", "-1", "0 or more"),
            ("--interval", "inf", "0 or more"),
            ("--interval", "soon", "invalid float literal"),
        ] {
            let err = parse(&[&format!("{flag}={value}")]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value}"
            );
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(words), "{text}");
        }
    }

    #[test]
    fn a_config_built_past_the_parsers_is_still_checked() {
        let args = ScanArgs {
            cpu_budget: 3.0,
            ..Cli::try_parse_from(["x"]).unwrap().scan
        };
        let err = args.to_config().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("invalid value for '--cpu-budget': must be in (0, 1]"),
            "{err}"
        );
    }
}
