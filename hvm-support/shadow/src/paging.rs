//! x86-64 4-level paging: control-register checks, levels, entry bits.

use std::fmt;

use circ_hv::{DomId, DomainType, VcpuRegs};
use serde::{Deserialize, Serialize};

use crate::ShadowError;

/// CR0.PG: paging enabled.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: required by long mode.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging, which we refuse.
pub const CR4_LA57: u64 = 1 << 12;

pub(crate) const ENTRIES: usize = 512;
pub(crate) const PRESENT: u64 = 1 << 0;
pub(crate) const WRITABLE: u64 = 1 << 1;
pub(crate) const USER: u64 = 1 << 2;
pub(crate) const PAGE_SIZE_BIT: u64 = 1 << 7;
pub(crate) const NX: u64 = 1 << 63;
/// Bits 51:12 of an entry: the frame of the next table or a 4 KiB page.
pub(crate) const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A level of the walk, named as Intel does, with Linux's name alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// PML4 (Linux: PGD), each entry covers 512 GiB.
    L4,
    /// Page-directory-pointer table (PUD), 1 GiB per entry.
    L3,
    /// Page directory (PMD), 2 MiB per entry.
    L2,
    /// Page table (PTE), 4 KiB per entry.
    L1,
}

impl Level {
    /// Bit of the VA where this level's index starts.
    pub(crate) fn shift(self) -> u32 {
        match self {
            Level::L4 => 39,
            Level::L3 => 30,
            Level::L2 => 21,
            Level::L1 => 12,
        }
    }

    pub(crate) fn next(self) -> Option<Level> {
        match self {
            Level::L4 => Some(Level::L3),
            Level::L3 => Some(Level::L2),
            Level::L2 => Some(Level::L1),
            Level::L1 => None,
        }
    }

    /// Index 0..4 (L4 first), for per-level tables.
    pub(crate) fn depth(self) -> usize {
        match self {
            Level::L4 => 0,
            Level::L3 => 1,
            Level::L2 => 2,
            Level::L1 => 3,
        }
    }

    /// Reserved bits of an entry at this level, for a guest whose physical
    /// addresses have `max_phys_bits` bits (52 checks only the bits that
    /// are reserved whatever the CPU).
    pub(crate) fn reserved_mask(self, entry: u64, max_phys_bits: u8) -> u64 {
        let bits = u32::from(max_phys_bits.clamp(32, 52));
        // Bits 51:MAXPHYADDR.
        let mut mask = ADDR_MASK & !((1u64 << bits) - 1);
        let huge = entry & PAGE_SIZE_BIT != 0;
        match self {
            // PS in a PML4 entry must be 0.
            Level::L4 => mask |= PAGE_SIZE_BIT,
            // 1 GiB page: bits 29:13 (bit 12 is PAT).
            Level::L3 if huge => mask |= 0x3fff_e000,
            // 2 MiB page: bits 20:13.
            Level::L2 if huge => mask |= 0x001f_e000,
            _ => {}
        }
        mask
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::L4 => "L4 (PML4)",
            Level::L3 => "L3 (PDPT)",
            Level::L2 => "L2 (PD)",
            Level::L1 => "L1 (PT)",
        })
    }
}

/// Size of a leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PageSize {
    #[serde(rename = "4k")]
    Size4K,
    #[serde(rename = "2m")]
    Size2M,
    #[serde(rename = "1g")]
    Size1G,
}

impl PageSize {
    pub fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// How many 4 KiB frames the page spans.
    pub fn frames(self) -> u64 {
        self.bytes() >> 12
    }

    pub(crate) fn at(level: Level) -> PageSize {
        match level {
            Level::L3 => PageSize::Size1G,
            Level::L2 => PageSize::Size2M,
            _ => PageSize::Size4K,
        }
    }
}

/// Where a walk starts: the frame of a domain's top-level table.
///
/// For HVM/PVH the frame is a gfn; for a 64-bit PV guest it is a machine
/// frame (Xen reports PV `cr3` as `mfn << 12`), which is also what foreign
/// maps of a PV guest take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Root {
    pub dom: DomId,
    pub frame: u64,
}

impl Root {
    /// The L4 table a `cr3` value points at; PCID and flag bits (11:0) and
    /// bit 63 are dropped.
    pub fn from_cr3(dom: DomId, cr3: u64) -> Root {
        Root {
            dom,
            frame: (cr3 & ADDR_MASK) >> 12,
        }
    }
}

/// Check that a vCPU runs 4-level 64-bit paging and return its root.
///
/// 5-level paging (CR4.LA57) is refused. For HVM/PVH, CR0.PG and CR4.PAE
/// must be set; without EFER (not in [`VcpuRegs`]) a 32-bit PAE guest is
/// not told apart from long mode, and its walk fails or finds nothing. PV
/// guests are 4-level by construction (Xen supports no LA57 PV), and their
/// control registers are Xen's virtual view, so only LA57 is checked.
pub fn check_paging(
    dom: DomId,
    domain_type: DomainType,
    regs: &VcpuRegs,
) -> Result<Root, ShadowError> {
    if regs.cr4 & CR4_LA57 != 0 {
        return Err(ShadowError::FiveLevelPaging { dom, cr4: regs.cr4 });
    }
    if domain_type.is_translated() && (regs.cr0 & CR0_PG == 0 || regs.cr4 & CR4_PAE == 0) {
        return Err(ShadowError::NotLongMode {
            dom,
            cr0: regs.cr0,
            cr4: regs.cr4,
        });
    }
    Ok(Root::from_cr3(dom, regs.cr3))
}

/// Sign-extend bit 47: the canonical form of a 48-bit VA.
pub(crate) fn canonical(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

pub(crate) fn is_canonical(va: u64) -> bool {
    canonical(va) == va
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn la57_is_refused_clearly() {
        let regs = VcpuRegs {
            cr0: CR0_PG,
            cr3: 0x1000,
            cr4: CR4_PAE | CR4_LA57,
            ..VcpuRegs::default()
        };
        for ty in [DomainType::Hvm, DomainType::Pvh, DomainType::Pv] {
            let err = check_paging(DomId(3), ty, &regs).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(err.to_string().contains("5-level"), "{err}");
        }
    }

    #[test]
    fn paging_off_is_refused_for_translated_guests_only() {
        let regs = VcpuRegs {
            cr3: 0x5000,
            ..VcpuRegs::default()
        };
        let err = check_paging(DomId(3), DomainType::Hvm, &regs).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        let root = check_paging(DomId(3), DomainType::Pv, &regs).unwrap();
        assert_eq!(root.frame, 5);
    }

    #[test]
    fn cr3_drops_pcid_and_noflush_bits() {
        let root = Root::from_cr3(DomId(1), (1 << 63) | 0x1234_5000 | 0xabc);
        assert_eq!(root.frame, 0x12345);
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x0000_7fff_ffff_f000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert_eq!(canonical(0x0000_8000_0000_0000), 0xffff_8000_0000_0000);
    }
}
