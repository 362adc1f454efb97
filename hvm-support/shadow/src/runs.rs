//! Runs: a capture compressed the way Dark Shadows counts it.
//!
//! - A **VA run** is a maximal VA range in which every 4 KiB page is
//!   present, whatever the frames (what PAGEMAP_SCAN returns in the guest;
//!   about one per VMA). A dom0 shadow maps one VA run with one
//!   `xenforeignmemory_map2` call over a gfn array.
//! - A **VA+PA run** is contiguous in both VA and guest-physical frame:
//!   what a plain host would need one mmap for, and what [`RunFormatV1`]
//!   encodes, so it measures the capture's size on the wire.
//!
//! Both are computed from leaves sorted by VA (as [`crate::walk`] returns
//! them); a huge page is one contiguous piece. Permissions do not split
//! runs: the guest agent's pagemap capture, which this one is checked
//! against, has none.

use circ_hv::Gfn;
use serde::Serialize;

use crate::{Leaf, ShadowError};

/// `pages` 4 KiB pages from `va`; `pfn` is the first page's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Run {
    pub va: u64,
    pub pfn: Gfn,
    pub pages: u64,
}

impl Run {
    fn from_leaf(leaf: &Leaf) -> Run {
        Run {
            va: leaf.va,
            pfn: leaf.pfn,
            pages: leaf.size.frames(),
        }
    }

    fn va_end(&self) -> u64 {
        self.va.wrapping_add(self.pages << 12)
    }

    fn pfn_end(&self) -> u64 {
        self.pfn.0.wrapping_add(self.pages)
    }
}

/// VA runs of `leaves` (sorted by VA). A run's `pfn` is its first page's.
pub fn va_runs(leaves: &[Leaf]) -> Vec<Run> {
    merge(leaves, |_, _| true)
}

/// Runs contiguous in both VA and guest frame.
pub fn va_pa_runs(leaves: &[Leaf]) -> Vec<Run> {
    merge(leaves, |run, leaf| run.pfn_end() == leaf.pfn.0)
}

fn merge(leaves: &[Leaf], frames_follow: impl Fn(&Run, &Leaf) -> bool) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for leaf in leaves {
        match runs.last_mut() {
            Some(run) if run.va_end() == leaf.va && frames_follow(run, leaf) => {
                run.pages += leaf.size.frames();
            }
            _ => runs.push(Run::from_leaf(leaf)),
        }
    }
    runs
}

/// The compact run format, version 1: `b"CSR1"`, a LEB128 run count, then
/// per VA+PA run three LEB128 numbers: the VA gap in pages since the end of
/// the previous run, the frame delta from the previous run's end (zigzag,
/// so a run below the previous one costs a few bytes, not ten) and
/// `pages - 1`. Runs are in ascending VA order and do not overlap. A typical
/// run costs 3-6 bytes, against 24 for fixed `(va, pfn, len)` triples.
#[derive(Debug, Clone, Copy)]
pub struct RunFormatV1;

const MAGIC: &[u8; 4] = b"CSR1";
/// VAs are 48-bit (sign-extended): 52-bit page numbers at most.
const PAGE_NUMBER_LIMIT: u64 = 1 << 52;

impl RunFormatV1 {
    /// Encode `runs`, sorted by VA and not overlapping (as [`va_pa_runs`]
    /// returns them).
    pub fn encode(runs: &[Run]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + runs.len() * 4);
        out.extend_from_slice(MAGIC);
        put_varint(&mut out, runs.len() as u64);
        let (mut prev_page, mut prev_pfn) = (0u64, 0u64);
        for run in runs {
            let page = (run.va >> 12) & (PAGE_NUMBER_LIMIT - 1);
            put_varint(&mut out, page.wrapping_sub(prev_page));
            put_varint(&mut out, zigzag(run.pfn.0.wrapping_sub(prev_pfn) as i64));
            put_varint(&mut out, run.pages.saturating_sub(1));
            prev_page = page.wrapping_add(run.pages);
            prev_pfn = run.pfn_end();
        }
        out
    }

    /// Size in bytes of `runs` encoded.
    pub fn encoded_len(runs: &[Run]) -> usize {
        Self::encode(runs).len()
    }

    /// Decode a capture; guest- or network-supplied bytes are fine: any
    /// malformed input is a [`ShadowError::CorruptRunFormat`].
    pub fn decode(bytes: &[u8]) -> Result<Vec<Run>, ShadowError> {
        let corrupt = ShadowError::CorruptRunFormat;
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(corrupt("bad magic, not CSR1"))?;
        let mut cursor = Cursor {
            bytes: rest,
            pos: 0,
        };
        let count = cursor.varint()?;
        // Each run takes at least 3 bytes: bounds the allocation.
        if count > (rest.len() / 3) as u64 {
            return Err(corrupt("run count larger than the input"));
        }
        let mut runs = Vec::with_capacity(count as usize);
        let (mut prev_page, mut prev_pfn) = (0u64, 0u64);
        for _ in 0..count {
            let page = prev_page
                .checked_add(cursor.varint()?)
                .ok_or(corrupt("va overflows"))?;
            let pfn = prev_pfn.wrapping_add(unzigzag(cursor.varint()?) as u64);
            let pages = cursor
                .varint()?
                .checked_add(1)
                .ok_or(corrupt("run length overflows"))?;
            let end = page
                .checked_add(pages)
                .filter(|end| *end <= PAGE_NUMBER_LIMIT)
                .ok_or(corrupt("run leaves the 48-bit address space"))?;
            let pfn_end = pfn
                .checked_add(pages)
                .ok_or(corrupt("frame range overflows"))?;
            // 52-bit page number back to a sign-extended VA.
            let va = crate::paging::canonical(page << 12);
            let last = crate::paging::canonical((end - 1) << 12);
            if (va >> 12) & (PAGE_NUMBER_LIMIT - 1) != page || (va >> 63) != (last >> 63) {
                return Err(corrupt("run is not canonical"));
            }
            runs.push(Run {
                va,
                pfn: Gfn(pfn),
                pages,
            });
            prev_page = end;
            prev_pfn = pfn_end;
        }
        if cursor.pos != cursor.bytes.len() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(runs)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn varint(&mut self) -> Result<u64, ShadowError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.pos)
                .ok_or(ShadowError::CorruptRunFormat("truncated"))?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(ShadowError::CorruptRunFormat("varint overflows"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                // One encoding per number, so decode and encode are inverses.
                if byte == 0 && shift > 0 {
                    return Err(ShadowError::CorruptRunFormat("varint not minimal"));
                }
                return Ok(value);
            }
        }
        Err(ShadowError::CorruptRunFormat("varint too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn run_format_round_trips_both_halves() {
        let runs = vec![
            Run {
                va: 0x40_0000,
                pfn: Gfn(0x1000),
                pages: 3,
            },
            Run {
                va: 0x40_3000,
                pfn: Gfn(0x10),
                pages: 1,
            },
            Run {
                va: 0x7fff_ffff_f000,
                pfn: Gfn(u64::MAX - 1),
                pages: 1,
            },
            Run {
                va: 0xffff_8000_0000_0000,
                pfn: Gfn(5),
                pages: 512,
            },
        ];
        let bytes = RunFormatV1::encode(&runs);
        assert_eq!(RunFormatV1::decode(&bytes).unwrap(), runs);
        assert!(bytes.len() < runs.len() * 24);
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        for bad in [
            &b""[..],
            b"CSR0",
            b"CSR1",
            b"CSR1\x05\x00\x00\x00",
            b"CSR1\x01\x00\x00\x00\x00",
            b"CSR1\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x00",
            b"CSR1\x01\x80\x80\x80\x80\x80\x80\x80\x08\x00\x00",
            b"CSR1\x01\x80\x00\x00\x00",
        ] {
            let err = RunFormatV1::decode(bad).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{bad:?}");
        }
    }
}
