//! [`EventChannels`]: interdomain event channels via libxenevtchn.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use circ_hv::{DomId, HvError};
use circ_xen_sys as sys;

use crate::{errno, logger};

/// A local event-channel port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(pub u32);

/// An open libxenevtchn handle, closed on drop (which unbinds its ports).
///
/// Not `Sync`: the library documents that `pending` does not work with
/// several threads sharing one handle.
#[derive(Debug)]
pub struct EventChannels {
    xce: NonNull<sys::xenevtchn_handle>,
}

// SAFETY: the handle is an fd to /dev/xen/evtchn; moving it to another thread
// is fine as long as one thread uses it at a time (no Sync).
unsafe impl Send for EventChannels {}

impl EventChannels {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static; flags 0 is the documented default.
        let xce = unsafe { sys::xenevtchn_open(logger::get(), 0) };
        let xce = NonNull::new(xce).ok_or_else(|| errno::error("failed to open libxenevtchn"))?;
        Ok(Self { xce })
    }

    fn port(rc: i32, what: impl FnOnce() -> String) -> Result<Port, HvError> {
        match u32::try_from(rc) {
            Ok(port) => Ok(Port(port)),
            Err(_) => {
                let errno = errno::last();
                Err(HvError::os(what(), errno))
            }
        }
    }

    fn check(rc: i32, what: impl FnOnce() -> String) -> Result<(), HvError> {
        Self::port(rc, what).map(drop)
    }

    /// Allocate a port that `remote` can bind to.
    pub fn bind_unbound_port(&self, remote: DomId) -> Result<Port, HvError> {
        // SAFETY: plain call on a valid handle.
        let rc =
            unsafe { sys::xenevtchn_bind_unbound_port(self.xce.as_ptr(), u32::from(remote.0)) };
        Self::port(rc, || {
            format!("failed to allocate a port for domain {remote}")
        })
    }

    /// Connect to `remote_port` of `remote`.
    pub fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port, HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe {
            sys::xenevtchn_bind_interdomain(self.xce.as_ptr(), u32::from(remote.0), remote_port.0)
        };
        Self::port(rc, || {
            format!(
                "failed to bind to port {} of domain {remote}",
                remote_port.0
            )
        })
    }

    pub fn unbind(&self, port: Port) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_unbind(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to unbind port {}", port.0))
    }

    pub fn notify(&self, port: Port) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_notify(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to notify port {}", port.0))
    }

    /// Next pending port; may block, so poll [`fd`](Self::fd) first. The
    /// port stays masked until [`unmask`](Self::unmask).
    pub fn pending(&self) -> Result<Port, HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_pending(self.xce.as_ptr()) };
        Self::port(rc, || "failed to read a pending event channel".into())
    }

    pub fn unmask(&self, port: Port) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_unmask(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to unmask port {}", port.0))
    }

    /// The fd to poll for readability before calling [`pending`](Self::pending).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: plain call on a valid handle.
        let fd = unsafe { sys::xenevtchn_fd(self.xce.as_ptr()) };
        // SAFETY: the fd belongs to the handle and stays open until the handle
        // is closed in Drop, which the borrow of `self` outlives.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }
}

impl Drop for EventChannels {
    fn drop(&mut self) {
        // SAFETY: opened by xenevtchn_open, closed once.
        unsafe { sys::xenevtchn_close(self.xce.as_ptr()) };
    }
}
