//! A persistent on-disk chunk cache in front of another store.
//!
//! Holds decoded (plain) copies under `CACHE/chunks/` in the store layout
//! (`.raw`, whatever the image's compression), bounded by a byte budget with
//! least-recently-used eviction. Plain copies cost disk (this image's data
//! is ~3.6x its zstd chunks) but let a warm read take 4 KiB of a chunk
//! without decompressing 256 KiB ([`ChunkStore::plain_file`], used by the
//! reader), as nydus's blob cache does. Recency survives restarts through
//! file modification times. Every hit is checked again (disk corruption,
//! tampering with the cache directory), and a bad cached copy is dropped and
//! fetched anew. With the network gone, what is cached still reads: offline
//! operation.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::dir::{read_bounded, write_atomic};
use super::{ChunkCheck, ChunkStore, FrameCheck, StoreError};
use crate::chunk::{ChunkError, ChunkRef, Compression};
use crate::layout;

#[derive(Debug)]
pub struct CacheStore<S> {
    root: PathBuf,
    max_bytes: u64,
    inner: S,
    lru: Mutex<Lru>,
}

/// Entries keyed by path relative to the cache root.
#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<String, (u64, u64)>, // rel path -> (size, tick)
    by_tick: BTreeMap<u64, String>,
    total: u64,
    next_tick: u64,
}

impl Lru {
    fn touch(&mut self, rel: &str) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some((_, old)) = self.entries.get_mut(rel) {
            self.by_tick.remove(old);
            *old = tick;
            self.by_tick.insert(tick, rel.to_owned());
        }
    }

    fn insert(&mut self, rel: String, size: u64) {
        self.remove(&rel);
        let tick = self.next_tick;
        self.next_tick += 1;
        self.by_tick.insert(tick, rel.clone());
        self.entries.insert(rel, (size, tick));
        self.total += size;
    }

    fn remove(&mut self, rel: &str) {
        if let Some((size, tick)) = self.entries.remove(rel) {
            self.by_tick.remove(&tick);
            self.total -= size;
        }
    }

    fn oldest(&self) -> Option<String> {
        self.by_tick.values().next().cloned()
    }
}

impl<S: ChunkStore> CacheStore<S> {
    /// Opens (creating) the cache at `root`, learning what it already holds.
    pub fn open(root: impl Into<PathBuf>, max_bytes: u64, inner: S) -> std::io::Result<Self> {
        let root = root.into();
        let chunk_dir = root.join(layout::CHUNK_DIR);
        fs::create_dir_all(&chunk_dir)?;
        let mut found: Vec<(SystemTime, String, u64)> = Vec::new();
        for fan in fs::read_dir(&chunk_dir)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            let fan_name = fan.file_name().to_string_lossy().into_owned();
            for entry in fs::read_dir(fan.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let raw_suffix = format!(".{}", Compression::None.extension());
                if name.starts_with(".tmp-") || !name.ends_with(&raw_suffix) {
                    // Left by a crash mid-write, or a compressed copy from
                    // an older cache format.
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                let meta = entry.metadata()?;
                if meta.is_file() {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((
                        mtime,
                        format!("{}/{fan_name}/{name}", layout::CHUNK_DIR),
                        meta.len(),
                    ));
                }
            }
        }
        found.sort();
        let mut lru = Lru::default();
        for (_, rel, size) in found {
            lru.insert(rel, size);
        }
        let cache = Self {
            root,
            max_bytes,
            inner,
            lru: Mutex::new(lru),
        };
        cache.evict();
        Ok(cache)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Bytes currently cached.
    pub fn used_bytes(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Serves a hit, or `None` (after dropping a bad copy) for a miss.
    fn hit(&self, chunk: &ChunkRef, rel: &str, check: &dyn ChunkCheck) -> Option<Vec<u8>> {
        if !self.lock().entries.contains_key(rel) {
            return None;
        }
        let path = self.path(rel);
        let plain = match read_bounded(&path, u64::from(chunk.len)) {
            Ok(Some(plain)) => plain,
            Ok(None) | Err(_) => {
                self.drop_entry(rel);
                return None;
            }
        };
        match check.check(&plain_ref(chunk), &plain) {
            Ok(plain) => {
                self.lock().touch(rel);
                // Persist recency for the next process; best effort.
                if let Ok(file) = fs::File::options().write(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(plain)
            }
            Err(error) => {
                tracing::warn!(chunk = %chunk.id, %error, "cached chunk is bad, dropping it");
                self.drop_entry(rel);
                None
            }
        }
    }

    fn drop_entry(&self, rel: &str) {
        self.lock().remove(rel);
        let _ = fs::remove_file(self.path(rel));
    }

    fn insert(&self, rel: &str, plain: &[u8]) {
        let size = plain.len() as u64;
        if size > self.max_bytes {
            return;
        }
        let path = self.path(rel);
        let written = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| write_atomic(&path, plain, false));
        match written {
            Ok(()) => {
                self.lock().insert(rel.to_owned(), size);
                self.evict();
            }
            // The cache is an optimisation: a full disk must not fail reads.
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot cache chunk"),
        }
    }

    fn evict(&self) {
        loop {
            let victim = {
                let lru = self.lock();
                if lru.total <= self.max_bytes {
                    return;
                }
                match lru.oldest() {
                    Some(victim) => victim,
                    None => return,
                }
            };
            self.drop_entry(&victim);
        }
    }
}

/// Runs the caller's check on a copy from the inner store and caches the
/// copy if it passed: only verified copies enter the cache.
struct CachingCheck<'a, S> {
    cache: &'a CacheStore<S>,
    rel: &'a str,
    check: &'a dyn ChunkCheck,
}

impl<S: ChunkStore> ChunkCheck for CachingCheck<'_, S> {
    fn check(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let plain = self.check.check(chunk, stored)?;
        self.cache.insert(self.rel, &plain);
        Ok(plain)
    }
}

impl<S: ChunkStore> ChunkStore for CacheStore<S> {
    fn fetch(&self, chunk: &ChunkRef, check: &dyn ChunkCheck) -> Result<Vec<u8>, StoreError> {
        let rel = layout::chunk_path(&chunk.id, Compression::None);
        if let Some(plain) = self.hit(chunk, &rel, check) {
            return Ok(plain);
        }
        self.inner.fetch(
            chunk,
            &CachingCheck {
                cache: self,
                rel: &rel,
                check,
            },
        )
    }

    /// Partial fetches pass through: the cache keeps whole chunks only
    /// (the reader serves cached chunks' frames from their plain files).
    fn fetch_frames(
        &self,
        chunk: &ChunkRef,
        check: &dyn FrameCheck,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.fetch_frames(chunk, check)
    }

    fn ranges_pay(&self) -> bool {
        self.inner.ranges_pay()
    }

    fn plain_file(&self, chunk: &ChunkRef) -> Option<PathBuf> {
        let rel = layout::chunk_path(&chunk.id, Compression::None);
        self.lock()
            .entries
            .contains_key(&rel)
            .then(|| self.path(&rel))
    }
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
