//! Shadows, dom0 side: capture a guest process's address space from its
//! page tables, with no help from the guest.
//!
//! - [`walk`]: an x86-64 4-level page-table walker from a CR3, reading
//!   table pages through [`circ_hv::ForeignMemory`] via a [`TableCache`].
//! - [`FrameTranslation`]: what turns the frames in a guest's entries into
//!   guest-physical frames: the identity for HVM/PVH, an [`M2pMap`] for PV.
//! - [`runs`]: the capture compressed into VA runs and VA+PA runs, and the
//!   compact [`RunFormatV1`] whose size `circ shadow capture` reports.
//! - [`p2m`]: a PV guest's p2m list read through the walker, for [`M2pMap`].
//!
//! Everything here is safe code over the traits; see `docs/shadow.md`.
#![forbid(unsafe_code)]

mod cache;
mod error;
pub mod p2m;
mod paging;
pub mod runs;
mod translate;
mod walk;

pub use cache::{CacheStats, TableCache, DEFAULT_MAX_TABLES};
pub use error::{ErrorKind, ShadowError};
pub use paging::{check_paging, Level, PageSize, Root, CR0_PG, CR4_LA57, CR4_PAE};
pub use runs::{Run, RunFormatV1};
pub use translate::{FrameTranslation, Identity, M2pMap};
pub use walk::{
    translate_va, walk, Capture, CaptureSummary, Leaf, ReservedPolicy, Scope, WalkLimits,
    WalkOptions, WalkStats,
};

#[cfg(test)]
mod tests;
