//! Walks of page tables built in the fake hypervisor's guest memory.

use std::collections::HashMap;

use circ_hv::fake::{FakeForeignMemory, FakeHypervisor};
use circ_hv::{DomId, DomainType, Gfn, Mfn};

use crate::paging::{NX, PAGE_SIZE_BIT, PRESENT, USER, WRITABLE};
use crate::runs::{va_pa_runs, va_runs};
use crate::*;

const DOM: DomId = DomId(7);
const TABLE: u64 = PRESENT | WRITABLE | USER;
const USER_RW: u64 = PRESENT | WRITABLE | USER;

/// A guest whose page tables the test writes entry by entry.
struct Guest {
    hv: FakeHypervisor,
    tables: HashMap<u64, [u64; 512]>,
    next_table: u64,
    root: u64,
}

impl Guest {
    /// Tables are allocated from frame `table_base` up.
    fn new(ty: DomainType, table_base: u64) -> Guest {
        let hv = FakeHypervisor::new();
        hv.add_domain(DOM, ty, 1 << 20);
        let mut guest = Guest {
            hv,
            tables: HashMap::new(),
            next_table: table_base,
            root: 0,
        };
        guest.root = guest.table();
        guest
    }

    fn table(&mut self) -> u64 {
        let frame = self.next_table;
        self.next_table += 1;
        self.tables.insert(frame, [0; 512]);
        self.flush(frame);
        frame
    }

    fn flush(&self, frame: u64) {
        let bytes: Vec<u8> = self.tables[&frame]
            .iter()
            .flat_map(|e| e.to_le_bytes())
            .collect();
        self.hv.set_page(DOM, Gfn(frame), &bytes);
    }

    fn set(&mut self, table: u64, index: usize, entry: u64) {
        self.tables.get_mut(&table).expect("a table")[index] = entry;
        self.flush(table);
    }

    fn entry(&self, table: u64, index: usize) -> u64 {
        self.tables[&table][index]
    }

    /// The table `level` below the root for `va`, made with `TABLE` flags
    /// where missing.
    fn table_for(&mut self, va: u64, depth: usize) -> u64 {
        let mut table = self.root;
        for level in 0..depth {
            let index = index(va, level);
            let entry = self.entry(table, index);
            table = if entry & PRESENT != 0 {
                (entry & 0x000f_ffff_ffff_f000) >> 12
            } else {
                let child = self.table();
                self.set(table, index, (child << 12) | TABLE);
                child
            };
        }
        table
    }

    fn map(&mut self, va: u64, size: PageSize, frame: u64, flags: u64) {
        let depth = match size {
            PageSize::Size1G => 1,
            PageSize::Size2M => 2,
            PageSize::Size4K => 3,
        };
        let huge = if size == PageSize::Size4K {
            0
        } else {
            PAGE_SIZE_BIT
        };
        let table = self.table_for(va, depth);
        self.set(table, index(va, depth), (frame << 12) | flags | huge);
    }

    fn cache(&self) -> TableCache<FakeForeignMemory> {
        TableCache::new(self.hv.foreign_memory(), DOM)
    }

    fn root(&self) -> Root {
        Root {
            dom: DOM,
            frame: self.root,
        }
    }

    fn walk(&self, options: &WalkOptions) -> Result<Capture, ShadowError> {
        walk(&mut self.cache(), self.root(), &Identity, options)
    }
}

fn index(va: u64, depth: usize) -> usize {
    ((va >> (39 - 9 * depth as u32)) & 511) as usize
}

fn user() -> WalkOptions {
    WalkOptions::default()
}

#[test]
fn walks_4k_2m_and_1g_pages_with_effective_permissions() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    for i in 0..3 {
        g.map(
            0x40_0000 + i * 0x1000,
            PageSize::Size4K,
            0x2000 + i,
            USER_RW,
        );
    }
    g.map(0x2_0000_0000, PageSize::Size2M, 0x1_0000, USER_RW | NX);
    g.map(0x40_0000_0000, PageSize::Size1G, 0x4_0000, PRESENT | USER);

    let capture = g.walk(&user()).unwrap();
    let s = capture.stats;
    assert_eq!((s.leaves, s.pages_2m, s.pages_1g), (5, 1, 1));
    assert_eq!(s.pages, 3 + 512 + 262_144);
    let l = &capture.leaves;
    assert_eq!(l[0].va, 0x40_0000);
    assert_eq!(l[2].pfn, Gfn(0x2002));
    assert_eq!(
        l[3],
        Leaf {
            va: 0x2_0000_0000,
            size: PageSize::Size2M,
            frame: 0x1_0000,
            pfn: Gfn(0x1_0000),
            writable: true,
            user: true,
            nx: true,
        }
    );
    assert_eq!(
        (l[4].va, l[4].size, l[4].writable),
        (0x40_0000_0000, PageSize::Size1G, false)
    );
    assert!(l.windows(2).all(|w| w[0].end() <= w[1].va), "sorted by VA");

    // A 2 MiB entry's bit 12 is PAT, not part of the frame.
    let mut cache = g.cache();
    let pd = g.table_for(0x2_0000_0000, 2);
    let e = g.entry(pd, 0);
    g.set(pd, 0, e | (1 << 12));
    let leaf = translate_va(&mut cache, g.root(), &Identity, 0x2_0000_1234)
        .unwrap()
        .unwrap();
    assert_eq!((leaf.va, leaf.frame), (0x2_0000_0000, 0x1_0000));
}

#[test]
fn pv_frames_are_translated_through_the_m2p() {
    // PV: tables and pages are named by machine frames.
    let mut g = Guest::new(DomainType::Pv, 0x8_0000);
    g.map(0x1000, PageSize::Size4K, 0x9_0005, USER_RW);
    g.map(0x2000, PageSize::Size4K, 0x9_0006, USER_RW);
    // A grant-mapped frame of another domain: not in this guest's p2m.
    g.map(0x3000, PageSize::Size4K, 0xa_0000, USER_RW);
    let mut p2m = vec![Mfn(!0); 16];
    p2m[10] = Mfn(0x9_0005);
    p2m[11] = Mfn(0x9_0006);
    let m2p = M2pMap::from_p2m(&p2m);

    let capture = walk(&mut g.cache(), g.root(), &m2p, &user()).unwrap();
    let got: Vec<_> = capture
        .leaves
        .iter()
        .map(|l| (l.va, l.frame, l.pfn))
        .collect();
    assert_eq!(
        got,
        [(0x1000, 0x9_0005, Gfn(10)), (0x2000, 0x9_0006, Gfn(11))]
    );
    assert_eq!(capture.stats.untranslated, 1);
    assert_eq!(va_pa_runs(&capture.leaves).len(), 1, "pfns 10, 11 follow");
}

#[test]
fn user_scope_leaves_out_kernel_mappings() {
    let mut g = Guest::new(DomainType::Hvm, 0x100);
    g.map(0x1000, PageSize::Size4K, 0x500, USER_RW);
    // Leaf without U/S.
    g.map(0x2000, PageSize::Size4K, 0x501, PRESENT | WRITABLE);
    // U/S set on the leaf but clear on its page directory entry.
    g.map(0x4000_0000, PageSize::Size4K, 0x502, USER_RW);
    let pd = g.table_for(0x4000_0000, 2);
    let pdpt = g.table_for(0x4000_0000, 1);
    g.set(pdpt, 1, (pd << 12) | PRESENT | WRITABLE);
    // Upper half, even with U/S everywhere (like vsyscall).
    g.map(0xffff_8880_0000_0000, PageSize::Size4K, 0x503, USER_RW);

    let capture = g.walk(&user()).unwrap();
    let vas: Vec<u64> = capture.leaves.iter().map(|l| l.va).collect();
    assert_eq!(vas, [0x1000]);
    assert_eq!(capture.stats.kernel_skipped, 2);

    let all = g
        .walk(&WalkOptions {
            scope: Scope::All,
            ..user()
        })
        .unwrap();
    let vas: Vec<(u64, bool)> = all.leaves.iter().map(|l| (l.va, l.user)).collect();
    assert_eq!(
        vas,
        [
            (0x1000, true),
            (0x2000, false),
            (0x4000_0000, false),
            (0xffff_8880_0000_0000, true)
        ]
    );
}

#[test]
fn la57_and_paging_off_are_refused() {
    let regs = circ_hv::VcpuRegs {
        cr0: CR0_PG,
        cr3: 0x10_0000,
        cr4: CR4_PAE | CR4_LA57,
        ..Default::default()
    };
    let err = check_paging(DOM, DomainType::Pvh, &regs).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("CR4.LA57"), "{err}");
}

#[test]
fn bad_frames_name_the_level_and_va() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    // CR3 outside the guest.
    let bad_root = Root {
        dom: DOM,
        frame: 0xdead_beef,
    };
    let err = walk(&mut g.cache(), bad_root, &Identity, &user()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadFrame);
    let msg = err.to_string();
    assert!(
        msg.contains("L4 (PML4)") && msg.contains("0xdeadbeef"),
        "{msg}"
    );

    // A page-directory entry naming a frame the guest does not have.
    g.map(0x60_0000, PageSize::Size4K, 0x500, USER_RW);
    let pd = g.table_for(0x60_0000, 2);
    g.set(pd, 3, (0x7_0000 << 12) | TABLE);
    let err = g.walk(&user()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadFrame);
    let msg = err.to_string();
    assert!(
        msg.contains("L1 (PT) table at frame 0x70000") && msg.contains("va 0x600000"),
        "{msg}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn self_referencing_tables_terminate() {
    let mut g = Guest::new(DomainType::Hvm, 0x100);
    g.map(0x1000, PageSize::Size4K, 0x500, USER_RW);
    let root = g.root;
    // Recursive slot, user-accessible: the PML4 as its own PDPT.
    g.set(root, 5, (root << 12) | TABLE);
    // A PDPT entry pointing back at the PML4, and a PD at its own PDPT.
    let pdpt = g.table_for(0x1000, 1);
    let pd = g.table_for(0x1000, 2);
    g.set(pdpt, 7, (root << 12) | TABLE);
    g.set(pd, 9, (pdpt << 12) | TABLE);
    g.set(pd, 10, (pd << 12) | TABLE);

    let capture = g.walk(&user()).unwrap();
    assert_eq!(capture.leaves.len(), 1);
    assert_eq!(capture.stats.loops_skipped, 4);
    assert_eq!(capture.stats.tables_visited, 4);
}

#[test]
fn aliasing_is_bounded_by_the_limits() {
    // One PT with 512 pages, under all 512 PD slots, under all 256 user
    // PDPT slots: 2^26 leaves, no cycle.
    let mut g = Guest::new(DomainType::Hvm, 0x100);
    g.map(0x0, PageSize::Size4K, 0x500, USER_RW);
    let (pdpt, pd, pt) = (g.table_for(0, 1), g.table_for(0, 2), g.table_for(0, 3));
    for i in 0..512 {
        g.set(pt, i, ((0x500 + i as u64) << 12) | USER_RW);
        g.set(pd, i, (pt << 12) | TABLE);
        g.set(pdpt, i, (pd << 12) | TABLE);
    }
    let small = WalkLimits {
        max_table_visits: 10_000,
        max_leaves: 100_000,
    };
    let err = g
        .walk(&WalkOptions {
            limits: small,
            ..user()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
    assert!(err.to_string().contains("100000 leaves"), "{err}");
    let err = g
        .walk(&WalkOptions {
            limits: WalkLimits {
                max_table_visits: 100,
                ..small
            },
            ..user()
        })
        .unwrap_err();
    assert!(err.to_string().contains("table visits"), "{err}");
}

#[test]
fn reserved_bits_are_skipped_or_refused() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    g.map(0x1000, PageSize::Size4K, 0x500, USER_RW);
    // 2 MiB page with bit 13 set: reserved.
    g.map(0x20_0000, PageSize::Size2M, 0x1000, USER_RW);
    let pd = g.table_for(0x20_0000, 2);
    let e = g.entry(pd, 1);
    g.set(pd, 1, e | (1 << 13));
    // PS in a PML4 entry: reserved.
    g.set(g.root, 9, (0x600 << 12) | TABLE | PAGE_SIZE_BIT);

    let capture = g.walk(&user()).unwrap();
    assert_eq!(capture.leaves.len(), 1);
    assert_eq!(capture.stats.reserved_skipped, 2);

    let err = g
        .walk(&WalkOptions {
            reserved: ReservedPolicy::Error,
            ..user()
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReservedBits);
    assert!(err.to_string().contains("va 0x200000"), "{err}");

    // A smaller MAXPHYADDR makes high frame bits reserved.
    g.map(0x3000, PageSize::Size4K, 1 << 36, USER_RW);
    let capture = g
        .walk(&WalkOptions {
            max_phys_bits: 40,
            ..user()
        })
        .unwrap();
    assert_eq!(capture.stats.reserved_skipped, 3);
}

#[test]
fn runs_va_versus_va_and_pa() {
    let mut g = Guest::new(DomainType::Hvm, 0x100);
    // VA run 1: frames 10, 11 | 20, 21 | 30  -> 3 VA+PA runs.
    for (i, f) in [10, 11, 20, 21, 30].into_iter().enumerate() {
        g.map(0x1000 * (1 + i as u64), PageSize::Size4K, f, USER_RW);
    }
    // VA run 2: a 2 MiB page at frame 0x1000, then a 4 KiB page at frame
    // 0x1200 right after it in both: 1 VA+PA run.
    g.map(0x4000_0000, PageSize::Size2M, 0x1000, USER_RW);
    g.map(0x4020_0000, PageSize::Size4K, 0x1200, USER_RW);
    // VA run 3: descending frames, each page its own VA+PA run.
    for i in 0..4 {
        g.map(
            0x8000_0000 + 0x1000 * i,
            PageSize::Size4K,
            0x900 - i,
            USER_RW,
        );
    }

    let capture = g.walk(&user()).unwrap();
    let va = va_runs(&capture.leaves);
    let vapa = va_pa_runs(&capture.leaves);
    assert_eq!(va.len(), 3);
    assert_eq!(vapa.len(), 3 + 1 + 4);
    assert_eq!(
        va[1],
        Run {
            va: 0x4000_0000,
            pfn: Gfn(0x1000),
            pages: 513
        }
    );
    let pages: u64 = vapa.iter().map(|r| r.pages).sum();
    assert_eq!(pages, capture.stats.pages);
    assert_eq!(va.iter().map(|r| r.pages).sum::<u64>(), pages);
    let bytes = RunFormatV1::encode(&vapa);
    assert_eq!(RunFormatV1::decode(&bytes).unwrap(), vapa);
    let summary = capture.summary();
    assert_eq!((summary.va_runs, summary.va_pa_runs), (3, 8));
    assert_eq!(summary.run_format_bytes, bytes.len() as u64);
    assert_eq!(summary.fixed_triple_bytes, 24 * 8);
    assert_eq!(summary.frame_array_bytes, 8 * (5 + 513 + 4));
    assert!(summary.run_format_bytes < summary.fixed_triple_bytes / 4);
}

#[test]
fn cache_serves_rewalks_until_invalidated() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    g.map(0x1000, PageSize::Size4K, 0x500, USER_RW);
    g.map(0x2000, PageSize::Size4K, 0x501, USER_RW);
    let mut cache = g.cache();
    let first = walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    let after_first = cache.stats();
    assert_eq!((after_first.misses, after_first.cached), (4, 4));

    // Unchanged guest: a re-walk reads nothing.
    let again = walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    assert_eq!(again.leaves, first.leaves);
    assert_eq!(cache.stats().misses, 4);
    assert!(cache.stats().hits >= after_first.hits + 4);

    // The guest remaps 0x2000; the cache does not see it by itself.
    let pt = g.table_for(0x1000, 3);
    g.set(pt, 2, (0x777 << 12) | USER_RW);
    let stale = walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    assert_eq!(stale.leaves[1].frame, 0x501);
    assert!(cache.invalidate(pt));
    let fresh = walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    assert_eq!(fresh.leaves[1].frame, 0x777);
    assert_eq!(cache.stats().misses, 5, "only the page table was re-read");

    cache.invalidate_all();
    assert!(!cache.contains(g.root));
    walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    assert_eq!(cache.stats().misses, 9);
}

#[test]
fn prefetch_batches_sibling_tables() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    for i in 0..64u64 {
        g.map(i << 21, PageSize::Size4K, 0x1000 + i, USER_RW);
    }
    let mut cache = g.cache();
    let capture = walk(&mut cache, g.root(), &Identity, &user()).unwrap();
    assert_eq!(capture.leaves.len(), 64);
    // Root, PDPT, PD one call each; the 64 page tables in one batch.
    assert_eq!(cache.stats().map_calls, 4);
    let mut unbatched = g.cache();
    let no_prefetch = WalkOptions {
        prefetch: false,
        ..user()
    };
    let same = walk(&mut unbatched, g.root(), &Identity, &no_prefetch).unwrap();
    assert_eq!(same.leaves, capture.leaves);
    assert_eq!(unbatched.stats().map_calls, 67);
}

#[test]
fn translate_va_checks_canonical_and_domain() {
    let mut g = Guest::new(DomainType::Pvh, 0x100);
    g.map(0x7fff_ffff_f000, PageSize::Size4K, 0x500, PRESENT | USER);
    let mut cache = g.cache();
    let leaf = translate_va(&mut cache, g.root(), &Identity, 0x7fff_ffff_fabc)
        .unwrap()
        .unwrap();
    assert_eq!(
        (leaf.va, leaf.pfn, leaf.writable),
        (0x7fff_ffff_f000, Gfn(0x500), false)
    );
    assert_eq!(
        translate_va(&mut cache, g.root(), &Identity, 0x1000).unwrap(),
        None
    );
    let err = translate_va(&mut cache, g.root(), &Identity, 0x8000_0000_0000).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let other = Root {
        dom: DomId(8),
        frame: g.root,
    };
    let err = walk(&mut cache, other, &Identity, &user()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// xorshift64*: deterministic pseudo-random tables without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn arbitrary_tables_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let hv = FakeHypervisor::new();
        hv.add_domain(DOM, DomainType::Hvm, 1 << 20);
        // 8 frames of table-ish data: entries point mostly at frames 0..10
        // (two of which do not exist), with random flag and high bits.
        for frame in 0..8u64 {
            let mut page = Vec::with_capacity(4096);
            for _ in 0..512 {
                let r = rng.next();
                let entry = match r % 4 {
                    0 => 0,
                    1 => r,
                    _ => ((r >> 32) % 10) << 12 | (r & 0x8000_0000_0000_0fff),
                };
                page.extend_from_slice(&entry.to_le_bytes());
            }
            hv.set_page(DOM, Gfn(frame), &page);
        }
        let mut cache = TableCache::new(hv.foreign_memory(), DOM);
        let root = Root {
            dom: DOM,
            frame: round % 9,
        };
        let options = WalkOptions {
            scope: if round % 2 == 0 {
                Scope::User
            } else {
                Scope::All
            },
            limits: WalkLimits {
                max_table_visits: 2_000,
                max_leaves: 50_000,
            },
            ..user()
        };
        if let Ok(capture) = walk(&mut cache, root, &Identity, &options) {
            let runs = va_pa_runs(&capture.leaves);
            let bytes = RunFormatV1::encode(&runs);
            assert_eq!(RunFormatV1::decode(&bytes).unwrap(), runs);
        }
        let _ = translate_va(&mut cache, root, &Identity, rng.next() & 0x7fff_ffff_ffff);
    }
}

#[test]
fn arbitrary_run_format_bytes_never_panic() {
    let mut rng = Rng(42);
    for len in 0..2000usize {
        let mut bytes = b"CSR1".to_vec();
        bytes.extend((0..len % 64).map(|_| rng.next() as u8));
        let _ = RunFormatV1::decode(&bytes);
    }
}

#[test]
fn pv_p2m_list_is_read_through_the_walker() {
    // A PV guest (machine frames) with its p2m list at a kernel VA, 1.5
    // pages of entries, and one user page.
    let mut g = Guest::new(DomainType::Pv, 0x8_0000);
    let list_va = 0xffff_c900_0000_0000;
    let max_pfn = 768u64;
    let p2m: Vec<u64> = (0..max_pfn)
        .map(|pfn| if pfn == 5 { !0 } else { 0x9_0000 + pfn })
        .collect();
    for (page, entries) in p2m.chunks(512).enumerate() {
        let frame = 0xa_0000 + page as u64;
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        g.hv.set_page(DOM, Gfn(frame), &bytes);
        g.map(
            list_va + 0x1000 * page as u64,
            PageSize::Size4K,
            frame,
            PRESENT,
        );
    }
    g.map(0x1000, PageSize::Size4K, 0x9_0007, USER_RW);

    let mut cache = g.cache();
    let list = crate::p2m::read_p2m_list(&mut cache, g.root(), list_va, max_pfn).unwrap();
    assert_eq!(list.len(), 768);
    assert_eq!(
        (list[0], list[5], list[767]),
        (Mfn(0x9_0000), Mfn(!0), Mfn(0x9_02ff))
    );
    let m2p = M2pMap::from_p2m(&list);
    let capture = walk(&mut cache, g.root(), &m2p, &user()).unwrap();
    assert_eq!(capture.leaves[0].pfn, Gfn(7));

    let err = crate::p2m::read_p2m_list(&mut cache, g.root(), list_va, 2000).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadFrame);
    assert!(err.to_string().contains("not mapped"), "{err}");
    let err = crate::p2m::read_p2m_list(&mut cache, g.root(), list_va, 1 << 40).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitExceeded);
}
