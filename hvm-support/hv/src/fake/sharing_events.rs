//! [`FakeSharingEvents`]: sharing rings on a [`FakeHypervisor`]'s host.
//!
//! Tests post requests with [`FakeSharingEvents::post_enomem`] (as Xen does
//! when a copy-on-write break finds no memory: the vCPU is paused) and see
//! what the code under test answered with [`paused_vcpus`] and
//! [`resumed`]. `wait` never blocks.
//!
//! [`paused_vcpus`]: FakeSharingEvents::paused_vcpus
//! [`resumed`]: FakeSharingEvents::resumed

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{os_err, FakeHypervisor};
use crate::{Attached, DomId, EnomemRequest, ErrorKind, Gfn, HvError, Hypervisor, SharingEvents};

#[derive(Debug, Default)]
pub(super) struct Rings {
    /// Domains with an enabled ring (whoever enabled it).
    enabled: BTreeSet<DomId>,
    /// Rings enabled by a helper that is gone (see `leave_stale_ring`).
    stale: BTreeSet<DomId>,
    /// Requests posted and not yet read by `wait`.
    queued: VecDeque<EnomemRequest>,
    /// Requests read and not yet answered.
    open: Vec<EnomemRequest>,
    /// vCPUs paused by a request, with how many requests hold them.
    paused: BTreeMap<(DomId, u32), u32>,
    resumed: Vec<(DomId, u32)>,
    attach_calls: u32,
}

/// One helper's handle on the fake host's sharing rings. Clones (and the
/// boxes `FakeHypervisor::sharing_events` returns) see the same rings.
#[derive(Debug, Clone)]
pub struct FakeSharingEvents {
    hv: FakeHypervisor,
    rings: Arc<Mutex<Rings>>,
}

impl FakeSharingEvents {
    pub(super) fn new(hv: FakeHypervisor, rings: Arc<Mutex<Rings>>) -> Self {
        Self { hv, rings }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// As Xen on a copy-on-write break without memory: pause `vcpu` and post
    /// a request. Returns false (and does nothing) without a ring: real Xen
    /// would then crash the guest. On a stale ring (no helper listens) the
    /// vCPU is paused and the request never read, as in Xen.
    pub fn post_enomem(&self, dom: DomId, vcpu: u32, gfn: Gfn) -> bool {
        let mut r = self.lock();
        if !r.enabled.contains(&dom) {
            return false;
        }
        *r.paused.entry((dom, vcpu)).or_default() += 1;
        if r.stale.contains(&dom) {
            return true;
        }
        r.queued.push_back(EnomemRequest {
            dom,
            vcpu,
            gfn,
            vcpu_paused: true,
        });
        true
    }

    /// Model a helper that died with `dom`'s ring enabled.
    pub fn leave_stale_ring(&self, dom: DomId) {
        let mut r = self.lock();
        r.enabled.insert(dom);
        r.stale.insert(dom);
    }

    /// vCPUs of `dom` that a request keeps paused.
    pub fn paused_vcpus(&self, dom: DomId) -> Vec<u32> {
        self.lock()
            .paused
            .keys()
            .filter(|(d, _)| *d == dom)
            .map(|(_, v)| *v)
            .collect()
    }

    /// Every `(domain, vcpu)` answered so far, in order.
    pub fn resumed(&self) -> Vec<(DomId, u32)> {
        self.lock().resumed.clone()
    }

    /// Whether `dom` has an enabled ring.
    pub fn is_enabled(&self, dom: DomId) -> bool {
        self.lock().enabled.contains(&dom)
    }

    /// How many times `attach` was called (also for domains already attached).
    pub fn attach_calls(&self) -> u32 {
        self.lock().attach_calls
    }

    /// What detaching and leaving a ring enabled have in common: every open
    /// request of `dom` answered (its vCPUs resumed), nothing queued kept.
    fn release(r: &mut Rings, dom: DomId) {
        let vcpus: Vec<u32> = r
            .open
            .iter()
            .filter(|q| q.dom == dom)
            .map(|q| q.vcpu)
            .collect();
        for vcpu in vcpus {
            Self::answer(r, dom, vcpu);
        }
        r.queued.retain(|q| q.dom != dom);
    }

    fn answer(r: &mut Rings, dom: DomId, vcpu: u32) {
        let before = r.open.len();
        r.open.retain(|q| !(q.dom == dom && q.vcpu == vcpu));
        let answered = (before - r.open.len()) as u32;
        if answered == 0 {
            return;
        }
        if let Some(n) = r.paused.get_mut(&(dom, vcpu)) {
            *n = n.saturating_sub(answered);
            if *n == 0 {
                r.paused.remove(&(dom, vcpu));
            }
        }
        r.resumed.push((dom, vcpu));
    }
}

impl SharingEvents for FakeSharingEvents {
    fn attach(&mut self, dom: DomId) -> Result<Attached, HvError> {
        let info = self.hv.domain(dom)?;
        let mut r = self.lock();
        r.attach_calls += 1;
        if !info.domain_type.is_translated() {
            return Err(HvError::with_kind(
                format!("domain {dom} is PV: it has no sharing ring"),
                ErrorKind::NotSupported,
                None,
            ));
        }
        if r.stale.remove(&dom) {
            // As circ-xen: the stale ring's paused vCPUs are answered
            // (Xen's pause count is per vCPU), then a new ring serves.
            let left: Vec<(DomId, u32)> = r
                .paused
                .keys()
                .filter(|(d, _)| *d == dom)
                .copied()
                .collect();
            for key in left {
                r.paused.remove(&key);
                r.resumed.push(key);
            }
            return Ok(Attached::ReplacedStale);
        }
        if r.enabled.insert(dom) {
            Ok(Attached::New)
        } else {
            Ok(Attached::Already)
        }
    }

    fn detach(&mut self, dom: DomId) -> Result<(), HvError> {
        let mut r = self.lock();
        Self::release(&mut r, dom);
        r.enabled.remove(&dom);
        Ok(())
    }

    fn leave_enabled(&mut self, dom: DomId) -> Result<(), HvError> {
        let mut r = self.lock();
        Self::release(&mut r, dom);
        if r.enabled.contains(&dom) {
            r.stale.insert(dom);
        }
        Ok(())
    }

    fn attached(&self) -> Vec<DomId> {
        let r = self.lock();
        r.enabled.difference(&r.stale).copied().collect()
    }

    fn wait(&mut self, _timeout: Duration) -> Result<Vec<EnomemRequest>, HvError> {
        let mut r = self.lock();
        let got: Vec<EnomemRequest> = r.queued.drain(..).collect();
        r.open.extend(got.iter().copied());
        Ok(got)
    }

    fn resume(&mut self, dom: DomId, vcpu: u32) -> Result<(), HvError> {
        self.hv.domain(dom)?;
        let mut r = self.lock();
        if !r.enabled.contains(&dom) {
            return Err(os_err(
                format!("domain {dom} has no sharing ring"),
                libc::ENOENT,
            ));
        }
        Self::answer(&mut r, dom, vcpu);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DomainType;

    #[test]
    fn post_pauses_and_resume_unpauses() {
        let hv = FakeHypervisor::new();
        hv.add_domain(DomId(1), DomainType::Pvh, 100);
        let mut ev = hv.sharing_rings();
        assert!(
            !ev.post_enomem(DomId(1), 0, Gfn(5)),
            "no ring: Xen would crash the guest"
        );
        assert_eq!(ev.attach(DomId(1)).ok(), Some(Attached::New));
        assert_eq!(ev.attach(DomId(1)).ok(), Some(Attached::Already));
        assert!(ev.post_enomem(DomId(1), 0, Gfn(5)));
        assert_eq!(ev.paused_vcpus(DomId(1)), [0]);
        let got = ev.wait(Duration::ZERO).unwrap_or_default();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].gfn, Gfn(5));
        assert!(ev.resume(DomId(1), 0).is_ok());
        assert!(ev.paused_vcpus(DomId(1)).is_empty());
        assert_eq!(ev.resumed(), [(DomId(1), 0)]);
    }

    #[test]
    fn pv_and_missing_domains_cannot_attach() {
        let hv = FakeHypervisor::new();
        let mut ev = hv.sharing_rings();
        let err = ev.attach(DomId::DOM0).err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::NotSupported));
        let err = ev.attach(DomId(9)).err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::NotFound));
    }

    #[test]
    fn a_ring_left_enabled_pauses_until_taken_over() {
        let hv = FakeHypervisor::new();
        hv.add_domain(DomId(3), DomainType::Pvh, 100);
        let mut ev = hv.sharing_rings();
        let _ = ev.attach(DomId(3));
        ev.post_enomem(DomId(3), 0, Gfn(1));
        let _ = ev.wait(Duration::ZERO);
        assert!(ev.leave_enabled(DomId(3)).is_ok());
        assert!(ev.paused_vcpus(DomId(3)).is_empty(), "answered");
        assert!(ev.is_enabled(DomId(3)) && ev.attached().is_empty());
        // Nobody listens: the next break pauses the vCPU for good...
        assert!(ev.post_enomem(DomId(3), 1, Gfn(2)));
        assert!(ev.wait(Duration::ZERO).unwrap_or_default().is_empty());
        assert_eq!(ev.paused_vcpus(DomId(3)), [1]);
        // ...until a helper takes the ring over.
        assert_eq!(ev.attach(DomId(3)).ok(), Some(Attached::ReplacedStale));
        assert!(ev.paused_vcpus(DomId(3)).is_empty());
    }

    #[test]
    fn detach_answers_open_requests() {
        let hv = FakeHypervisor::new();
        hv.add_domain(DomId(2), DomainType::Hvm, 100);
        let mut ev = hv.sharing_rings();
        let _ = ev.attach(DomId(2));
        ev.post_enomem(DomId(2), 1, Gfn(7));
        let _ = ev.wait(Duration::ZERO);
        assert!(ev.detach(DomId(2)).is_ok());
        assert!(ev.paused_vcpus(DomId(2)).is_empty());
        assert!(!ev.is_enabled(DomId(2)));
    }
}
