//! In-process fakes of the traits, for unit tests of code built on them.
//!
//! They model the behaviour daemons depend on, not Xen's internals:
//! - [`FakeHypervisor`]: domains with page contents; pause counts; memory
//!   sharing with handles, copy-on-write and Xen's counters; nominate fails
//!   with E2BIG while a [`FakeForeignMemory`] mapping of the page is alive.
//! - [`FakeSharingEvents`]: memory-sharing vm_event rings; tests post
//!   ENOMEM requests and see which vCPUs were resumed.
//! - [`FakeXenStore`]: nodes, watches (with the initial event), transactions
//!   that fail with EAGAIN on conflict.
//! - [`FakeGrantTable`]: the grants set with [`FakeHypervisor::set_grant`]
//!   (read-write or read-only), mapped as ring pages (a mapping pins the
//!   page against nominate until dropped) and copied with `GNTST_*` status.
//! - [`FakeEventChannels`]: ports between fake domains, one
//!   [`FakeEventChannel`] handle per domain; a fired port is masked until
//!   unmasked, as with Linux's evtchn driver.
//! - [`FakeRingMemory`]: a ring's shared memory over a `Vec`, optionally
//!   confined to the ring (any other access panics).
//!
//! Fakes never block: [`FakeXenStore`]'s `read_watch` fails with `Busy`
//! when no event is queued, [`FakeEventChannel`]'s `pending` returns `None`.

mod evtchn;
mod grant_table;
mod hypervisor;
mod ring_memory;
mod sharing_events;
mod xenstore;

pub use evtchn::{FakeEventChannel, FakeEventChannels};
pub use grant_table::{FakeGrantMapping, FakeGrantTable};
pub use hypervisor::{FakeForeignMapping, FakeForeignMemory, FakeHypervisor};
pub use ring_memory::FakeRingMemory;
pub use sharing_events::FakeSharingEvents;
pub use xenstore::FakeXenStore;

use crate::{Errno, HvError};

fn os_err(what: impl Into<String>, errno: i32) -> HvError {
    HvError::os(what.into(), Errno(errno))
}
