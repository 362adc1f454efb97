//! Newtypes for the numbers the hypervisor hands around, so a gfn cannot be
//! passed where a domid is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Size of a guest page on x86 (Xen's `XC_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;

/// A Xen domain id (`domid_t` is 16 bits; the C APIs widen it to `uint32_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
}

impl fmt::Display for DomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A guest frame number: a page index in the guest's physical address space.
///
/// For auto-translated guests (HVM, PVH) this is what foreign mappings and
/// memory sharing take. PV guests have no p2m in Xen: there the map APIs take
/// machine frames ([`Mfn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gfn(pub u64);

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A machine frame number (host physical page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Mfn(pub u64);

impl fmt::Display for Mfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A half-open range of guest frames, `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GfnRange {
    pub start: Gfn,
    pub end: Gfn,
}

impl GfnRange {
    pub fn new(start: Gfn, end: Gfn) -> Self {
        Self { start, end }
    }

    /// Number of frames in the range.
    pub fn len(&self) -> u64 {
        self.end.0.saturating_sub(self.start.0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, gfn: Gfn) -> bool {
        (self.start..self.end).contains(&gfn)
    }

    pub fn iter(&self) -> impl Iterator<Item = Gfn> {
        (self.start.0..self.end.0).map(Gfn)
    }
}

/// A grant reference offered by a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GrantRef(pub u32);

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The opaque handle Xen returns when a page is nominated for sharing. Xen
/// invalidates it if the page is written before it is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharingHandle(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gfn_range_len_and_iter() {
        let r = GfnRange::new(Gfn(4), Gfn(7));
        assert_eq!(r.len(), 3);
        assert!(r.contains(Gfn(6)) && !r.contains(Gfn(7)));
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![Gfn(4), Gfn(5), Gfn(6)]);
        assert!(GfnRange::new(Gfn(9), Gfn(3)).is_empty());
    }
}
