//! The walker: present leaf mappings under a [`Root`], read through a
//! [`TableCache`], with guest frames translated by a [`FrameTranslation`].
//!
//! Guest tables are hostile input. What bounds the work:
//! - the structure: four levels, so recursion is at most four deep and
//!   every path ends;
//! - a table that names a frame already on the current path (a table
//!   referencing itself or an ancestor, e.g. a recursive PML4 slot) is not
//!   descended into again but counted in [`WalkStats::loops_skipped`]:
//!   without that, one self-reference reinterprets the whole tree at every
//!   lower level;
//! - aliasing that is not a cycle (one table reached from many parents,
//!   which is legitimate, e.g. hugetlb's shared page directories) is
//!   walked each time it is reached, because each reach maps other VAs.
//!   A hostile guest can make that 512^3 table visits and 512^4 leaves, so
//!   [`WalkLimits`] caps table visits and leaves and the walk fails with
//!   [`ErrorKind::LimitExceeded`](crate::ErrorKind::LimitExceeded) rather
//!   than run for hours or exhaust memory.

use circ_hv::{ForeignMemory, Gfn};
use serde::Serialize;

use crate::cache::TableCache;
use crate::paging::{
    canonical, is_canonical, Level, PageSize, Root, ADDR_MASK, ENTRIES, NX, PAGE_SIZE_BIT, PRESENT,
    USER, WRITABLE,
};
use crate::{FrameTranslation, ShadowError};

/// Which mappings a walk collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// A process capture: the lower canonical half only, and only entries
    /// with U/S set at every level. Kernel mappings, including the legacy
    /// vsyscall page (user-accessible but in the upper half), are left out.
    #[default]
    User,
    /// Every present mapping, kernel ones included (e.g. to read a PV
    /// guest's p2m list at its virtual address).
    All,
}

/// What to do with an entry that has reserved bits set (the CPU would
/// fault on it with PFERR_RSVD, so it maps nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReservedPolicy {
    /// Leave the entry (and what is below it) out; counted in
    /// [`WalkStats::reserved_skipped`].
    #[default]
    Skip,
    /// Fail the walk with [`ShadowError::ReservedBits`].
    Error,
}

/// Bounds on a walk's work and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Tables visited (a table reached twice counts twice).
    pub max_table_visits: u64,
    /// Leaf mappings collected (a huge page is one leaf).
    pub max_leaves: u64,
}

impl Default for WalkLimits {
    /// 1 Mi table visits (a 64 GiB process in 4 KiB pages needs ~32 Ki)
    /// and 16 Mi leaves (64 GiB in 4 KiB pages, ~0.8 GiB of [`Leaf`]s).
    fn default() -> Self {
        Self {
            max_table_visits: 1 << 20,
            max_leaves: 1 << 24,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOptions {
    pub scope: Scope,
    pub reserved: ReservedPolicy,
    /// The guest's MAXPHYADDR: entry bits 51..this are reserved. 52 (the
    /// default) checks only the bits reserved on every CPU.
    pub max_phys_bits: u8,
    pub limits: WalkLimits,
    /// Read a table's child tables with one map call per 512 frames
    /// rather than one each.
    pub prefetch: bool,
}

impl Default for WalkOptions {
    fn default() -> Self {
        Self {
            scope: Scope::User,
            reserved: ReservedPolicy::Skip,
            max_phys_bits: 52,
            limits: WalkLimits::default(),
            prefetch: true,
        }
    }
}

/// One present leaf mapping. Permissions are the effective ones: writable
/// and user only if set at every level, no-execute if set at any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Leaf {
    pub va: u64,
    pub size: PageSize,
    /// The frame as the entry holds it: a gfn (HVM/PVH) or mfn (PV), what
    /// a foreign map of this guest takes.
    pub frame: u64,
    /// The guest-physical frame, what the guest's pagemap reports. For a
    /// huge page, the translation of its first frame; the rest follow it.
    pub pfn: Gfn,
    pub writable: bool,
    pub user: bool,
    pub nx: bool,
}

impl Leaf {
    /// VA one past the mapping.
    pub fn end(&self) -> u64 {
        self.va.wrapping_add(self.size.bytes())
    }
}

/// Counters of one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WalkStats {
    pub tables_visited: u64,
    pub leaves: u64,
    /// 4 KiB pages mapped by the leaves (a 2 MiB page counts 512).
    pub pages: u64,
    pub pages_2m: u64,
    pub pages_1g: u64,
    /// Present entries left out because U/S was clear ([`Scope::User`]).
    pub kernel_skipped: u64,
    /// Entries with reserved bits ([`ReservedPolicy::Skip`]).
    pub reserved_skipped: u64,
    /// Leaves whose frame the translation does not know (PV grants and
    /// foreign mappings); not in [`Capture::leaves`].
    pub untranslated: u64,
    /// Entries naming a table already on their own path.
    pub loops_skipped: u64,
}

/// The result of a walk: leaves in ascending VA order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub root: Root,
    pub leaves: Vec<Leaf>,
    pub stats: WalkStats,
}

/// Walk the tables under `root`, which must be of the cache's domain.
pub fn walk<F, T>(
    cache: &mut TableCache<F>,
    root: Root,
    translation: &T,
    options: &WalkOptions,
) -> Result<Capture, ShadowError>
where
    F: ForeignMemory,
    T: FrameTranslation + ?Sized,
{
    check_domain(cache, root)?;
    let mut walker = Walker {
        cache,
        translation,
        options,
        path: [u64::MAX; 4],
        leaves: Vec::new(),
        stats: WalkStats::default(),
    };
    walker.visit(Level::L4, root.frame, 0, Perms::TOP)?;
    Ok(Capture {
        root,
        leaves: walker.leaves,
        stats: walker.stats,
    })
}

/// Translate one VA, as the MMU would, whatever [`Scope`]: `None` if not
/// mapped (or behind a reserved-bit entry). The leaf's `va` is the start of
/// its page.
pub fn translate_va<F, T>(
    cache: &mut TableCache<F>,
    root: Root,
    translation: &T,
    va: u64,
) -> Result<Option<Leaf>, ShadowError>
where
    F: ForeignMemory,
    T: FrameTranslation + ?Sized,
{
    if !is_canonical(va) {
        return Err(ShadowError::NonCanonical { va });
    }
    check_domain(cache, root)?;
    let dom = root.dom;
    let mut frame = root.frame;
    let mut level = Level::L4;
    let mut perms = Perms::TOP;
    loop {
        let table = cache
            .table(frame)
            .map_err(|source| ShadowError::TableUnreadable {
                dom,
                level,
                frame,
                va,
                source,
            })?;
        let entry = table[((va >> level.shift()) & 511) as usize];
        if entry & PRESENT == 0 || level.reserved_mask(entry, 52) & entry != 0 {
            return Ok(None);
        }
        perms = perms.and(entry);
        let next = level.next();
        if next.is_none() || entry & PAGE_SIZE_BIT != 0 {
            let size = PageSize::at(level);
            let page_va = va & !(size.bytes() - 1);
            return Ok(leaf(entry, size, page_va, perms, translation));
        }
        frame = (entry & ADDR_MASK) >> 12;
        level = next.unwrap_or(Level::L1);
    }
}

fn check_domain<F: ForeignMemory>(cache: &TableCache<F>, root: Root) -> Result<(), ShadowError> {
    if cache.dom() != root.dom {
        return Err(ShadowError::DomainMismatch {
            root: root.dom,
            cache: cache.dom(),
        });
    }
    Ok(())
}

/// Permissions accumulated down the walk.
#[derive(Debug, Clone, Copy)]
struct Perms {
    writable: bool,
    user: bool,
    nx: bool,
}

impl Perms {
    const TOP: Perms = Perms {
        writable: true,
        user: true,
        nx: false,
    };

    fn and(self, entry: u64) -> Perms {
        Perms {
            writable: self.writable && entry & WRITABLE != 0,
            user: self.user && entry & USER != 0,
            nx: self.nx || entry & NX != 0,
        }
    }
}

fn leaf<T: FrameTranslation + ?Sized>(
    entry: u64,
    size: PageSize,
    va: u64,
    perms: Perms,
    translation: &T,
) -> Option<Leaf> {
    // Huge pages: bit 12 is PAT, and the frame is size-aligned.
    let frame = (entry & ADDR_MASK & !(size.bytes() - 1)) >> 12;
    let pfn = translation.guest_frame(frame)?;
    Some(Leaf {
        va,
        size,
        frame,
        pfn,
        writable: perms.writable,
        user: perms.user,
        nx: perms.nx,
    })
}

struct Walker<'a, F: ForeignMemory, T: ?Sized> {
    cache: &'a mut TableCache<F>,
    translation: &'a T,
    options: &'a WalkOptions,
    /// Frames of the tables on the current path, by depth.
    path: [u64; 4],
    leaves: Vec<Leaf>,
    stats: WalkStats,
}

impl<F: ForeignMemory, T: FrameTranslation + ?Sized> Walker<'_, F, T> {
    fn limit(&self, what: &'static str, limit: u64) -> ShadowError {
        ShadowError::LimitExceeded {
            dom: self.cache.dom(),
            what,
            limit,
        }
    }

    /// Visit the `level` table at `frame`, which maps VAs from `base_va`.
    fn visit(
        &mut self,
        level: Level,
        frame: u64,
        base_va: u64,
        perms: Perms,
    ) -> Result<(), ShadowError> {
        let limits = self.options.limits;
        if self.stats.tables_visited >= limits.max_table_visits {
            return Err(self.limit("table visits", limits.max_table_visits));
        }
        self.stats.tables_visited += 1;
        let table = self
            .cache
            .table(frame)
            .map_err(|source| ShadowError::TableUnreadable {
                dom: self.cache.dom(),
                level,
                frame,
                va: base_va,
                source,
            })?;
        let depth = level.depth();
        self.path[depth] = frame;
        // The user half is PML4 slots 0..256.
        let slots = if level == Level::L4 && self.options.scope == Scope::User {
            ENTRIES / 2
        } else {
            ENTRIES
        };

        if self.options.prefetch && level != Level::L1 {
            let children: Vec<u64> = table[..slots]
                .iter()
                .filter(|e| self.descends(level, **e))
                .map(|e| (e & ADDR_MASK) >> 12)
                .collect();
            if children.len() > 1 {
                self.cache.prefetch(&children);
            }
        }

        for (index, &entry) in table[..slots].iter().enumerate() {
            if entry & PRESENT == 0 {
                continue;
            }
            let va = canonical(base_va | ((index as u64) << level.shift()));
            if level.reserved_mask(entry, self.options.max_phys_bits) & entry != 0 {
                match self.options.reserved {
                    ReservedPolicy::Error => {
                        return Err(ShadowError::ReservedBits { level, va, entry })
                    }
                    ReservedPolicy::Skip => {
                        self.stats.reserved_skipped += 1;
                        continue;
                    }
                }
            }
            if self.options.scope == Scope::User && entry & USER == 0 {
                self.stats.kernel_skipped += 1;
                continue;
            }
            let perms = perms.and(entry);
            match level.next() {
                Some(next) if entry & PAGE_SIZE_BIT == 0 => {
                    let child = (entry & ADDR_MASK) >> 12;
                    if self.path[..=depth].contains(&child) {
                        self.stats.loops_skipped += 1;
                        continue;
                    }
                    self.visit(next, child, va, perms)?;
                }
                _ => self.push_leaf(entry, PageSize::at(level), va, perms)?,
            }
        }
        self.path[depth] = u64::MAX;
        Ok(())
    }

    /// Whether the walk would descend through `entry` of a `level` table
    /// (for prefetching; the loop check is left to the walk).
    fn descends(&self, level: Level, entry: u64) -> bool {
        entry & PRESENT != 0
            && (level == Level::L4 || entry & PAGE_SIZE_BIT == 0)
            && level.reserved_mask(entry, self.options.max_phys_bits) & entry == 0
            && (self.options.scope == Scope::All || entry & USER != 0)
    }

    fn push_leaf(
        &mut self,
        entry: u64,
        size: PageSize,
        va: u64,
        perms: Perms,
    ) -> Result<(), ShadowError> {
        let Some(leaf) = leaf(entry, size, va, perms, self.translation) else {
            self.stats.untranslated += 1;
            return Ok(());
        };
        let max = self.options.limits.max_leaves;
        if self.stats.leaves >= max {
            return Err(self.limit("leaves", max));
        }
        self.stats.leaves += 1;
        self.stats.pages += size.frames();
        match size {
            PageSize::Size2M => self.stats.pages_2m += 1,
            PageSize::Size1G => self.stats.pages_1g += 1,
            PageSize::Size4K => {}
        }
        self.leaves.push(leaf);
        Ok(())
    }
}

/// What `circ shadow capture` reports about a capture: the paper's
/// measures (pages, VA runs, VA+PA runs) and the sizes of three encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CaptureSummary {
    /// 4 KiB pages present.
    pub pages: u64,
    pub leaves: u64,
    pub va_runs: u64,
    pub va_pa_runs: u64,
    /// [`crate::RunFormatV1`] of the VA+PA runs.
    pub run_format_bytes: u64,
    /// Fixed 24-byte `(va, pfn, len)` triples per VA+PA run.
    pub fixed_triple_bytes: u64,
    /// A bare 8-byte frame per present page (pagemap's cost).
    pub frame_array_bytes: u64,
    pub stats: WalkStats,
}

impl Capture {
    pub fn summary(&self) -> CaptureSummary {
        let va_runs = crate::runs::va_runs(&self.leaves);
        let va_pa_runs = crate::runs::va_pa_runs(&self.leaves);
        CaptureSummary {
            pages: self.stats.pages,
            leaves: self.stats.leaves,
            va_runs: va_runs.len() as u64,
            va_pa_runs: va_pa_runs.len() as u64,
            run_format_bytes: crate::RunFormatV1::encoded_len(&va_pa_runs) as u64,
            fixed_triple_bytes: 24 * va_pa_runs.len() as u64,
            frame_array_bytes: 8 * self.stats.pages,
            stats: self.stats,
        }
    }
}
