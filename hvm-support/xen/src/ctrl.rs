//! The libxenctrl handle.

use std::ptr::NonNull;

use circ_hv::HvError;
use circ_xen_sys as sys;

use crate::{errno, logger};

/// An open `xc_interface`, closed on drop.
#[derive(Debug)]
pub struct XenCtrl {
    xch: NonNull<sys::xc_interface>,
}

// SAFETY: an xc_interface opened without XC_OPENFLAG_NON_REENTRANT may be used
// from any thread (libxenctrl locks its own hypercall-buffer cache). It is not
// marked Sync: concurrent calls on one handle are not something we rely on.
unsafe impl Send for XenCtrl {}

impl XenCtrl {
    /// Open the hypervisor interface. Fails outside dom0 or without root.
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static valid for the program's lifetime;
        // flags 0 asks for a reentrant handle.
        let xch = unsafe { sys::xc_interface_open(logger::get(), logger::get(), 0) };
        NonNull::new(xch)
            .map(|xch| Self { xch })
            .ok_or_else(|| errno::error("failed to open libxenctrl"))
    }

    pub(crate) fn raw(&self) -> *mut sys::xc_interface {
        self.xch.as_ptr()
    }
}

impl Drop for XenCtrl {
    fn drop(&mut self) {
        // SAFETY: the handle came from xc_interface_open and is closed once.
        unsafe { sys::xc_interface_close(self.xch.as_ptr()) };
    }
}
