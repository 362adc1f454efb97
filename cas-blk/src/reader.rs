//! Byte-range reads of an image through a verifying store.
//!
//! Used by `circ cas cat`, the NBD server and benchmarks alike. A few
//! recently decoded chunks are kept in memory so that small sequential reads
//! (4 KiB from a block device) do not decompress a 256 KiB chunk each time.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::chunk::ChunkId;
use crate::index::IndexV1;
use crate::store::{ChunkStore, StoreError, VerifyingStore};

/// Decoded chunks kept in memory.
const RECENT_CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read of {len} bytes at {offset} is beyond the image's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("cannot read chunk {index} of the image")]
    Chunk {
        index: usize,
        #[source]
        source: StoreError,
    },
    #[error("cannot write the image out")]
    Output(#[source] io::Error),
}

type ChunkResult = Result<Vec<u8>, ReadError>;

#[derive(Debug)]
pub struct ImageReader<S> {
    index: Arc<IndexV1>,
    store: VerifyingStore<S>,
    /// Most recent last.
    recent: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
}

/// A chunk that no source could supply in good shape.
#[derive(Debug)]
pub struct BadChunk {
    pub index: usize,
    pub id: ChunkId,
    pub error: StoreError,
}

impl<S: ChunkStore> ImageReader<S> {
    pub fn new(index: Arc<IndexV1>, store: VerifyingStore<S>) -> Self {
        Self {
            index,
            store,
            recent: Mutex::new(Vec::with_capacity(RECENT_CHUNKS)),
        }
    }

    pub fn index(&self) -> &IndexV1 {
        &self.index
    }

    pub fn store(&self) -> &VerifyingStore<S> {
        &self.store
    }

    pub fn size(&self) -> u64 {
        self.index.image_size
    }

    /// Verified content of chunk `i` (zeros for an all-zero chunk).
    pub fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, ReadError> {
        if let Some(hit) = self.recent_lookup(i) {
            return Ok(hit);
        }
        let data = Arc::new(self.fetch_uncached(i)?);
        let mut recent = self.lock_recent();
        if recent.len() >= RECENT_CHUNKS {
            recent.remove(0);
        }
        recent.push((i, Arc::clone(&data)));
        Ok(data)
    }

    fn recent_lookup(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let mut recent = self.lock_recent();
        let pos = recent.iter().position(|(idx, _)| *idx == i)?;
        let entry = recent.remove(pos);
        let data = Arc::clone(&entry.1);
        recent.push(entry);
        Some(data)
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, Vec<(usize, Arc<Vec<u8>>)>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fetch_uncached(&self, i: usize) -> Result<Vec<u8>, ReadError> {
        match self.index.chunk_ref(i) {
            Some(chunk) => self
                .store
                .read_chunk(&chunk)
                .map_err(|source| ReadError::Chunk { index: i, source }),
            None => Ok(vec![0u8; self.index.chunk_len(i) as usize]),
        }
    }

    /// Fills `buf` from `offset`; the whole range must lie in the image.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ReadError::OutOfRange { offset, len, size });
        }
        let shift = self.index.chunk_size.shift();
        let chunk_bytes = u64::from(self.index.chunk_size.bytes());
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos >> shift) as usize;
            let within = (pos & (chunk_bytes - 1)) as usize;
            let want = (buf.len() - done).min(chunk_bytes as usize - within);
            let dst = &mut buf[done..done + want];
            if self.index.chunks[i].is_none() {
                dst.fill(0);
            } else {
                let data = self.chunk(i)?;
                dst.copy_from_slice(&data[within..within + want]);
            }
            done += want;
        }
        Ok(())
    }

    /// Writes the whole image to `out`, fetching up to `parallel` chunks at
    /// once ahead of the writer (network latency hides behind the others).
    pub fn write_all_to(&self, out: &mut dyn Write, parallel: usize) -> Result<(), ReadError> {
        let parallel = parallel.max(1);
        let count = self.index.chunk_count();
        let batch = parallel * 4;
        let mut start = 0;
        while start < count {
            let end = (start + batch).min(count);
            for data in self.fetch_batch(start, end, parallel) {
                out.write_all(&data?).map_err(ReadError::Output)?;
            }
            start = end;
        }
        out.flush().map_err(ReadError::Output)
    }

    fn fetch_batch(&self, start: usize, end: usize, parallel: usize) -> Vec<ChunkResult> {
        let next = AtomicUsize::new(start);
        let slots: Vec<Mutex<Option<ChunkResult>>> =
            (start..end).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..parallel.min(end - start) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    let result = self.fetch_uncached(i);
                    *slots[i - start]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
                });
            }
        });
        slots
            .into_iter()
            .enumerate()
            .map(|(k, slot)| {
                slot.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .unwrap_or_else(|| {
                        // Only if a worker panicked; report it as a failed read.
                        Err(ReadError::Output(io::Error::other(format!(
                            "chunk {} was not fetched",
                            start + k
                        ))))
                    })
            })
            .collect()
    }

    /// Fetches and verifies every distinct chunk; returns those that no
    /// source could supply in good shape.
    pub fn verify_all(&self, parallel: usize, progress: &(dyn Fn(u64) + Sync)) -> Vec<BadChunk> {
        let unique = self.index.unique_chunks();
        let positions: std::collections::HashMap<ChunkId, usize> = (0..self.index.chunk_count())
            .rev()
            .filter_map(|i| self.index.chunks[i].map(|id| (id, i)))
            .collect();
        let next = AtomicUsize::new(0);
        let bad = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(chunk) = unique.get(k) else { break };
                    if let Err(error) = self.store.read_chunk(chunk) {
                        bad.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(BadChunk {
                                index: positions.get(&chunk.id).copied().unwrap_or(0),
                                id: chunk.id,
                                error,
                            });
                    }
                    progress(u64::from(chunk.len));
                });
            }
        });
        let mut bad = bad
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bad.sort_by_key(|b| b.index);
        bad
    }
}
