//! [`XenStoreHandle`]: the `XenStore` trait over libxenstore.

use std::ffi::{c_char, c_uint, c_void, CStr, CString};
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use circ_hv::{DomId, ErrorKind, HvError, Transaction, WatchEvent, XenStore};
use circ_xen_sys as sys;

use crate::errno;

/// A connection to xenstored (socket, or /dev/xen/xenbus), closed on drop.
#[derive(Debug)]
pub struct XenStoreHandle {
    xsh: NonNull<sys::xs_handle>,
}

// SAFETY: libxenstore serializes requests, replies and the watch queue on a
// handle with its own mutexes (it is built with pthreads on Debian), so the
// handle may be moved to and shared between threads.
unsafe impl Send for XenStoreHandle {}
// SAFETY: see above.
unsafe impl Sync for XenStoreHandle {}

/// Frees memory libxenstore returned with malloc.
struct Malloced(*mut c_void);

impl Drop for Malloced {
    fn drop(&mut self) {
        // SAFETY: the pointer came from libxenstore, which allocates results
        // with malloc and leaves freeing them to the caller; freed once.
        unsafe { libc::free(self.0) };
    }
}

fn c_path(path: &str) -> Result<CString, HvError> {
    CString::new(path).map_err(|_| {
        HvError::with_kind(
            format!("xenstore path {path:?} contains NUL"),
            ErrorKind::InvalidInput,
            None,
        )
    })
}

/// Copy `n` NUL-terminated strings out of a `char **` result.
///
/// # Safety
/// `list` must point to at least `n` valid C string pointers.
unsafe fn strings(list: *const *mut c_char, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            // SAFETY: i < n, and each entry is a valid C string (caller).
            let s = unsafe { CStr::from_ptr(*list.add(i)) };
            s.to_string_lossy().into_owned()
        })
        .collect()
}

impl XenStoreHandle {
    pub fn open() -> Result<Self, HvError> {
        // SAFETY: flags 0: socket first, then xenbus.
        let xsh = unsafe { sys::xs_open(0) };
        let xsh = NonNull::new(xsh).ok_or_else(|| errno::error("failed to connect to xenstore"))?;
        Ok(Self { xsh })
    }

    /// The fd that becomes readable when a watch fires, for poll loops with
    /// [`XenStore::try_read_watch`].
    pub fn watch_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: plain call on a valid handle.
        let fd = unsafe { sys::xs_fileno(self.xsh.as_ptr()) };
        // SAFETY: the fd belongs to the handle and lives until xs_close in
        // Drop, which the borrow of `self` outlives.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    fn raw(&self) -> *mut sys::xs_handle {
        self.xsh.as_ptr()
    }

    fn ok(done: bool, what: impl FnOnce() -> String) -> Result<(), HvError> {
        if done {
            return Ok(());
        }
        let errno = errno::last();
        Err(HvError::os(what(), errno))
    }

    fn watch_event(&self, list: *mut *mut c_char, n: usize) -> Result<WatchEvent, HvError> {
        let _free = Malloced(list.cast());
        let [path, token] = [sys::XS_WATCH_PATH, sys::XS_WATCH_TOKEN].map(|i| i as usize);
        if n <= path.max(token) {
            return Err(HvError::with_kind(
                "short xenstore watch event",
                ErrorKind::Other(None),
                None,
            ));
        }
        // SAFETY: libxenstore returned `n` C strings in one allocation.
        let mut fields = unsafe { strings(list, n) };
        let token = std::mem::take(&mut fields[token]);
        let path = std::mem::take(&mut fields[path]);
        Ok(WatchEvent { path, token })
    }
}

impl XenStore for XenStoreHandle {
    fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>, HvError> {
        let cpath = c_path(path)?;
        let mut len: c_uint = 0;
        // SAFETY: `cpath` is NUL-terminated, `len` a valid out-parameter.
        let value = unsafe { sys::xs_read(self.raw(), tx.0, cpath.as_ptr(), &mut len) };
        if value.is_null() {
            let errno = errno::last();
            return Err(HvError::os(
                format!("failed to read xenstore {path}"),
                errno,
            ));
        }
        let _free = Malloced(value);
        // SAFETY: xs_read returned a buffer of `len` bytes (plus a NUL).
        Ok(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) }.to_vec())
    }

    fn write(&self, tx: Transaction, path: &str, value: &[u8]) -> Result<(), HvError> {
        let cpath = c_path(path)?;
        let len = u32::try_from(value.len()).map_err(|_| {
            HvError::with_kind(
                format!("value for xenstore {path} is too large"),
                ErrorKind::InvalidInput,
                None,
            )
        })?;
        // SAFETY: `cpath` is NUL-terminated; `value` is readable for `len` bytes.
        let done =
            unsafe { sys::xs_write(self.raw(), tx.0, cpath.as_ptr(), value.as_ptr().cast(), len) };
        Self::ok(done, || format!("failed to write xenstore {path}"))
    }

    fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>, HvError> {
        let cpath = c_path(path)?;
        let mut n: c_uint = 0;
        // SAFETY: `cpath` is NUL-terminated, `n` a valid out-parameter.
        let list = unsafe { sys::xs_directory(self.raw(), tx.0, cpath.as_ptr(), &mut n) };
        if list.is_null() {
            let errno = errno::last();
            return Err(HvError::os(
                format!("failed to list xenstore {path}"),
                errno,
            ));
        }
        let _free = Malloced(list.cast());
        // SAFETY: xs_directory returned `n` C strings in one allocation.
        Ok(unsafe { strings(list, n as usize) })
    }

    fn rm(&self, tx: Transaction, path: &str) -> Result<(), HvError> {
        let cpath = c_path(path)?;
        // SAFETY: `cpath` is NUL-terminated.
        let done = unsafe { sys::xs_rm(self.raw(), tx.0, cpath.as_ptr()) };
        Self::ok(done, || format!("failed to remove xenstore {path}"))
    }

    fn watch(&self, path: &str, token: &str) -> Result<(), HvError> {
        let (cpath, ctoken) = (c_path(path)?, c_path(token)?);
        // SAFETY: both strings are NUL-terminated.
        let done = unsafe { sys::xs_watch(self.raw(), cpath.as_ptr(), ctoken.as_ptr()) };
        Self::ok(done, || format!("failed to watch xenstore {path}"))
    }

    fn unwatch(&self, path: &str, token: &str) -> Result<(), HvError> {
        let (cpath, ctoken) = (c_path(path)?, c_path(token)?);
        // SAFETY: both strings are NUL-terminated.
        let done = unsafe { sys::xs_unwatch(self.raw(), cpath.as_ptr(), ctoken.as_ptr()) };
        Self::ok(done, || format!("failed to unwatch xenstore {path}"))
    }

    fn read_watch(&self) -> Result<WatchEvent, HvError> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is a valid out-parameter.
        let list = unsafe { sys::xs_read_watch(self.raw(), &mut n) };
        if list.is_null() {
            return Err(errno::error("failed to read a xenstore watch event"));
        }
        self.watch_event(list, n as usize)
    }

    fn try_read_watch(&self) -> Result<Option<WatchEvent>, HvError> {
        // SAFETY: plain call on a valid handle.
        let list = unsafe { sys::xs_check_watch(self.raw()) };
        if list.is_null() {
            let errno = errno::last();
            if errno.0 == libc::EAGAIN {
                return Ok(None);
            }
            return Err(HvError::os(
                "failed to check for xenstore watch events",
                errno,
            ));
        }
        // xs_check_watch returns path and token only (XS_WATCH_TOKEN + 1).
        self.watch_event(list, sys::XS_WATCH_TOKEN as usize + 1)
            .map(Some)
    }

    fn transaction_start(&self) -> Result<Transaction, HvError> {
        // SAFETY: plain call on a valid handle.
        let tx = unsafe { sys::xs_transaction_start(self.raw()) };
        if tx == sys::XBT_NULL {
            return Err(errno::error("failed to start a xenstore transaction"));
        }
        Ok(Transaction(tx))
    }

    fn transaction_end(&self, tx: Transaction, commit: bool) -> Result<(), HvError> {
        // SAFETY: plain call on a valid handle; `abort` is the negation.
        let done = unsafe { sys::xs_transaction_end(self.raw(), tx.0, !commit) };
        Self::ok(done, || {
            format!(
                "failed to {} xenstore transaction {}",
                if commit { "commit" } else { "abort" },
                tx.0
            )
        })
    }

    fn domain_path(&self, dom: DomId) -> Result<String, HvError> {
        // SAFETY: plain call on a valid handle.
        let path = unsafe { sys::xs_get_domain_path(self.raw(), u32::from(dom.0)) };
        if path.is_null() {
            let errno = errno::last();
            return Err(HvError::os(
                format!("failed to get the xenstore path of domain {dom}"),
                errno,
            ));
        }
        let _free = Malloced(path.cast());
        // SAFETY: a NUL-terminated string from libxenstore.
        Ok(unsafe { CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned())
    }
}

impl Drop for XenStoreHandle {
    fn drop(&mut self) {
        // SAFETY: opened by xs_open, closed once.
        unsafe { sys::xs_close(self.xsh.as_ptr()) };
    }
}
