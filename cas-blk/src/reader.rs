//! Byte-range reads of an image through a verifying store.
//!
//! Used by `circ cas cat`, the NBD server and benchmarks alike. Three tiers,
//! cheapest first:
//!
//! 1. a few recently decoded chunks kept in memory, so that small
//!    sequential reads do not fetch a chunk each time;
//! 2. chunks this process has verified whose plain copy sits in the local
//!    cache ([`ChunkStore::plain_file`]): the first time a chunk is verified
//!    (collision-detecting SHA-1 over all of it), a BLAKE3 digest of each of
//!    its 4 KiB blocks is kept in memory (16 bytes per block, 64 per
//!    256 KiB chunk); later reads take just the blocks they need from the
//!    file and check those digests, with no decompression and no SHA-1. The
//!    cache directory stays untrusted: a block whose digest differs sends
//!    the read down the slow path, which drops the bad copy and fetches
//!    anew;
//! 3. the slow path: the store fetches (cache, mirrors), decompresses and
//!    verifies the whole chunk. A read spanning several chunks fetches them
//!    in parallel: verifying and decompressing a chunk is CPU work
//!    (collision-detecting SHA-1 dominates), and a cold fetch waits on the
//!    network.
//!
//! Verification is per process: a restarted server verifies each chunk
//! again the first time it reads it.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::chunk::{self, ChunkFrames, ChunkId, ChunkRef};
use crate::index::Index;
use crate::store::{ChunkStore, PlainCopy, StoreError, VerifyingStore};

/// Decoded chunks kept in memory.
const RECENT_CHUNKS: usize = 8;
/// Chunks of one `read_at` fetched at once (a 4 MiB read spans sixteen
/// 256 KiB chunks).
const SPAN_PARALLEL: usize = 4;
/// Pieces of one read from verified copies worth a second thread (a 4 MiB
/// read spans sixteen 256 KiB chunks).
const PARALLEL_VERIFIED_MIN: usize = 4;
/// Format 2: frames fetched alone kept in memory (64 KiB frames: 4 MiB).
const RECENT_FRAMES: usize = 64;
/// Threads fetching ahead of sequential streams.
const AHEAD_THREADS: usize = 4;
/// Read-ahead window of a stream: starts at twice its read size (at least
/// this), doubles with each continuing read, up to `AHEAD_MAX_BYTES`.
const AHEAD_MIN_BYTES: u64 = 1 << 20;
const AHEAD_MAX_BYTES: u64 = 16 << 20;
/// Streams followed at once (a guest reading several files).
const AHEAD_STREAMS: usize = 8;
/// Decoded chunks fetched ahead and not yet read, at most: the largest
/// window twice over, so a window in flight never evicts the previous one.
const AHEAD_READY_BYTES: u64 = 2 * AHEAD_MAX_BYTES;
/// Granularity of the per-block digests of verified chunks.
const BLOCK: usize = 4096;

/// Truncated BLAKE3 of one block: 128 bits leave no room for a second
/// preimage, which is what tampering with the cache would need.
type BlockDigest = [u8; 16];

fn block_digest(block: &[u8]) -> BlockDigest {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(block).as_bytes()[..16]);
    out
}

/// A chunk whose plain copy in the local cache can be read piecewise,
/// each piece checked: format 1, a chunk this process verified (digests
/// it computed); format 2, any cached chunk (the index's frame digests).
#[derive(Debug)]
struct Verified {
    copy: PlainCopy,
    digests: Digests,
}

#[derive(Debug)]
enum Digests {
    /// Computed when this process verified the chunk (format 1).
    Learned {
        blocks: Box<[BlockDigest]>,
        /// Of the whole chunk: one BLAKE3 over many blocks runs several
        /// times faster than a hash per block (it hashes 1 KiB pieces side
        /// by side).
        whole: BlockDigest,
    },
    /// The signed index's, per frame of `2^shift` bytes (format 2), and
    /// per 4 KiB block of each frame this process checked for a read of
    /// part of it.
    Frames {
        frames: Arc<ChunkFrames>,
        shift: u8,
        learned: Box<[std::sync::OnceLock<Box<[BlockDigest]>>]>,
    },
}

impl Verified {
    fn new(copy: PlainCopy, plain: &[u8]) -> Self {
        Self {
            copy,
            digests: Digests::Learned {
                blocks: plain.chunks(BLOCK).map(block_digest).collect(),
                whole: block_digest(plain),
            },
        }
    }

    fn framed(copy: PlainCopy, frames: Arc<ChunkFrames>, shift: u8) -> Self {
        Self {
            copy,
            digests: Digests::Frames {
                learned: (0..frames.count())
                    .map(|_| std::sync::OnceLock::new())
                    .collect(),
                frames,
                shift,
            },
        }
    }

    /// Fills `dst` from `within` bytes into the chunk (`chunk_len` long),
    /// reading whole blocks (frames) from the plain copy and checking each.
    /// `NotFound`: the copy lacks those frames (a chunk cached in part).
    fn read(&self, chunk_len: usize, within: usize, dst: &mut [u8]) -> io::Result<()> {
        // Format 2, less than a frame, every frame touched checked before:
        // 4 KiB blocks against the digests learned then.
        let by_blocks = match &self.digests {
            Digests::Learned { .. } => true,
            Digests::Frames { shift, learned, .. } => {
                let (first, last) = frame_span(within, dst.len(), *shift);
                dst.len() < 1 << shift && (first..=last).all(|f| learned[f].get().is_some())
            }
        };
        let unit = match &self.digests {
            Digests::Frames { shift, .. } if !by_blocks => 1 << shift,
            _ => BLOCK,
        };
        let first = within / unit;
        let start = first * unit;
        let end = (within + dst.len()).div_ceil(unit) * unit;
        let end = end.min(chunk_len);
        if !self.copy.covers(start..end) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not all of it is cached",
            ));
        }
        let exact = start == within && end == within + dst.len();
        let mut spare = Vec::new();
        let data: &mut [u8] = if exact {
            dst
        } else {
            spare.resize(end - start, 0);
            &mut spare
        };
        self.copy.read_at(start, data)?;
        let good = match &self.digests {
            Digests::Learned { whole, .. } if data.len() == chunk_len => {
                block_digest(data) == *whole
            }
            Digests::Learned { blocks, .. } => data
                .chunks(BLOCK)
                .zip(&blocks[first..])
                .all(|(block, digest)| block_digest(block) == *digest),
            Digests::Frames { shift, learned, .. } if by_blocks => {
                data.chunks(BLOCK).enumerate().all(|(k, block)| {
                    let at = (first + k) * BLOCK;
                    let frame = at >> shift;
                    let nth = (at - (frame << shift)) / BLOCK;
                    learned[frame].get().and_then(|digests| digests.get(nth))
                        == Some(&block_digest(block))
                })
            }
            Digests::Frames {
                frames, learned, ..
            } => {
                let good = data
                    .chunks(unit)
                    .zip(&frames.digests[first..])
                    .all(|(frame, digest)| chunk::frame_digest(frame) == *digest);
                // A read of part of a frame: the next one of this frame
                // need only hash its own blocks.
                if good && !exact {
                    for (k, frame) in data.chunks(unit).enumerate() {
                        learned[first + k]
                            .get_or_init(|| frame.chunks(BLOCK).map(block_digest).collect());
                    }
                }
                good
            }
        };
        if !good {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cached copy differs from the verified chunk",
            ));
        }
        if !exact {
            let from = within - start;
            let len = dst.len();
            dst.copy_from_slice(&spare[from..from + len]);
        }
        Ok(())
    }
}

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

type ChunkResult = Result<Arc<Vec<u8>>, ReadError>;

/// A frame fetched alone: (chunk, frame number) and its plain content.
type RecentFrame = ((ChunkId, usize), Arc<Vec<u8>>);

/// The reader: its state is shared with the read-ahead threads, which it
/// stops and joins when dropped.
#[derive(Debug)]
pub struct ImageReader<S: ChunkStore + 'static> {
    shared: Arc<Shared<S>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared<S> {
    index: Arc<Index>,
    store: VerifyingStore<S>,
    /// Most recent last.
    recent: Mutex<Vec<(usize, Arc<Vec<u8>>)>>,
    /// Chunks verified by this process whose plain copy is local.
    verified: Mutex<HashMap<ChunkId, Arc<Verified>>>,
    /// Chunks whose cached copy failed a check: read whole until a fetch
    /// has replaced it.
    suspect: Mutex<HashSet<ChunkId>>,
    /// Format 2: frames fetched alone recently, most recent last.
    recent_frames: Mutex<std::collections::VecDeque<RecentFrame>>,
    inflight: InFlight,
    trace: Trace,
    stats: Counters,
    ahead: Ahead,
}

/// A piece of a read: `dst` gets bytes `within..` of chunk `index`.
struct Piece<'a> {
    index: usize,
    chunk: ChunkRef,
    within: usize,
    dst: &'a mut [u8],
}

impl Piece<'_> {
    fn fill_from(&mut self, chunk: &[u8]) {
        let len = self.dst.len();
        self.dst
            .copy_from_slice(&chunk[self.within..self.within + len]);
    }
}

/// What [`ImageReader::prefetch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Positions in the list.
    pub listed: u64,
    /// Chunks fetched and verified (the others were all-zero, already
    /// verified, or fetched by a guest read first).
    pub fetched: u64,
    /// Chunks no source could supply (a read of them will say why).
    pub failed: u64,
}

/// Chunks being fetched, so that a guest read and the prefetcher (or two
/// reads) never fetch the same chunk twice at once.
#[derive(Debug, Default)]
struct InFlight {
    ids: Mutex<HashSet<ChunkId>>,
    done: Condvar,
}

impl InFlight {
    /// Waits until no other thread fetches `id`, then claims it until the
    /// returned guard drops.
    fn claim(&self, id: ChunkId) -> Claim<'_> {
        let mut ids = lock(&self.ids);
        while ids.contains(&id) {
            ids = self
                .done
                .wait(ids)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        ids.insert(id);
        Claim { owner: self, id }
    }
}

struct Claim<'a> {
    owner: &'a InFlight,
    id: ChunkId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.owner.ids).remove(&self.id);
        self.owner.done.notify_all();
    }
}

/// What a thread that claimed a chunk finds already there.
enum Have<'a> {
    /// Verified by this process, its plain copy in the local cache.
    Verified(&'a Verified),
    /// Fetched and verified by a read-ahead thread, in memory.
    Ahead(Arc<Vec<u8>>),
}

/// Sequential read-ahead: streams seen, chunks queued for the read-ahead
/// threads, and chunks they fetched that no read has taken yet.
#[derive(Debug, Default)]
struct Ahead {
    state: Mutex<AheadState>,
    work: Condvar,
}

#[derive(Debug, Default)]
struct AheadState {
    /// Most recently continued last.
    streams: Vec<Stream>,
    queue: std::collections::VecDeque<usize>,
    queued: HashSet<usize>,
    ready: HashMap<ChunkId, Arc<Vec<u8>>>,
    /// Oldest first, for eviction.
    ready_order: std::collections::VecDeque<ChunkId>,
    ready_bytes: u64,
    /// Workers fetching right now.
    busy: usize,
    stop: bool,
}

#[derive(Debug)]
struct Stream {
    /// Where the stream's next read would start.
    next: u64,
    window: u64,
    /// Everything below this is queued or read already.
    queued_to: u64,
}

impl Ahead {
    fn peek_ready(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        lock(&self.state).ready.get(id).cloned()
    }

    fn take_ready(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut state = lock(&self.state);
        let data = state.ready.remove(id)?;
        state.ready_bytes -= data.len() as u64;
        Some(data)
    }

    fn put_ready(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut state = lock(&self.state);
        state.ready_bytes += data.len() as u64;
        if let Some(old) = state.ready.insert(id, data) {
            state.ready_bytes -= old.len() as u64;
        }
        state.ready_order.push_back(id);
        while state.ready_bytes > AHEAD_READY_BYTES {
            let Some(oldest) = state.ready_order.pop_front() else {
                break;
            };
            if let Some(old) = state.ready.remove(&oldest) {
                state.ready_bytes -= old.len() as u64;
            }
        }
        // Ids taken by reads linger in the order list; keep it bounded.
        if state.ready_order.len() > 4 * state.ready.len() + 64 {
            let AheadState {
                ready, ready_order, ..
            } = &mut *state;
            ready_order.retain(|id| ready.contains_key(id));
        }
    }
}

/// First reads of each chunk position, in order, with their time since the
/// reader's first read: the raw material of a boot prefetch list.
#[derive(Debug, Default)]
struct Trace {
    inner: Mutex<TraceInner>,
}

#[derive(Debug, Default)]
struct TraceInner {
    start: Option<Instant>,
    seen: HashSet<u32>,
    order: Vec<(u32, Duration)>,
}

impl Trace {
    fn record(&self, positions: &[usize]) {
        if positions.is_empty() {
            return;
        }
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let start = *inner.start.get_or_insert(now);
        for &i in positions {
            let Ok(i) = u32::try_from(i) else { continue };
            if inner.seen.insert(i) {
                inner.order.push((i, now - start));
            }
        }
    }

    fn within(&self, window: Duration) -> Vec<u32> {
        lock(&self.inner)
            .order
            .iter()
            .take_while(|(_, at)| *at <= window)
            .map(|(i, _)| *i)
            .collect()
    }
}

#[derive(Debug, Default)]
struct Counters {
    memory: AtomicU64,
    verified: AtomicU64,
    fetched: AtomicU64,
    ahead: AtomicU64,
    ahead_fetched: AtomicU64,
    partial: AtomicU64,
}

/// Which tier served the chunk pieces of reads so far (a read spanning
/// several chunks counts once per chunk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// From a chunk decoded recently, in memory.
    pub memory: u64,
    /// From the local plain copy of a chunk verified by this process.
    pub verified: u64,
    /// Fetched, decompressed and verified whole (cache or network).
    pub fetched: u64,
    /// From a chunk the read-ahead threads fetched before it was asked for.
    pub ahead: u64,
    /// Chunks the read-ahead threads fetched (some may never be read).
    pub ahead_fetched: u64,
    /// Format 2: fetched as a run of frames (an HTTP Range), not whole.
    pub partial: u64,
}

/// A chunk that no source could supply in good shape.
#[derive(Debug)]
pub struct BadChunk {
    pub index: usize,
    pub id: ChunkId,
    pub error: StoreError,
}

impl<S: ChunkStore + 'static> ImageReader<S> {
    pub fn new(index: Arc<Index>, store: VerifyingStore<S>) -> Self {
        Self {
            shared: Arc::new(Shared {
                index,
                store,
                recent: Mutex::new(Vec::with_capacity(RECENT_CHUNKS)),
                verified: Mutex::new(HashMap::new()),
                suspect: Mutex::new(HashSet::new()),
                recent_frames: Mutex::new(std::collections::VecDeque::new()),
                inflight: InFlight::default(),
                trace: Trace::default(),
                stats: Counters::default(),
                ahead: Ahead::default(),
            }),
            workers: Mutex::new(Vec::new()),
        }
    }

    pub fn index(&self) -> &Index {
        &self.shared.index
    }

    pub fn store(&self) -> &VerifyingStore<S> {
        &self.shared.store
    }

    pub fn size(&self) -> u64 {
        self.shared.index.image_size
    }

    pub fn stats(&self) -> ReaderStats {
        let stats = &self.shared.stats;
        ReaderStats {
            memory: stats.memory.load(Ordering::Relaxed),
            verified: stats.verified.load(Ordering::Relaxed),
            fetched: stats.fetched.load(Ordering::Relaxed),
            ahead: stats.ahead.load(Ordering::Relaxed),
            ahead_fetched: stats.ahead_fetched.load(Ordering::Relaxed),
            partial: stats.partial.load(Ordering::Relaxed),
        }
    }

    /// Verified content of chunk `i` (zeros for an all-zero chunk).
    pub fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, ReadError> {
        self.shared.chunk(i)
    }

    /// Fills `buf` from `offset`; the whole range must lie in the image.
    /// A read that continues an earlier one (a sequential stream) first
    /// queues the chunks after it for the read-ahead threads, in a window
    /// that doubles with each continuing read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let queued = self.shared.schedule_ahead(offset, buf.len() as u64);
        if queued {
            self.start_workers();
        }
        self.shared.read_at(offset, buf)
    }

    /// Starts the read-ahead threads the first time a stream is seen.
    fn start_workers(&self) {
        let mut workers = lock(&self.workers);
        if !workers.is_empty() {
            return;
        }
        for n in 0..AHEAD_THREADS {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name(format!("cas-ahead-{n}"))
                .spawn(move || shared.ahead_worker())
            {
                Ok(handle) => workers.push(handle),
                Err(error) => {
                    // Reads still work, only without read-ahead.
                    tracing::warn!(%error, "cannot start a read-ahead thread");
                    break;
                }
            }
        }
    }

    /// Waits until the read-ahead threads have nothing queued or in hand:
    /// for tests and benchmarks that need a known state.
    pub fn settle_read_ahead(&self) {
        let mut state = lock(&self.shared.ahead.state);
        while !state.stop && (!state.queue.is_empty() || state.busy > 0) {
            state = self
                .shared
                .ahead
                .work
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// See [`Shared::prefetch`].
    pub fn prefetch(
        &self,
        positions: &[u32],
        parallel: usize,
        stop: &AtomicBool,
    ) -> PrefetchReport {
        self.shared.prefetch(positions, parallel, stop)
    }

    /// When this reader's clients first read (none yet: `None`).
    pub fn first_read(&self) -> Option<Instant> {
        lock(&self.shared.trace.inner).start
    }

    /// The chunk positions this reader's clients first read within
    /// `window` of their first read, in that order: a boot's chunks.
    pub fn boot_trace(&self, window: Duration) -> Vec<u32> {
        self.shared.trace.within(window)
    }

    /// Writes the whole image to `out`, fetching up to `parallel` chunks at
    /// once ahead of the writer (network latency hides behind the others).
    pub fn write_all_to(&self, out: &mut dyn Write, parallel: usize) -> Result<(), ReadError> {
        self.shared.write_all_to(out, parallel)
    }

    /// Fetches and verifies every distinct chunk; returns those that no
    /// source could supply in good shape.
    pub fn verify_all(&self, parallel: usize, progress: &(dyn Fn(u64) + Sync)) -> Vec<BadChunk> {
        self.shared.verify_all(parallel, progress)
    }
}

impl<S: ChunkStore + 'static> Drop for ImageReader<S> {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.ahead.state);
            state.stop = true;
            state.queue.clear();
        }
        self.shared.ahead.work.notify_all();
        let workers = std::mem::take(
            self.workers
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for worker in workers {
            // A worker that panicked has nothing left to clean up.
            let _ = worker.join();
        }
    }
}

impl<S: ChunkStore> Shared<S> {
    /// Follows sequential streams: a read starting where an earlier one
    /// ended continues its stream, whose window grows, and the chunks in
    /// the window past this read are queued for the read-ahead threads
    /// (those not verified, fetched or queued already). Returns whether it
    /// queued any.
    fn schedule_ahead(&self, offset: u64, len: u64) -> bool {
        let size = self.index.image_size;
        let end = offset.saturating_add(len).min(size);
        if len == 0 {
            return false;
        }
        let chunk_bytes = u64::from(self.index.chunk_size.bytes());
        let mut state = lock(&self.ahead.state);
        if state.stop {
            return false;
        }
        // A stream under way may skip ahead within its window (a file
        // system's reads step over holes and metadata); a new one must
        // continue exactly, so random reads do not start streams.
        let continues = |s: &Stream| offset >= s.next && offset - s.next <= s.window;
        let Some(pos) = state.streams.iter().position(continues) else {
            if state.streams.len() >= AHEAD_STREAMS {
                state.streams.remove(0);
            }
            state.streams.push(Stream {
                next: end,
                window: 0,
                queued_to: end,
            });
            return false;
        };
        let mut stream = state.streams.remove(pos);
        stream.window = (stream.window * 2)
            .max(2 * len)
            .clamp(AHEAD_MIN_BYTES, AHEAD_MAX_BYTES);
        stream.next = end;
        let from = stream.queued_to.max(end);
        let to = end.saturating_add(stream.window).min(size);
        stream.queued_to = stream.queued_to.max(to);
        state.streams.push(stream);
        // Chunks wholly after this read (its last chunk is its own).
        let first = from.div_ceil(chunk_bytes);
        let last = to.div_ceil(chunk_bytes);
        let mut queued = false;
        let verified = lock(&self.verified);
        for i in first..last {
            let i = i as usize;
            let Some(chunk) = self.index.chunk_ref(i) else {
                continue;
            };
            if verified.contains_key(&chunk.id)
                || state.ready.contains_key(&chunk.id)
                || !state.queued.insert(i)
            {
                continue;
            }
            state.queue.push_back(i);
            queued = true;
        }
        drop(verified);
        drop(state);
        if queued {
            self.ahead.work.notify_all();
        }
        queued
    }

    /// A read-ahead thread: fetches queued chunks until the reader drops.
    fn ahead_worker(&self) {
        loop {
            let i = {
                let mut state = lock(&self.ahead.state);
                loop {
                    if state.stop {
                        return;
                    }
                    if let Some(i) = state.queue.pop_front() {
                        state.busy += 1;
                        break i;
                    }
                    state = self
                        .ahead
                        .work
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            };
            let outcome = match self.index.chunk_ref(i) {
                // Read by a guest meanwhile: nothing to do.
                Some(chunk) if self.recent_lookup_quiet(i).is_none() => self
                    .obtain(
                        i,
                        &chunk,
                        true,
                        |_| Some(()),
                        |data| {
                            self.ahead.put_ready(chunk.id, Arc::new(data));
                            self.stats.ahead_fetched.fetch_add(1, Ordering::Relaxed);
                        },
                    )
                    .err(),
                _ => None,
            };
            {
                let mut state = lock(&self.ahead.state);
                state.queued.remove(&i);
                state.busy -= 1;
            }
            // Wakes `settle_read_ahead` too.
            self.ahead.work.notify_all();
            if let Some(error) = outcome {
                // The guest's own read of the chunk reports it.
                tracing::debug!(chunk = i, error = %crate::error_chain(&error), "read-ahead failed");
            }
        }
    }

    /// Whether chunk `i` is among the recently decoded, without making it
    /// more recent.
    fn recent_lookup_quiet(&self, i: usize) -> Option<()> {
        self.lock_recent()
            .iter()
            .any(|(idx, _)| *idx == i)
            .then_some(())
    }

    /// Verified content of chunk `i` (zeros for an all-zero chunk).
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>, ReadError> {
        if let Some(hit) = self.recent_lookup(i) {
            return Ok(hit);
        }
        let data = self.fetch_verified(i, true)?;
        self.remember(i, Arc::clone(&data));
        Ok(data)
    }

    /// Keeps block digests of `chunk`, just verified as `plain`, if the
    /// store has a local plain copy of it.
    fn learn(&self, chunk: &ChunkRef, plain: &[u8]) {
        if let Some(copy) = self.store.plain_copy(chunk).filter(PlainCopy::is_whole) {
            let verified = match self.framed_verified(chunk, copy.clone()) {
                Some(framed) => framed,
                None => Verified::new(copy, plain),
            };
            lock(&self.verified).insert(chunk.id, Arc::new(verified));
        }
        lock(&self.suspect).remove(&chunk.id);
    }

    /// Format 2: a cached chunk checks against the index's frame digests,
    /// with nothing to learn first (a restarted reader reads its cache at
    /// once, no SHA-1 pass).
    fn framed_verified(&self, chunk: &ChunkRef, copy: PlainCopy) -> Option<Verified> {
        let frames = self.index.chunk_frames(&chunk.id)?;
        Some(Verified::framed(
            copy,
            Arc::clone(frames),
            chunk.frame_shift?,
        ))
    }

    /// The verified-tier entry of `chunk`: known, or (format 2) any plain
    /// copy the cache has. A copy of part of a chunk is looked up each
    /// time (its frames may have been cached since), a whole one kept.
    fn verified_entry(&self, chunk: &ChunkRef) -> Option<Arc<Verified>> {
        if let Some(known) = lock(&self.verified).get(&chunk.id).cloned() {
            return Some(known);
        }
        chunk.frame_shift?;
        if lock(&self.suspect).contains(&chunk.id) {
            return None;
        }
        let copy = self.store.plain_copy(chunk)?;
        let whole = copy.is_whole();
        let framed = Arc::new(self.framed_verified(chunk, copy)?);
        if whole {
            lock(&self.verified).insert(chunk.id, Arc::clone(&framed));
        }
        Some(framed)
    }

    /// Reads a piece of chunk `chunk` from its verified local copy; false
    /// if there is none or it no longer matches (the caller falls back to
    /// the store, which drops a bad copy).
    fn read_verified(&self, chunk: &ChunkRef, within: usize, dst: &mut [u8]) -> bool {
        let Some(verified) = self.verified_entry(chunk) else {
            return false;
        };
        match verified.read(chunk.len as usize, within, dst) {
            Ok(()) => true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => false,
            Err(error) => {
                if error.kind() == io::ErrorKind::InvalidData {
                    tracing::warn!(chunk = %chunk.id, path = %verified.copy.path().display(), %error,
                        "cached chunk changed since it was verified, fetching it again");
                } else {
                    tracing::debug!(chunk = %chunk.id, %error, "verified copy unreadable");
                }
                lock(&self.verified).remove(&chunk.id);
                // Until a whole fetch replaces the cached copy (the cache
                // drops a bad copy when it checks it), this chunk is read
                // whole, not from that copy nor by frames.
                lock(&self.suspect).insert(chunk.id);
                false
            }
        }
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
        lock(&self.recent)
    }

    /// Chunk `i` fetched, decompressed and verified whole (zeros for an
    /// all-zero chunk), or read from this process's verified copy.
    /// `learn`: keep block digests of it (for reads; not for `cat`).
    fn fetch_verified(&self, i: usize, learn: bool) -> Result<Arc<Vec<u8>>, ReadError> {
        let Some(chunk) = self.index.chunk_ref(i) else {
            return Ok(Arc::new(vec![0u8; self.index.chunk_len(i) as usize]));
        };
        let known = |have: Have<'_>| match have {
            Have::Ahead(data) => {
                self.ahead.take_ready(&chunk.id);
                Some(data)
            }
            Have::Verified(verified) => {
                let mut whole = vec![0u8; chunk.len as usize];
                verified
                    .read(whole.len(), 0, &mut whole)
                    .ok()
                    .map(|()| Arc::new(whole))
            }
        };
        self.obtain(i, &chunk, learn, known, Arc::new)
    }

    /// The one way a chunk is fetched. One thread at a time fetches a given
    /// chunk: another wanting it waits for the first, then finds it
    /// verified. A chunk this process verified already goes to `known`;
    /// if that declines (`None`), or the chunk is new, the store fetches,
    /// decompresses and verifies it whole, `learn` keeps its block digests,
    /// and `fetched` gets its content.
    fn obtain<T>(
        &self,
        i: usize,
        chunk: &ChunkRef,
        learn: bool,
        known: impl FnOnce(Have<'_>) -> Option<T>,
        fetched: impl FnOnce(Vec<u8>) -> T,
    ) -> Result<T, ReadError> {
        let _claim = self.inflight.claim(chunk.id);
        if let Some(data) = self.ahead.peek_ready(&chunk.id) {
            if let Some(value) = known(Have::Ahead(data)) {
                return Ok(value);
            }
        } else {
            let verified = self.verified_entry(chunk);
            if let Some(value) = verified.as_deref().map(Have::Verified).and_then(known) {
                return Ok(value);
            }
        }
        let data = self
            .store
            .read_chunk(chunk, self.index.chunk_frames(&chunk.id).map(|f| &**f))
            .map_err(|source| ReadError::Chunk { index: i, source })?;
        if learn {
            self.learn(chunk, &data);
        }
        Ok(fetched(data))
    }

    /// Fills `buf` from `offset`; the whole range must lie in the image.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let size = self.index.image_size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ReadError::OutOfRange { offset, len, size });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let shift = self.index.chunk_size.shift();
        let chunk_bytes = u64::from(self.index.chunk_size.bytes());
        // Split `buf` into one piece per chunk; fill what memory holds.
        let mut pending: Vec<Piece<'_>> = Vec::new();
        let mut touched: Vec<usize> = Vec::new();
        let mut rest = buf;
        let mut pos = offset;
        while !rest.is_empty() {
            let i = (pos >> shift) as usize;
            let within = (pos & (chunk_bytes - 1)) as usize;
            let want = rest.len().min(chunk_bytes as usize - within);
            let (dst, tail) = rest.split_at_mut(want);
            rest = tail;
            pos += want as u64;
            let Some(chunk) = self.index.chunk_ref(i) else {
                dst.fill(0);
                continue;
            };
            touched.push(i);
            if let Some(data) = self.recent_lookup(i) {
                dst.copy_from_slice(&data[within..within + want]);
                self.stats.memory.fetch_add(1, Ordering::Relaxed);
            } else if let Some(data) = self.ahead.take_ready(&chunk.id) {
                dst.copy_from_slice(&data[within..within + want]);
                self.stats.ahead.fetch_add(1, Ordering::Relaxed);
                self.remember(i, data);
            } else {
                pending.push(Piece {
                    index: i,
                    chunk,
                    within,
                    dst,
                });
            }
        }
        self.trace.record(&touched);
        // Chunks verified earlier: blocks from their local copies, checked;
        // a wide read uses both cores.
        let missing = if pending.len() >= PARALLEL_VERIFIED_MIN {
            let half = pending.len() / 2;
            let second = pending.split_off(half);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| self.fill_verified(second));
                let mut missing = self.fill_verified(pending);
                match other.join() {
                    Ok(more) => missing.extend(more),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                missing
            })
        } else {
            self.fill_verified(pending)
        };
        // Format 2, small pieces: just their frames (an HTTP Range).
        let (partial, mut missing): (Vec<_>, Vec<_>) = missing
            .into_iter()
            .partition(|piece| self.partial_pays(piece));
        for mut piece in partial {
            self.fill_frames(&mut piece)?;
        }
        // The rest: fetched, decompressed and verified whole.
        self.stats
            .fetched
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        if let [only] = &mut missing[..] {
            let data = self.chunk(only.index)?;
            only.fill_from(&data);
            return Ok(());
        }
        let indices: Vec<usize> = missing.iter().map(|piece| piece.index).collect();
        let fetched = self.fetch_many(&indices, SPAN_PARALLEL, true);
        for (piece, result) in missing.iter_mut().zip(fetched) {
            let data = result?;
            piece.fill_from(&data);
            self.remember(piece.index, data);
        }
        Ok(())
    }

    /// Whether `piece` is better served by fetching its frames alone than
    /// its whole chunk: format 2, a source that serves ranges, and at most
    /// half the chunk's bytes.
    fn partial_pays(&self, piece: &Piece<'_>) -> bool {
        let Some(shift) = piece.chunk.frame_shift else {
            return false;
        };
        let (first, last) = frame_span(piece.within, piece.dst.len(), shift);
        ((last - first + 1) << shift) <= piece.chunk.len as usize / 2
            && self.store.ranges_pay()
            && !lock(&self.suspect).contains(&piece.chunk.id)
    }

    /// Fills a piece of a format-2 chunk from its frames: those decoded
    /// recently, else one partial fetch of the run of frames it covers,
    /// each frame verified against the index on arrival.
    fn fill_frames(&self, piece: &mut Piece<'_>) -> Result<(), ReadError> {
        let chunk = piece.chunk;
        let shift = chunk.frame_shift.unwrap_or(0);
        let (first, last) = frame_span(piece.within, piece.dst.len(), shift);
        let index = piece.index;
        let frames = self
            .index
            .chunk_frames(&chunk.id)
            .ok_or_else(|| ReadError::Chunk {
                index,
                source: crate::store::StoreError::Corrupt {
                    chunk: chunk.id,
                    source_name: "the index".into(),
                    source: crate::chunk::ChunkError::Frames("no frame table".into()),
                },
            })?;
        let mut run: Vec<Arc<Vec<u8>>> = Vec::with_capacity(last - first + 1);
        {
            let memory = lock(&self.recent_frames);
            for f in first..=last {
                match memory.iter().find(|(key, _)| *key == (chunk.id, f)) {
                    Some((_, data)) => run.push(Arc::clone(data)),
                    None => break,
                }
            }
        }
        if run.len() == last - first + 1 {
            self.stats.memory.fetch_add(1, Ordering::Relaxed);
        } else {
            let plain = self
                .store
                .read_frames(&chunk, frames, first..last + 1)
                .map_err(|source| ReadError::Chunk { index, source })?;
            self.stats.partial.fetch_add(1, Ordering::Relaxed);
            run.clear();
            let mut memory = lock(&self.recent_frames);
            let mut at = 0;
            let mut plain = plain;
            for f in first..=last {
                let len = chunk.frame_len(f);
                let data = if first == last {
                    // One frame (a small read's): kept as it came, no copy.
                    Arc::new(std::mem::take(&mut plain))
                } else {
                    Arc::new(plain[at..at + len].to_vec())
                };
                at += len;
                if memory.len() >= RECENT_FRAMES {
                    memory.pop_front();
                }
                memory.push_back(((chunk.id, f), Arc::clone(&data)));
                run.push(data);
            }
        }
        let mut pos = piece.within - (first << shift);
        let mut out = 0;
        for frame in run {
            let take = (frame.len() - pos).min(piece.dst.len() - out);
            piece.dst[out..out + take].copy_from_slice(&frame[pos..pos + take]);
            out += take;
            pos = 0;
        }
        Ok(())
    }

    /// Fills pieces from verified local copies; returns those it could not.
    fn fill_verified<'b>(&self, pieces: Vec<Piece<'b>>) -> Vec<Piece<'b>> {
        let mut missing = Vec::new();
        for piece in pieces {
            if self.read_verified(&piece.chunk, piece.within, piece.dst) {
                self.stats.verified.fetch_add(1, Ordering::Relaxed);
            } else {
                missing.push(piece);
            }
        }
        missing
    }

    /// Fetches chunks of the image in the background of a guest's reads:
    /// those at `positions` (a boot's chunks, in the order it read them)
    /// that this process has not verified yet, `parallel` at a time, until
    /// done or `stop` is set. Fetched chunks land in the cache; memory's
    /// few decoded chunks are left to the guest's reads.
    fn prefetch(&self, positions: &[u32], parallel: usize, stop: &AtomicBool) -> PrefetchReport {
        let next = AtomicUsize::new(0);
        let fetched = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1) {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&position) = positions.get(k) else {
                            break;
                        };
                        let i = position as usize;
                        let Some(chunk) = self.index.chunk_ref(i) else {
                            continue;
                        };
                        // Verified already (by a read, or listed twice): skipped.
                        match self.obtain(i, &chunk, true, |_| Some(false), |_| true) {
                            Ok(true) => {
                                fetched.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(false) => {}
                            Err(error) => {
                                tracing::debug!(chunk = i, error = %crate::error_chain(&error), "prefetch failed");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        PrefetchReport {
            listed: positions.len() as u64,
            fetched: fetched.into_inner(),
            failed: failed.into_inner(),
        }
    }

    /// Writes the whole image to `out`, fetching up to `parallel` chunks at
    /// once ahead of the writer (network latency hides behind the others).
    fn write_all_to(&self, out: &mut dyn Write, parallel: usize) -> Result<(), ReadError> {
        let parallel = parallel.max(1);
        let count = self.index.chunk_count();
        let batch = parallel * 4;
        let mut start = 0;
        while start < count {
            let end = (start + batch).min(count);
            let batch: Vec<usize> = (start..end).collect();
            for data in self.fetch_many(&batch, parallel, false) {
                out.write_all(&data?).map_err(ReadError::Output)?;
            }
            start = end;
        }
        out.flush().map_err(ReadError::Output)
    }

    /// Fetches chunks `indices` with up to `parallel` threads; results in
    /// the same order.
    fn fetch_many(&self, indices: &[usize], parallel: usize, learn: bool) -> Vec<ChunkResult> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<ChunkResult>>> =
            indices.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..parallel.max(1).min(indices.len()) {
                scope.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = indices.get(k) else { break };
                    let result = self.fetch_verified(i, learn);
                    *lock(&slots[k]) = Some(result);
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
    fn verify_all(&self, parallel: usize, progress: &(dyn Fn(u64) + Sync)) -> Vec<BadChunk> {
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
                    if let Err(error) = self
                        .store
                        .read_chunk(chunk, self.index.chunk_frames(&chunk.id).map(|f| &**f))
                    {
                        lock(&bad).push(BadChunk {
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

/// The first and last frames (of `2^shift` bytes) that bytes
/// `within..within + len` of a chunk touch; `len` > 0.
fn frame_span(within: usize, len: usize, shift: u8) -> (usize, usize) {
    (within >> shift, (within + len - 1) >> shift)
}

/// Locks `mutex`, taking over a poisoned one: every critical section here
/// leaves its data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
