//! Errors of the memshare library.

use std::path::PathBuf;

use circ_hv::{DomId, ErrorKind, HvError};

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum MemshareError {
    /// The hypervisor has no memory sharing (stock Debian Xen is built
    /// without `CONFIG_MEM_SHARING`; the patched one from `xen-patches/`
    /// has it).
    #[error("this Xen has no memory sharing (boot the patched hypervisor from xen-patches/)")]
    SharingUnsupported(#[source] HvError),
    #[error("no domain {0:?} (neither a domid nor a name)")]
    NoSuchDomain(String),
    #[error("domain {dom} is {reason}: it cannot take part in page sharing")]
    NotEligible { dom: DomId, reason: &'static str },
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl MemshareError {
    /// An error of a sharing call: `NotSupported` means no sharing at all.
    pub fn from_sharing(e: HvError) -> Self {
        if e.kind() == ErrorKind::NotSupported {
            MemshareError::SharingUnsupported(e)
        } else {
            MemshareError::Hv(e)
        }
    }
}
