//! One error type for everything behind the traits: what failed, in words,
//! plus an [`ErrorKind`] that callers branch on.

use std::borrow::Cow;
use std::fmt;

use crate::ShareSide;

/// A raw `errno` value as returned by a Xen library call or a hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        std::io::Error::from_raw_os_error(self.0).fmt(f)
    }
}

impl std::error::Error for Errno {}

/// What callers can do about an error; derived from the errno by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No such domain, path, gfn or port (`ENOENT`, `ESRCH`).
    NotFound,
    /// Not privileged, or XSM said no (`EPERM`, `EACCES`).
    PermissionDenied,
    /// Try again later: the page is still referenced elsewhere (`E2BIG` from
    /// nominate), a xenstore transaction conflicted (`EAGAIN`), `EBUSY`.
    Busy,
    /// The hypervisor lacks the feature (`ENOSYS`, `EOPNOTSUPP`), e.g. memory
    /// sharing in a Xen built without `CONFIG_MEM_SHARING`.
    NotSupported,
    /// Xen rejected an argument (`EINVAL`), or the caller's input was bad.
    InvalidInput,
    /// A memory-sharing handle was invalidated (the page changed after it was
    /// nominated), on this side of the share; nominate again.
    StaleHandle(ShareSide),
    /// Anything else, with the errno if there was one.
    Other(Option<i32>),
}

impl ErrorKind {
    pub fn from_errno(errno: Errno) -> Self {
        match errno.0 {
            libc::ENOENT | libc::ESRCH => ErrorKind::NotFound,
            libc::EPERM | libc::EACCES => ErrorKind::PermissionDenied,
            libc::E2BIG | libc::EAGAIN | libc::EBUSY => ErrorKind::Busy,
            libc::ENOSYS | libc::EOPNOTSUPP => ErrorKind::NotSupported,
            libc::EINVAL => ErrorKind::InvalidInput,
            other => ErrorKind::Other(Some(other)),
        }
    }
}

/// A failed hypervisor, xenstore or foreign-memory operation.
///
/// `Display` says what was attempted ("failed to pause domain 3"); the errno,
/// if any, is the `source()`, so `{:#}` in anyhow prints both once.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct HvError {
    what: Cow<'static, str>,
    kind: ErrorKind,
    #[source]
    errno: Option<Errno>,
}

impl HvError {
    /// An error reported by a call through `errno`.
    pub fn os(what: impl Into<Cow<'static, str>>, errno: Errno) -> Self {
        Self {
            what: what.into(),
            kind: ErrorKind::from_errno(errno),
            errno: Some(errno),
        }
    }

    /// An error with a kind decided by the caller, e.g. when one call's errno
    /// means something specific (`XENMEM_SHARING_OP_*_HANDLE_INVALID`).
    pub fn with_kind(
        what: impl Into<Cow<'static, str>>,
        kind: ErrorKind,
        errno: Option<Errno>,
    ) -> Self {
        Self {
            what: what.into(),
            kind,
            errno,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_kind() {
        let cases = [
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::ESRCH, ErrorKind::NotFound),
            (libc::EPERM, ErrorKind::PermissionDenied),
            (libc::EACCES, ErrorKind::PermissionDenied),
            (libc::E2BIG, ErrorKind::Busy),
            (libc::EAGAIN, ErrorKind::Busy),
            (libc::ENOSYS, ErrorKind::NotSupported),
            (libc::EOPNOTSUPP, ErrorKind::NotSupported),
            (libc::EINVAL, ErrorKind::InvalidInput),
            (libc::ENOMEM, ErrorKind::Other(Some(libc::ENOMEM))),
        ];
        for (errno, kind) in cases {
            assert_eq!(ErrorKind::from_errno(Errno(errno)), kind, "errno {errno}");
        }
    }

    #[test]
    fn message_does_not_repeat_source() {
        let err = HvError::os("failed to pause domain 3", Errno(libc::ESRCH));
        assert_eq!(err.to_string(), "failed to pause domain 3");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("No such process (os error 3)"));
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
