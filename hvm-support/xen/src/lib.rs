//! Safe handles over the Xen 4.17 toolstack libraries, implementing
//! `circ-hv`'s traits for a real dom0.
//!
//! Each handle owns one library handle, closes it in `Drop`, and turns every
//! failed call into an [`HvError`](circ_hv::HvError) carrying the errno read
//! right after the call. `unsafe` lives here and in `circ-xen-sys` only.
//!
//! | handle | library | implements |
//! |---|---|---|
//! | [`XenHypervisor`] ([`XenCtrl`] + [`XenForeignMemory`]) | libxenctrl | `Hypervisor` |
//! | [`XenForeignMemory`] | libxenforeignmemory | `ForeignMemory` |
//! | [`XenStoreHandle`] | libxenstore | `XenStore` |
//! | [`XenGrantTable`] ([`XenGrantMapping`] per ring) | libxengnttab | `GrantTable` (`GrantMapping`, `RingMemory`) |
//! | [`XenEventChannels`] | libxenevtchn | `EventChannel` |
//! | [`XenSharingEvents`] ([`SharingRing`] per domain) | libxenctrl + libxenevtchn | `SharingEvents` |
//!
//! Shared rings are parsed by `circ_hv::ring`, which is safe code over the
//! `RingMemory` trait; here it is implemented over mapped pages (atomics
//! for the indices, volatile copies for the slots, every access
//! bounds-checked), for grant mappings and for the sharing ring's page.

mod ctrl;
mod dom0;
mod domain;
mod errno;
mod evtchn;
mod foreign;
mod gnttab;
mod hypervisor;
mod logger;
mod shared;
mod sharing_ring;
mod stale_ring;
mod tsys;
mod xenstore;

pub use ctrl::XenCtrl;
pub use dom0::{check_dom0, OpenError};
pub use domain::{decode_state, decode_type};
pub use evtchn::XenEventChannels;
pub use foreign::{XenForeignMemory, XenMapping};
pub use gnttab::{XenGrantMapping, XenGrantTable};
pub use hypervisor::XenHypervisor;
pub use sharing_ring::{SharingRing, XenSharingEvents};
pub use xenstore::XenStoreHandle;
