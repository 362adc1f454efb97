//! [`ShadowError`]: what went wrong in a walk, naming the level and VA, and
//! an [`ErrorKind`] for callers that branch.

use circ_hv::{DomId, HvError};

use crate::Level;

/// What a caller can do about a [`ShadowError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The guest's paging mode is one we do not walk (5-level, or not
    /// 64-bit paging at all): nothing to retry.
    Unsupported,
    /// A CR3 or table entry names a frame dom0 cannot map: outside the
    /// guest, a hole, or the guest changed its tables under us (pause it
    /// and invalidate the cache before retrying).
    BadFrame,
    /// An entry has reserved bits set ([`crate::ReservedPolicy::Error`]).
    ReservedBits,
    /// The caller's input was bad (a non-canonical VA).
    InvalidInput,
    /// The walk hit a [`crate::WalkLimits`] bound: aliasing or a hostile
    /// guest made the work blow up.
    LimitExceeded,
    /// A run-format capture did not decode.
    Corrupt,
}

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("domain {dom} uses 5-level paging (CR4.LA57 set in cr4 {cr4:#x}); only 4-level page tables are walked")]
    FiveLevelPaging { dom: DomId, cr4: u64 },

    #[error("domain {dom} is not in 64-bit paging mode (cr0 {cr0:#x}, cr4 {cr4:#x})")]
    NotLongMode { dom: DomId, cr0: u64, cr4: u64 },

    #[error("failed to read the {level} table at frame {frame:#x} of domain {dom}, reached for va {va:#x}")]
    TableUnreadable {
        dom: DomId,
        level: Level,
        frame: u64,
        va: u64,
        #[source]
        source: HvError,
    },

    #[error("reserved bits set in the {level} entry {entry:#018x} for va {va:#x}")]
    ReservedBits { level: Level, va: u64, entry: u64 },

    #[error("virtual address {va:#x} is not canonical for 48-bit addressing")]
    NonCanonical { va: u64 },

    #[error("page-table walk of domain {dom} stopped at its limit of {limit} {what}")]
    LimitExceeded {
        dom: DomId,
        what: &'static str,
        limit: u64,
    },

    #[error("p2m list at va {va:#x}: {why}")]
    P2mList { va: u64, why: &'static str },

    #[error("failed to read the p2m list of domain {dom} at va {va:#x}")]
    P2mUnreadable {
        dom: DomId,
        va: u64,
        #[source]
        source: HvError,
    },

    #[error("a root of domain {root} was walked with a table cache of domain {cache}")]
    DomainMismatch { root: DomId, cache: DomId },

    #[error("corrupt run-format capture: {0}")]
    CorruptRunFormat(&'static str),
}

impl ShadowError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShadowError::FiveLevelPaging { .. } | ShadowError::NotLongMode { .. } => {
                ErrorKind::Unsupported
            }
            ShadowError::TableUnreadable { .. }
            | ShadowError::P2mList { .. }
            | ShadowError::P2mUnreadable { .. } => ErrorKind::BadFrame,
            ShadowError::ReservedBits { .. } => ErrorKind::ReservedBits,
            ShadowError::NonCanonical { .. } | ShadowError::DomainMismatch { .. } => {
                ErrorKind::InvalidInput
            }
            ShadowError::LimitExceeded { .. } => ErrorKind::LimitExceeded,
            ShadowError::CorruptRunFormat(_) => ErrorKind::Corrupt,
        }
    }
}
