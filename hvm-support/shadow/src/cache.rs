//! [`TableCache`]: page-table pages read through [`ForeignMemory`], kept
//! until the caller invalidates them.
//!
//! The cache cannot see the guest change its tables. Callers must
//! invalidate:
//! - everything ([`TableCache::invalidate_all`]) whenever the guest ran
//!   since the last walk and the capture must reflect the tables as they
//!   are now (a walk of a running guest is a snapshot of moving data;
//!   pause the domain around walk + use for a consistent one);
//! - one frame ([`TableCache::invalidate`]) when they know which table
//!   changed (e.g. from a write-protection event on it);
//! - and drop the cache when the domain is destroyed or rebooted: frames
//!   are reused.
//!
//! A new CR3 needs no invalidation: tables are keyed by frame, and shared
//! kernel tables are then read once for all processes.

use std::collections::HashMap;
use std::sync::Arc;

use circ_hv::{DomId, ForeignMapping, ForeignMemory, Gfn, HvError, Placement, Protection};

use crate::paging::ENTRIES;

/// Default bound on cached tables: 64 Ki tables, 256 MiB.
pub const DEFAULT_MAX_TABLES: usize = 65_536;

/// Frames mapped per call when prefetching a table's children.
const PREFETCH_BATCH: usize = 512;

/// A table's 512 entries, shared between the cache and walks in progress.
pub(crate) type Table = Arc<[u64; ENTRIES]>;

/// Counters since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Table reads served from the cache.
    pub hits: u64,
    /// Tables read from the guest.
    pub misses: u64,
    /// Map calls made (one per prefetch batch or single read).
    pub map_calls: u64,
    /// Tables currently cached.
    pub cached: usize,
}

/// Page-table pages of one domain, by frame (gfn, or mfn for PV).
#[derive(Debug)]
pub struct TableCache<F: ForeignMemory> {
    fm: F,
    dom: DomId,
    tables: HashMap<u64, Table>,
    max_tables: usize,
    stats: CacheStats,
}

impl<F: ForeignMemory> TableCache<F> {
    pub fn new(fm: F, dom: DomId) -> Self {
        Self::with_capacity(fm, dom, DEFAULT_MAX_TABLES)
    }

    /// A cache holding at most `max_tables` tables; past that, tables are
    /// read but not kept (walks stay correct, only slower).
    pub fn with_capacity(fm: F, dom: DomId, max_tables: usize) -> Self {
        Self {
            fm,
            dom,
            tables: HashMap::new(),
            max_tables,
            stats: CacheStats::default(),
        }
    }

    pub fn dom(&self) -> DomId {
        self.dom
    }

    pub fn foreign_memory(&self) -> &F {
        &self.fm
    }

    /// Forget the table at `frame`; the next walk re-reads it.
    pub fn invalidate(&mut self, frame: u64) -> bool {
        let removed = self.tables.remove(&frame).is_some();
        self.stats.cached = self.tables.len();
        removed
    }

    /// Forget every table.
    pub fn invalidate_all(&mut self) {
        self.tables.clear();
        self.stats.cached = 0;
    }

    pub fn contains(&self, frame: u64) -> bool {
        self.tables.contains_key(&frame)
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Read the uncached `frames` in batches of one map call each. Frames
    /// that fail to map are left out; [`TableCache::table`] then reports
    /// them with the level and VA that needed them.
    pub(crate) fn prefetch(&mut self, frames: &[u64]) {
        let mut missing: Vec<Gfn> = frames
            .iter()
            .filter(|f| !self.tables.contains_key(f))
            .map(|f| Gfn(*f))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for batch in missing.chunks(PREFETCH_BATCH) {
            if self.tables.len() + batch.len() > self.max_tables {
                return;
            }
            self.stats.map_calls += 1;
            let Ok(mapping) = self
                .fm
                .map(self.dom, batch, Protection::Read, Placement::Anywhere)
            else {
                continue;
            };
            for (index, gfn) in batch.iter().enumerate() {
                if mapping.page_error(index).is_none() {
                    if let Ok(table) = read_table(&mapping, index) {
                        self.stats.misses += 1;
                        self.tables.insert(gfn.0, table);
                    }
                }
            }
        }
        self.stats.cached = self.tables.len();
    }

    /// The table at `frame`, from the cache or read now.
    pub(crate) fn table(&mut self, frame: u64) -> Result<Table, HvError> {
        if let Some(table) = self.tables.get(&frame) {
            self.stats.hits += 1;
            return Ok(Arc::clone(table));
        }
        self.stats.map_calls += 1;
        let mapping = self.fm.map(
            self.dom,
            &[Gfn(frame)],
            Protection::Read,
            Placement::Anywhere,
        )?;
        if let Some(errno) = mapping.page_error(0) {
            return Err(HvError::os(
                format!("frame {frame:#x} of domain {} does not map", self.dom),
                errno,
            ));
        }
        let table = read_table(&mapping, 0)?;
        drop(mapping);
        self.stats.misses += 1;
        // Over capacity the table is used once and not kept.
        if self.tables.len() < self.max_tables {
            self.tables.insert(frame, Arc::clone(&table));
            self.stats.cached = self.tables.len();
        }
        Ok(table)
    }
}

fn read_table<M: ForeignMapping>(mapping: &M, index: usize) -> Result<Table, HvError> {
    let mut bytes = [0u8; ENTRIES * 8];
    mapping.read(index, 0, &mut bytes)?;
    let mut table = [0u64; ENTRIES];
    for (entry, chunk) in table.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        *entry = u64::from_le_bytes(raw);
    }
    Ok(Arc::new(table))
}
