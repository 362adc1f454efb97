//! A block device, whatever serves it: the trait a backend (the NBD server
//! today, a Xen blkif backend later) drives, its protocol-neutral errors, and
//! the disk cas-blk serves: a verified image, optionally with a
//! copy-on-write overlay taking the writes.
//!
//! ```text
//! backend (NBD, blkif)  --BlockDevice-->  CowDisk: Overlay (writes, 4 KiB blocks)
//!                                                  \-> ImageReader -> VerifyingStore<...>
//! ```

use std::fmt;
use std::sync::Mutex;

use crate::overlay::{Overlay, OverlayError, BLOCK_SIZE};
use crate::reader::{ImageReader, ReadError};
use crate::store::{self, ChunkStore};

/// What a backend needs from a disk. Offsets and lengths are in bytes;
/// a backend checks them against [`BlockDevice::size`] before asking (the
/// disk checks again and answers [`DiskErrorKind::OutOfRange`]).
pub trait BlockDevice: Send + Sync + fmt::Debug {
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError>;
    /// Makes every write completed so far durable.
    fn flush(&self) -> Result<(), DiskError>;
}

/// Why a request failed, in terms every backend can map to its protocol:
/// NBD answers an errno, blkif a `BLKIF_RSP_*` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskErrorKind {
    /// The request reaches past the end of the disk.
    OutOfRange,
    /// A write to a read-only disk.
    ReadOnly,
    /// No source had the data in good shape (a copy that failed
    /// verification): the disk refuses rather than return wrong bytes.
    Integrity,
    /// Any other failure to read or write: an outage, a missing chunk, the
    /// overlay file.
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("the disk is read-only")]
    ReadOnly,
}

impl DiskError {
    pub fn kind(&self) -> DiskErrorKind {
        match self {
            Self::Read(ReadError::OutOfRange { .. }) => DiskErrorKind::OutOfRange,
            Self::Read(ReadError::Chunk { source, .. })
                if source.kind() == store::ErrorKind::Corrupt =>
            {
                DiskErrorKind::Integrity
            }
            Self::Read(_) | Self::Overlay(_) => DiskErrorKind::Io,
            Self::ReadOnly => DiskErrorKind::ReadOnly,
        }
    }
}

/// An image read through its verifying store, with writes going to an
/// overlay (4 KiB blocks; a partial block is completed from the image).
/// Without an overlay the disk is read-only.
#[derive(Debug)]
pub struct CowDisk<S: ChunkStore + 'static> {
    reader: ImageReader<S>,
    overlay: Option<Overlay>,
    /// Writes are serialised: two partial writes to one new block must not
    /// both start from the base's content.
    write_lock: Mutex<()>,
}

impl<S: ChunkStore + 'static> CowDisk<S> {
    pub fn new(reader: ImageReader<S>, overlay: Option<Overlay>) -> Self {
        Self {
            reader,
            overlay,
            write_lock: Mutex::new(()),
        }
    }

    pub fn reader(&self) -> &ImageReader<S> {
        &self.reader
    }

    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// One block's current content (overlay, else image) into `dst`.
    fn current_block(
        &self,
        overlay: &Overlay,
        block: u64,
        dst: &mut [u8],
    ) -> Result<(), DiskError> {
        if overlay.is_written(block) {
            overlay.read_data(block * BLOCK_SIZE, dst)?;
        } else {
            self.reader.read_at(block * BLOCK_SIZE, dst)?;
        }
        Ok(())
    }
}

impl<S: ChunkStore + 'static> BlockDevice for CowDisk<S> {
    fn size(&self) -> u64 {
        self.reader.size()
    }

    fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let Some(overlay) = &self.overlay else {
            return Ok(self.reader.read_at(offset, buf)?);
        };
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= self.size())
            .ok_or(ReadError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: self.size(),
            })?;
        // Runs of blocks alike (all written, or none) in one read each.
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK_SIZE;
            let written = overlay.is_written(block);
            let mut next = block + 1;
            while next * BLOCK_SIZE < end && overlay.is_written(next) == written {
                next += 1;
            }
            let run_end = (next * BLOCK_SIZE).min(end);
            let dst = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if written {
                overlay.read_data(pos, dst)?;
            } else {
                self.reader.read_at(pos, dst)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let Some(overlay) = &self.overlay else {
            return Err(DiskError::ReadOnly);
        };
        let size = self.size();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= size)
            .ok_or(ReadError::OutOfRange {
                offset,
                len: data.len() as u64,
                size,
            })?;
        if data.is_empty() {
            return Ok(());
        }
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let span_start = first * BLOCK_SIZE;
        let span_end = ((last + 1) * BLOCK_SIZE).min(size);
        let mut span = vec![0u8; (span_end - span_start) as usize];
        if offset > span_start {
            let len = (BLOCK_SIZE.min(span_end - span_start)) as usize;
            self.current_block(overlay, first, &mut span[..len])?;
        }
        let tail_start = last * BLOCK_SIZE;
        if end < span_end && !(last == first && offset > span_start) {
            let from = (tail_start - span_start) as usize;
            self.current_block(overlay, last, &mut span[from..])?;
        }
        span[(offset - span_start) as usize..(end - span_start) as usize].copy_from_slice(data);
        overlay.write_blocks(first, &span)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        match &self.overlay {
            Some(overlay) => Ok(overlay.flush()?),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chunk::Compression;
    use crate::keys::SecretKey;
    use crate::overlay::OverlayBase;
    use crate::pack::{self, PackOptions};
    use crate::store::{DirStore, VerifyingStore};
    use crate::Index;

    const CHUNK: usize = 16 * 1024;

    /// A four-chunk image (chunk k filled with k + 1) packed in `dir/store`.
    fn packed(dir: &std::path::Path) -> (Vec<u8>, Index) {
        let image: Vec<u8> = (0..4u8)
            .flat_map(|k| std::iter::repeat_n(k + 1, CHUNK))
            .collect();
        std::fs::write(dir.join("image"), &image).unwrap();
        let key = SecretKey::generate().unwrap();
        let opts = PackOptions {
            name: "img".into(),
            chunk_size: "16K".parse().unwrap(),
            compression: Compression::Zstd,
            threads: 1,
            durable: false,
            // Format 2, four frames per chunk.
            frame_shift: Some(12),
        };
        let store = DirStore::open(dir.join("store"));
        pack::pack(&dir.join("image"), &store, &key, &opts, &|_| {}).unwrap();
        let bytes = std::fs::read(store.index_file("img")).unwrap();
        (image, Index::parse_verified(&bytes, &key.public()).unwrap())
    }

    /// The disk as a backend sees it: a trait object, nothing more.
    fn device(dir: &std::path::Path, index: &Index, overlay: bool) -> Arc<dyn BlockDevice> {
        let reader = ImageReader::new(
            Arc::new(index.clone()),
            VerifyingStore::new(DirStore::open(dir.join("store"))),
        );
        let overlay = overlay.then(|| {
            let base = OverlayBase {
                name: index.name.clone(),
                generation: index.generation,
                image_size: index.image_size,
            };
            Overlay::open_or_create(&dir.join("disk.ovl"), &base).unwrap()
        });
        Arc::new(CowDisk::new(reader, overlay))
    }

    #[test]
    fn a_backend_drives_the_disk_through_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let (mut image, index) = packed(dir.path());
        let disk = device(dir.path(), &index, true);
        assert_eq!(disk.size(), image.len() as u64);
        assert!(!disk.read_only());
        let mut all = vec![0u8; image.len()];
        disk.read_at(0, &mut all).unwrap();
        assert!(all == image);

        // A write across a chunk boundary, not block-aligned, then flushed.
        let at = CHUNK - 100;
        disk.write_at(at as u64, &[0xee; 300]).unwrap();
        image[at..at + 300].fill(0xee);
        disk.flush().unwrap();
        disk.read_at(0, &mut all).unwrap();
        assert!(all == image);
        drop(disk);
        // Durable: a disk opened anew on the overlay reads the same.
        let again = device(dir.path(), &index, true);
        again.read_at(0, &mut all).unwrap();
        assert!(all == image);

        let mut past = [0u8; 2];
        let err = again.read_at(again.size() - 1, &mut past).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::OutOfRange);
        let err = again.write_at(again.size(), &[1]).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::OutOfRange);

        let read_only = device(dir.path(), &index, false);
        assert!(read_only.read_only());
        let err = read_only.write_at(0, &[1]).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::ReadOnly);
        read_only.flush().unwrap();
    }

    #[test]
    fn bad_chunks_are_integrity_errors_and_missing_ones_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (image, index) = packed(dir.path());
        let store = DirStore::open(dir.path().join("store"));
        // Chunk 1's frames decompress fine, to other content than the
        // index's digests.
        let mut wrong = image[CHUNK..2 * CHUNK].to_vec();
        wrong[7] ^= 1;
        let chunk1 = store.object_file(&index.chunk_ref(1).unwrap());
        let (stored, _) = crate::chunk::compress_frames(index.compression, &wrong, 12).unwrap();
        std::fs::write(&chunk1, stored).unwrap();
        // Chunk 2 is gone.
        let chunk2 = store.object_file(&index.chunk_ref(2).unwrap());
        std::fs::remove_file(chunk2).unwrap();

        let disk = device(dir.path(), &index, false);
        let mut buf = vec![0u8; 4096];
        let err = disk.read_at(CHUNK as u64, &mut buf).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::Integrity, "{err:?}");
        assert!(buf.iter().all(|&b| b == 0), "no wrong byte was returned");
        let err = disk.read_at(2 * CHUNK as u64, &mut buf).unwrap_err();
        assert_eq!(err.kind(), DiskErrorKind::Io, "{err:?}");
        disk.read_at(3 * CHUNK as u64, &mut buf).unwrap();
        assert!(buf == image[3 * CHUNK..3 * CHUNK + 4096]);
    }
}
