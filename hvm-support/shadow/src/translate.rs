//! [`FrameTranslation`]: from the frames in a guest's page-table entries to
//! the guest's own physical frames.
//!
//! HVM and PVH entries hold gfns already ([`Identity`]). A PV guest's
//! entries hold machine frames; what its `/proc/PID/pagemap` reports, and
//! what a capture is compared on, is its pseudo-physical frame (pfn). The
//! translation is Xen's m2p restricted to the guest, which is the inverse of
//! the guest's own p2m list: [`M2pMap::from_p2m`].

use std::collections::HashMap;

use circ_hv::{Gfn, Mfn};

/// Maps a frame from a page-table entry to the guest-physical frame.
pub trait FrameTranslation {
    /// The guest's frame for `frame`, or `None` if the frame is not one of
    /// the guest's own pages (a PV guest's grant or foreign mapping, whose
    /// machine frame belongs to another domain).
    fn guest_frame(&self, frame: u64) -> Option<Gfn>;
}

/// HVM/PVH: entries already hold gfns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity;

impl FrameTranslation for Identity {
    fn guest_frame(&self, frame: u64) -> Option<Gfn> {
        Some(Gfn(frame))
    }
}

/// PV: machine frame to pseudo-physical frame, for one guest.
#[derive(Debug, Clone, Default)]
pub struct M2pMap {
    map: HashMap<u64, Gfn>,
}

/// Xen's `INVALID_P2M_ENTRY`: a pfn with no machine frame.
const INVALID_P2M_ENTRY: u64 = !0;

impl M2pMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Invert a p2m list (`p2m[pfn] = mfn`, as the guest publishes it; see
    /// `docs/shadow.md`). Invalid entries (`!0`) are skipped. The list is
    /// guest-written: if two pfns claim one mfn, the lower pfn wins.
    pub fn from_p2m(p2m: &[Mfn]) -> Self {
        let mut m2p = Self::new();
        for (pfn, mfn) in p2m.iter().enumerate() {
            if mfn.0 != INVALID_P2M_ENTRY {
                m2p.map.entry(mfn.0).or_insert(Gfn(pfn as u64));
            }
        }
        m2p
    }

    /// Record that machine frame `mfn` is the guest's `pfn`.
    pub fn insert(&mut self, mfn: Mfn, pfn: Gfn) {
        self.map.insert(mfn.0, pfn);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl FrameTranslation for M2pMap {
    fn guest_frame(&self, frame: u64) -> Option<Gfn> {
        self.map.get(&frame).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2m_inverts_skipping_invalid_and_duplicates() {
        let m2p = M2pMap::from_p2m(&[Mfn(0x900), Mfn(!0), Mfn(0x905), Mfn(0x900)]);
        assert_eq!(m2p.len(), 2);
        assert_eq!(m2p.guest_frame(0x900), Some(Gfn(0)));
        assert_eq!(m2p.guest_frame(0x905), Some(Gfn(2)));
        assert_eq!(m2p.guest_frame(0x901), None);
        assert_eq!(Identity.guest_frame(7), Some(Gfn(7)));
    }
}
