//! Short of memory: the helper Xen needs when a copy-on-write break finds
//! no free frame.
//!
//! A guest write to a shared page makes Xen allocate a private copy. If the
//! host has no free memory, Xen 4.17 crashes the guest ("ENOMEM and no
//! helper") unless the domain has a sharing vm_event ring; with one, it
//! pauses the writing vCPU and posts a request (see `circ_hv::SharingEvents`).
//!
//! [`EnomemHandler`] keeps a ring on every domain the daemon shares, and on
//! a request:
//! 1. keeps the vCPU paused and stops sharing rounds host-wide (more
//!    sharing only adds copy-on-write breaks to come);
//! 2. frees memory by ballooning dom0 down one step (`--enomem-balloon-mib`,
//!    never below `--dom0-min-mib`), waiting `settle` between steps for the
//!    balloon driver to hand pages back to Xen;
//! 3. once Xen has `--enomem-resume-mib` free, answers the request: Xen
//!    unpauses the vCPU and the write is retried;
//! 4. if dom0 is at its floor and memory is still short, leaves the vCPU
//!    paused, logs what the operator must do, and resumes it by itself as
//!    soon as memory appears.
//!
//! Requests are caused by guests, so their log lines are rate-limited.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use circ_hv::{
    pages_to_kib, Attached, DomId, DomainState, EnomemRequest, ErrorKind, Hypervisor,
    SharingEvents, Transaction, XenStore, PAGE_SIZE,
};
use serde::{Deserialize, Serialize};

use crate::log_limit::LogLimiter;
use crate::policy::{domain_name, Eligibility, Policy};
use crate::MemshareError;

/// dom0's balloon target, in KiB; dom0's balloon driver follows it.
pub const DOM0_TARGET: &str = "/local/domain/0/memory/target";

/// Knobs of the short-of-memory handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnomemConfig {
    /// dom0 balloons down by this much per step.
    pub balloon_step_kib: u64,
    /// dom0's target never goes below this.
    pub dom0_min_kib: u64,
    /// Paused vCPUs resume once Xen has this much free memory.
    pub resume_free_kib: u64,
    /// Time a balloon step gets to show in Xen's free memory before the next.
    pub settle: Duration,
    /// How often memory is looked at while vCPUs are paused.
    pub tick: Duration,
    /// How often the "free memory" error is repeated while stuck.
    pub remind: Duration,
}

impl Default for EnomemConfig {
    fn default() -> Self {
        Self {
            balloon_step_kib: 64 * 1024,
            dom0_min_kib: 512 * 1024,
            resume_free_kib: 16 * 1024,
            settle: Duration::from_secs(3),
            tick: Duration::from_millis(250),
            remind: Duration::from_secs(30),
        }
    }
}

/// A vCPU Xen paused because its copy-on-write break found no memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedVcpu {
    pub domid: u16,
    pub vcpu: u32,
    /// The shared page it wrote.
    pub gfn: u64,
    pub since_unix_ms: u64,
}

/// What the status file shows (`daemon.enomem` in `circ share status --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnomemStats {
    /// Whether the daemon listens on sharing rings at all.
    pub enabled: bool,
    /// Domains whose sharing ring the daemon holds.
    pub rings: Vec<u16>,
    /// Requests from Xen: copy-on-write breaks that found no free memory.
    pub events: u64,
    pub vcpus_resumed: u64,
    /// vCPUs paused right now, waiting for memory.
    pub paused_now: u64,
    pub paused: Vec<PausedVcpu>,
    /// dom0 memory handed back to Xen by ballooning, in total.
    pub dom0_ballooned_kib: u64,
    pub balloon_steps: u64,
    /// dom0 is at `--dom0-min-mib` and vCPUs wait: the operator must free
    /// memory.
    pub at_dom0_floor: bool,
    /// Rings that could not be enabled (the domain then crashes on such a
    /// break, as without this daemon).
    pub ring_failures: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    gfn: u64,
    since_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// The daemon's side of Xen's sharing rings.
pub struct EnomemHandler {
    events: Option<Box<dyn SharingEvents>>,
    cfg: EnomemConfig,
    pending: BTreeMap<(DomId, u32), Pending>,
    stats: EnomemStats,
    last_balloon: Option<Instant>,
    last_remind: Option<Instant>,
    /// Domains whose ring failed to enable: warned once.
    failed: BTreeSet<DomId>,
    event_log: LogLimiter,
}

impl std::fmt::Debug for EnomemHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnomemHandler")
            .field("enabled", &self.events.is_some())
            .field("cfg", &self.cfg)
            .field("pending", &self.pending)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl EnomemHandler {
    /// Open the rings handle (`enabled == false`, or a hypervisor without
    /// rings: a handler that does nothing but sleep in [`serve`](Self::serve)).
    pub fn new<H: Hypervisor>(hv: &H, cfg: EnomemConfig, enabled: bool) -> Self {
        let events = if enabled {
            match hv.sharing_events() {
                Ok(events) => Some(events),
                Err(e) => {
                    tracing::warn!(error = %e, "no sharing event rings: a guest whose copy-on-write break finds no free memory will be crashed by Xen");
                    None
                }
            }
        } else {
            None
        };
        Self {
            stats: EnomemStats {
                enabled: events.is_some(),
                ..EnomemStats::default()
            },
            events,
            cfg,
            pending: BTreeMap::new(),
            last_balloon: None,
            last_remind: None,
            failed: BTreeSet::new(),
            event_log: LogLimiter::new(8, Duration::from_secs(60)),
        }
    }

    /// vCPUs wait for memory: the daemon shares nothing new meanwhile.
    pub fn short_of_memory(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn stats(&self) -> EnomemStats {
        let mut s = self.stats.clone();
        s.rings = self
            .events
            .as_ref()
            .map(|e| e.attached().iter().map(|d| d.0).collect())
            .unwrap_or_default();
        s.paused = self
            .pending
            .iter()
            .map(|((dom, vcpu), p)| PausedVcpu {
                domid: dom.0,
                vcpu: *vcpu,
                gfn: p.gfn,
                since_unix_ms: p.since_unix_ms,
            })
            .collect();
        s.paused_now = s.paused.len() as u64;
        s
    }

    /// Hold a ring on every eligible domain (narrowed to `only` if given:
    /// the daemon's `--domain`), and on every domain with a ring that still has shared pages
    /// (a guest opted out keeps its shared pages until written). Rings of
    /// domains that are gone, or have nothing shared and are not eligible,
    /// are disabled.
    pub fn sync<H: Hypervisor, S: XenStore>(
        &mut self,
        hv: &H,
        xs: &S,
        only: Option<&[DomId]>,
    ) -> Result<(), MemshareError> {
        let Some(events) = self.events.as_mut() else {
            return Ok(());
        };
        let policy = Policy::read(xs)?;
        let attached: BTreeSet<DomId> = events.attached().into_iter().collect();
        let mut keep = BTreeSet::new();
        for info in hv.domains()? {
            let dom = info.domid;
            if matches!(info.state, DomainState::Dying) {
                continue;
            }
            let name = domain_name(xs, dom)?;
            let wanted = policy.eligibility(&info, &name) == Eligibility::Eligible
                && only.is_none_or(|only| only.contains(&dom));
            if wanted || (attached.contains(&dom) && info.shr_pages > 0) {
                keep.insert(dom);
            }
        }
        for dom in attached.difference(&keep) {
            // Answers what is open (the domain is gone or shares nothing).
            self.pending.retain(|(d, _), _| d != dom);
            match events.detach(*dom) {
                Ok(()) => tracing::info!(domid = %dom, "disabled the sharing ring"),
                Err(e) => {
                    tracing::warn!(domid = %dom, error = %e, "failed to disable the sharing ring")
                }
            }
        }
        for dom in keep.difference(&attached) {
            match events.attach(*dom) {
                Ok(Attached::New) => {
                    self.failed.remove(dom);
                    tracing::info!(domid = %dom, "enabled the sharing ring: a copy-on-write break without free memory pauses the vCPU instead of crashing the guest");
                }
                Ok(Attached::Already) => {}
                Ok(Attached::ReplacedStale) => {
                    self.failed.remove(dom);
                    tracing::warn!(domid = %dom, "took over a sharing ring left enabled by an earlier helper (killed, or stopped short of memory): resumed the vCPUs it left paused");
                }
                Err(e) => {
                    if self.failed.insert(*dom) {
                        self.stats.ring_failures += 1;
                        tracing::warn!(domid = %dom, error = %e, "cannot enable the sharing ring: Xen will crash this guest if a copy-on-write break finds no free memory");
                    }
                }
            }
        }
        // Requests of domains that are gone will never be answered.
        let alive: BTreeSet<DomId> = events.attached().into_iter().collect();
        self.pending.retain(|(d, _), _| alive.contains(d));
        Ok(())
    }

    /// Listen for `duration`: take requests, free memory and resume vCPUs
    /// as memory appears.
    pub fn serve<H: Hypervisor, S: XenStore>(&mut self, hv: &H, xs: &S, duration: Duration) {
        if self.events.is_none() {
            std::thread::sleep(duration);
            return;
        }
        let deadline = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let left = deadline - now;
            let wait = if self.pending.is_empty() {
                left
            } else {
                left.min(self.cfg.tick)
            };
            self.poll(hv, xs, wait);
        }
    }

    /// One wait for requests (at most `wait`), then one step of freeing
    /// memory and resuming.
    pub fn poll<H: Hypervisor, S: XenStore>(&mut self, hv: &H, xs: &S, wait: Duration) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        match events.wait(wait) {
            Ok(requests) => {
                for req in requests {
                    self.take(req);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to wait for sharing ring events");
                std::thread::sleep(wait);
            }
        }
        self.step(hv, xs, Instant::now());
    }

    fn take(&mut self, req: EnomemRequest) {
        self.stats.events += 1;
        if let Some(suppressed) = self.event_log.allow(Instant::now()) {
            tracing::warn!(
                domid = %req.dom,
                vcpu = req.vcpu,
                gfn = %req.gfn,
                suppressed,
                "a copy-on-write break found no free memory: vCPU paused until memory is freed"
            );
        }
        if !req.vcpu_paused {
            // A foreign write (not the guest's): nothing waits (the ring
            // answered it already).
            return;
        }
        self.pending.entry((req.dom, req.vcpu)).or_insert(Pending {
            gfn: req.gfn.0,
            since_unix_ms: unix_ms(),
        });
    }

    fn resume(&mut self, dom: DomId, vcpu: u32) -> bool {
        let Some(events) = self.events.as_mut() else {
            return false;
        };
        match events.resume(dom, vcpu) {
            Ok(()) => {
                self.stats.vcpus_resumed += 1;
                true
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::info!(domid = %dom, vcpu, "domain gone while its vCPU waited for memory");
                true
            }
            Err(e) => {
                tracing::warn!(domid = %dom, vcpu, error = %e, "failed to resume a vCPU");
                false
            }
        }
    }

    /// Free memory or resume, once. `now` decides whether the last balloon
    /// step had its `settle` time.
    pub fn step<H: Hypervisor, S: XenStore>(&mut self, hv: &H, xs: &S, now: Instant) {
        if self.pending.is_empty() {
            self.stats.at_dom0_floor = false;
            return;
        }
        let free_kib = match hv.physinfo() {
            Ok(p) => pages_to_kib(p.free_pages),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read Xen's free memory");
                return;
            }
        };
        let need_kib = self
            .cfg
            .resume_free_kib
            .max(self.pending.len() as u64 * (PAGE_SIZE as u64 / 1024));
        if free_kib >= need_kib {
            let waiting: Vec<(DomId, u32)> = self.pending.keys().copied().collect();
            let mut resumed = 0u64;
            for (dom, vcpu) in waiting {
                if self.resume(dom, vcpu) {
                    self.pending.remove(&(dom, vcpu));
                    resumed += 1;
                }
            }
            self.stats.at_dom0_floor = false;
            self.last_remind = None;
            tracing::info!(
                vcpus = resumed,
                free_mib = mib(free_kib),
                dom0_ballooned_mib = mib(self.stats.dom0_ballooned_kib),
                "memory is available again: resumed the paused vCPUs"
            );
            return;
        }
        if self
            .last_balloon
            .is_some_and(|t| now.duration_since(t) < self.cfg.settle)
        {
            return;
        }
        match self.balloon_dom0(hv, xs) {
            Ok(Some((from, to))) => {
                self.last_balloon = Some(now);
                tracing::warn!(
                    from_mib = mib(from),
                    to_mib = mib(to),
                    free_mib = mib(free_kib),
                    paused_vcpus = self.pending.len(),
                    "short of memory: ballooning dom0 down"
                );
            }
            Ok(None) => {
                self.stats.at_dom0_floor = true;
                if self
                    .last_remind
                    .is_none_or(|t| now.duration_since(t) >= self.cfg.remind)
                {
                    self.last_remind = Some(now);
                    let doms: Vec<String> = self
                        .pending
                        .keys()
                        .map(|(d, v)| format!("d{d}v{v}"))
                        .collect();
                    tracing::error!(
                        paused = %doms.join(","),
                        free_mib = mib(free_kib),
                        need_mib = mib(need_kib),
                        dom0_floor_mib = mib(self.cfg.dom0_min_kib),
                        "out of memory: vCPUs stay paused until Xen has {} MiB free; dom0 is at its floor \
                         (--dom0-min-mib). Free memory: shut down or `xl destroy` a guest, or shrink one \
                         with `xl mem-set`; they resume by themselves",
                        mib(need_kib)
                    );
                }
            }
            Err(e) => {
                self.last_balloon = Some(now);
                tracing::warn!(error = %e, "cannot balloon dom0 down");
            }
        }
    }

    /// On the way out: answer every open request (the vCPUs resume) and
    /// release the rings: disabled if Xen has `--enomem-resume-mib` free,
    /// otherwise left enabled, so a resumed vCPU whose write still finds no
    /// memory is paused again rather than its guest crashed (the next
    /// daemon takes such rings over and resumes the vCPUs). `unix_ms` of the
    /// report is left to the caller.
    pub fn finish<H: Hypervisor>(&mut self, hv: &H) -> crate::stop::StopReport {
        let mut report = crate::stop::StopReport::default();
        if self.events.is_none() {
            return report;
        }
        let free_kib = hv.physinfo().map(|p| pages_to_kib(p.free_pages));
        let need_kib = self
            .cfg
            .resume_free_kib
            .max(self.pending.len() as u64 * (PAGE_SIZE as u64 / 1024));
        let short = free_kib.as_ref().map_or(true, |free| *free < need_kib);
        report.free_kib = free_kib.unwrap_or(0);
        let waiting: Vec<(DomId, u32)> = self.pending.keys().copied().collect();
        for (dom, vcpu) in waiting {
            if self.resume(dom, vcpu) {
                report.vcpus_resumed += 1;
            }
            self.pending.remove(&(dom, vcpu));
        }
        let Some(events) = self.events.as_mut() else {
            return report;
        };
        for dom in events.attached() {
            let released = if short {
                report.rings_left_enabled.push(dom.0);
                events.leave_enabled(dom)
            } else {
                report.rings_disabled.push(dom.0);
                events.detach(dom)
            };
            if let Err(e) = released {
                tracing::warn!(domid = %dom, error = %e, "failed to release the sharing ring");
            }
        }
        self.stats.at_dom0_floor = false;
        report
    }

    /// Lower dom0's balloon target one step. `Some((from, to))` in KiB, or
    /// `None` at the floor.
    fn balloon_dom0<H: Hypervisor, S: XenStore>(
        &mut self,
        hv: &H,
        xs: &S,
    ) -> Result<Option<(u64, u64)>, MemshareError> {
        let recorded = match xs.read_string(Transaction::NONE, DOM0_TARGET) {
            Ok(s) => s.trim().parse::<u64>().ok(),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let current = match recorded {
            Some(kib) => kib,
            None => hv.domain(DomId::DOM0)?.memory_kib(),
        };
        if current <= self.cfg.dom0_min_kib {
            return Ok(None);
        }
        let target = current
            .saturating_sub(self.cfg.balloon_step_kib.max(1))
            .max(self.cfg.dom0_min_kib);
        xs.write(
            Transaction::NONE,
            DOM0_TARGET,
            target.to_string().as_bytes(),
        )?;
        self.stats.balloon_steps += 1;
        self.stats.dom0_ballooned_kib += current - target;
        Ok(Some((current, target)))
    }
}

impl Drop for EnomemHandler {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            // The rings are disabled as `events` drops; Xen does not unpause
            // on disable, so answer now. With memory still short, the
            // retried write then crashes the guest (no helper any more).
            tracing::warn!(
                vcpus = self.pending.len(),
                "exiting with vCPUs paused for memory: resuming them"
            );
            let waiting: Vec<(DomId, u32)> = self.pending.keys().copied().collect();
            for (dom, vcpu) in waiting {
                self.resume(dom, vcpu);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circ_hv::fake::{FakeHypervisor, FakeXenStore};
    use circ_hv::Gfn;

    const MIB_PAGES: u64 = 256;

    fn host() -> (FakeHypervisor, FakeXenStore) {
        crate::test_support::two_opted_in_guests(32_768, 1_048_576)
    }

    fn cfg() -> EnomemConfig {
        EnomemConfig {
            settle: Duration::ZERO,
            ..EnomemConfig::default()
        }
    }

    fn target(xs: &FakeXenStore) -> u64 {
        xs.read_string(Transaction::NONE, DOM0_TARGET)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn rings_follow_the_policy() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert_eq!(h.stats().rings, [1, 2]);
        assert!(!rings.is_enabled(DomId::DOM0), "never dom0");
        // ms-b opts out with nothing shared: its ring goes.
        let _ = xs.rm(Transaction::NONE, &crate::policy::policy_key(DomId(2)));
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert_eq!(h.stats().rings, [1]);
        assert!(!rings.is_enabled(DomId(2)));
        // --domain narrows it.
        assert!(h.sync(&hv, &xs, Some(&[DomId(2)])).is_ok());
        assert!(h.stats().rings.is_empty());
    }

    #[test]
    fn event_balloons_dom0_then_resumes() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        hv.set_free_pages(0);
        assert!(rings.post_enomem(DomId(1), 0, Gfn(0x1234)));

        h.poll(&hv, &xs, Duration::ZERO);
        assert!(h.short_of_memory());
        assert_eq!(
            rings.paused_vcpus(DomId(1)),
            [0],
            "still paused: no memory yet"
        );
        assert_eq!(target(&xs), 1_048_576 - 65_536, "one 64 MiB step");
        let s = h.stats();
        assert_eq!((s.events, s.paused_now, s.balloon_steps), (1, 1, 1));
        assert_eq!(s.paused[0].gfn, 0x1234);

        // The balloon driver gave the pages back to Xen.
        hv.set_free_pages(64 * MIB_PAGES);
        h.poll(&hv, &xs, Duration::ZERO);
        assert!(!h.short_of_memory());
        assert!(rings.paused_vcpus(DomId(1)).is_empty());
        assert_eq!(rings.resumed(), [(DomId(1), 0)]);
        let s = h.stats();
        assert_eq!((s.vcpus_resumed, s.paused_now), (1, 0));
        assert_eq!(s.dom0_ballooned_kib, 65_536);
        assert_eq!(target(&xs), 1_048_576 - 65_536, "no further step");
    }

    #[test]
    fn floor_keeps_the_vcpu_paused_until_memory_appears() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        let _ = xs.write(Transaction::NONE, DOM0_TARGET, b"557056"); // 544 MiB
        hv.set_free_pages(1);
        rings.post_enomem(DomId(2), 1, Gfn(9));
        for _ in 0..4 {
            h.poll(&hv, &xs, Duration::ZERO);
        }
        assert_eq!(target(&xs), 512 * 1024, "stops at --dom0-min-mib");
        let s = h.stats();
        assert!(s.at_dom0_floor);
        assert_eq!(s.dom0_ballooned_kib, 32 * 1024);
        assert_eq!(rings.paused_vcpus(DomId(2)), [1]);
        assert!(h.short_of_memory());

        // The operator destroys a guest: memory appears, the vCPU resumes.
        hv.set_free_pages(100 * MIB_PAGES);
        h.poll(&hv, &xs, Duration::ZERO);
        assert!(rings.paused_vcpus(DomId(2)).is_empty());
        assert!(!h.stats().at_dom0_floor);
    }

    #[test]
    fn balloon_steps_wait_to_settle() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(
            &hv,
            EnomemConfig {
                settle: Duration::from_secs(3600),
                ..EnomemConfig::default()
            },
            true,
        );
        assert!(h.sync(&hv, &xs, None).is_ok());
        hv.set_free_pages(0);
        rings.post_enomem(DomId(1), 0, Gfn(1));
        h.poll(&hv, &xs, Duration::ZERO);
        h.poll(&hv, &xs, Duration::ZERO);
        assert_eq!(h.stats().balloon_steps, 1);
    }

    #[test]
    fn domain_vanishing_with_a_pending_event() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        hv.set_free_pages(0);
        rings.post_enomem(DomId(1), 0, Gfn(3));
        rings.post_enomem(DomId(2), 0, Gfn(4));
        h.poll(&hv, &xs, Duration::ZERO);
        assert_eq!(h.stats().paused_now, 2);

        hv.remove_domain(DomId(1));
        // Memory appears before the next sync: resuming the gone domain
        // fails with NotFound and is dropped; the other one resumes.
        hv.set_free_pages(64 * MIB_PAGES);
        h.poll(&hv, &xs, Duration::ZERO);
        assert!(!h.short_of_memory());
        assert_eq!(rings.resumed(), [(DomId(2), 0)]);
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert_eq!(h.stats().rings, [2]);
    }

    #[test]
    fn domain_vanishing_is_noticed_by_sync() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        hv.set_free_pages(0);
        let _ = xs.write(Transaction::NONE, DOM0_TARGET, b"524288");
        rings.post_enomem(DomId(1), 0, Gfn(3));
        h.poll(&hv, &xs, Duration::ZERO);
        assert!(h.short_of_memory());
        hv.remove_domain(DomId(1));
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert!(!h.short_of_memory(), "nothing waits for a gone domain");
        assert_eq!(h.stats().rings, [2]);
    }

    #[test]
    fn stale_ring_is_replaced() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        rings.leave_stale_ring(DomId(1));
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert_eq!(h.stats().rings, [1, 2]);
    }

    #[test]
    fn vcpus_a_killed_daemon_left_paused_resume_when_the_next_one_starts() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        // A daemon held ms-a's ring, a vCPU paused on it, then SIGKILL:
        // Xen keeps the ring enabled and the vCPU paused.
        rings.leave_stale_ring(DomId(1));
        assert!(rings.post_enomem(DomId(1), 1, Gfn(0x77)));
        assert_eq!(rings.paused_vcpus(DomId(1)), [1]);
        let mut h = EnomemHandler::new(&hv, cfg(), true);
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert!(rings.paused_vcpus(DomId(1)).is_empty(), "resumed at start");
        assert_eq!(rings.resumed(), [(DomId(1), 1)]);
        // The new ring serves: the next break is this daemon's.
        hv.set_free_pages(0);
        assert!(rings.post_enomem(DomId(1), 1, Gfn(0x77)));
        h.poll(&hv, &xs, Duration::ZERO);
        assert!(h.short_of_memory());
    }

    #[test]
    fn disabled_or_unsupported_handler_does_nothing() {
        let (hv, xs) = host();
        let mut h = EnomemHandler::new(&hv, cfg(), false);
        assert!(h.sync(&hv, &xs, None).is_ok());
        assert!(!h.stats().enabled);
        assert_eq!(hv.sharing_rings().attach_calls(), 0);
        hv.set_sharing_supported(false);
        let h = EnomemHandler::new(&hv, cfg(), true);
        assert!(!h.stats().enabled);
    }
}
