//! Serving an image to a block device over NBD (`circ cas nbd`).
//!
//! ```text
//! NbdServer (handshake, requests)  ->  CowDisk: Overlay (writes, 4 KiB blocks)
//!                                              \-> ImageReader -> VerifyingStore<CacheStore<...>>
//! ```
//! Reads of blocks never written come from the verified image: a chunk no
//! source has in good shape fails that request with `EIO`, nothing else.

pub mod commit;
pub mod disk;
pub mod overlay;
pub mod proto;
pub mod server;

use std::path::Path;

pub use disk::{BlockDevice, CowDisk, DiskError};
pub use overlay::{Overlay, OverlayBase, OverlayError};
pub use server::{NbdError, NbdServer};

use crate::client::{self, BootFiles, OpenError, OpenOptions};
use crate::store::ChunkStore;

#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
}

/// Opens the image at `opts` as a disk: writable through the overlay at
/// `overlay` (created if absent), read-only without one. Also returns the
/// image's boot prefetch list, for the caller to run.
pub fn open_disk(
    opts: &OpenOptions,
    overlay: Option<&Path>,
) -> Result<(CowDisk<Box<dyn ChunkStore>>, BootFiles), DiskOpenError> {
    let image = client::open(opts)?;
    let overlay = match overlay {
        Some(path) => {
            let index = image.reader.index();
            let base = OverlayBase {
                name: index.name.clone(),
                generation: index.generation,
                image_size: index.image_size,
            };
            Some(Overlay::open_or_create(path, &base)?)
        }
        None => None,
    };
    Ok((CowDisk::new(image.reader, overlay), image.boot))
}
