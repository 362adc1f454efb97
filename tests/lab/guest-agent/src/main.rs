//! `circ-guest-agent`: runs inside the lab's test guests (started by
//! `tests/lab/guest/init`) and proves copy-on-write isolation of shared
//! pages from the guest's side.
//!
//! At start it fills a page-aligned buffer with a pattern that is the same
//! in every guest (so dom0 can share it across guests), reports `filled` on
//! its console and in `data/circ-agent/state`, then polls
//! `data/circ-agent/command` in its own xenstore directory:
//! - `write`: overwrite the second half of the buffer with a pattern unique
//!   to this guest (derived from its name), then verify the whole buffer;
//!   `write-first`: the same for the first half;
//! - any other new value (e.g. `verify-2`): verify the whole buffer.
//!
//! Without `/dev/xen/xenbus` (not under Xen: the KSM peer guest of the
//! memshare benchmark, booted by plain QEMU) it fills the same buffer and
//! holds it, taking no commands.
//!
//! Each verification is reported as `<command> ok` or `<command> bad=N
//! first=I` (console line `circ-guest-agent: ...` and the state node): a
//! guest that ever saw another guest's bytes, or stale ones, says `bad`.
//!
//! xenstore is spoken over `/dev/xen/xenbus` (`circ-guest-xenbus`): no
//! library in a busybox guest.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::time::Duration;

use circ_guest_xenbus::Xenbus;

const PAGE_SIZE: usize = 4096;
/// 32 MiB: large against what sharing frees elsewhere, small for 128 MiB guests.
const BUFFER_PAGES: usize = 8192;
/// The same in every guest.
const COMMON_SEED: u64 = 0x6369_7263_2d73_6861;

const STATE: &str = "data/circ-agent/state";
/// `gfns/0`, `gfns/1`, ...: the buffer's gfns in buffer order, hexadecimal,
/// space-separated, at most [`GFN_NODE_BYTES`] per node; `gfns/count`: how
/// many nodes.
const GFNS: &str = "data/circ-agent/gfns";
/// Below C xenstored's default node size quota (2048 bytes).
const GFN_NODE_BYTES: usize = 1800;
const COMMAND: &str = "data/circ-agent/command";

/// One page, aligned so that buffer pages are guest pages.
#[derive(Clone)]
#[repr(align(4096))]
struct Page([u8; PAGE_SIZE]);

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn word(seed: u64, page: usize, word: usize) -> [u8; 8] {
    splitmix64(seed ^ ((page as u64) << 9 | word as u64)).to_le_bytes()
}

fn fill(page: &mut Page, seed: u64, index: usize) {
    for (w, chunk) in page.0.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(seed, index, w));
    }
}

fn holds(page: &Page, seed: u64, index: usize) -> bool {
    page.0
        .chunks_exact(8)
        .enumerate()
        .all(|(w, chunk)| chunk == word(seed, index, w))
}

/// FNV-1a, to derive this guest's own seed from its name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The guest frame numbers of the buffer's pages, in buffer order. In a
/// PVH (or HVM) guest the PFN in `/proc/self/pagemap` is the gfn. All of
/// the process is locked in memory first and the kernel asked not to
/// migrate locked pages (`compact_unevictable_allowed`), so the numbers
/// stay true while the agent holds the buffer.
fn buffer_gfns(buffer: &[Page]) -> io::Result<Vec<u64>> {
    use std::os::unix::fs::FileExt as _;
    rustix::mm::mlockall(rustix::mm::MlockAllFlags::CURRENT | rustix::mm::MlockAllFlags::FUTURE)?;
    // Best effort: without it compaction may still move a locked page.
    let _ = std::fs::write("/proc/sys/vm/compact_unevictable_allowed", "0");
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut gfns = Vec::with_capacity(buffer.len());
    for page in buffer {
        let vaddr = page.0.as_ptr() as u64;
        let mut entry = [0u8; 8];
        pagemap.read_exact_at(&mut entry, vaddr / PAGE_SIZE as u64 * 8)?;
        let entry = u64::from_le_bytes(entry);
        let pfn = entry & ((1 << 55) - 1);
        if entry & (1 << 63) == 0 || pfn == 0 {
            return Err(io::Error::other(format!(
                "page at {vaddr:#x} not present or no PFN in pagemap (entry {entry:#x})"
            )));
        }
        gfns.push(pfn);
    }
    Ok(gfns)
}

/// The gfns as xenstore node values (see [`GFNS`]).
fn gfn_nodes(gfns: &[u64]) -> Vec<String> {
    let mut nodes = vec![String::new()];
    for gfn in gfns {
        let word = format!("{gfn:x}");
        let last = nodes.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + word.len() > GFN_NODE_BYTES {
            nodes.push(word);
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(&word);
        }
    }
    nodes
}

/// Report the buffer's gfns under [`GFNS`] (before `filled`, so dom0 finds
/// them once the state says so).
fn report_gfns(xb: &mut Xenbus, buffer: &[Page]) {
    let gfns = match buffer_gfns(buffer) {
        Ok(g) => g,
        Err(e) => {
            say(&format!("cannot read the buffer's gfns: {e}"));
            return;
        }
    };
    let nodes = gfn_nodes(&gfns);
    for (i, node) in nodes.iter().enumerate() {
        if let Err(e) = xb.write(&format!("{GFNS}/{i}"), node) {
            say(&format!("cannot report gfns: {e}"));
            return;
        }
    }
    if let Err(e) = xb.write(&format!("{GFNS}/count"), &nodes.len().to_string()) {
        say(&format!("cannot report gfns: {e}"));
        return;
    }
    say(&format!(
        "gfns pages={} nodes={} first={:#x}",
        gfns.len(),
        nodes.len(),
        gfns.first().copied().unwrap_or(0)
    ));
}

/// The buffer, filled with the pattern common to every guest.
fn filled_buffer() -> Vec<Page> {
    let mut buffer = vec![Page([0; PAGE_SIZE]); BUFFER_PAGES];
    for (i, page) in buffer.iter_mut().enumerate() {
        fill(page, COMMON_SEED, i);
    }
    buffer
}

fn say(line: &str) {
    println!("circ-guest-agent: {line}");
}

/// Check every page against what this guest last wrote there.
#[cfg(test)]
fn verify(buffer: &[Page], own_seed: u64, written: bool) -> (usize, Option<usize>) {
    verify_halves(buffer, own_seed, [false, written])
}

/// [`verify`] with either half written (`[first, second]`).
fn verify_halves(buffer: &[Page], own_seed: u64, written: [bool; 2]) -> (usize, Option<usize>) {
    let half = buffer.len() / 2;
    let mut bad = 0;
    let mut first = None;
    for (i, page) in buffer.iter().enumerate() {
        let seed = if written[usize::from(i >= half)] {
            own_seed
        } else {
            COMMON_SEED
        };
        if !holds(page, seed, i) {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    (bad, first)
}

fn main() {
    say("up");
    let mut xb = match Xenbus::open() {
        Ok(xb) => xb,
        Err(e) => {
            // Not under Xen: the memshare benchmark boots this initrd
            // under plain QEMU as KSM's peer guest. Hold the same buffer
            // the Xen guests hold, so both sides have the same pages.
            let buffer = filled_buffer();
            say(&format!(
                "no xenbus ({e}); filled pages={BUFFER_PAGES}, holding it"
            ));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
                std::hint::black_box(&buffer);
            }
        }
    };
    let name = xb.read("name").ok().flatten().unwrap_or_default();
    let own_seed = fnv1a(name.as_bytes()) | 1;

    let mut buffer = filled_buffer();
    say(&format!("filled pages={BUFFER_PAGES} name={name}"));
    report_gfns(&mut xb, &buffer);
    if let Err(e) = xb.write(STATE, "filled") {
        say(&format!("cannot report state: {e}"));
    }

    // [first half, second half] overwritten with this guest's pattern.
    let mut written = [false, false];
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let command = match xb.read(COMMAND) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                say(&format!("xenbus read failed: {e}; stopping"));
                return;
            }
        };
        if command == last || command.is_empty() {
            continue;
        }
        last.clone_from(&command);
        // `write`: the second half; `write-first`: the first half.
        let which = match command.as_str() {
            "write" => Some(1),
            "write-first" => Some(0),
            _ => None,
        };
        if let Some(which) = which.filter(|w| !written[*w]) {
            let half = buffer.len() / 2;
            let range = if which == 0 {
                0..half
            } else {
                half..buffer.len()
            };
            for i in range {
                fill(&mut buffer[i], own_seed, i);
            }
            written[which] = true;
        }
        let (bad, first) = verify_halves(&buffer, own_seed, written);
        let state = match first {
            None => format!("{command} ok"),
            Some(first) => format!("{command} bad={bad} first={first}"),
        };
        say(&format!("{state} pages={BUFFER_PAGES}"));
        if let Err(e) = xb.write(STATE, &state) {
            say(&format!("cannot report state: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfn_nodes_stay_under_the_node_quota_and_keep_the_order() {
        let gfns: Vec<u64> = (0..8192u64).map(|i| 0x10_0000 + i * 3).collect();
        let nodes = gfn_nodes(&gfns);
        assert!(nodes.iter().all(|n| n.len() <= GFN_NODE_BYTES));
        let back: Vec<u64> = nodes
            .iter()
            .flat_map(|n| n.split(' '))
            .map(|w| u64::from_str_radix(w, 16).unwrap_or(0))
            .collect();
        assert_eq!(back, gfns);
    }

    #[test]
    fn patterns_differ_between_seeds_and_pages_and_verify() {
        let mut a = Page([0; PAGE_SIZE]);
        let mut b = Page([0; PAGE_SIZE]);
        fill(&mut a, COMMON_SEED, 3);
        fill(&mut b, COMMON_SEED, 4);
        assert!(holds(&a, COMMON_SEED, 3) && !holds(&a, COMMON_SEED, 4));
        assert_ne!(a.0, b.0);
        let own = fnv1a(b"ms-a") | 1;
        assert_ne!(own, fnv1a(b"ms-b") | 1);
        assert!(!holds(&a, own, 3));

        let mut buffer = vec![Page([0; PAGE_SIZE]); 4];
        for (i, p) in buffer.iter_mut().enumerate() {
            fill(p, if i >= 2 { own } else { COMMON_SEED }, i);
        }
        assert_eq!(verify(&buffer, own, true), (0, None));
        // Another guest's bytes in page 3 are caught.
        fill(&mut buffer[3], fnv1a(b"ms-b") | 1, 3);
        assert_eq!(verify(&buffer, own, true), (1, Some(3)));
        assert_eq!(verify(&buffer, own, false).0, 2);
    }
}
