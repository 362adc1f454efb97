//! The [`SharingEvents`] trait: Xen's memory-sharing vm_event rings, through
//! which Xen asks for help when a copy-on-write break finds no free memory.
//!
//! When a guest writes a shared page, Xen allocates a private copy. If no
//! frame is free, Xen 4.17 crashes the guest unless a helper has enabled the
//! domain's sharing ring (`XEN_DOMCTL_VM_EVENT_OP_SHARING`); with a ring it
//! pauses the writing vCPU and posts a `VM_EVENT_REASON_MEM_SHARING` request.
//! The helper frees memory, then answers; the answer unpauses the vCPU, which
//! retries the write.

use std::time::Duration;

use crate::{DomId, Gfn, HvError};

/// One request from Xen: `vcpu` of `dom` wrote `gfn`, a shared page, and
/// Xen had no frame for its private copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnomemRequest {
    pub dom: DomId,
    pub vcpu: u32,
    pub gfn: Gfn,
    /// Xen paused the vCPU (`VM_EVENT_FLAG_VCPU_PAUSED`): it stays paused
    /// until [`SharingEvents::resume`]. Always set for a guest's own write;
    /// clear when another domain (e.g. dom0 through a foreign mapping) did
    /// the write: then `vcpu` is the writer's, and the implementation has
    /// answered the request already.
    pub vcpu_paused: bool,
}

/// What [`SharingEvents::attach`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new ring.
    New,
    /// This handle already had the domain's ring.
    Already,
    /// Another helper's ring was still enabled (one that was killed, or
    /// left it enabled on purpose: [`SharingEvents::leave_enabled`]): it
    /// was disabled, every vCPU it left paused was resumed (Xen counts a
    /// vm_event pause per vCPU, not per ring, so an answer on a new ring
    /// unpauses it), and a new ring enabled.
    ReplacedStale,
}

/// The sharing rings of the domains a daemon looks after.
///
/// One handle owns every ring it attached; dropping it disables them (after
/// answering every request still open, so no vCPU stays paused).
pub trait SharingEvents {
    /// Enable `dom`'s sharing ring and connect to it (idempotent).
    /// `NotSupported` without memory sharing or for a PV guest.
    fn attach(&mut self, dom: DomId) -> Result<Attached, HvError>;

    /// Answer the requests still open, then disable `dom`'s ring. A domain
    /// that is gone is not an error.
    fn detach(&mut self, dom: DomId) -> Result<(), HvError>;

    /// Answer the requests still open, then let go of `dom`'s ring while
    /// Xen keeps it enabled: a later copy-on-write break without memory
    /// then pauses the vCPU (instead of crashing the guest) until a helper
    /// takes the ring over ([`Attached::ReplacedStale`]). A domain that is
    /// gone is not an error.
    fn leave_enabled(&mut self, dom: DomId) -> Result<(), HvError>;

    /// Domains with a ring, in domid order.
    fn attached(&self) -> Vec<DomId>;

    /// Wait at most `timeout` for requests on any ring and return those
    /// that arrived (possibly none). A ring that fails (its domain died) is
    /// left out; [`detach`](Self::detach) it.
    fn wait(&mut self, timeout: Duration) -> Result<Vec<EnomemRequest>, HvError>;

    /// Answer every open request of `vcpu` of `dom`: Xen unpauses the vCPU
    /// and it retries its write. `NotFound` if the domain or its ring is gone.
    fn resume(&mut self, dom: DomId, vcpu: u32) -> Result<(), HvError>;
}
