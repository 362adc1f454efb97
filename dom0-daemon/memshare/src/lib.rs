//! Satori-style page sharing for Xen guests.
//!
//! A dom0 daemon that finds pages with identical contents in the HVM/PVH
//! guests that opted in ([`policy`]) and backs them with one copy-on-write
//! frame through Xen's memory sharing (`xc_memshr_*`). The logic
//! ([`scanner::SharingScanner`]) is generic over `circ-hv`'s traits and
//! unit-tested over its fakes; `circ-xen` gives the real handles. See
//! `docs/memshare.md` for the design and what the operator sees.
#![forbid(unsafe_code)]

pub mod config;
pub mod cpu;
pub mod daemon;
pub mod enomem;
mod error;
pub mod hash;
pub mod lock;
pub mod log_limit;
pub mod pages;
pub mod policy;
pub mod scanner;
pub mod status;
pub mod stop;
pub mod throttle;

#[cfg(test)]
mod test_support;

pub use config::{ConfigError, MemshareConfig};
pub use cpu::CpuTime;
pub use daemon::{run, run_until};
pub use enomem::{EnomemConfig, EnomemHandler, EnomemStats};
pub use error::MemshareError;
pub use hash::{PageHasher, PageKey, Xxh3Hasher};
pub use lock::{LockError, ScannerLock, DEFAULT_LOCK_FILE, LOCK_FILE_ENV};
pub use policy::{Eligibility, Policy, POLICY_ROOT};
pub use scanner::{DomainStats, RoundSummary, ScanConfig, SharingScanner};
pub use status::{DaemonStatus, ShareStatus};
pub use stop::{StopFlag, StopReport};
