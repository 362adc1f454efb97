//! A persistent on-disk chunk cache in front of another store.
//!
//! One pair of files per chunk size, shared by every image and process that
//! uses the cache directory: `pack-SHIFT.data` holds decoded (plain) chunk
//! copies in fixed slots of `2^SHIFT` bytes (a sparse file), and
//! `pack-SHIFT.table` says which chunk each slot holds and which parts of
//! it are present. A chunk's slot is one of the [`WAYS`] of the set its
//! name hashes to (set-associative, least recently used replaced first), so
//! a lookup is one small read and the cache's size is fixed when the pair is
//! created: the budget needs no accounting and holds for every process
//! sharing it. Changes to the table (and the data behind it) are made under
//! an exclusive `flock` of the table file; readers take no lock, since
//! nothing read from the cache is trusted: every copy is checked again
//! (the reader against the index's frame digests or digests it learned
//! when it verified the chunk, a whole-chunk hit by the caller's check), so
//! a slot replaced under a reader, a crash mid-write or someone editing the
//! files gives a miss and a refetch, never wrong data. With the network
//! gone, what is cached still reads: offline operation.
//!
//! Plain copies cost disk (this image's data is ~3.6x its zstd chunks) but
//! let a warm read take 4 KiB of a chunk without decompressing 256 KiB
//! ([`ChunkStore::plain_copy`]), as nydus's blob cache does. Frames fetched
//! alone (format 2's small reads) are written to their chunk's slot too.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{ChunkCheck, ChunkStore, FrameCheck, StoreError};
use crate::chunk::{ChunkError, ChunkId, ChunkRef, Compression};
use crate::layout;

/// Slots per set, at most: how many chunks whose names hash alike can be
/// cached at once (fewer only in a cache of fewer slots).
pub const WAYS: u64 = 8;
const MAGIC: &[u8; 8] = b"CIRCPACK";
const VERSION: u32 = 1;
/// The table's header, then `sets * WAYS` entries.
const HEADER: u64 = 4096;
const ENTRY: usize = 64;
/// Presence is kept per 1/64th of a slot (4 KiB for 256 KiB chunks).
const UNITS: u32 = 64;

#[derive(Debug)]
pub struct CacheStore<S> {
    root: PathBuf,
    pack: Arc<Pack>,
    inner: S,
}

/// One slot's entry in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    used: bool,
    len: u32,
    id: [u8; 20],
    /// Last use, nanoseconds since the epoch: the replacement order.
    tick: u64,
    /// Bit `u`: the `u`-th 64th of the slot holds the chunk's plain bytes.
    present: u64,
}

impl Entry {
    fn decode(raw: &[u8]) -> Self {
        let mut id = [0u8; 20];
        id.copy_from_slice(&raw[8..28]);
        Self {
            used: raw[0] == 1,
            len: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            id,
            tick: u64::from_le_bytes(raw[32..40].try_into().unwrap_or([0; 8])),
            present: u64::from_le_bytes(raw[40..48].try_into().unwrap_or([0; 8])),
        }
    }

    fn encode(&self) -> [u8; ENTRY] {
        let mut raw = [0u8; ENTRY];
        raw[0] = u8::from(self.used);
        raw[4..8].copy_from_slice(&self.len.to_le_bytes());
        raw[8..28].copy_from_slice(&self.id);
        raw[32..40].copy_from_slice(&self.tick.to_le_bytes());
        raw[40..48].copy_from_slice(&self.present.to_le_bytes());
        raw
    }
}

/// The data and table files of one slot size.
#[derive(Debug)]
struct Pack {
    data: File,
    table: File,
    data_path: PathBuf,
    slot_shift: u8,
    sets: u64,
    ways: u64,
    /// `flock` excludes other processes, not other threads of this one
    /// (they share the open file).
    local: Mutex<()>,
}

/// A chunk's plain copy in the cache: where it is and which parts of it
/// were there when it was looked up. Untrusted: whoever reads it checks
/// what it read.
#[derive(Clone, Debug)]
pub struct PlainCopy {
    pack: Arc<Pack>,
    slot: u64,
    len: u32,
    present: u64,
}

impl PlainCopy {
    /// Whether bytes `range` of the chunk were present at lookup.
    pub fn covers(&self, range: std::ops::Range<usize>) -> bool {
        if range.end > self.len as usize {
            return false;
        }
        let mask = self
            .pack
            .units(range.start as u64, range.end as u64, self.len, true);
        self.present & mask == mask
    }

    /// Whether the whole chunk was present at lookup.
    pub fn is_whole(&self) -> bool {
        self.covers(0..self.len as usize)
    }

    /// Reads bytes `within..` of the chunk's copy into `buf` (unchecked).
    pub fn read_at(&self, within: usize, buf: &mut [u8]) -> io::Result<()> {
        self.pack
            .data
            .read_exact_at(buf, self.pack.slot_offset(self.slot) + within as u64)
    }

    /// The data file (for messages).
    pub fn path(&self) -> &Path {
        &self.pack.data_path
    }
}

fn now_tick() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Pack {
    fn paths(root: &Path, slot_shift: u8) -> (PathBuf, PathBuf) {
        (
            root.join(format!("pack-{slot_shift}.table")),
            root.join(format!("pack-{slot_shift}.data")),
        )
    }

    /// Opens the pair's files as they are.
    fn open_files(root: &Path, slot_shift: u8, create: bool) -> io::Result<Self> {
        let (table_path, data_path) = Self::paths(root, slot_shift);
        let open = |path: &Path| {
            File::options()
                .read(true)
                .write(create)
                .create(create)
                .truncate(false)
                .open(path)
        };
        Ok(Self {
            table: open(&table_path)?,
            data: open(&data_path)?,
            data_path,
            slot_shift,
            sets: 0,
            ways: 0,
            local: Mutex::new(()),
        })
    }

    /// Opens the pair, creating it with room for `max_bytes` if it is new
    /// (or its table is unusable: then it starts empty, with a warning).
    fn open(root: &Path, slot_shift: u8, max_bytes: u64) -> io::Result<Self> {
        let mut pack = Self::open_files(root, slot_shift, true)?;
        // Whole sets within the budget, at least one slot.
        let slots = (max_bytes >> slot_shift).max(1);
        let ways = slots.min(WAYS);
        let wanted = (slots / ways, ways);
        let guard = pack.lock()?;
        let header = pack.read_header();
        drop(guard);
        match header {
            Ok(geometry) => {
                (pack.sets, pack.ways) = geometry;
                if geometry != wanted {
                    tracing::info!(path = %pack.data_path.display(), mib = pack.capacity() >> 20,
                        "the cache keeps the size it was created with; remove its pack files to change it");
                }
            }
            Err(error) => {
                let guard = pack.lock()?;
                // Another process may have created it meanwhile.
                if let Ok(geometry) = pack.read_header() {
                    drop(guard);
                    (pack.sets, pack.ways) = geometry;
                    return Ok(pack);
                }
                if pack.table.metadata()?.len() > 0 {
                    tracing::warn!(path = %pack.data_path.display(), %error,
                        "cache table unusable, starting the cache empty");
                }
                pack.create(wanted)?;
                drop(guard);
                (pack.sets, pack.ways) = wanted;
            }
        }
        Ok(pack)
    }

    /// (sets, ways)
    fn read_header(&self) -> io::Result<(u64, u64)> {
        let mut header = [0u8; 32];
        self.table.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(invalid("not a cache table".into()));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION {
            return Err(invalid(format!("cache table version {version}")));
        }
        if header[12] != self.slot_shift {
            return Err(invalid(format!("slot shift {}", header[12])));
        }
        let sets = u64::from_le_bytes(header[16..24].try_into().unwrap_or([0; 8]));
        let ways = u64::from(header[13]);
        let table_len = sets
            .checked_mul(ways * ENTRY as u64)
            .and_then(|n| n.checked_add(HEADER));
        if sets == 0
            || !(1..=WAYS).contains(&ways)
            || table_len != Some(self.table.metadata()?.len())
        {
            return Err(invalid(format!(
                "{sets} sets of {ways}, table of the wrong length"
            )));
        }
        Ok((sets, ways))
    }

    /// Writes an empty table and sizes the (sparse) data file.
    fn create(&self, (sets, ways): (u64, u64)) -> io::Result<()> {
        self.table.set_len(0)?;
        self.table.set_len(HEADER + sets * ways * ENTRY as u64)?;
        self.data.set_len(0)?;
        self.data.set_len((sets * ways) << self.slot_shift)?;
        let mut header = [0u8; 32];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12] = self.slot_shift;
        header[13] = ways as u8;
        header[16..24].copy_from_slice(&sets.to_le_bytes());
        self.table.write_all_at(&header, 0)
    }

    /// Holds this process's lock and the table's `flock` until dropped.
    fn lock(&self) -> io::Result<PackLock<'_>> {
        let local = self
            .local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rustix::fs::flock(&self.table, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(PackLock {
            pack: self,
            _local: local,
        })
    }

    fn capacity(&self) -> u64 {
        (self.sets * self.ways) << self.slot_shift
    }

    fn slot_offset(&self, slot: u64) -> u64 {
        slot << self.slot_shift
    }

    fn set_of(&self, id: &ChunkId) -> u64 {
        let b = id.as_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) % self.sets
    }

    fn read_set(&self, set: u64) -> io::Result<Vec<Entry>> {
        let mut raw = vec![0u8; self.ways as usize * ENTRY];
        self.table
            .read_exact_at(&mut raw, HEADER + set * self.ways * ENTRY as u64)?;
        Ok(raw.chunks(ENTRY).map(Entry::decode).collect())
    }

    fn write_entry(&self, slot: u64, entry: &Entry) -> io::Result<()> {
        self.table
            .write_all_at(&entry.encode(), HEADER + slot * ENTRY as u64)
    }

    /// The slot holding `id`, and its entry.
    fn lookup(&self, id: &ChunkId) -> io::Result<Option<(u64, Entry)>> {
        let set = self.set_of(id);
        let found = self
            .read_set(set)?
            .into_iter()
            .enumerate()
            .find(|(_, e)| e.used && e.id == *id.as_bytes());
        Ok(found.map(|(way, e)| (set * self.ways + way as u64, e)))
    }

    /// Presence bits of bytes `start..end` of a chunk of `len` bytes:
    /// `partial` whether a unit only partly inside counts (asking), or not
    /// (marking what was written; the chunk's end completes its last unit).
    fn units(&self, start: u64, end: u64, len: u32, partial: bool) -> u64 {
        let unit_shift = self.slot_shift.saturating_sub(6);
        let unit = 1u64 << unit_shift;
        let first = if partial {
            start >> unit_shift
        } else {
            start.div_ceil(unit)
        };
        let last = if partial || end >= u64::from(len) {
            end.div_ceil(unit)
        } else {
            end >> unit_shift
        };
        let (first, last) = (first.min(u64::from(UNITS)), last.min(u64::from(UNITS)));
        if first >= last {
            return 0;
        }
        let bits = last - first;
        let ones = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        ones << first
    }
}

struct PackLock<'a> {
    pack: &'a Pack,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Drop for PackLock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.pack.table, rustix::fs::FlockOperation::Unlock);
    }
}

impl PackLock<'_> {
    /// Writes `plain` (bytes `at..` of chunk `id`, `len` long) into its
    /// slot: the chunk's own if it has one, else the set's free or least
    /// recently used slot, whose entry is cleared before its data changes.
    fn put(&self, id: &ChunkId, len: u32, at: u64, plain: &[u8]) -> io::Result<()> {
        let pack = self.pack;
        let end = at + plain.len() as u64;
        if end > u64::from(len) || u64::from(len) > 1 << pack.slot_shift {
            return Err(invalid(format!("{end} bytes of a {len}-byte chunk")));
        }
        let set = pack.set_of(id);
        let entries = pack.read_set(set)?;
        let mine = entries
            .iter()
            .position(|e| e.used && e.id == *id.as_bytes() && e.len == len);
        let (way, mut entry) = match mine {
            Some(way) => (way, entries[way]),
            None => {
                let way = entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| (e.used, e.tick))
                    .map_or(0, |(way, _)| way);
                let slot = set * pack.ways + way as u64;
                if entries[way].used {
                    pack.write_entry(slot, &Entry::default())?;
                }
                let fresh = Entry {
                    used: true,
                    len,
                    id: *id.as_bytes(),
                    tick: 0,
                    present: 0,
                };
                (way, fresh)
            }
        };
        let slot = set * pack.ways + way as u64;
        pack.data.write_all_at(plain, pack.slot_offset(slot) + at)?;
        entry.present |= pack.units(at, end, len, false);
        entry.tick = now_tick();
        pack.write_entry(slot, &entry)
    }

    /// Forgets `id`'s copy if its slot still holds it.
    fn forget(&self, id: &ChunkId) -> io::Result<()> {
        if let Some((slot, _)) = self.pack.lookup(id)? {
            self.pack.write_entry(slot, &Entry::default())?;
        }
        Ok(())
    }

    /// Marks `id`'s copy used now.
    fn touch(&self, id: &ChunkId) -> io::Result<()> {
        if let Some((slot, mut entry)) = self.pack.lookup(id)? {
            entry.tick = now_tick();
            self.pack.write_entry(slot, &entry)?;
        }
        Ok(())
    }
}

impl<S: ChunkStore> CacheStore<S> {
    /// Opens (creating) the cache at `root` for chunks of up to
    /// `2^chunk_shift` bytes, `max_bytes` of them at most (for a new cache;
    /// an existing one keeps its size). A cache of the older layout (a file
    /// per chunk under `chunks/`) is moved into the pack.
    pub fn open(
        root: impl Into<PathBuf>,
        max_bytes: u64,
        chunk_shift: u8,
        inner: S,
    ) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let pack = Arc::new(Pack::open(&root, chunk_shift, max_bytes)?);
        let cache = Self { root, pack, inner };
        cache.migrate_chunk_files()?;
        Ok(cache)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes the pack can hold (its budget).
    pub fn capacity_bytes(&self) -> u64 {
        self.pack.capacity()
    }

    /// Plain bytes of whole or partial chunks cached now.
    pub fn used_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for set in 0..self.pack.sets {
            for e in self.pack.read_set(set)? {
                if e.used {
                    let unit = 1u64 << self.pack.slot_shift.saturating_sub(6);
                    total += (u64::from(e.present.count_ones()) * unit).min(u64::from(e.len));
                }
            }
        }
        Ok(total)
    }

    /// Moves the copies of a cache of the older layout (`chunks/XX/ID.raw`,
    /// a file per chunk) into the pack, then removes them. Unverified, like
    /// anything in the cache: every read checks them.
    fn migrate_chunk_files(&self) -> io::Result<()> {
        let dir = self.root.join(layout::CHUNK_DIR);
        if !dir.is_dir() {
            return Ok(());
        }
        let suffix = format!(".{}", Compression::None.extension());
        let (mut moved, mut dropped) = (0u64, 0u64);
        for fan in fs::read_dir(&dir)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(fan.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                let id = name
                    .strip_suffix(&suffix)
                    .and_then(|hex| hex.parse::<ChunkId>().ok());
                let len = file.metadata()?.len();
                let imported = match id {
                    Some(id) if len > 0 && len <= 1 << self.pack.slot_shift => {
                        let plain = fs::read(file.path())?;
                        let len = u32::try_from(plain.len()).unwrap_or(u32::MAX);
                        self.pack.lock()?.put(&id, len, 0, &plain).is_ok()
                    }
                    // Temporary files, compressed copies of an even older
                    // layout, chunks of another size.
                    _ => false,
                };
                if imported {
                    moved += 1;
                } else {
                    dropped += 1;
                }
                fs::remove_file(file.path())?;
            }
        }
        fs::remove_dir_all(&dir)?;
        tracing::warn!(
            from = %dir.display(),
            to = %self.pack.data_path.display(),
            moved,
            dropped,
            "cache layout changed: the file-per-chunk cache was moved into the pack (each copy is checked when read)"
        );
        Ok(())
    }

    /// Serves a whole-chunk hit, or `None` (after forgetting a bad copy).
    fn hit(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Option<Vec<u8>> {
        let copy = self.plain_copy_of(chunk)?;
        if !copy.is_whole() {
            return None;
        }
        let mut plain = vec![0u8; chunk.len as usize];
        if let Err(error) = copy.read_at(0, &mut plain) {
            tracing::debug!(chunk = %chunk.id, %error, "cached copy unreadable");
            return None;
        }
        match check.check(&plain_ref(chunk), &plain) {
            Ok(plain) => {
                if let Err(error) = self.pack.lock().and_then(|l| l.touch(&chunk.id)) {
                    tracing::debug!(%error, "cannot mark a cached chunk used");
                }
                Some(plain)
            }
            Err(error) => {
                tracing::warn!(chunk = %chunk.id, %error, "cached chunk is bad, dropping it");
                self.forget(&chunk.id);
                None
            }
        }
    }

    fn forget(&self, id: &ChunkId) {
        if let Err(error) = self.pack.lock().and_then(|l| l.forget(id)) {
            tracing::warn!(chunk = %id, %error, "cannot drop a cached chunk");
        }
    }

    /// Writes verified plain bytes `at..` of `chunk` into the cache.
    fn insert(&self, chunk: &ChunkRef, at: u64, plain: &[u8]) {
        if let Err(error) = self
            .pack
            .lock()
            .and_then(|l| l.put(&chunk.id, chunk.len, at, plain))
        {
            // The cache is an optimisation: a full disk must not fail reads.
            tracing::warn!(chunk = %chunk.id, %error, "cannot cache chunk");
        }
    }

    fn plain_copy_of(&self, chunk: &ChunkRef) -> Option<PlainCopy> {
        match self.pack.lookup(&chunk.id) {
            Ok(Some((slot, entry))) if entry.len == chunk.len => Some(PlainCopy {
                pack: Arc::clone(&self.pack),
                slot,
                len: entry.len,
                present: entry.present,
            }),
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(chunk = %chunk.id, %error, "cache table unreadable");
                None
            }
        }
    }
}

/// Runs the caller's check on a copy from the inner store and caches the
/// copy if it passed: only verified copies enter the cache.
struct CachingCheck<'a, S> {
    cache: &'a CacheStore<S>,
    check: &'a dyn ChunkCheck,
}

impl<S: ChunkStore> ChunkCheck for CachingCheck<'_, S> {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let plain = self.check.check(chunk, stored)?;
        self.cache.insert(chunk, 0, &plain);
        Ok(plain)
    }
}

/// The same for frames fetched alone: written into their chunk's slot.
struct CachingFrames<'a, S> {
    cache: &'a CacheStore<S>,
    check: &'a dyn FrameCheck,
}

impl<S: ChunkStore> FrameCheck for CachingFrames<'_, S> {
    fn stored_range(&self) -> std::ops::Range<u64> {
        self.check.stored_range()
    }

    fn plain_start(&self, chunk: &ChunkRef) -> u64 {
        self.check.plain_start(chunk)
    }

    fn check(&self, chunk: &ChunkRef, at: u64, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let plain = self.check.check(chunk, at, stored)?;
        self.cache
            .insert(chunk, self.check.plain_start(chunk), &plain);
        Ok(plain)
    }
}

impl<S: ChunkStore> ChunkStore for CacheStore<S> {
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        if let Some(plain) = self.hit(chunk, check) {
            return Ok(plain);
        }
        self.inner
            .fetch(chunk, &CachingCheck { cache: self, check })
    }

    /// Fetched from the inner store (the reader serves cached frames from
    /// the plain copy), and kept.
    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner
            .fetch_frames(chunk, &CachingFrames { cache: self, check })
    }

    fn ranges_pay(&self) -> bool {
        self.inner.ranges_pay()
    }

    fn plain_copy(&self, chunk: &ChunkRef) -> Option<PlainCopy> {
        self.plain_copy_of(chunk)
    }
}

/// Where the cache at `root` keeps `id`'s plain copy for chunks of
/// `2^chunk_shift` bytes: the data file and the offset of its slot (for
/// tools and tests that inspect or damage a cache).
pub fn cached_copy(
    root: &Path,
    chunk_shift: u8,
    id: &ChunkId,
) -> io::Result<Option<(PathBuf, u64)>> {
    let (table_path, _) = Pack::paths(root, chunk_shift);
    if !table_path.exists() {
        return Ok(None);
    }
    let mut pack = Pack::open_files(root, chunk_shift, false)?;
    (pack.sets, pack.ways) = pack.read_header()?;
    Ok(pack
        .lookup(id)?
        .map(|(slot, _)| (pack.data_path.clone(), pack.slot_offset(slot))))
}

/// The reference of a chunk's plain (uncompressed) copy: what the cache
/// holds and checks.
fn plain_ref(chunk: &ChunkRef) -> ChunkRef {
    ChunkRef {
        compression: Compression::None,
        ..*chunk
    }
}

/// Where a cache directory keeps copies of indexes, by location.
pub(crate) fn index_copy_path(cache_root: &Path, location: &str) -> PathBuf {
    use sha2::Digest as _;
    let key = crate::hex::encode(&sha2::Sha256::digest(location.as_bytes()));
    cache_root.join("indexes").join(format!("{key}.cidx"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = Entry {
            used: true,
            len: 262_144,
            id: [7; 20],
            tick: 42,
            present: 0xF0F0,
        };
        assert_eq!(Entry::decode(&e.encode()), e);
    }

    fn pack(dir: &Path, max: u64) -> Pack {
        Pack::open(dir, 18, max).unwrap()
    }

    #[test]
    fn presence_units_cover_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = pack(dir.path(), 1 << 20);
        // 4 KiB units of a 256 KiB slot.
        assert_eq!(p.units(0, 4096, 262_144, false), 1);
        assert_eq!(p.units(0, 4095, 262_144, false), 0);
        assert_eq!(p.units(0, 4095, 262_144, true), 1);
        assert_eq!(p.units(0, 262_144, 262_144, false), u64::MAX);
        // A short last chunk: its end completes its last unit.
        assert_eq!(p.units(0, 5000, 5000, false), 0b11);
        assert_eq!(p.units(4096, 8192, 262_144, true), 0b10);
    }

    #[test]
    fn a_full_set_replaces_its_least_recently_used_slot() {
        let dir = tempfile::tempdir().unwrap();
        // One set of WAYS slots.
        let p = pack(dir.path(), WAYS << 18);
        assert_eq!(p.sets, 1);
        let ids: Vec<ChunkId> = (0..=WAYS as u8)
            .map(|n| ChunkId::from_bytes([n; 20]))
            .collect();
        for id in &ids[..WAYS as usize] {
            p.lock().unwrap().put(id, 4096, 0, &[1; 4096]).unwrap();
        }
        p.lock().unwrap().touch(&ids[0]).unwrap();
        p.lock()
            .unwrap()
            .put(&ids[WAYS as usize], 4096, 0, &[2; 4096])
            .unwrap();
        assert!(p.lookup(&ids[0]).unwrap().is_some(), "recently used, kept");
        assert!(
            p.lookup(&ids[1]).unwrap().is_none(),
            "least recently used, replaced"
        );
        assert!(p.lookup(&ids[WAYS as usize]).unwrap().is_some());
    }

    #[test]
    fn a_damaged_table_starts_the_cache_empty() {
        let dir = tempfile::tempdir().unwrap();
        let id = ChunkId::from_bytes([9; 20]);
        {
            let p = pack(dir.path(), 1 << 20);
            p.lock().unwrap().put(&id, 4096, 0, &[1; 4096]).unwrap();
            assert!(p.lookup(&id).unwrap().is_some());
        }
        let table = dir.path().join("pack-18.table");
        let mut raw = fs::read(&table).unwrap();
        raw[0] ^= 0xFF;
        fs::write(&table, raw).unwrap();
        let p = pack(dir.path(), 1 << 20);
        assert!(p.lookup(&id).unwrap().is_none());
        // And it works again.
        p.lock().unwrap().put(&id, 4096, 0, &[1; 4096]).unwrap();
        assert!(p.lookup(&id).unwrap().is_some());
    }

    #[test]
    fn an_existing_pack_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let first = pack(dir.path(), 64 << 20);
        let second = pack(dir.path(), 4 << 20);
        assert_eq!(first.sets, second.sets);
        assert_eq!(fs::metadata(&second.data_path).unwrap().len(), 64 << 20);
    }

    #[test]
    fn two_processes_filling_one_pack_never_mix_chunks() {
        let dir = tempfile::tempdir().unwrap();
        // Two packs on the same files: separate open files, as two
        // processes have; a small pack, so slots are replaced all the time.
        let packs = [pack(dir.path(), 16 << 18), pack(dir.path(), 16 << 18)];
        std::thread::scope(|scope| {
            for (n, p) in packs.iter().enumerate() {
                scope.spawn(move || {
                    for k in 0..200u32 {
                        // Both write the same chunks, in different orders.
                        let k = if n == 0 { k } else { 199 - k };
                        let plain = vec![(k % 251) as u8; 4096 + k as usize];
                        let id = ChunkId::of_trusted(&plain);
                        let len = plain.len() as u32;
                        // In two halves, as a frame and then the rest.
                        p.lock().unwrap().put(&id, len, 0, &plain[..4096]).unwrap();
                        p.lock()
                            .unwrap()
                            .put(&id, len, 4096, &plain[4096..])
                            .unwrap();
                    }
                });
            }
        });
        let p = &packs[0];
        let mut found = 0;
        for set in 0..p.sets {
            for (way, e) in p.read_set(set).unwrap().into_iter().enumerate() {
                if !e.used {
                    continue;
                }
                let mut plain = vec![0u8; e.len as usize];
                p.data
                    .read_exact_at(&mut plain, p.slot_offset(set * p.ways + way as u64))
                    .unwrap();
                if e.present == p.units(0, u64::from(e.len), e.len, false) {
                    assert_eq!(ChunkId::of_trusted(&plain).as_bytes(), &e.id);
                    found += 1;
                }
            }
        }
        assert!(found > 0 && found <= 16, "{found}");
    }
}
