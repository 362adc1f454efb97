//! Byte-range reads of an image through a verifying store.
//!
//! Used by `circ cas cat`, the NBD server and benchmarks alike. A few
//! recently decoded chunks are kept in memory so that small sequential reads
//! (4 KiB from a block device) do not decompress a 256 KiB chunk each time.
//! A read spanning several chunks fetches them in parallel: verifying and
//! decompressing a chunk is CPU work (collision-detecting SHA-1 dominates),
//! and a cold fetch waits on the network.

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::chunk::ChunkId;
use crate::index::IndexV1;
use crate::store::{ChunkStore, StoreError, VerifyingStore};

/// Decoded chunks kept in memory.
const RECENT_CHUNKS: usize = 8;
/// Chunks of one `read_at` fetched at once (a 4 MiB read spans sixteen
/// 256 KiB chunks).
const SPAN_PARALLEL: usize = 4;

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
        self.remember(i, Arc::clone(&data));
        Ok(data)
    }

    fn remember(&self, i: usize, data: Arc<Vec<u8>>) {
        let mut recent = self.lock_recent();
        if let Some(pos) = recent.iter().position(|(idx, _)| *idx == i) {
            recent.remove(pos);
        }
        if recent.len() >= RECENT_CHUNKS {
            recent.remove(0);
        }
        recent.push((i, data));
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
        if buf.is_empty() {
            return Ok(());
        }
        let shift = self.index.chunk_size.shift();
        let chunk_bytes = u64::from(self.index.chunk_size.bytes());
        let first = (offset >> shift) as usize;
        let last = ((offset + len - 1) >> shift) as usize;
        let span = self.span(first, last)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos >> shift) as usize;
            let within = (pos & (chunk_bytes - 1)) as usize;
            let want = (buf.len() - done).min(chunk_bytes as usize - within);
            let dst = &mut buf[done..done + want];
            match &span[i - first] {
                None => dst.fill(0),
                Some(data) => dst.copy_from_slice(&data[within..within + want]),
            }
            done += want;
        }
        Ok(())
    }

    /// Contents of chunks `first..=last` (`None`: all-zero), those not in
    /// memory fetched in parallel; the first failure in image order wins.
    fn span(&self, first: usize, last: usize) -> Result<Vec<Option<Arc<Vec<u8>>>>, ReadError> {
        let mut span = Vec::with_capacity(last - first + 1);
        let mut missing = Vec::new();
        for i in first..=last {
            let held = match self.index.chunks[i] {
                None => None,
                Some(_) => {
                    let hit = self.recent_lookup(i);
                    if hit.is_none() {
                        missing.push(i);
                    }
                    hit
                }
            };
            span.push(held);
        }
        if let [only] = missing[..] {
            span[only - first] = Some(self.chunk(only)?);
            return Ok(span);
        }
        for (i, result) in missing.iter().zip(self.fetch_many(&missing, SPAN_PARALLEL)) {
            let data = Arc::new(result?);
            self.remember(*i, Arc::clone(&data));
            span[i - first] = Some(data);
        }
        Ok(span)
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
            let batch: Vec<usize> = (start..end).collect();
            for data in self.fetch_many(&batch, parallel) {
                out.write_all(&data?).map_err(ReadError::Output)?;
            }
            start = end;
        }
        out.flush().map_err(ReadError::Output)
    }

    /// Fetches chunks `indices` with up to `parallel` threads; results in
    /// the same order.
    fn fetch_many(&self, indices: &[usize], parallel: usize) -> Vec<ChunkResult> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<ChunkResult>>> =
            indices.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1).min(indices.len()) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = indices.get(k) else { break };
                    let result = self.fetch_uncached(i);
                    *slots[k]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
                });
            }
        });
        slots
            .into_iter()
            .zip(indices)
            .map(|(slot, i)| {
                slot.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .unwrap_or_else(|| {
                        // Only if a worker panicked; report it as a failed read.
                        Err(ReadError::Output(io::Error::other(format!(
                            "chunk {i} was not fetched"
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
