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
//! back end, through `circ_hv::ring`'s [`BackRing`].

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use circ_hv::ring::{BackRing, RingEntry, RingError, RingTypes};
use circ_hv::{
    Attached, DomId, EnomemRequest, ErrorKind, EventChannel as _, EvtchnPort, ForeignMapping as _,
    ForeignMemory as _, Gfn, HvError, Placement, Protection, SharingEvents, PAGE_SIZE,
};
use circ_xen_sys as sys;

use crate::shared::{ring_memory_via_pages, SharedPages};
use crate::{errno, XenCtrl, XenEventChannels, XenForeignMemory, XenMapping};

/// The fields of a `vm_event_st` (request and response alike) a sharing
/// ring uses; the rest of the 400 bytes is zero in our responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmEvent {
    pub(crate) version: u32,
    pub(crate) flags: u32,
    pub(crate) reason: u32,
    pub(crate) vcpu: u32,
    /// `u.mem_sharing.gfn`.
    pub(crate) gfn: u64,
}

impl VmEvent {
    /// A response that unpauses `vcpu` if a sharing request paused it.
    pub(crate) fn unpause(vcpu: u32) -> Self {
        Self {
            version: sys::VM_EVENT_INTERFACE_VERSION,
            flags: sys::VM_EVENT_FLAG_VCPU_PAUSED,
            reason: sys::VM_EVENT_REASON_MEM_SHARING,
            vcpu,
            gfn: 0,
        }
    }
}

const VERSION_AT: usize = std::mem::offset_of!(sys::vm_event_st, version);
const FLAGS_AT: usize = std::mem::offset_of!(sys::vm_event_st, flags);
const REASON_AT: usize = std::mem::offset_of!(sys::vm_event_st, reason);
const VCPU_AT: usize = std::mem::offset_of!(sys::vm_event_st, vcpu_id);
const GFN_AT: usize =
    std::mem::offset_of!(sys::vm_event_st, u) + std::mem::offset_of!(sys::vm_event_sharing, gfn);

impl RingEntry for VmEvent {
    const SIZE: usize = std::mem::size_of::<sys::vm_event_st>();

    fn from_bytes(b: &[u8]) -> Self {
        let u32_at = |at: usize| {
            let mut w = [0; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_ne_bytes(w)
        };
        let mut gfn = [0; 8];
        gfn.copy_from_slice(&b[GFN_AT..GFN_AT + 8]);
        Self {
            version: u32_at(VERSION_AT),
            flags: u32_at(FLAGS_AT),
            reason: u32_at(REASON_AT),
            vcpu: u32_at(VCPU_AT),
            gfn: u64::from_ne_bytes(gfn),
        }
    }

    fn to_bytes(&self, out: &mut [u8]) {
        for (at, v) in [
            (VERSION_AT, self.version),
            (FLAGS_AT, self.flags),
            (REASON_AT, self.reason),
            (VCPU_AT, self.vcpu),
        ] {
            out[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        out[GFN_AT..GFN_AT + 8].copy_from_slice(&self.gfn.to_ne_bytes());
    }
}

/// `DEFINE_RING_TYPES(vm_event, vm_event_request_t, vm_event_response_t)`.
#[derive(Debug)]
pub(crate) struct VmEventRing;

impl RingTypes for VmEventRing {
    type Request = VmEvent;
    type Response = VmEvent;
}

/// The ring page, mapped read-write (checked when made).
#[derive(Debug)]
pub(crate) struct RingPage(XenMapping);

impl RingPage {
    fn pages(&self) -> SharedPages<'_> {
        // SAFETY: the mapping's one page was mapped read-write without a
        // per-page error (setup_paused checks both) and stays mapped until
        // the XenMapping drops, which the borrow of self outlives.
        unsafe { SharedPages::new(self.0.as_non_null(), PAGE_SIZE) }
    }
}

ring_memory_via_pages!(RingPage);

/// One domain's sharing ring, enabled in Xen and mapped here. Dropping it
/// answers every open request (unpausing its vCPU), then disables the ring.
#[derive(Debug)]
pub struct SharingRing {
    dom: DomId,
    ctrl: XenCtrl,
    evtchn: XenEventChannels,
    port: EvtchnPort,
    ring: BackRing<RingPage, VmEventRing>,
    /// Requests consumed and not yet answered.
    open: Vec<VmEvent>,
    /// Drop lets go of the ring without disabling it (see
    /// `SharingEvents::leave_enabled`).
    leave_enabled: bool,
}

impl SharingRing {
    /// Enable `dom`'s sharing ring. Returns whether a ring some earlier
    /// helper left enabled had to be replaced.
    pub fn enable(fmem: &XenForeignMemory, dom: DomId) -> Result<(Self, bool), HvError> {
        let ctrl = XenCtrl::open()?;
        let evtchn = XenEventChannels::open()?;
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
        let (ring, remote_port, replaced) = match (setup, unpaused) {
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
            ring,
            open: Vec::new(),
            leave_enabled: false,
        };
        Ok((ring, replaced))
    }

    /// The steps run while the domain is paused. Returns the ring, Xen's
    /// port and whether a stale ring was replaced.
    fn setup_paused(
        ctrl: &XenCtrl,
        fmem: &XenForeignMemory,
        dom: DomId,
    ) -> Result<(BackRing<RingPage, VmEventRing>, EvtchnPort, bool), HvError> {
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
        let page = RingPage(page);
        // SHARED_RING_INIT, before Xen uses the ring.
        BackRing::<_, VmEventRing>::init_shared(&page).map_err(|e| corrupt(dom, e))?;

        let mut remote = 0u32;
        // SAFETY: `remote` is a valid out-parameter.
        let mut rc = unsafe { sys::xc_memshr_ring_enable(ctrl.raw(), domid, &mut remote) };
        let mut replaced = false;
        if rc < 0 && errno::last().0 == libc::EBUSY {
            // Xen allows one ring per domain; an earlier helper left its
            // own enabled, with nobody listening and maybe vCPUs paused on
            // it. Take over: resume them, then enable ours.
            let vcpus = crate::stale_ring::take_over(ctrl, dom, &page)?;
            tracing::info!(
                domid = dom.0,
                vcpus,
                "answered every vCPU of a sharing ring left enabled by an earlier helper"
            );
            replaced = true;
            BackRing::<_, VmEventRing>::init_shared(&page).map_err(|e| corrupt(dom, e))?;
            // SAFETY: as above.
            rc = unsafe { sys::xc_memshr_ring_enable(ctrl.raw(), domid, &mut remote) };
        }
        check(rc, || {
            format!("failed to enable the sharing ring of domain {dom}")
        })?;
        // BACK_RING_INIT over the ring initialised above (Xen may have
        // posted already: the header is not reset again).
        let ring = BackRing::new(page).map_err(|e| corrupt(dom, e))?;

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
        Ok((ring, EvtchnPort(remote), replaced))
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
        match self.evtchn.pending(Duration::ZERO)? {
            Some(port) => self.evtchn.unmask(port),
            None => Ok(()),
        }
    }

    /// Every request Xen has produced since the last call (`RING_GET_REQUEST`
    /// up to `req_prod`). Requests that are not memory-sharing requests of
    /// this interface version are answered at once and left out.
    pub fn take_requests(&mut self) -> Result<Vec<EnomemRequest>, HvError> {
        let mut got = Vec::new();
        loop {
            let Some(raw) = self.ring.next_request().map_err(|e| corrupt(self.dom, e))? else {
                // RING_FINAL_CHECK_FOR_REQUESTS: ask for a notification of
                // the next one, then look again.
                if self
                    .ring
                    .final_check_for_requests()
                    .map_err(|e| corrupt(self.dom, e))?
                {
                    continue;
                }
                break;
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
                self.respond(&[raw])?;
                continue;
            }
            if paused {
                self.open.push(raw);
            } else {
                // A foreign writer (e.g. dom0): nothing of this domain
                // waits, and its vcpu_id is the writer's. Answer at once
                // so the slot frees; only paused vCPUs stay open.
                self.respond(&[raw])?;
            }
            got.push(EnomemRequest {
                dom: self.dom,
                vcpu: raw.vcpu,
                gfn: Gfn(raw.gfn),
                vcpu_paused: paused,
            });
        }
        Ok(got)
    }

    /// Answer the open requests of `vcpu`: Xen unpauses the vCPU.
    pub fn respond_vcpu(&mut self, vcpu: u32) -> Result<(), HvError> {
        let (mine, rest): (Vec<VmEvent>, Vec<VmEvent>) =
            self.open.iter().partition(|o| o.vcpu == vcpu);
        if mine.is_empty() {
            return Ok(());
        }
        self.open = rest;
        self.respond(&mine)
    }

    /// Put one response per request (`RING_PUSH_RESPONSES`) and notify
    /// Xen, which unpauses the vCPU if the request paused it. Notified
    /// every time: Xen reads responses when notified (`vm_event_resume`).
    fn respond(&mut self, requests: &[VmEvent]) -> Result<(), HvError> {
        for o in requests {
            let rsp = VmEvent {
                version: sys::VM_EVENT_INTERFACE_VERSION,
                flags: o.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED,
                ..*o
            };
            // A response only ever takes the slot of a request consumed.
            self.ring
                .push_response(&rsp)
                .map_err(|e| corrupt(self.dom, e))?;
        }
        self.ring.push_responses();
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
        // With the domain paused no vCPU posts between the last read of the
        // ring and its disable: a request posted in that gap would leave
        // its vCPU paused for good (Xen's disable does not unpause vCPUs a
        // request paused). A domain that is gone fails here; nothing waits.
        // SAFETY: plain call on a valid handle.
        let paused = unsafe { sys::xc_domain_pause(self.ctrl.raw(), domid) } == 0;
        self.release(domid);
        if paused {
            // SAFETY: plain call on a valid handle; undoes the pause above.
            if unsafe { sys::xc_domain_unpause(self.ctrl.raw(), domid) } < 0 {
                let errno = errno::last();
                tracing::warn!(domid = self.dom.0, %errno, "failed to unpause the domain after releasing its sharing ring");
            }
        }
        // The page is unmapped and the handles closed as the fields drop.
    }
}

impl SharingRing {
    /// Drop's work, run with the domain paused: read what Xen posted since
    /// the last wait, answer every open request, have Xen read the answers
    /// now (domctl resume), then disable the ring or leave it enabled.
    fn release(&mut self, domid: u32) {
        if let Err(e) = self.take_requests() {
            tracing::warn!(domid = self.dom.0, error = %e, "failed to read the sharing ring before releasing it");
        }
        if let Err(e) = self.respond_all() {
            tracing::warn!(domid = self.dom.0, error = %e, "failed to answer open sharing requests");
        }
        // SAFETY: plain calls on a valid handle.
        let rc = unsafe { sys::xc_memshr_domain_resume(self.ctrl.raw(), domid) };
        let resume_errno = (rc < 0).then(errno::last);
        if self.leave_enabled {
            // Xen keeps the ring (and its own mapping of the page); a
            // later break pauses the vCPU until a helper takes over.
            if let Err(e) = self.evtchn.unbind(self.port) {
                tracing::debug!(domid = self.dom.0, error = %e, "sharing ring port already gone");
            }
            return;
        }
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
    }
}

fn corrupt(dom: DomId, e: RingError) -> HvError {
    HvError::with_kind(
        format!("sharing ring of domain {dom} is corrupt: {e}"),
        ErrorKind::InvalidInput,
        None,
    )
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

    fn leave_enabled(&mut self, dom: DomId) -> Result<(), HvError> {
        if let Some(mut ring) = self.rings.remove(&dom) {
            ring.leave_enabled = true;
            // Drop answers what is open and unmaps, without disabling.
        }
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
    fn ring_geometry_matches_the_vm_event_headers() {
        use std::mem::{offset_of, size_of};

        use circ_hv::ring::{RingGeometry, HEADER_SIZE};
        assert_eq!(offset_of!(sys::vm_event_sring, ring), HEADER_SIZE);
        assert_eq!(
            [
                offset_of!(sys::vm_event_sring, req_prod),
                offset_of!(sys::vm_event_sring, req_event),
                offset_of!(sys::vm_event_sring, rsp_prod),
                offset_of!(sys::vm_event_sring, rsp_event),
            ],
            [0, 4, 8, 12],
            "the ring module's index offsets"
        );
        assert_eq!(VmEventRing::SLOT_SIZE, 400);
        assert_eq!(size_of::<sys::vm_event_sring_entry>(), 400);
        let geometry = RingGeometry::new(PAGE_SIZE, VmEventRing::SLOT_SIZE).unwrap();
        assert_eq!(geometry.slots(), 8);
    }

    #[test]
    fn vm_event_decodes_and_encodes_at_the_c_offsets() {
        // SAFETY: plain C struct of integers and unions of them; zero is valid.
        let mut c: sys::vm_event_request_t = unsafe { std::mem::zeroed() };
        c.version = sys::VM_EVENT_INTERFACE_VERSION;
        c.flags = sys::VM_EVENT_FLAG_VCPU_PAUSED | 0x100;
        c.reason = sys::VM_EVENT_REASON_MEM_SHARING;
        c.vcpu_id = 3;
        c.altp2m_idx = 0xffff;
        c.u.mem_sharing.gfn = 0x1234_5678_9abc;
        c.u.mem_sharing.p2mt = 7;
        // SAFETY: reading the bytes of a plain, fully initialised struct.
        let bytes: [u8; 400] = unsafe { std::mem::transmute(c) };
        let e = VmEvent::from_bytes(&bytes);
        assert_eq!(
            e,
            VmEvent {
                version: c.version,
                flags: c.flags,
                reason: c.reason,
                vcpu: 3,
                gfn: 0x1234_5678_9abc,
            }
        );

        let mut out = [0u8; 400];
        e.to_bytes(&mut out);
        // SAFETY: any 400 bytes are a valid vm_event_st (integers only).
        let back: sys::vm_event_response_t = unsafe { std::mem::transmute(out) };
        assert_eq!(
            (back.version, back.flags, back.reason),
            (c.version, c.flags, c.reason)
        );
        assert_eq!(back.vcpu_id, 3);
        // SAFETY: reading a union member of plain integers.
        let (gfn, p2mt) = unsafe { (back.u.mem_sharing.gfn, back.u.mem_sharing.p2mt) };
        assert_eq!(
            (gfn, p2mt, back.altp2m_idx),
            (0x1234_5678_9abc, 0, 0),
            "the rest stays zero"
        );
    }
}
