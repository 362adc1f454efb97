//! Serving a [`BlockDevice`](crate::disk::BlockDevice) over NBD (`circ cas nbd`).
//!
//! ```text
//! NbdServer (handshake, requests)  ->  dyn BlockDevice (a CowDisk in `circ cas nbd`)
//! ```
//! A request the disk fails gets the errno of its [`DiskErrorKind`]: a chunk
//! no source has in good shape fails that request with `EIO`, nothing else.

pub mod proto;
pub mod server;

pub use server::{NbdError, NbdServer, StopHandle};

use crate::disk::DiskErrorKind;

/// The NBD error a client gets for a failed request.
pub fn errno(kind: DiskErrorKind) -> u32 {
    match kind {
        DiskErrorKind::OutOfRange => proto::EINVAL,
        DiskErrorKind::ReadOnly => proto::EPERM,
        DiskErrorKind::Integrity | DiskErrorKind::Io => proto::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_errno() {
        assert_eq!(errno(DiskErrorKind::OutOfRange), 22);
        assert_eq!(errno(DiskErrorKind::ReadOnly), 1);
        assert_eq!(errno(DiskErrorKind::Integrity), 5);
        assert_eq!(errno(DiskErrorKind::Io), 5);
    }
}
