//! A store in a local directory (see `layout`): what `pack` writes, what
//! `serve` publishes, and a source for clients on the same host.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ChunkCheck, ChunkStore, FrameCheck, StoreError};
use crate::chunk::{ChunkId, ChunkRef, Compression};
use crate::layout;

#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
}

/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl DirStore {
    /// Opens (without creating) a store directory.
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Opens a store, creating its directories.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let store = Self::open(root);
        fs::create_dir_all(store.root.join(layout::CHUNK_DIR))?;
        fs::create_dir_all(store.root.join(layout::INDEX_DIR))?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn chunk_file(&self, id: &ChunkId, compression: Compression) -> PathBuf {
        self.root.join(layout::chunk_path(id, compression))
    }

    /// Where `chunk`'s stored object (either format) is.
    pub fn object_file(&self, chunk: &ChunkRef) -> PathBuf {
        self.root.join(chunk.path())
    }

    pub fn index_file(&self, name: &str) -> PathBuf {
        self.root.join(layout::index_path(name))
    }

    pub fn contains(&self, id: &ChunkId, compression: Compression) -> bool {
        self.chunk_file(id, compression).is_file()
    }

    /// Stores a chunk's stored form. Atomic (temporary file, then rename):
    /// a crash never leaves a partial chunk under its final name.
    pub fn put_chunk(
        &self,
        id: &ChunkId,
        compression: Compression,
        stored: &[u8],
        durable: bool,
    ) -> io::Result<()> {
        let path = self.chunk_file(id, compression);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, stored, durable)
    }

    /// Stores a chunk's stored object (either format), atomically.
    pub fn put_object(&self, chunk: &ChunkRef, stored: &[u8], durable: bool) -> io::Result<()> {
        let path = self.object_file(chunk);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, stored, durable)
    }

    /// Replaces an image's index atomically and durably.
    pub fn put_index(&self, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        let path = self.index_file(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, bytes, true)?;
        Ok(path)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most `limit` bytes of a file; `Ok(None)` if it is larger.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = fs::File::open(path)?;
    let mut out = Vec::new();
    file.take(limit + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

impl ChunkStore for DirStore {
    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt as _;
        let path = self.object_file(chunk);
        let range = check.stored_range();
        let mut stored = vec![0u8; (range.end - range.start) as usize];
        let read =
            fs::File::open(&path).and_then(|file| file.read_exact_at(&mut stored, range.start));
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    chunk: chunk.id,
                    source_name: self.root.display().to_string(),
                })
            }
            // A short object is a bad copy, not an outage.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(StoreError::Corrupt {
                    chunk: chunk.id,
                    source_name: self.root.display().to_string(),
                    source: crate::chunk::ChunkError::Frames(format!(
                        "object shorter than its frames ({} bytes needed)",
                        range.end
                    )),
                })
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        check
            .check(chunk, range.start, &stored)
            .map_err(|source| StoreError::Corrupt {
                chunk: chunk.id,
                source_name: self.root.display().to_string(),
                source,
            })
    }

    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        let path = self.object_file(chunk);
        let source_name = || self.root.display().to_string();
        let stored = match read_bounded(&path, chunk.max_stored_len()) {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                return Err(StoreError::Corrupt {
                    chunk: chunk.id,
                    source_name: source_name(),
                    source: crate::chunk::ChunkError::StoredTooLarge {
                        len: fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX),
                        max: chunk.max_stored_len(),
                    },
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    chunk: chunk.id,
                    source_name: source_name(),
                })
            }
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        check
            .check(chunk, &stored)
            .map_err(|source| StoreError::Corrupt {
                chunk: chunk.id,
                source_name: source_name(),
                source,
            })
    }
}
