//! errno capture. Call [`last`] as the very next thing after the FFI call
//! that failed: logging or allocating first could overwrite it.

use circ_hv::{Errno, HvError};

/// The calling thread's errno.
pub(crate) fn last() -> Errno {
    // EIO if, against the libraries' contract, errno was left at 0.
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .filter(|e| *e != 0)
            .unwrap_or(libc::EIO),
    )
}

/// An [`HvError`] from the current errno.
pub(crate) fn error(what: impl Into<std::borrow::Cow<'static, str>>) -> HvError {
    let errno = last();
    HvError::os(what, errno)
}
