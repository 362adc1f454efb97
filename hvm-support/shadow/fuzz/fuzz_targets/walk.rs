//! The page-table walker over guest memory the input fills: the first
//! bytes choose the root frame, scope and reserved-bit policy, the rest
//! are up to 16 frames of table pages (frames 0..16; entries naming other
//! frames hit holes). The walk must end, within its limits, without
//! panicking; whatever it captures must encode and decode to itself.
#![no_main]

use circ_hv::fake::FakeHypervisor;
use circ_hv::{DomId, DomainType, Gfn};
use circ_shadow::runs::va_pa_runs;
use circ_shadow::{
    translate_va, walk, Identity, ReservedPolicy, Root, RunFormatV1, Scope, TableCache, WalkLimits,
    WalkOptions,
};
use libfuzzer_sys::fuzz_target;

const DOM: DomId = DomId(1);

fuzz_target!(|data: &[u8]| {
    let Some((&[select, root, va_seed], pages)) = data.split_first_chunk::<3>() else {
        return;
    };
    let hv = FakeHypervisor::new();
    hv.add_domain(DOM, DomainType::Hvm, 1 << 20);
    for (frame, page) in pages.chunks(4096).take(16).enumerate() {
        hv.set_page(DOM, Gfn(frame as u64), page);
    }
    let mut cache = TableCache::with_capacity(hv.foreign_memory(), DOM, 8);
    let root = Root {
        dom: DOM,
        frame: u64::from(root % 20),
    };
    let options = WalkOptions {
        scope: if select & 1 == 0 {
            Scope::User
        } else {
            Scope::All
        },
        reserved: if select & 2 == 0 {
            ReservedPolicy::Skip
        } else {
            ReservedPolicy::Error
        },
        max_phys_bits: 32 + (select >> 2) % 21,
        limits: WalkLimits {
            max_table_visits: 4_096,
            max_leaves: 65_536,
        },
        prefetch: select & 0x80 != 0,
    };
    if let Ok(capture) = walk(&mut cache, root, &Identity, &options) {
        assert!(capture.stats.tables_visited <= 4_096);
        assert!(capture.leaves.windows(2).all(|w| w[0].va < w[1].va));
        let runs = va_pa_runs(&capture.leaves);
        let bytes = RunFormatV1::encode(&runs);
        assert_eq!(RunFormatV1::decode(&bytes).ok(), Some(runs));
    }
    let va = u64::from(va_seed) << 39 | 0x1234_5000;
    let _ = translate_va(&mut cache, root, &Identity, va & 0x7fff_ffff_ffff);
});
