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
pub struct CowDisk<S> {
    reader: ImageReader<S>,
    overlay: Option<Overlay>,
    /// Writes are serialised: two partial writes to one new block must not
    /// both start from the base's content.
    write_lock: Mutex<()>,
}

impl<S: ChunkStore> CowDisk<S> {
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

impl<S: ChunkStore> BlockDevice for CowDisk<S> {
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
