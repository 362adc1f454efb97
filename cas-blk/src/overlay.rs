//! The copy-on-write overlay: where writes to a served image go.
//!
//! One sparse file, 4 KiB-granular (the page size and the usual block size
//! of guest file systems, so a guest write never needs a read of the base):
//!
//! ```text
//! 0      4096-byte header: magic "CIRCOVL\n", version u16 = 1, block shift u8 = 12,
//!        0 u8, 0 u32, image size u64, base generation u64, base name length u8,
//!        base name (little-endian, as the index)
//! 4096   bitmap: bit i (byte i/8, least significant bit first) = block i written;
//!        padded to a multiple of 4096
//! D      data: block i at D + i * 4096 (holes where nothing was written)
//! ```
//!
//! Durability: a written block's data goes to the file at once, but its bit
//! reaches the file only on [`Overlay::flush`], after the data has been
//! synced. After a crash every block is either its last flushed content or
//! the base's: never a bit without its data.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::layout;

pub const MAGIC: &[u8; 8] = b"CIRCOVL\n";
pub const VERSION: u16 = 1;
/// Overlay block size: 4 KiB.
pub const BLOCK_SHIFT: u8 = 12;
pub const BLOCK_SIZE: u64 = 1 << BLOCK_SHIFT;
const HEADER_LEN: u64 = 4096;

/// The image an overlay's blocks are a difference against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayBase {
    pub name: String,
    pub generation: u64,
    pub image_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("cannot access overlay {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a cas-blk overlay: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "overlay {path} holds changes to `{}` generation {} ({} bytes), not to `{}` generation {} ({} bytes)",
        .found.name, .found.generation, .found.image_size,
        .wanted.name, .wanted.generation, .wanted.image_size
    )]
    OtherBase {
        path: PathBuf,
        found: OverlayBase,
        wanted: OverlayBase,
    },
}

#[derive(Debug)]
struct Bitmap {
    bits: Vec<u8>,
    /// Bitmap pages (4 KiB) changed in memory since the last flush.
    dirty: BTreeSet<usize>,
}

#[derive(Debug)]
pub struct Overlay {
    path: PathBuf,
    file: File,
    base: OverlayBase,
    data_start: u64,
    bitmap: Mutex<Bitmap>,
}

fn block_count(image_size: u64) -> u64 {
    image_size.div_ceil(BLOCK_SIZE)
}

fn bitmap_len(image_size: u64) -> u64 {
    block_count(image_size).div_ceil(8)
}

fn data_start(image_size: u64) -> u64 {
    HEADER_LEN + bitmap_len(image_size).div_ceil(HEADER_LEN) * HEADER_LEN
}

impl Overlay {
    /// Opens the overlay at `path` for `base`, creating it if absent.
    /// An existing overlay made for another base is refused.
    pub fn open_or_create(path: &Path, base: &OverlayBase) -> Result<Self, OverlayError> {
        match Self::open(path) {
            Ok(overlay) if overlay.base == *base => Ok(overlay),
            Ok(overlay) => Err(OverlayError::OtherBase {
                path: path.to_owned(),
                found: overlay.base,
                wanted: base.clone(),
            }),
            Err(OverlayError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(path, base)
            }
            Err(e) => Err(e),
        }
    }

    fn create(path: &Path, base: &OverlayBase) -> Result<Self, OverlayError> {
        let io_err = |source| OverlayError::Io {
            path: path.to_owned(),
            source,
        };
        layout::validate_name(&base.name).map_err(|reason| OverlayError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err)?;
        let mut header = vec![0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        header[10] = BLOCK_SHIFT;
        header[16..24].copy_from_slice(&base.image_size.to_le_bytes());
        header[24..32].copy_from_slice(&base.generation.to_le_bytes());
        // validate_name bounds it to 128 bytes.
        header[32] = base.name.len() as u8;
        header[33..33 + base.name.len()].copy_from_slice(base.name.as_bytes());
        let start = data_start(base.image_size);
        file.set_len(start + block_count(base.image_size) * BLOCK_SIZE)
            .and_then(|()| file.write_all_at(&header, 0))
            .and_then(|()| file.sync_all())
            .map_err(io_err)?;
        tracing::info!(path = %path.display(), name = base.name, generation = base.generation, "overlay created");
        Ok(Self {
            path: path.to_owned(),
            file,
            base: base.clone(),
            data_start: start,
            bitmap: Mutex::new(Bitmap {
                bits: vec![0; bitmap_len(base.image_size) as usize],
                dirty: BTreeSet::new(),
            }),
        })
    }

    /// Opens an existing overlay (for `commit`, or to go on writing).
    pub fn open(path: &Path) -> Result<Self, OverlayError> {
        let io_err = |source| OverlayError::Io {
            path: path.to_owned(),
            source,
        };
        let invalid = |reason: &str| OverlayError::Invalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < HEADER_LEN {
            return Err(invalid("shorter than its header"));
        }
        let mut header = vec![0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0).map_err(io_err)?;
        if &header[..8] != MAGIC {
            return Err(invalid("bad magic"));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if u16::from_le_bytes([header[8], header[9]]) != VERSION || header[10] != BLOCK_SHIFT {
            return Err(invalid("unsupported version or block size"));
        }
        let image_size = u64_at(16);
        let generation = u64_at(24);
        let name_len = usize::from(header[32]);
        let name = std::str::from_utf8(&header[33..33 + name_len])
            .map_err(|_| invalid("base name is not UTF-8"))?
            .to_owned();
        layout::validate_name(&name).map_err(|r| invalid(&r))?;
        let start = data_start(image_size);
        if len < start {
            return Err(invalid("shorter than its bitmap"));
        }
        let mut bits = vec![0u8; bitmap_len(image_size) as usize];
        file.read_exact_at(&mut bits, HEADER_LEN).map_err(io_err)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            base: OverlayBase {
                name,
                generation,
                image_size,
            },
            data_start: start,
            bitmap: Mutex::new(Bitmap {
                bits,
                dirty: BTreeSet::new(),
            }),
        })
    }

    pub fn base(&self) -> &OverlayBase {
        &self.base
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn block_count(&self) -> u64 {
        block_count(self.base.image_size)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bitmap> {
        self.bitmap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether block `i` was written (including writes not yet flushed).
    pub fn is_written(&self, block: u64) -> bool {
        let bits = &self.lock().bits;
        bits.get((block / 8) as usize)
            .is_some_and(|b| b & (1 << (block % 8)) != 0)
    }

    /// Blocks written so far.
    pub fn written_blocks(&self) -> u64 {
        self.lock()
            .bits
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum()
    }

    fn io_err(&self, source: io::Error) -> OverlayError {
        OverlayError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads `buf.len()` bytes of written block data at image `offset`
    /// (callers check that the blocks covering it are written).
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), OverlayError> {
        self.file
            .read_exact_at(buf, self.data_start + offset)
            .map_err(|e| self.io_err(e))
    }

    /// Writes whole blocks starting at block `first` (the last may be short
    /// at the image's end) and marks them written.
    pub fn write_blocks(&self, first: u64, data: &[u8]) -> Result<(), OverlayError> {
        self.file
            .write_all_at(data, self.data_start + first * BLOCK_SIZE)
            .map_err(|e| self.io_err(e))?;
        let mut bitmap = self.lock();
        let blocks = (data.len() as u64).div_ceil(BLOCK_SIZE);
        for block in first..first + blocks {
            let byte = (block / 8) as usize;
            if let Some(b) = bitmap.bits.get_mut(byte) {
                *b |= 1 << (block % 8);
                bitmap.dirty.insert(byte / HEADER_LEN as usize);
            }
        }
        Ok(())
    }

    /// Makes every write so far durable: data first, then the bits.
    pub fn flush(&self) -> Result<(), OverlayError> {
        self.file.sync_data().map_err(|e| self.io_err(e))?;
        let mut bitmap = self.lock();
        if bitmap.dirty.is_empty() {
            return Ok(());
        }
        let page = HEADER_LEN as usize;
        for p in std::mem::take(&mut bitmap.dirty) {
            let start = p * page;
            let end = (start + page).min(bitmap.bits.len());
            self.file
                .write_all_at(&bitmap.bits[start..end], HEADER_LEN + start as u64)
                .map_err(|e| self.io_err(e))?;
        }
        self.file.sync_data().map_err(|e| self.io_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> OverlayBase {
        OverlayBase {
            name: "img".into(),
            generation: 3,
            image_size: 10 * BLOCK_SIZE + 100,
        }
    }

    #[test]
    fn bits_persist_only_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovl");
        let ovl = Overlay::open_or_create(&path, &base()).unwrap();
        assert_eq!(ovl.block_count(), 11);
        ovl.write_blocks(2, &[7u8; 2 * BLOCK_SIZE as usize])
            .unwrap();
        // The short last block.
        ovl.write_blocks(10, &[9u8; 100]).unwrap();
        assert!(ovl.is_written(2) && ovl.is_written(3) && ovl.is_written(10));
        assert!(!ovl.is_written(1) && !ovl.is_written(4));
        // Not flushed: a reopen sees nothing.
        assert_eq!(Overlay::open(&path).unwrap().written_blocks(), 0);
        ovl.flush().unwrap();
        drop(ovl);
        let again = Overlay::open_or_create(&path, &base()).unwrap();
        assert_eq!(again.written_blocks(), 3);
        let mut buf = [0u8; 100];
        again.read_data(10 * BLOCK_SIZE, &mut buf).unwrap();
        assert_eq!(buf, [9u8; 100]);
        again.read_data(3 * BLOCK_SIZE + 5, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 100]);
    }

    #[test]
    fn refuses_another_base_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovl");
        drop(Overlay::open_or_create(&path, &base()).unwrap());
        let mut newer = base();
        newer.generation = 4;
        assert!(matches!(
            Overlay::open_or_create(&path, &newer),
            Err(OverlayError::OtherBase { .. })
        ));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![1u8; 8192]).unwrap();
        assert!(matches!(
            Overlay::open(&junk),
            Err(OverlayError::Invalid { .. })
        ));
        std::fs::write(&junk, b"CIRCOVL\n").unwrap();
        assert!(matches!(
            Overlay::open(&junk),
            Err(OverlayError::Invalid { .. })
        ));
    }
}
