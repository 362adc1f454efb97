//! [`GrantTable`]: copying to and from pages a guest has granted us.

use std::ptr::NonNull;

use circ_hv::{DomId, ErrorKind, GrantRef, HvError, PAGE_SIZE};
use circ_xen_sys as sys;

use crate::{errno, logger};

/// An open libxengnttab handle, closed on drop.
#[derive(Debug)]
pub struct GrantTable {
    xgt: NonNull<sys::xengnttab_handle>,
}

// SAFETY: the handle is an fd to /dev/xen/gntdev plus immutable state; calls
// are ioctls, usable from any thread.
unsafe impl Send for GrantTable {}

/// One grant-copy operation. `offset + len` must stay within the granted page.
#[derive(Debug)]
pub enum GrantCopy<'a> {
    /// Copy from the guest's granted page into `buf`.
    FromGrant {
        dom: DomId,
        gref: GrantRef,
        offset: u16,
        buf: &'a mut [u8],
    },
    /// Copy `data` into the guest's granted page.
    ToGrant {
        dom: DomId,
        gref: GrantRef,
        offset: u16,
        data: &'a [u8],
    },
}

/// A per-operation failure: Xen's `GNTST_*` status (negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("grant copy failed with status {0}")]
pub struct GrantCopyError(pub i16);

impl GrantTable {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static; flags 0 is the documented default.
        let xgt = unsafe { sys::xengnttab_open(logger::get(), 0) };
        let xgt = NonNull::new(xgt).ok_or_else(|| errno::error("failed to open libxengnttab"))?;
        Ok(Self { xgt })
    }

    /// Run a batch of copies in one call. `Err` means the batch failed as a
    /// whole; otherwise each operation has its own result.
    pub fn copy(
        &self,
        ops: &mut [GrantCopy<'_>],
    ) -> Result<Vec<Result<(), GrantCopyError>>, HvError> {
        let invalid = |what: String| HvError::with_kind(what, ErrorKind::InvalidInput, None);
        let mut segs = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            // SAFETY: plain C struct of integers and pointers; zero is valid.
            let mut seg: sys::xengnttab_grant_copy_segment_t = unsafe { std::mem::zeroed() };
            let (dom, gref, offset, len) = match op {
                GrantCopy::FromGrant {
                    dom,
                    gref,
                    offset,
                    buf,
                } => {
                    seg.flags = sys::GNTCOPY_source_gref as u16;
                    seg.dest.virt = buf.as_mut_ptr().cast();
                    seg.source.foreign = foreign(*dom, *gref, *offset);
                    (*dom, *gref, *offset, buf.len())
                }
                GrantCopy::ToGrant {
                    dom,
                    gref,
                    offset,
                    data,
                } => {
                    seg.flags = sys::GNTCOPY_dest_gref as u16;
                    // The library only reads through a source `virt` pointer.
                    seg.source.virt = data.as_ptr().cast_mut().cast();
                    seg.dest.foreign = foreign(*dom, *gref, *offset);
                    (*dom, *gref, *offset, data.len())
                }
            };
            if usize::from(offset) + len > PAGE_SIZE {
                return Err(invalid(format!(
                    "grant copy of {len} bytes at {offset} leaves grant {gref} of domain {dom}"
                )));
            }
            seg.len = len as u16;
            segs.push(seg);
        }
        // SAFETY: `segs` holds `segs.len()` initialized segments whose local
        // pointers borrow from `ops`, alive and exclusive for this call.
        let rc = unsafe {
            sys::xengnttab_grant_copy(self.xgt.as_ptr(), segs.len() as u32, segs.as_mut_ptr())
        };
        if rc < 0 {
            return Err(errno::error(format!(
                "grant copy of {} segments failed",
                segs.len()
            )));
        }
        Ok(segs
            .iter()
            .map(|s| {
                if s.status == sys::GNTST_okay as i16 {
                    Ok(())
                } else {
                    Err(GrantCopyError(s.status))
                }
            })
            .collect())
    }
}

fn foreign(
    dom: DomId,
    gref: GrantRef,
    offset: u16,
) -> sys::xengnttab_grant_copy_segment_xengnttab_copy_ptr__bindgen_ty_1 {
    sys::xengnttab_grant_copy_segment_xengnttab_copy_ptr__bindgen_ty_1 {
        ref_: gref.0,
        offset,
        domid: dom.0,
    }
}

impl Drop for GrantTable {
    fn drop(&mut self) {
        // SAFETY: opened by xengnttab_open, closed once.
        unsafe { sys::xengnttab_close(self.xgt.as_ptr()) };
    }
}
