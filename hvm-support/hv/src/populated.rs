//! Finding a translated guest's populated gfns by probing with foreign maps.
//!
//! Neither the public libxenctrl API nor the hypercall ABI offers dom0 a
//! guest's p2m layout, and the guest's e820 is only known to the guest. What
//! dom0 can do is ask privcmd to map a batch of gfns with a per-page error
//! array: a page that maps is populated, one that fails is a hole (or paged
//! out, or not mappable, e.g. MMIO). That is the same call a sharing scanner
//! makes to read pages, so "populated" here means "mappable by dom0".
//!
//! Cost is one map + unmap per [`PROBE_BATCH`] gfns over `0..=max_gpfn`: for a
//! 128 MiB PVH guest with special pages just below 4 GiB that is ~1,020 calls.
//! Callers that scan repeatedly should cache the result while the guest is
//! paused.
//!
//! [`populated_ranges`] asks the [`Hypervisor`] what it knows (the domain's
//! type, its maximum gpfn) and probes through the [`ForeignMemory`]: two
//! seams, neither of which needs to know the other.

use crate::{
    DomId, ErrorKind, ForeignMapping, ForeignMemory, Gfn, GfnRange, HvError, Hypervisor, Placement,
    Protection,
};

/// Gfns per map call: 4 MiB of our address space at a time.
pub const PROBE_BATCH: usize = 1024;

/// Refuse to probe more than this many gfns (1 TiB of guest-physical space):
/// a guest can raise its own max gpfn, and should not buy hours of our time.
pub const PROBE_LIMIT: u64 = 1 << 28;

/// The gfns of `dom` that are backed by memory, as sorted, disjoint ranges:
/// [`probe_populated`] over `0..=`[`Hypervisor::maximum_gpfn`]. Pause the
/// domain first for a stable answer. Only for translated guests (HVM, PVH):
/// a PV guest's frames are MFNs, with no p2m in Xen, so `NotSupported`.
pub fn populated_ranges<H, F>(hv: &H, fm: &F, dom: DomId) -> Result<Vec<GfnRange>, HvError>
where
    H: Hypervisor + ?Sized,
    F: ForeignMemory + ?Sized,
{
    if !hv.domain(dom)?.domain_type.is_translated() {
        return Err(HvError::with_kind(
            format!("domain {dom} is PV: populated ranges need a translated (HVM/PVH) guest"),
            ErrorKind::NotSupported,
            None,
        ));
    }
    let max = hv.maximum_gpfn(dom)?;
    probe_populated(fm, dom, max)
}

/// Populated ranges of `dom` in `0..=max_gpfn`, sorted and coalesced.
pub fn probe_populated<F: ForeignMemory + ?Sized>(
    fm: &F,
    dom: DomId,
    max_gpfn: Gfn,
) -> Result<Vec<GfnRange>, HvError> {
    let end = max_gpfn.0.saturating_add(1);
    if end > PROBE_LIMIT {
        return Err(HvError::with_kind(
            format!("maximum gpfn {max_gpfn} of domain {dom} is beyond the probe limit"),
            ErrorKind::InvalidInput,
            None,
        ));
    }

    let mut ranges = RangeBuilder::default();
    let mut gfns = Vec::with_capacity(PROBE_BATCH);
    let mut start = 0;
    while start < end {
        let batch_end = end.min(start + PROBE_BATCH as u64);
        gfns.clear();
        gfns.extend((start..batch_end).map(Gfn));
        let mapping = fm.map(dom, &gfns, Protection::Read, Placement::Anywhere)?;
        for (index, gfn) in gfns.iter().enumerate() {
            if mapping.page_error(index).is_none() {
                ranges.push(*gfn);
            }
        }
        // Unmap before the next batch: the scan must not hold references
        // that would make a later nominate fail with E2BIG.
        drop(mapping);
        start = batch_end;
    }
    Ok(ranges.finish())
}

/// Coalesces ascending gfns into ranges.
#[derive(Debug, Default)]
pub struct RangeBuilder {
    ranges: Vec<GfnRange>,
}

impl RangeBuilder {
    /// Add `gfn`, which must be above every gfn added before.
    pub fn push(&mut self, gfn: Gfn) {
        match self.ranges.last_mut() {
            Some(last) if last.end == gfn => last.end = Gfn(gfn.0 + 1),
            _ => self.ranges.push(GfnRange::new(gfn, Gfn(gfn.0 + 1))),
        }
    }

    pub fn finish(self) -> Vec<GfnRange> {
        self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeHypervisor;
    use crate::{DomainType, PAGE_SIZE};

    #[test]
    fn coalesces_adjacent_gfns() {
        let mut b = RangeBuilder::default();
        for g in [0, 1, 2, 5, 6, 9] {
            b.push(Gfn(g));
        }
        let r = b.finish();
        assert_eq!(
            r,
            [
                GfnRange::new(Gfn(0), Gfn(3)),
                GfnRange::new(Gfn(5), Gfn(7)),
                GfnRange::new(Gfn(9), Gfn(10))
            ]
        );
    }

    #[test]
    fn probe_finds_ram_and_special_pages_across_batches() {
        let hv = FakeHypervisor::new();
        let dom = DomId(1);
        hv.add_domain(dom, DomainType::Pvh, 4096);
        let page = [0u8; PAGE_SIZE];
        for g in (0..1500).chain(3000..3002) {
            hv.set_page(dom, Gfn(g), &page);
        }
        let fm = hv.foreign_memory();
        let ranges = probe_populated(&fm, dom, Gfn(3001)).unwrap();
        assert_eq!(
            ranges,
            [
                GfnRange::new(Gfn(0), Gfn(1500)),
                GfnRange::new(Gfn(3000), Gfn(3002))
            ]
        );
        // Nothing is left mapped: nominate must not see E2BIG.
        hv.set_sharing(dom, true).unwrap();
        use crate::Hypervisor;
        hv.nominate_gfn(dom, Gfn(0)).unwrap();
    }

    #[test]
    fn probe_refuses_absurd_max_gpfn() {
        let hv = FakeHypervisor::new();
        let err = probe_populated(&hv.foreign_memory(), DomId(1), Gfn(u64::MAX)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
