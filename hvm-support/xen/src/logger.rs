//! A xentoollog logger that sends the libraries' messages to `tracing` at
//! debug level instead of stderr.
//!
//! Every failure already comes back to the caller as a typed error with its
//! errno; the libraries' own "xc: error: ..." lines on stderr would only
//! duplicate it and break the CLI's one-line error contract.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, CStr};

use circ_xen_sys as sys;

struct Logger(UnsafeCell<sys::xentoollog_logger>);

// SAFETY: the libraries only read the function pointers of a logger they
// were given; nothing ever writes to it after initialization.
unsafe impl Sync for Logger {}

static LOGGER: Logger = Logger(UnsafeCell::new(sys::xentoollog_logger {
    vmessage: Some(vmessage),
    progress: None,
    destroy: None,
}));

/// The logger to pass to the libraries' `*_open` calls.
pub(crate) fn get() -> *mut sys::xentoollog_logger {
    LOGGER.0.get()
}

/// Logs the unformatted printf format: formatting a `va_list` portably is not
/// possible from Rust, and the format string alone names the failure.
unsafe extern "C" fn vmessage(
    _logger: *mut sys::xentoollog_logger,
    level: sys::xentoollog_level,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    _args: *mut sys::__va_list_tag,
) {
    // SAFETY: the libraries pass NUL-terminated strings (or NULL) that live
    // for the duration of the call.
    let text =
        |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy());
    tracing::debug!(
        level,
        errno = errnoval,
        context = text(context).as_deref().unwrap_or(""),
        "xen library: {}",
        text(format).as_deref().unwrap_or("")
    );
}
