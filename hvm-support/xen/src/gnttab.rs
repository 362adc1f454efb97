//! [`XenGrantTable`]: pages a guest has granted us, copied to and from, or
//! mapped as a ring ([`XenGrantMapping`]).

use std::ptr::NonNull;
use std::sync::Arc;

use circ_hv::{
    DomId, ErrorKind, GrantCopy, GrantCopyError, GrantMapping, GrantRef, GrantTable, HvError,
    PAGE_SIZE,
};
use circ_xen_sys as sys;

use crate::shared::{ring_memory_via_pages, SharedPages};
use crate::{errno, logger};

#[derive(Debug)]
struct Handle(NonNull<sys::xengnttab_handle>);

// SAFETY: the handle is an fd to /dev/xen/gntdev plus state the library
// guards itself; its calls are ioctls and mmap/munmap, usable from any
// thread.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened by xengnttab_open, closed once; every mapping
        // holds an Arc to us, so none is unmapped through a closed handle.
        unsafe { sys::xengnttab_close(self.0.as_ptr()) };
    }
}

/// An open libxengnttab handle. Cheap to clone; mappings keep it open.
#[derive(Debug, Clone)]
pub struct XenGrantTable {
    handle: Arc<Handle>,
}

impl XenGrantTable {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static; flags 0 is the documented default.
        let xgt = unsafe { sys::xengnttab_open(logger::get(), 0) };
        let xgt = NonNull::new(xgt).ok_or_else(|| errno::error("failed to open libxengnttab"))?;
        Ok(Self {
            handle: Arc::new(Handle(xgt)),
        })
    }
}

impl GrantTable for XenGrantTable {
    type Mapping = XenGrantMapping;

    fn map_ring(&self, dom: DomId, refs: &[GrantRef]) -> Result<XenGrantMapping, HvError> {
        let what = || format!("failed to map {} grants of domain {dom}", refs.len());
        let count = u32::try_from(refs.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| HvError::with_kind(what(), ErrorKind::InvalidInput, None))?;
        let mut raw: Vec<u32> = refs.iter().map(|r| r.0).collect();
        // SAFETY: `raw` holds `count` refs, read during the call only. The
        // library maps all of them or none (it undoes a partial map).
        let ptr = unsafe {
            sys::xengnttab_map_domain_grant_refs(
                self.handle.0.as_ptr(),
                count,
                u32::from(dom.0),
                raw.as_mut_ptr(),
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        let Some(ptr) = NonNull::new(ptr.cast::<u8>()) else {
            return Err(errno::error(what()));
        };
        Ok(XenGrantMapping {
            handle: Arc::clone(&self.handle),
            ptr,
            dom,
            refs: refs.to_vec(),
        })
    }

    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<Vec<Result<(), GrantCopyError>>, HvError> {
        let mut segs = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            op.check_in_page()?;
            let (dom, gref, offset, len) = op.target();
            // SAFETY: plain C struct of integers and pointers; zero is valid.
            let mut seg: sys::xengnttab_grant_copy_segment_t = unsafe { std::mem::zeroed() };
            match op {
                GrantCopy::FromGrant { buf, .. } => {
                    seg.flags = sys::GNTCOPY_source_gref as u16;
                    seg.dest.virt = buf.as_mut_ptr().cast();
                    seg.source.foreign = foreign(dom, gref, offset);
                }
                GrantCopy::ToGrant { data, .. } => {
                    seg.flags = sys::GNTCOPY_dest_gref as u16;
                    // The library only reads through a source `virt` pointer.
                    seg.source.virt = data.as_ptr().cast_mut().cast();
                    seg.dest.foreign = foreign(dom, gref, offset);
                }
            }
            // At most PAGE_SIZE (check_in_page).
            seg.len = len as u16;
            segs.push(seg);
        }
        // SAFETY: `segs` holds `segs.len()` initialized segments whose local
        // pointers borrow from `ops`, alive and exclusive for this call.
        let rc = unsafe {
            sys::xengnttab_grant_copy(self.handle.0.as_ptr(), segs.len() as u32, segs.as_mut_ptr())
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

/// Granted pages mapped read-write and contiguously (a shared ring);
/// unmapped on drop.
#[derive(Debug)]
pub struct XenGrantMapping {
    handle: Arc<Handle>,
    ptr: NonNull<u8>,
    dom: DomId,
    refs: Vec<GrantRef>,
}

// SAFETY: the mapping is process memory owned by this value, accessed only
// through atomics and volatile copies (SharedPages); the handle is Sync.
unsafe impl Send for XenGrantMapping {}

impl XenGrantMapping {
    fn pages(&self) -> SharedPages<'_> {
        // SAFETY: `ptr` is the start of refs.len() pages mapped read-write
        // by map_ring, unmapped only in our Drop, so for as long as the
        // borrow of self; page-aligned.
        unsafe { SharedPages::new(self.ptr, self.refs.len() * PAGE_SIZE) }
    }
}

impl GrantMapping for XenGrantMapping {
    fn dom(&self) -> DomId {
        self.dom
    }

    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }
}

ring_memory_via_pages!(XenGrantMapping);

impl Drop for XenGrantMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and the page count are what map_ring got and asked
        // for; the handle is alive through our Arc.
        let rc = unsafe {
            sys::xengnttab_unmap(
                self.handle.0.as_ptr(),
                self.ptr.as_ptr().cast(),
                self.refs.len() as u32,
            )
        };
        if rc < 0 {
            let errno = errno::last();
            tracing::warn!(domid = self.dom.0, pages = self.refs.len(), %errno, "failed to unmap granted pages");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use circ_hv::console;

    use super::*;

    #[test]
    fn console_layout_matches_the_headers() {
        assert_eq!(
            console::CONSOLE_GRANT,
            GrantRef(sys::GNTTAB_RESERVED_CONSOLE)
        );
        assert_eq!(offset_of!(sys::xencons_interface, out), console::OUT_AT);
        assert_eq!(
            size_of::<[std::ffi::c_char; console::OUT_SIZE as usize]>(),
            offset_of!(sys::xencons_interface, in_cons) - console::OUT_AT
        );
        assert_eq!(
            offset_of!(sys::xencons_interface, out_prod),
            console::OUT_PROD_AT
        );
        assert_eq!(size_of::<sys::xencons_interface>(), console::INTERFACE_SIZE);
    }
}
