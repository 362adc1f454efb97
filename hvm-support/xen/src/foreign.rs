//! [`XenForeignMemory`]: batched mappings of another domain's frames.

use std::ffi::{c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use circ_hv::{
    DomId, Errno, ErrorKind, ForeignMapping, ForeignMemory, Gfn, HvError, Placement, Protection,
    PAGE_SIZE,
};
use circ_xen_sys as sys;

use crate::{errno, logger};

#[derive(Debug)]
struct Handle(NonNull<sys::xenforeignmemory_handle>);

// SAFETY: on Linux the handle is an fd to privcmd plus immutable state; map
// and unmap are mmap/ioctl/munmap and may run concurrently from any thread.
unsafe impl Send for Handle {}
// SAFETY: as above, no call mutates shared state in the handle.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened by xenforeignmemory_open; every mapping holds an
        // Arc to us, so none is left to unmap through a closed handle.
        unsafe { sys::xenforeignmemory_close(self.0.as_ptr()) };
    }
}

/// An open libxenforeignmemory handle. Cheap to clone; mappings keep it open.
#[derive(Debug, Clone)]
pub struct XenForeignMemory {
    handle: Arc<Handle>,
}

impl XenForeignMemory {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: the logger is a static; flags 0 is the documented default.
        let h = unsafe { sys::xenforeignmemory_open(logger::get(), 0) };
        let h =
            NonNull::new(h).ok_or_else(|| errno::error("failed to open libxenforeignmemory"))?;
        Ok(Self {
            handle: Arc::new(Handle(h)),
        })
    }

    /// Map at exactly `addr`, replacing whatever is mapped there
    /// (`MAP_FIXED`). On drop the range is left unmapped.
    ///
    /// # Safety
    /// `addr` must be page-aligned and `[addr, addr + gfns.len() * 4096)`
    /// must be address space the caller owns (e.g. its own `PROT_NONE`
    /// reservation), with no live Rust reference into it.
    pub unsafe fn map_fixed(
        &self,
        dom: DomId,
        gfns: &[Gfn],
        prot: Protection,
        addr: NonNull<u8>,
    ) -> Result<XenMapping, HvError> {
        self.map_raw(dom, gfns, prot, addr.as_ptr().cast(), libc::MAP_FIXED)
    }

    fn map_raw(
        &self,
        dom: DomId,
        gfns: &[Gfn],
        prot: Protection,
        addr: *mut c_void,
        flags: c_int,
    ) -> Result<XenMapping, HvError> {
        let what = || format!("failed to map {} frames of domain {dom}", gfns.len());
        if gfns.is_empty() || addr as usize % PAGE_SIZE != 0 {
            return Err(HvError::with_kind(what(), ErrorKind::InvalidInput, None));
        }
        let frames: Vec<sys::xen_pfn_t> = gfns.iter().map(|g| g.0).collect();
        let mut errs: Vec<c_int> = vec![0; gfns.len()];
        let prot_bits = match prot {
            Protection::Read => libc::PROT_READ,
            Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: `frames` and `errs` hold `gfns.len()` entries each. With a
        // non-null err array the library reports per-page failures there and
        // returns NULL only if nothing was attempted. MAP_FIXED is only
        // passed by `map_fixed`, whose caller vouches for the range.
        let ptr = unsafe {
            sys::xenforeignmemory_map2(
                self.handle.0.as_ptr(),
                u32::from(dom.0),
                addr,
                prot_bits,
                flags,
                gfns.len(),
                frames.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        let Some(ptr) = NonNull::new(ptr.cast::<u8>()) else {
            let errno = errno::last();
            return Err(HvError::os(what(), errno));
        };
        Ok(XenMapping {
            handle: Arc::clone(&self.handle),
            ptr,
            dom,
            gfns: gfns.to_vec(),
            // privcmd reports -errno per page; accept either sign.
            errors: errs
                .iter()
                .map(|e| (*e != 0).then(|| Errno(e.abs())))
                .collect(),
            writable: prot == Protection::ReadWrite,
        })
    }
}

impl ForeignMemory for XenForeignMemory {
    type Mapping = XenMapping;

    /// Gfns for HVM/PVH guests; for PV guests the numbers are MFNs.
    fn map(
        &self,
        dom: DomId,
        gfns: &[Gfn],
        prot: Protection,
        placement: Placement,
    ) -> Result<XenMapping, HvError> {
        let addr = match placement {
            Placement::Anywhere => ptr::null_mut(),
            // Without MAP_FIXED the kernel treats the address as a hint.
            Placement::Hint(addr) => addr as *mut c_void,
        };
        self.map_raw(dom, gfns, prot, addr, 0)
    }
}

/// Frames of one domain mapped contiguously into our address space;
/// unmapped on drop.
#[derive(Debug)]
pub struct XenMapping {
    handle: Arc<Handle>,
    ptr: NonNull<u8>,
    dom: DomId,
    gfns: Vec<Gfn>,
    errors: Vec<Option<Errno>>,
    writable: bool,
}

// SAFETY: the mapping is plain process memory owned by this value; all access
// goes through volatile copies, so moving it between threads is sound.
unsafe impl Send for XenMapping {}

impl XenMapping {
    /// Start of the mapping, for code in this crate that shares a page with
    /// Xen (the sharing ring) and needs atomics rather than copies.
    pub(crate) fn as_non_null(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Pointer to `offset` in page `index`, after checking that the page
    /// mapped and `[offset, offset + len)` stays inside it.
    fn page_ptr(&self, index: usize, offset: usize, len: usize) -> Result<*mut u8, HvError> {
        let gfn = self.gfns[index];
        if let Some(errno) = self.errors[index] {
            return Err(HvError::os(
                format!("gfn {gfn} of domain {} is not mapped", self.dom),
                errno,
            ));
        }
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(HvError::with_kind(
                format!("access at {offset}+{len} leaves gfn {gfn}"),
                ErrorKind::InvalidInput,
                None,
            ));
        }
        // SAFETY: index < len (checked by indexing above) and offset < PAGE_SIZE,
        // so the result stays inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(index * PAGE_SIZE + offset) })
    }
}

impl ForeignMapping for XenMapping {
    fn dom(&self) -> DomId {
        self.dom
    }

    fn gfns(&self) -> &[Gfn] {
        &self.gfns
    }

    fn address(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn page_error(&self, index: usize) -> Option<Errno> {
        self.errors[index]
    }

    fn read(&self, index: usize, offset: usize, buf: &mut [u8]) -> Result<(), HvError> {
        let src = self.page_ptr(index, offset, buf.len())?;
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: `src + i` is inside a successfully mapped page (checked
            // by page_ptr). Volatile because the guest may write concurrently.
            *byte = unsafe { ptr::read_volatile(src.add(i)) };
        }
        Ok(())
    }

    fn write(&self, index: usize, offset: usize, data: &[u8]) -> Result<(), HvError> {
        if !self.writable {
            return Err(HvError::with_kind(
                format!("mapping of domain {} is read-only", self.dom),
                ErrorKind::PermissionDenied,
                None,
            ));
        }
        let dst = self.page_ptr(index, offset, data.len())?;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: `dst + i` is inside a page mapped PROT_WRITE (checked
            // above). Volatile because the guest may access it concurrently.
            unsafe { ptr::write_volatile(dst.add(i), *byte) };
        }
        Ok(())
    }
}

impl Drop for XenMapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and the page count are exactly what map2 returned
        // and was asked for; the handle is alive through our Arc.
        let rc = unsafe {
            sys::xenforeignmemory_unmap(
                self.handle.0.as_ptr(),
                self.ptr.as_ptr().cast(),
                self.gfns.len(),
            )
        };
        if rc < 0 {
            let errno = errno::last();
            tracing::warn!(domid = self.dom.0, pages = self.gfns.len(), %errno, "failed to unmap foreign pages");
        }
    }
}
