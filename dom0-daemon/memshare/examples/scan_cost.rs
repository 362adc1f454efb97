//! The daemon's scanning cost on this host's CPU, without Xen: first
//! rounds of the real [`SharingScanner`] (map, copy out, key every page;
//! nothing is stable yet, so nothing is shared) over circ-hv's in-process
//! fake hypervisor, no rate or CPU limits. A calibration for `scripts/bench
//! memshare`, whose Xen figures are CPU seconds of a dom0 vCPU under nested
//! emulation. The fake's mapping is a locked lookup and a copy, not a
//! hypercall: the system time of real foreign mappings is not in it. Its
//! sharing path is not built for speed either (slower than linear in the
//! number of shared pages), which is why only scanning is measured.
//!
//! `cargo run --release -p circ-memshare --example scan_cost [PAGES_PER_GUEST] [REPEATS]`
//! Two PVH guests (default 32786 pages each, as the lab's 128 MiB guests);
//! each has 25% zero pages, 60% pages equal to the other guest's, 15% of its
//! own. A fresh scanner scans both REPEATS times (default 8). Prints one
//! JSON line.

use std::time::Instant;

use anyhow::Context as _;
use circ_hv::fake::{FakeHypervisor, FakeXenStore};
use circ_hv::{DomId, DomainType, Gfn, Transaction, XenStore as _, PAGE_SIZE};
use circ_memshare::policy::enable;
use circ_memshare::throttle::Limits;
use circ_memshare::{CpuTime, ScanConfig, SharingScanner};

fn page(seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..PAGE_SIZE / 8)
        .flat_map(|_| {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pages: u64 = args
        .next()
        .map_or(Ok(32_786), |a| a.parse())
        .context("PAGES_PER_GUEST")?;
    let repeats: u64 = args
        .next()
        .map_or(Ok(8), |a| a.parse())
        .context("REPEATS")?;

    let hv = FakeHypervisor::new();
    let xs = FakeXenStore::new();
    for id in 1..=2u16 {
        let dom = DomId(id);
        hv.add_domain(dom, DomainType::Pvh, pages);
        xs.write(
            Transaction::NONE,
            &format!("/local/domain/{id}/name"),
            format!("g{id}").as_bytes(),
        )?;
        for g in 0..pages {
            let data = match g * 100 / pages.max(1) {
                0..=24 => Vec::new(),
                25..=84 => page(g),
                _ => page(g | u64::from(id) << 48),
            };
            hv.set_page(dom, Gfn(g), &data);
        }
        enable(&hv, &xs, &format!("g{id}"))?;
    }

    let fm = hv.foreign_memory();
    let config = ScanConfig {
        limits: Limits {
            pages_per_sec: 0,
            cpu_budget: 1.0,
        },
        ..ScanConfig::default()
    };
    let cpu0 = CpuTime::own()?;
    let wall = Instant::now();
    let mut scanned = 0u64;
    let mut last = None;
    for _ in 0..repeats {
        let mut scanner = SharingScanner::new(&hv, &fm, &xs, config.clone());
        let round = scanner.round(&[])?;
        scanned += round.pages_scanned;
        last = Some(round);
    }
    let cpu1 = CpuTime::own()?;
    let cpu_s = (cpu1.total_ms() - cpu0.total_ms()) as f64 / 1000.0;
    let gib = scanned as f64 * PAGE_SIZE as f64 / f64::from(1u32 << 30);
    let line = serde_json::json!({
        "pages_per_guest": pages,
        "repeats": repeats,
        "pages_scanned": scanned,
        "zero_pages": last.as_ref().map(|r| r.zero_pages),
        "duplicate_pages": last.as_ref().map(|r| r.duplicate_pages),
        "cpu_user_s": (cpu1.user_ms - cpu0.user_ms) as f64 / 1000.0,
        "cpu_system_s": (cpu1.system_ms - cpu0.system_ms) as f64 / 1000.0,
        "cpu_seconds_per_gib_scanned": cpu_s / gib,
        "wall_s": wall.elapsed().as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}
