//! The seams between Circular's daemons and the hypervisor.
//!
//! Daemons are written against the traits here ([`Hypervisor`], [`XenStore`],
//! [`ForeignMemory`], [`SharingEvents`], [`GrantTable`], [`EventChannel`]) so
//! their logic can be unit-tested with the in-process fakes in [`fake`]
//! (cargo feature `fake`); `circ-xen` implements the traits over the real Xen
//! libraries. Nothing here links against Xen.
//!
//! Guest-written shared memory is parsed here too, in safe code over the
//! [`ring::RingMemory`] trait: [`ring`] (Xen's `io/ring.h` rings, for the
//! sharing vm_event ring and back ends serving a granted ring) and
//! [`console`] (a guest's console page).
#![forbid(unsafe_code)]

pub mod console;
mod error;
mod evtchn;
mod foreign;
mod grant;
mod hypervisor;
mod ids;
pub mod populated;
pub mod report;
pub mod ring;
mod sharing_events;
pub mod tsys;
mod xenstore;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use error::{Errno, ErrorKind, HvError};
pub use evtchn::{EventChannel, EvtchnPort};
pub use foreign::{ForeignMapping, ForeignMemory, Placement, Protection};
pub use grant::{GrantCopy, GrantCopyError, GrantMapping, GrantTable};
pub use hypervisor::{
    pages_to_kib, DomainInfo, DomainState, DomainType, Hypervisor, PhysInfo, SharePage, ShareSide,
    VcpuRegs, VirtCaps, XenVersion,
};
pub use ids::{DomId, Gfn, GfnRange, GrantRef, Mfn, SharingHandle, PAGE_SIZE};
pub use sharing_events::{Attached, EnomemRequest, SharingEvents};
pub use tsys::{TsysKey, TsysProcess, TsysStatus, TsysToken, TSYS_KEY_LEN, TSYS_TOKEN_LEN};
pub use xenstore::{Transaction, WatchEvent, XenStore};
