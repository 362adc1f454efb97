//! Where the program goes: its `PT_LOAD` segments as page-aligned mappings
//! with their protections, and the auxv values that describe them. Pure
//! arithmetic on [`LoadImage`], so every check runs in unit tests.

use circ_tsys_rewrite::LoadImage;

use crate::PAGE_SIZE;

/// Lowest address a program may ask for: Linux's default `mmap_min_addr`.
pub const MIN_ADDRESS: u64 = 0x1_0000;
/// One past the highest x86-64 user address with 4-level paging.
pub const USER_END: u64 = 0x7fff_ffff_f000;

/// `PROT_READ`, `PROT_WRITE`, `PROT_EXEC` of one mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protection {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Protection {
    fn union(self, other: Protection) -> Protection {
        Protection {
            read: self.read || other.read,
            write: self.write || other.write,
            execute: self.execute || other.execute,
        }
    }
}

/// Pages `[start, start + len)` and what they allow once loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub len: u64,
    pub protection: Protection,
}

/// Bytes `file[offset..offset + len]` copied to `vaddr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    pub vaddr: u64,
    pub offset: u64,
    pub len: u64,
}

/// How to load a program: map `mappings` (anonymous, zero-filled), copy
/// `copies` into them, then apply each mapping's protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPlan {
    pub mappings: Vec<Mapping>,
    pub copies: Vec<Copy>,
    pub entry: u64,
    /// `AT_PHDR`: where the program headers are once loaded.
    pub phdr: u64,
    pub phnum: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no loadable segment")]
    NoSegments,
    #[error("segment at {vaddr:#x} (+{memsz:#x}) lies outside user space ({MIN_ADDRESS:#x}..{USER_END:#x})")]
    OutsideUserSpace { vaddr: u64, memsz: u64 },
    #[error("the entry point {0:#x} is not in an executable segment")]
    EntryNotExecutable(u64),
    #[error("the program headers (file offset {0:#x}) are not in a loaded segment, so the program could not find its TLS segment")]
    PhdrsNotLoaded(u64),
}

fn page_down(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

/// The plan for `image`. Segments may share a page (the linker may start
/// one segment in the page where the previous one ends): that page gets
/// both protections.
pub fn plan(image: &LoadImage) -> Result<LoadPlan, PlanError> {
    // Per page range, in address order: (first page, end page, protection).
    let mut ranges: Vec<(u64, u64, Protection)> = Vec::new();
    let mut copies = Vec::new();
    for seg in image.segments.iter().filter(|s| s.memsz > 0) {
        let outside = || PlanError::OutsideUserSpace {
            vaddr: seg.vaddr,
            memsz: seg.memsz,
        };
        let end = seg.vaddr.checked_add(seg.memsz).ok_or_else(outside)?;
        if seg.vaddr < MIN_ADDRESS || end > USER_END {
            return Err(outside());
        }
        let protection = Protection {
            read: seg.read,
            write: seg.write,
            execute: seg.execute,
        };
        // `end <= USER_END`, page aligned, so rounding up cannot overflow.
        ranges.push((
            page_down(seg.vaddr),
            page_down(end + PAGE_SIZE - 1),
            protection,
        ));
        if seg.filesz > 0 {
            copies.push(Copy {
                vaddr: seg.vaddr,
                offset: seg.offset,
                len: seg.filesz,
            });
        }
    }
    if ranges.is_empty() {
        return Err(PlanError::NoSegments);
    }
    ranges.sort_by_key(|r| r.0);
    let mut mappings: Vec<Mapping> = Vec::new();
    for (start, end, protection) in ranges {
        let mut start = start;
        if let Some(last) = mappings.last_mut() {
            let last_end = last.start + last.len;
            if start < last_end {
                // A shared page (segments never share addresses, so at most
                // the boundary page): give it both protections.
                let shared = Mapping {
                    start,
                    len: PAGE_SIZE,
                    protection: last.protection.union(protection),
                };
                last.len -= PAGE_SIZE;
                if last.len == 0 {
                    mappings.pop();
                }
                mappings.push(shared);
                start += PAGE_SIZE;
            }
        }
        if end > start {
            mappings.push(Mapping {
                start,
                len: end - start,
                protection,
            });
        }
    }
    let executable = |addr: u64| {
        image
            .segments
            .iter()
            .any(|s| s.execute && s.vaddr <= addr && addr < s.vaddr + s.memsz)
    };
    if !executable(image.entry) {
        return Err(PlanError::EntryNotExecutable(image.entry));
    }
    let phdrs_len = u64::from(image.phnum) * 56;
    let phdr = image
        .segments
        .iter()
        .find(|s| {
            s.offset <= image.phoff
                && image
                    .phoff
                    .checked_add(phdrs_len)
                    .is_some_and(|end| end <= s.offset + s.filesz)
        })
        .map(|s| s.vaddr + (image.phoff - s.offset))
        .ok_or(PlanError::PhdrsNotLoaded(image.phoff))?;
    Ok(LoadPlan {
        mappings,
        copies,
        entry: image.entry,
        phdr,
        phnum: image.phnum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use circ_tsys_rewrite::LoadSegment;

    const R: (bool, bool, bool) = (true, false, false);
    const RX: (bool, bool, bool) = (true, false, true);
    const RW: (bool, bool, bool) = (true, true, false);

    fn seg(vaddr: u64, offset: u64, filesz: u64, memsz: u64, p: (bool, bool, bool)) -> LoadSegment {
        LoadSegment {
            vaddr,
            offset,
            filesz,
            memsz,
            read: p.0,
            write: p.1,
            execute: p.2,
        }
    }

    fn prot(p: (bool, bool, bool)) -> Protection {
        Protection {
            read: p.0,
            write: p.1,
            execute: p.2,
        }
    }

    /// The layout of Debian's busybox-static (readelf -l), in short.
    fn busybox_like() -> LoadImage {
        LoadImage {
            entry: 0x401_b40,
            phoff: 64,
            phnum: 10,
            segments: vec![
                seg(0x40_0000, 0, 0x548, 0x548, R),
                seg(0x40_1000, 0x1000, 0x1_8000, 0x1_8000, RX),
                seg(0x41_9000, 0x1_9000, 0x8000, 0x8000, R),
                // Data starts mid-page (offset 0x21_7b0), bss after it.
                seg(0x42_27b0, 0x2_17b0, 0x1000, 0x3000, RW),
            ],
        }
    }

    #[test]
    fn segments_become_page_aligned_mappings_and_copies() {
        let plan = plan(&busybox_like()).unwrap();
        assert_eq!(
            plan.mappings,
            vec![
                Mapping {
                    start: 0x40_0000,
                    len: 0x1000,
                    protection: prot(R)
                },
                Mapping {
                    start: 0x40_1000,
                    len: 0x1_8000,
                    protection: prot(RX)
                },
                Mapping {
                    start: 0x41_9000,
                    len: 0x8000,
                    protection: prot(R)
                },
                Mapping {
                    start: 0x42_2000,
                    len: 0x4000,
                    protection: prot(RW)
                },
            ]
        );
        assert_eq!(plan.copies.len(), 4);
        assert_eq!(
            plan.copies[3],
            Copy {
                vaddr: 0x42_27b0,
                offset: 0x2_17b0,
                len: 0x1000
            }
        );
        assert_eq!(plan.phdr, 0x40_0040);
        assert_eq!(plan.entry, 0x401_b40);
    }

    #[test]
    fn a_page_two_segments_share_gets_both_protections() {
        let image = LoadImage {
            entry: 0x40_0100,
            phoff: 64,
            phnum: 2,
            segments: vec![
                seg(0x40_0000, 0, 0x1800, 0x1800, RX),
                seg(0x40_1800, 0x1800, 0x100, 0x2000, RW),
            ],
        };
        let plan = plan(&image).unwrap();
        let rwx = Protection {
            read: true,
            write: true,
            execute: true,
        };
        assert_eq!(
            plan.mappings,
            vec![
                Mapping {
                    start: 0x40_0000,
                    len: 0x1000,
                    protection: prot(RX)
                },
                Mapping {
                    start: 0x40_1000,
                    len: 0x1000,
                    protection: rwx
                },
                Mapping {
                    start: 0x40_2000,
                    len: 0x2000,
                    protection: prot(RW)
                },
            ]
        );
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut low = busybox_like();
        low.segments[0].vaddr = 0x1000;
        assert!(matches!(
            plan(&low),
            Err(PlanError::OutsideUserSpace { .. })
        ));
        let mut high = busybox_like();
        high.segments[3].memsz = u64::MAX - 0x1000;
        assert!(matches!(
            plan(&high),
            Err(PlanError::OutsideUserSpace { .. })
        ));
        let mut entry = busybox_like();
        entry.entry = 0x42_2800;
        assert_eq!(plan(&entry), Err(PlanError::EntryNotExecutable(0x42_2800)));
        let mut phdrs = busybox_like();
        phdrs.phoff = 0x10_0000;
        assert_eq!(plan(&phdrs), Err(PlanError::PhdrsNotLoaded(0x10_0000)));
        let empty = LoadImage {
            segments: vec![],
            ..busybox_like()
        };
        assert_eq!(plan(&empty), Err(PlanError::NoSegments));
    }
}
