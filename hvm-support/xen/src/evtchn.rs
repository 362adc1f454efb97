//! [`XenEventChannels`]: interdomain event channels via libxenevtchn.

use std::ffi::c_int;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::ptr::NonNull;
use std::time::Duration;

use circ_hv::{DomId, EventChannel, EvtchnPort, HvError};
use circ_xen_sys as sys;

use crate::{errno, logger};

/// An open libxenevtchn handle, closed on drop (which unbinds its ports).
///
/// Not `Sync`: the library documents that `pending` does not work with
/// several threads sharing one handle.
#[derive(Debug)]
pub struct XenEventChannels {
    xce: NonNull<sys::xenevtchn_handle>,
}

// SAFETY: the handle is an fd to /dev/xen/evtchn; moving it to another thread
// is fine as long as one thread uses it at a time (no Sync).
unsafe impl Send for XenEventChannels {}

impl XenEventChannels {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static; flags 0 is the documented default.
        let xce = unsafe { sys::xenevtchn_open(logger::get(), 0) };
        let xce = NonNull::new(xce).ok_or_else(|| errno::error("failed to open libxenevtchn"))?;
        Ok(Self { xce })
    }

    fn port(rc: i32, what: impl FnOnce() -> String) -> Result<EvtchnPort, HvError> {
        match u32::try_from(rc) {
            Ok(port) => Ok(EvtchnPort(port)),
            Err(_) => {
                let errno = errno::last();
                Err(HvError::os(what(), errno))
            }
        }
    }

    fn check(rc: i32, what: impl FnOnce() -> String) -> Result<(), HvError> {
        Self::port(rc, what).map(drop)
    }

    /// The fd that becomes readable when a port fires, for waiting on
    /// several handles at once; then call `pending` with a zero timeout.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: plain call on a valid handle.
        let fd = unsafe { sys::xenevtchn_fd(self.xce.as_ptr()) };
        // SAFETY: the fd belongs to the handle and stays open until the handle
        // is closed in Drop, which the borrow of `self` outlives.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }
}

impl EventChannel for XenEventChannels {
    fn bind_unbound_port(&self, remote: DomId) -> Result<EvtchnPort, HvError> {
        // SAFETY: plain call on a valid handle.
        let rc =
            unsafe { sys::xenevtchn_bind_unbound_port(self.xce.as_ptr(), u32::from(remote.0)) };
        Self::port(rc, || {
            format!("failed to allocate a port for domain {remote}")
        })
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, HvError> {
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

    fn unbind(&self, port: EvtchnPort) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_unbind(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to unbind port {}", port.0))
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_notify(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to notify port {}", port.0))
    }

    /// Waits in `poll(2)` on the handle's fd, then reads the port (which
    /// would block without an event).
    fn pending(&self, timeout: Duration) -> Result<Option<EvtchnPort>, HvError> {
        let mut pfd = libc::pollfd {
            fd: self.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let errno = errno::last();
            if errno.0 == libc::EINTR {
                return Ok(None);
            }
            return Err(HvError::os("failed to wait for an event channel", errno));
        }
        if pfd.revents & libc::POLLIN == 0 {
            return Ok(None);
        }
        // SAFETY: plain call on a valid handle; the fd is readable, so the
        // read inside does not block.
        let rc = unsafe { sys::xenevtchn_pending(self.xce.as_ptr()) };
        Self::port(rc, || "failed to read a pending event channel".into()).map(Some)
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xenevtchn_unmask(self.xce.as_ptr(), port.0) };
        Self::check(rc, || format!("failed to unmask port {}", port.0))
    }
}

impl Drop for XenEventChannels {
    fn drop(&mut self) {
        // SAFETY: opened by xenevtchn_open, closed once.
        unsafe { sys::xenevtchn_close(self.xce.as_ptr()) };
    }
}
