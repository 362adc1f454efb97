//! [`MemshareConfig`]: what a scanning run does, as plain typed values.
//!
//! The library takes no command line: `circ-memshare` and `circ share scan`
//! parse their flags (one clap struct, `circ_cli_support::memshare`) into
//! this, and [`crate::run`] validates it before the first round. The field
//! checks are public so that a front end can refuse a bad value while it
//! parses, with the same words.

use std::path::PathBuf;
use std::time::Duration;

use crate::enomem::EnomemConfig;
use crate::scanner::ScanConfig;
use crate::status::DEFAULT_STATUS_FILE;
use crate::throttle::Limits;

/// Seconds between rounds, by default.
pub const DEFAULT_INTERVAL_SECS: f64 = 10.0;
/// Pages read per second at most, by default.
pub const DEFAULT_PAGES_PER_SEC: u64 = 50_000;
/// Fraction of one CPU the scan may use, by default.
pub const DEFAULT_CPU_BUDGET: f64 = 0.5;
/// dom0's balloon step when a copy-on-write break finds no memory, by default.
pub const DEFAULT_ENOMEM_BALLOON_MIB: u64 = 64;
/// dom0 is never ballooned below this, by default.
pub const DEFAULT_DOM0_MIN_MIB: u64 = 512;
/// Free memory at which vCPUs paused for memory resume, by default.
pub const DEFAULT_ENOMEM_RESUME_MIB: u64 = 16;

/// Settings of a scanning run (the daemon, or `circ share scan`).
#[derive(Debug, Clone, PartialEq)]
pub struct MemshareConfig {
    /// Scan only these domains (names or domids); empty: every opted-in one.
    pub domains: Vec<String>,
    /// One round, then stop; pages equal now are shared at once.
    pub once: bool,
    /// Stop after this many rounds (`None`: run until stopped).
    pub rounds: Option<u64>,
    /// Seconds to rest between rounds: finite, 0 or more.
    pub interval: f64,
    /// Pages read per second at most (0: no limit).
    pub pages_per_sec: u64,
    /// Fraction of one CPU the scan may use, in `(0, 1]`.
    pub cpu_budget: f64,
    /// Share pages equal in one round, without waiting for a second round
    /// to see them unchanged.
    pub no_stability_wait: bool,
    /// Status file rewritten after every round (read by `circ share status`).
    pub status_file: PathBuf,
    /// Prometheus metrics (text format) written after every round too.
    pub prometheus: Option<PathBuf>,
    /// Each round's summary as one JSON line instead of text.
    pub json: bool,
    /// dom0's balloon step when a copy-on-write break finds no memory.
    pub enomem_balloon_mib: u64,
    /// dom0 is never ballooned below this.
    pub dom0_min_mib: u64,
    /// vCPUs paused for memory resume once Xen has this much free.
    pub enomem_resume_mib: u64,
}

impl Default for MemshareConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            once: false,
            rounds: None,
            interval: DEFAULT_INTERVAL_SECS,
            pages_per_sec: DEFAULT_PAGES_PER_SEC,
            cpu_budget: DEFAULT_CPU_BUDGET,
            no_stability_wait: false,
            status_file: PathBuf::from(DEFAULT_STATUS_FILE),
            prometheus: None,
            json: false,
            enomem_balloon_mib: DEFAULT_ENOMEM_BALLOON_MIB,
            dom0_min_mib: DEFAULT_DOM0_MIN_MIB,
            enomem_resume_mib: DEFAULT_ENOMEM_RESUME_MIB,
        }
    }
}

/// A setting that cannot be used; `field` is the [`MemshareConfig`] field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

/// A CPU budget the throttle can keep: in `(0, 1]`.
pub fn check_cpu_budget(budget: f64) -> Result<f64, &'static str> {
    if budget > 0.0 && budget <= 1.0 {
        Ok(budget)
    } else {
        Err("must be in (0, 1]")
    }
}

/// A rest between rounds that is a duration: finite, 0 or more seconds.
pub fn check_interval(secs: f64) -> Result<f64, &'static str> {
    match Duration::try_from_secs_f64(secs) {
        Ok(_) => Ok(secs),
        Err(_) => Err("must be a finite number of seconds, 0 or more"),
    }
}

impl MemshareConfig {
    /// Every field that has a range is in it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |field, check: Result<f64, &'static str>| {
            check
                .map(drop)
                .map_err(|reason| ConfigError { field, reason })
        };
        field("cpu_budget", check_cpu_budget(self.cpu_budget))?;
        field("interval", check_interval(self.interval))
    }

    /// The scanner's tunables for this run.
    pub fn scan_config(&self) -> ScanConfig {
        ScanConfig {
            limits: Limits {
                pages_per_sec: self.pages_per_sec,
                cpu_budget: self.cpu_budget,
            },
            require_stable: !(self.once || self.no_stability_wait),
            ..ScanConfig::default()
        }
    }

    /// What to do when a copy-on-write break finds no free memory.
    pub fn enomem_config(&self) -> EnomemConfig {
        EnomemConfig {
            balloon_step_kib: self.enomem_balloon_mib.saturating_mul(1024),
            dom0_min_kib: self.dom0_min_mib.saturating_mul(1024),
            resume_free_kib: self.enomem_resume_mib.saturating_mul(1024),
            ..EnomemConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_parts() {
        let c = MemshareConfig::default();
        c.validate().unwrap();
        let scan = c.scan_config();
        assert_eq!(scan.limits.pages_per_sec, 50_000);
        assert_eq!(scan.limits.cpu_budget, 0.5);
        assert!(scan.require_stable);
        let enomem = c.enomem_config();
        assert_eq!(
            (
                enomem.balloon_step_kib,
                enomem.dom0_min_kib,
                enomem.resume_free_kib
            ),
            (64 * 1024, 512 * 1024, 16 * 1024)
        );
        assert_eq!(c.status_file, PathBuf::from(DEFAULT_STATUS_FILE));
    }

    #[test]
    fn once_or_no_stability_wait_share_at_once() {
        for c in [
            MemshareConfig {
                once: true,
                ..MemshareConfig::default()
            },
            MemshareConfig {
                no_stability_wait: true,
                ..MemshareConfig::default()
            },
        ] {
            assert!(!c.scan_config().require_stable);
        }
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for budget in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            let c = MemshareConfig {
                cpu_budget: budget,
                ..MemshareConfig::default()
            };
            let err = c.validate().unwrap_err();
            assert_eq!(err.field, "cpu_budget", "{budget}");
            assert_eq!(err.to_string(), "invalid cpu_budget: must be in (0, 1]");
        }
        for interval in [-1.0, f64::NAN, f64::INFINITY, 1e300] {
            let c = MemshareConfig {
                interval,
                ..MemshareConfig::default()
            };
            assert_eq!(c.validate().unwrap_err().field, "interval", "{interval}");
        }
        for (budget, interval) in [(1.0, 0.0), (0.01, 0.5), (0.5, 3600.0)] {
            MemshareConfig {
                cpu_budget: budget,
                interval,
                ..MemshareConfig::default()
            }
            .validate()
            .unwrap();
        }
    }
}
