//! [`SharingRing`]: one domain's memory-sharing vm_event ring, and
//! [`XenSharingEvents`], the `SharingEvents` handle over several of them.
//!
//! Enabling follows libxenctrl's private `xc_vm_event_enable` (Xen 4.17,
//! tools/libs/ctrl/xc_vm_event.c): pause the domain; read
//! `HVM_PARAM_SHARING_RING_PFN`; populate that gfn if it is not (a ring
//! enabled before removed it); map it; enable the ring
//! (`xc_memshr_ring_enable`, which returns Xen's event-channel port);
//! remove the page from the guest's physmap so the guest cannot write it;
//! unpause. Xen is the ring's front end (it produces requests); we are the
//! back end, with the index handling of Xen's `io/ring.h` done here.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::os::fd::AsRawFd as _;
use std::ptr;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use circ_hv::{
    Attached, DomId, EnomemRequest, ErrorKind, ForeignMapping as _, ForeignMemory as _, Gfn,
    HvError, Placement, Protection, SharingEvents, PAGE_SIZE,
};
use circ_xen_sys as sys;

use crate::{errno, EventChannels, Port, XenCtrl, XenForeignMemory, XenMapping};

const ENTRY_SIZE: usize = std::mem::size_of::<sys::vm_event_sring_entry>();
const RING_OFFSET: usize = std::mem::offset_of!(sys::vm_event_sring, ring);
/// `__RING_SIZE`: entries that fit after the header, rounded down to a power
/// of two (8 for 400-byte entries).
const RING_ENTRIES: u32 = {
    let n = ((PAGE_SIZE - RING_OFFSET) / ENTRY_SIZE) as u32;
    1 << (31 - n.leading_zeros())
};

/// A request consumed from the ring and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Open {
    vcpu: u32,
    gfn: u64,
    flags: u32,
    reason: u32,
}

/// One domain's sharing ring, enabled in Xen and mapped here. Dropping it
/// answers every open request (unpausing its vCPU), then disables the ring.
#[derive(Debug)]
pub struct SharingRing {
    dom: DomId,
    ctrl: XenCtrl,
    evtchn: EventChannels,
    port: Port,
    page: XenMapping,
    /// Back-ring private indices (`req_cons`, `rsp_prod_pvt`).
    req_cons: u32,
    rsp_prod_pvt: u32,
    open: Vec<Open>,
}

impl SharingRing {
    /// Enable `dom`'s sharing ring. Returns whether a ring some earlier
    /// helper left enabled had to be replaced.
    pub fn enable(fmem: &XenForeignMemory, dom: DomId) -> Result<(Self, bool), HvError> {
        let ctrl = XenCtrl::open()?;
        let evtchn = EventChannels::open()?;
        let domid = u32::from(dom.0);
        // SAFETY: plain call on a valid handle.
        let rc = unsafe { sys::xc_domain_pause(ctrl.raw(), domid) };
        check(rc, || {
            format!("failed to pause domain {dom} to set up its sharing ring")
        })?;
        let setup = Self::setup_paused(&ctrl, fmem, dom);
        // SAFETY: plain call on a valid handle; undoes the pause above.
        let rc = unsafe { sys::xc_domain_unpause(ctrl.raw(), domid) };
        let unpaused = check(rc, || format!("failed to unpause domain {dom}"));
        let (page, remote_port, replaced) = match (setup, unpaused) {
            (Ok(done), Ok(())) => done,
            (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        };
        let port = match evtchn.bind_interdomain(dom, remote_port) {
            Ok(port) => port,
            Err(e) => {
                // SAFETY: plain call on a valid handle; nothing paused yet.
                unsafe { sys::xc_memshr_ring_disable(ctrl.raw(), domid) };
                return Err(e);
            }
        };
        let ring = Self {
            dom,
            ctrl,
            evtchn,
            port,
            page,
            req_cons: 0,
            rsp_prod_pvt: 0,
            open: Vec::new(),
        };
        Ok((ring, replaced))
    }

    /// The steps run while the domain is paused. Returns the mapped page,
    /// Xen's port and whether a stale ring was replaced.
    fn setup_paused(
        ctrl: &XenCtrl,
        fmem: &XenForeignMemory,
        dom: DomId,
    ) -> Result<(XenMapping, Port, bool), HvError> {
        let domid = u32::from(dom.0);
        let mut pfn = 0u64;
        // SAFETY: `pfn` is a valid out-parameter.
        let rc = unsafe {
            sys::xc_hvm_param_get(ctrl.raw(), domid, sys::HVM_PARAM_SHARING_RING_PFN, &mut pfn)
        };
        check(rc, || {
            format!("failed to read the sharing ring gfn of domain {dom}")
        })?;
        if pfn == 0 {
            return Err(HvError::with_kind(
                format!("domain {dom} has no sharing ring page (HVM_PARAM_SHARING_RING_PFN)"),
                ErrorKind::NotSupported,
                None,
            ));
        }
        let gfn = Gfn(pfn);
        let mut page = fmem.map(dom, &[gfn], Protection::ReadWrite, Placement::Anywhere)?;
        if page.page_error(0).is_some() {
            // A ring enabled before (by us or a helper that died) took the
            // page out of the physmap: put a fresh one back.
            drop(page);
            let mut frame: sys::xen_pfn_t = pfn;
            // SAFETY: one extent, order 0, read from and written to `frame`.
            let rc = unsafe {
                sys::xc_domain_populate_physmap_exact(ctrl.raw(), domid, 1, 0, 0, &mut frame)
            };
            check(rc, || {
                format!("failed to populate the sharing ring gfn {gfn} of domain {dom}")
            })?;
            page = fmem.map(dom, &[gfn], Protection::ReadWrite, Placement::Anywhere)?;
            if let Some(errno) = page.page_error(0) {
                return Err(HvError::os(
                    format!("failed to map the sharing ring gfn {gfn} of domain {dom}"),
                    errno,
                ));
            }
        }
        init_shared_ring(&page);

        let mut remote = 0u32;
        // SAFETY: `remote` is a valid out-parameter.
        let mut rc = unsafe { sys::xc_memshr_ring_enable(ctrl.raw(), domid, &mut remote) };
        let mut replaced = false;
        if rc < 0 && errno::last().0 == libc::EBUSY {
            // Xen allows one ring per domain; a helper that died left its
            // own enabled, with nobody listening. Take over.
            // SAFETY: plain call on a valid handle.
            let rc_off = unsafe { sys::xc_memshr_ring_disable(ctrl.raw(), domid) };
            check(rc_off, || {
                format!("failed to disable the stale sharing ring of domain {dom}")
            })?;
            replaced = true;
            // SAFETY: as above.
            rc = unsafe { sys::xc_memshr_ring_enable(ctrl.raw(), domid, &mut remote) };
        }
        check(rc, || {
            format!("failed to enable the sharing ring of domain {dom}")
        })?;

        let mut frame: sys::xen_pfn_t = pfn;
        // SAFETY: one extent, order 0, read from `frame`.
        let rc = unsafe {
            sys::xc_domain_decrease_reservation_exact(ctrl.raw(), domid, 1, 0, &mut frame)
        };
        if rc < 0 {
            // As libxenctrl: the ring works; the guest merely still sees
            // the page (it can only confuse its own requests' transport).
            let errno = errno::last();
            tracing::warn!(domid = dom.0, %gfn, %errno, "failed to remove the sharing ring page from the guest's physmap");
        }
        Ok((page, Port(remote), replaced))
    }

    pub fn dom(&self) -> DomId {
        self.dom
    }

    /// The fd that becomes readable when Xen notifies; then call
    /// [`ack`](Self::ack) and [`take_requests`](Self::take_requests).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.evtchn.fd()
    }

    /// Consume a pending notification and unmask the port.
    pub fn ack(&self) -> Result<(), HvError> {
        let port = self.evtchn.pending()?;
        self.evtchn.unmask(port)
    }

    fn index(&self, field: usize) -> &AtomicU32 {
        // SAFETY: `field` is the offset of one of the four aligned u32 ring
        // indices inside the mapped page, which lives as long as `self`;
        // Xen accesses them concurrently, hence atomics.
        unsafe { AtomicU32::from_ptr(self.page.as_non_null().as_ptr().add(field).cast()) }
    }

    /// Every request Xen has produced since the last call (`RING_GET_REQUEST`
    /// up to `req_prod`). Requests that are not memory-sharing requests of
    /// this interface version are answered at once and left out.
    pub fn take_requests(&mut self) -> Result<Vec<EnomemRequest>, HvError> {
        let req_prod_at = std::mem::offset_of!(sys::vm_event_sring, req_prod);
        let req_event_at = std::mem::offset_of!(sys::vm_event_sring, req_event);
        let mut got = Vec::new();
        loop {
            // Acquire pairs with Xen's wmb before it publishes req_prod.
            let prod = self.index(req_prod_at).load(Ordering::Acquire);
            let unconsumed = prod.wrapping_sub(self.req_cons);
            if unconsumed > RING_ENTRIES {
                return Err(HvError::with_kind(
                    format!(
                        "sharing ring of domain {} is corrupt (req_prod {prod}, req_cons {})",
                        self.dom, self.req_cons
                    ),
                    ErrorKind::InvalidInput,
                    None,
                ));
            }
            if unconsumed == 0 {
                // RING_FINAL_CHECK_FOR_REQUESTS: ask for a notification
                // of the next one, then look again (full barrier between).
                self.index(req_event_at)
                    .store(self.req_cons.wrapping_add(1), Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if self.index(req_prod_at).load(Ordering::Acquire) == self.req_cons {
                    break;
                }
                continue;
            }
            let raw = self.read_entry(self.req_cons);
            self.req_cons = self.req_cons.wrapping_add(1);
            // SAFETY: every variant of the union is plain integers.
            let gfn = unsafe { raw.u.mem_sharing.gfn };
            let open = Open {
                vcpu: raw.vcpu_id,
                gfn,
                flags: raw.flags,
                reason: raw.reason,
            };
            let paused = raw.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED != 0;
            if raw.version != sys::VM_EVENT_INTERFACE_VERSION
                || raw.reason != sys::VM_EVENT_REASON_MEM_SHARING
            {
                tracing::warn!(
                    domid = self.dom.0,
                    version = raw.version,
                    reason = raw.reason,
                    "unexpected request on a sharing ring; answered"
                );
                self.respond(&[open])?;
                continue;
            }
            if paused {
                self.open.push(open);
            } else {
                // A foreign writer (e.g. dom0): nothing of this domain
                // waits, and its vcpu_id is the writer's. Answer at once
                // so the slot frees; only paused vCPUs stay open.
                self.respond(&[open])?;
            }
            got.push(EnomemRequest {
                dom: self.dom,
                vcpu: raw.vcpu_id,
                gfn: Gfn(gfn),
                vcpu_paused: paused,
            });
        }
        Ok(got)
    }

    fn entry_ptr(&self, idx: u32) -> *mut sys::vm_event_sring_entry {
        let slot = (idx & (RING_ENTRIES - 1)) as usize;
        // SAFETY: RING_OFFSET + (slot + 1) * ENTRY_SIZE <= PAGE_SIZE by the
        // construction of RING_ENTRIES, so the entry lies inside the page.
        unsafe {
            self.page
                .as_non_null()
                .as_ptr()
                .add(RING_OFFSET + slot * ENTRY_SIZE)
                .cast()
        }
    }

    fn read_entry(&self, idx: u32) -> sys::vm_event_request_t {
        // SAFETY: the entry is inside the mapped page (entry_ptr) and
        // aligned (the page is, offsets are multiples of 8). Volatile: the
        // page is shared with Xen; a request slot is not rewritten until we
        // respond to it, so the copy is consistent.
        unsafe { ptr::read_volatile(self.entry_ptr(idx).cast::<sys::vm_event_request_t>()) }
    }

    /// Answer the open requests of `vcpu`: Xen unpauses the vCPU.
    pub fn respond_vcpu(&mut self, vcpu: u32) -> Result<(), HvError> {
        let (mine, rest): (Vec<Open>, Vec<Open>) = self.open.iter().partition(|o| o.vcpu == vcpu);
        if mine.is_empty() {
            return Ok(());
        }
        self.open = rest;
        self.respond(&mine)
    }

    /// Put one response per request (`RING_PUSH_RESPONSES`) and notify
    /// Xen, which unpauses the vCPU if the request paused it.
    fn respond(&mut self, requests: &[Open]) -> Result<(), HvError> {
        for o in requests {
            // SAFETY: plain C struct of integers; all-zero is valid.
            let mut rsp: sys::vm_event_response_t = unsafe { std::mem::zeroed() };
            rsp.version = sys::VM_EVENT_INTERFACE_VERSION;
            rsp.vcpu_id = o.vcpu;
            rsp.reason = o.reason;
            rsp.flags = o.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED;
            rsp.u.mem_sharing.gfn = o.gfn;
            // A response only ever takes the slot of a request already
            // consumed: rsp_prod_pvt < req_cons.
            // SAFETY: inside the page and aligned (see read_entry).
            unsafe {
                ptr::write_volatile(
                    self.entry_ptr(self.rsp_prod_pvt)
                        .cast::<sys::vm_event_response_t>(),
                    rsp,
                );
            }
            self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        }
        // Release pairs with Xen's rmb after it reads rsp_prod (xen_wmb).
        let rsp_prod_at = std::mem::offset_of!(sys::vm_event_sring, rsp_prod);
        self.index(rsp_prod_at)
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.evtchn.notify(self.port)
    }

    /// Answer everything still open.
    pub fn respond_all(&mut self) -> Result<(), HvError> {
        let mut vcpus: Vec<u32> = self.open.iter().map(|o| o.vcpu).collect();
        vcpus.sort_unstable();
        vcpus.dedup();
        for vcpu in vcpus {
            self.respond_vcpu(vcpu)?;
        }
        Ok(())
    }
}

impl Drop for SharingRing {
    fn drop(&mut self) {
        let domid = u32::from(self.dom.0);
        // Xen's disable does not unpause vCPUs a request paused: answer
        // first, and have Xen read the answers now (domctl resume).
        if let Err(e) = self.respond_all() {
            tracing::warn!(domid = self.dom.0, error = %e, "failed to answer open sharing requests");
        }
        // SAFETY: plain calls on a valid handle.
        let rc = unsafe { sys::xc_memshr_domain_resume(self.ctrl.raw(), domid) };
        let resume_errno = (rc < 0).then(errno::last);
        // SAFETY: as above.
        let rc = unsafe { sys::xc_memshr_ring_disable(self.ctrl.raw(), domid) };
        if rc < 0 {
            let errno = errno::last();
            // A domain that is gone took its ring with it.
            if errno.0 != libc::ESRCH {
                tracing::warn!(domid = self.dom.0, %errno, resume = ?resume_errno, "failed to disable the sharing ring");
            }
        }
        if let Err(e) = self.evtchn.unbind(self.port) {
            tracing::debug!(domid = self.dom.0, error = %e, "sharing ring port already gone");
        }
        // The page is unmapped and the handles closed as the fields drop.
    }
}

/// `SHARED_RING_INIT`: indices at 0, event thresholds at 1, padding zeroed.
/// Done while the domain is paused and before Xen uses the ring.
fn init_shared_ring(page: &XenMapping) {
    let header = std::mem::size_of::<sys::vm_event_sring>() - ENTRY_SIZE;
    let base = page.as_non_null().as_ptr();
    for i in 0..header {
        // SAFETY: inside the mapped, writable page; nobody else writes it
        // until the ring is enabled.
        unsafe { ptr::write_volatile(base.add(i), 0) };
    }
    for field in [
        std::mem::offset_of!(sys::vm_event_sring, req_event),
        std::mem::offset_of!(sys::vm_event_sring, rsp_event),
    ] {
        // SAFETY: an aligned u32 inside the header.
        unsafe { ptr::write_volatile(base.add(field).cast::<u32>(), 1) };
    }
    fence(Ordering::SeqCst);
}

fn check(rc: c_int, what: impl FnOnce() -> String) -> Result<(), HvError> {
    if rc < 0 {
        let errno = errno::last();
        return Err(HvError::os(what(), errno));
    }
    Ok(())
}

/// [`SharingEvents`] over real rings: one [`SharingRing`] per domain, all
/// waited on together with `poll(2)`.
#[derive(Debug)]
pub struct XenSharingEvents {
    fmem: XenForeignMemory,
    rings: BTreeMap<DomId, SharingRing>,
}

impl XenSharingEvents {
    pub fn new(fmem: XenForeignMemory) -> Self {
        Self {
            fmem,
            rings: BTreeMap::new(),
        }
    }
}

impl SharingEvents for XenSharingEvents {
    fn attach(&mut self, dom: DomId) -> Result<Attached, HvError> {
        if self.rings.contains_key(&dom) {
            return Ok(Attached::Already);
        }
        let (ring, replaced) = SharingRing::enable(&self.fmem, dom)?;
        self.rings.insert(dom, ring);
        Ok(if replaced {
            Attached::ReplacedStale
        } else {
            Attached::New
        })
    }

    fn detach(&mut self, dom: DomId) -> Result<(), HvError> {
        // Drop answers, disables and unmaps.
        self.rings.remove(&dom);
        Ok(())
    }

    fn attached(&self) -> Vec<DomId> {
        self.rings.keys().copied().collect()
    }

    fn wait(&mut self, timeout: Duration) -> Result<Vec<EnomemRequest>, HvError> {
        let mut fds: Vec<libc::pollfd> = self
            .rings
            .values()
            .map(|r| libc::pollfd {
                fd: r.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        if fds.is_empty() {
            std::thread::sleep(timeout);
        } else {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc < 0 {
                let errno = errno::last();
                if errno.0 != libc::EINTR {
                    return Err(HvError::os("failed to wait for sharing ring events", errno));
                }
            }
        }
        let mut got = Vec::new();
        for (ring, pfd) in self.rings.values_mut().zip(&fds) {
            if pfd.revents & libc::POLLIN != 0 {
                if let Err(e) = ring.ack() {
                    tracing::debug!(domid = ring.dom().0, error = %e, "no pending event after poll");
                }
            }
            // Read every ring, notified or not: cheap, and a lost
            // notification then costs one wait, not a stuck vCPU.
            match ring.take_requests() {
                Ok(reqs) => got.extend(reqs),
                Err(e) => {
                    tracing::warn!(domid = ring.dom().0, error = %e, "cannot read a sharing ring");
                }
            }
        }
        Ok(got)
    }

    fn resume(&mut self, dom: DomId, vcpu: u32) -> Result<(), HvError> {
        let ring = self.rings.get_mut(&dom).ok_or_else(|| {
            HvError::with_kind(
                format!("domain {dom} has no sharing ring"),
                ErrorKind::NotFound,
                None,
            )
        })?;
        ring.respond_vcpu(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_geometry_matches_io_ring_h() {
        assert_eq!(RING_OFFSET, 64);
        assert_eq!(ENTRY_SIZE, 400);
        assert_eq!(RING_ENTRIES, 8);
        assert!(RING_OFFSET + RING_ENTRIES as usize * ENTRY_SIZE <= PAGE_SIZE);
    }
}
