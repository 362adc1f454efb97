//! Taking over a sharing ring that an earlier helper left enabled (it was
//! SIGKILLed, or stopped while Xen was short of memory), and resuming the
//! vCPUs paused on it.
//!
//! What Xen 4.17 does (xen/common/vm_event.c, xen/arch/x86/mm/mem_sharing.c):
//! - a copy-on-write break without memory posts a request and pauses the
//!   writing vCPU with `vm_event_vcpu_pause`: a per-**vCPU** count
//!   (`vm_event_pause_count`), not a per-ring one;
//! - `vm_event_resume` (a notification, or the `XEN_VM_EVENT_RESUME` domctl,
//!   `xc_memshr_domain_resume`) reads every response on the domain's
//!   *current* ring; for a response with `VM_EVENT_FLAG_VCPU_PAUSED` whose
//!   vCPU has a non-zero count it calls `vm_event_vcpu_unpause`. A response
//!   for a vCPU that is not paused is skipped (the count is checked first),
//!   and responses are never matched to requests;
//! - `vm_event_disable` does not touch that count (it only wakes vCPUs that
//!   waited for a free slot, `_VPF_mem_sharing`), and refuses with `EBUSY`
//!   while vCPUs sleep on the ring's wait queue (`vm_event_wait_slot`, only
//!   with `allow_sleep`, which no sharing caller in 4.17 passes);
//! - `vm_event_enable` refuses with `EBUSY` while a ring is enabled.
//!
//! The dead helper's page is out of reach (taken out of the guest's physmap
//! when it enabled the ring, mapped only by Xen), so its requests cannot be
//! answered where they are. Instead: disable the stale ring, enable a
//! throwaway one on a fresh page, put unpause responses on it (a ring's
//! worth at a time, each batch read by Xen through the resume domctl before
//! the next), and disable it again. Every vCPU paused for memory resumes
//! and retries its write; one still short of memory faults again and is
//! paused on the new ring the caller enables next, which is what a helper
//! is for. The throwaway ring's accounting is broken by design (responses
//! to no request), hence its tear-down.
//!
//! How many responses per vCPU: as many as the stale ring has slots. One
//! is not enough: a vCPU can be paused more than once before it runs again
//! (each `mem_sharing_notify_enomem` with the vCPU as `current` adds one to
//! its count and posts one request; seen in the lab: a guest whose vCPU
//! stayed paused after a one-response take-over, with no request on the
//! new ring and its write never done). Every count above zero stands for a
//! request on the stale ring that no response read by Xen has matched, and
//! Xen never lets more requests be outstanding than the ring has slots, so
//! `slots` responses per vCPU bring every count to zero; the surplus is
//! skipped by Xen (`vm_event_resume` looks at the count first).
//!
//! Runs with the domain paused (by the caller), so no vCPU posts to the
//! throwaway ring meanwhile.

use circ_hv::ring::{BackRing, RingMemory};
use circ_hv::{DomId, ErrorKind, HvError};
use circ_xen_sys as sys;

use crate::sharing_ring::{VmEvent, VmEventRing};
use crate::{errno, XenCtrl};

/// Disable `dom`'s stale sharing ring and resume every vCPU paused on it,
/// using the ring page `page` (mapped read-write, still in the guest's
/// physmap; its contents are overwritten). Returns how many vCPUs were
/// answered (every vCPU of the domain: Xen skips those not paused).
pub(crate) fn take_over<M: RingMemory>(
    ctrl: &XenCtrl,
    dom: DomId,
    page: M,
) -> Result<u32, HvError> {
    let domid = u32::from(dom.0);
    // SAFETY: plain call on a valid handle.
    let rc = unsafe { sys::xc_memshr_ring_disable(ctrl.raw(), domid) };
    if rc < 0 {
        let errno = errno::last();
        let what = if errno.0 == libc::EBUSY {
            format!(
                "cannot take over the sharing ring of domain {dom}: vCPUs wait for a slot on it \
                 (Xen refuses to disable it); restart the guest"
            )
        } else {
            format!("failed to disable the stale sharing ring of domain {dom}")
        };
        return Err(HvError::os(what, errno));
    }
    let max_vcpu_id = max_vcpu_id(ctrl, dom)?;

    let mut ring = BackRing::<M, VmEventRing>::init_shared(page).map_err(|e| {
        HvError::with_kind(
            format!("sharing ring page of domain {dom}: {e}"),
            ErrorKind::InvalidInput,
            None,
        )
    })?;
    let mut port = 0u32;
    // SAFETY: `port` is a valid out-parameter.
    let rc = unsafe { sys::xc_memshr_ring_enable(ctrl.raw(), domid, &mut port) };
    if rc < 0 {
        return Err(errno::error(format!(
            "failed to enable a ring to resume the vCPUs of domain {dom}"
        )));
    }
    let answered = answer_every_vcpu(ctrl, dom, &mut ring, max_vcpu_id);
    // SAFETY: plain call on a valid handle.
    let rc = unsafe { sys::xc_memshr_ring_disable(ctrl.raw(), domid) };
    let disabled = if rc < 0 {
        Err(errno::error(format!(
            "failed to disable the ring that resumed the vCPUs of domain {dom}"
        )))
    } else {
        Ok(())
    };
    let answered = answered?;
    disabled?;
    Ok(answered)
}

/// `slots` `VCPU_PAUSED` responses for every vCPU id `0..=max_vcpu_id`, a
/// ring's worth at a time, each batch read by Xen (resume domctl) before
/// the next. Returns the number of vCPUs answered.
fn answer_every_vcpu<M: RingMemory>(
    ctrl: &XenCtrl,
    dom: DomId,
    ring: &mut BackRing<M, VmEventRing>,
    max_vcpu_id: u32,
) -> Result<u32, HvError> {
    let slots = ring.geometry().slots();
    for batch in unpause_batches(max_vcpu_id, slots) {
        ring.push_unsolicited_responses(&batch).map_err(|e| {
            HvError::with_kind(
                format!("sharing ring of domain {dom}: {e}"),
                ErrorKind::InvalidInput,
                None,
            )
        })?;
        // SAFETY: plain call on a valid handle; Xen reads the responses now.
        let rc = unsafe { sys::xc_memshr_domain_resume(ctrl.raw(), u32::from(dom.0)) };
        if rc < 0 {
            return Err(errno::error(format!(
                "failed to have Xen read the unpause responses for domain {dom}"
            )));
        }
    }
    Ok(max_vcpu_id.saturating_add(1))
}

/// The take-over's responses, in ring-sized batches: `slots` unpauses per
/// vCPU id `0..=max_vcpu_id` (see the module docs for why `slots`).
fn unpause_batches(max_vcpu_id: u32, slots: u32) -> impl Iterator<Item = Vec<VmEvent>> {
    let slots = slots.max(1);
    (0..=max_vcpu_id).map(move |vcpu| (0..slots).map(|_| VmEvent::unpause(vcpu)).collect())
}

/// The domain's highest vCPU id.
fn max_vcpu_id(ctrl: &XenCtrl, dom: DomId) -> Result<u32, HvError> {
    // SAFETY: a plain C struct of integers; zero is valid.
    let mut info: sys::xc_domaininfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable for one entry.
    let n = unsafe { sys::xc_domain_getinfolist(ctrl.raw(), u32::from(dom.0), 1, &mut info) };
    if n < 0 {
        return Err(errno::error(format!("failed to read domain {dom}'s info")));
    }
    if n != 1 || info.domain != dom.0 {
        return Err(HvError::with_kind(
            format!("no domain {dom}"),
            ErrorKind::NotFound,
            None,
        ));
    }
    Ok(info.max_vcpu_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use circ_hv::ring::{FrontRing, RingEntry as _};
    use circ_hv::PAGE_SIZE;

    #[test]
    fn unpause_responses_are_what_vm_event_resume_acts_on() {
        let r = VmEvent::unpause(5);
        let mut out = [0u8; 400];
        r.to_bytes(&mut out);
        // SAFETY: any 400 bytes are a valid vm_event_st (integers only).
        let c: sys::vm_event_response_t = unsafe { std::mem::transmute(out) };
        assert_eq!(c.version, sys::VM_EVENT_INTERFACE_VERSION);
        assert_eq!(c.flags, sys::VM_EVENT_FLAG_VCPU_PAUSED, "nothing else");
        assert_eq!(c.reason, sys::VM_EVENT_REASON_MEM_SHARING);
        assert_eq!(c.vcpu_id, 5);
    }

    #[test]
    fn every_vcpu_gets_a_ring_s_worth_of_unpauses_one_batch_each() {
        let batches: Vec<Vec<VmEvent>> = unpause_batches(2, 8).collect();
        assert_eq!(batches.len(), 3, "one batch per vCPU");
        for (vcpu, batch) in (0u32..).zip(&batches) {
            assert_eq!(batch.len(), 8, "as many as the ring has slots");
            assert!(batch.iter().all(|r| r.vcpu == vcpu));
        }
    }

    #[test]
    fn a_ring_of_unpauses_reads_back_in_order_from_xens_side() {
        // Xen is the front end: it reads responses from rsp_cons up to
        // rsp_prod, whatever it asked.
        let mem = circ_hv::fake::FakeRingMemory::new(PAGE_SIZE);
        let mut back = BackRing::<_, VmEventRing>::init_shared(mem.clone()).unwrap();
        let slots = back.geometry().slots();
        assert_eq!(slots, 8);
        let batch: Vec<VmEvent> = (0..slots).map(VmEvent::unpause).collect();
        assert!(back.push_unsolicited_responses(&batch).is_ok());
        let got: Vec<u32> = (0..slots)
            .map(|i| {
                let mut buf = vec![0u8; VmEvent::SIZE];
                mem.read(back.geometry().slot_offset(i), &mut buf);
                VmEvent::from_bytes(&buf).vcpu
            })
            .collect();
        assert_eq!(got, (0..slots).collect::<Vec<_>>());
        // Our front-end model refuses what Xen's accepts: responses to no
        // request. That is why the ring is torn down afterwards.
        let mut front = FrontRing::<_, VmEventRing>::attach(mem, 0).unwrap();
        assert!(front.next_response().is_err());
    }
}
