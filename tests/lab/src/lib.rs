//! The Circular lab: real Xen under QEMU, driven by the project.
//!
//! `build` turns Debian packages into boot artifacts (hypervisor, dom0 kernel,
//! initramfs, dom0 root filesystem, guest initrd), each cached under a key
//! derived from its inputs. `run` boots Xen + dom0 under
//! `qemu-system-x86_64 -accel tcg`, runs a scenario script inside dom0 and
//! collects the structured events the scenario prints on the serial console.
//!
//! Nothing here is a fake: a scenario passes only if real Xen ran it.
#![forbid(unsafe_code)]

mod apt;
mod artifacts;
mod binaries;
mod cache;
mod command;
mod config;
mod error;
mod events;
mod run;
mod suite;

pub use artifacts::{build, Artifacts, XenFlavor};
pub use binaries::{binaries_under_test, elf_interpreter, DOM0_BINARIES, GUEST_BINARIES};
pub use config::LabConfig;
pub use error::LabError;
pub use events::{Event, Report};
pub use run::{console_tail, run, scenario_script, RunOptions};
pub use suite::{Suite, SuiteEntry, XenChoice};

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, LabError>;
