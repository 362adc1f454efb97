//! Stopping the daemon cleanly on SIGTERM or SIGINT.
//!
//! The signal handler only sets an [`AtomicBool`] (signal-hook); the daemon
//! loop looks at it between rounds and while it rests (in slices of at most
//! [`STOP_SLICE`], and a signal also cuts the sharing rings' `poll` short).
//! A round in progress finishes first: it is the unit the scanner's state
//! is consistent at. Then [`finish`] resumes every vCPU the daemon kept
//! paused and releases the rings, and the final status is written.
//!
//! If Xen is still short of memory at that point, the rings are left
//! enabled (see [`EnomemHandler::finish`]): a resumed vCPU whose write
//! still finds no free frame is paused again instead of having its guest
//! crashed, and the next daemon resumes it when it starts.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use circ_hv::{Hypervisor, XenStore};
use serde::{Deserialize, Serialize};

use crate::enomem::EnomemHandler;
use crate::status::DaemonStatus;
use crate::MemshareError;

/// The longest the daemon sleeps without looking at the stop flag.
pub const STOP_SLICE: Duration = Duration::from_millis(200);

/// Set when the daemon should stop at its next safe point. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag only [`request`](Self::request) sets.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag that SIGTERM and SIGINT set (the handler does nothing else).
    pub fn on_termination_signals() -> std::io::Result<Self> {
        let flag = Self::new();
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&flag.0))?;
        }
        Ok(flag)
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// [`EnomemHandler::serve`] for `duration`, in slices, returning as soon
/// as a stop is requested.
pub fn serve<H: Hypervisor, S: XenStore>(
    enomem: &mut EnomemHandler,
    hv: &H,
    xs: &S,
    duration: Duration,
    stop: &StopFlag,
) {
    let deadline = Instant::now() + duration;
    while !stop.requested() {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        enomem.serve(hv, xs, (deadline - now).min(STOP_SLICE));
    }
}

/// How the daemon ended (`daemon.stopped` in `circ share status --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopReport {
    pub unix_ms: u64,
    /// vCPUs paused for memory that were resumed on the way out.
    pub vcpus_resumed: u64,
    /// Rings disabled.
    pub rings_disabled: Vec<u16>,
    /// Rings left enabled because Xen was short of memory (the next daemon
    /// takes them over and resumes what they paused).
    pub rings_left_enabled: Vec<u16>,
    /// Xen's free memory at the time, KiB.
    pub free_kib: u64,
}

/// Resume, release, and write the final status.
pub fn finish<H: Hypervisor>(
    enomem: &mut EnomemHandler,
    hv: &H,
    status: &mut DaemonStatus,
    status_file: &Path,
    unix_ms: u64,
) -> Result<StopReport, MemshareError> {
    let mut report = enomem.finish(hv);
    report.unix_ms = unix_ms;
    if !report.rings_left_enabled.is_empty() {
        tracing::warn!(
            rings = ?report.rings_left_enabled,
            free_mib = report.free_kib / 1024,
            "stopping while Xen is short of memory: sharing rings left enabled, so a write that \
             still finds no memory pauses its vCPU instead of crashing the guest; start the \
             daemon again to resume such vCPUs"
        );
    }
    tracing::info!(
        vcpus_resumed = report.vcpus_resumed,
        rings_disabled = report.rings_disabled.len(),
        rings_left_enabled = report.rings_left_enabled.len(),
        "stopped"
    );
    status.enomem = enomem.stats();
    status.stopped = Some(report.clone());
    status.updated_unix_ms = unix_ms;
    status.write(status_file)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enomem::EnomemConfig;
    use circ_hv::fake::{FakeHypervisor, FakeXenStore};
    use circ_hv::{DomId, Gfn};

    /// dom0 at its floor: nothing to balloon, a paused vCPU stays paused.
    fn host() -> (FakeHypervisor, FakeXenStore) {
        crate::test_support::two_opted_in_guests(256, 524_288)
    }

    fn paused_handler(hv: &FakeHypervisor, xs: &FakeXenStore) -> EnomemHandler {
        let cfg = EnomemConfig {
            settle: Duration::ZERO,
            ..EnomemConfig::default()
        };
        let mut h = EnomemHandler::new(hv, cfg, true);
        assert!(h.sync(hv, xs, None).is_ok());
        hv.set_free_pages(0);
        assert!(hv.sharing_rings().post_enomem(DomId(1), 0, Gfn(0x42)));
        h.poll(hv, xs, Duration::ZERO);
        assert!(h.short_of_memory());
        assert_eq!(hv.sharing_rings().paused_vcpus(DomId(1)), [0]);
        h
    }

    #[test]
    fn stop_resumes_paused_vcpus_and_disables_rings_when_memory_allows() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = paused_handler(&hv, &xs);
        // Memory came back between the last poll and the stop.
        hv.set_free_pages(64 * 256);
        let report = h.finish(&hv);
        assert_eq!(report.vcpus_resumed, 1);
        assert!(rings.paused_vcpus(DomId(1)).is_empty());
        assert_eq!(rings.resumed(), [(DomId(1), 0)]);
        assert_eq!(report.rings_disabled, [1, 2]);
        assert!(report.rings_left_enabled.is_empty());
        assert!(!rings.is_enabled(DomId(1)) && !rings.is_enabled(DomId(2)));
        assert!(!h.short_of_memory());
        assert_eq!(h.stats().paused_now, 0);
    }

    #[test]
    fn stop_while_short_resumes_but_leaves_rings_for_the_next_daemon() {
        let (hv, xs) = host();
        let rings = hv.sharing_rings();
        let mut h = paused_handler(&hv, &xs);
        let report = h.finish(&hv);
        assert_eq!(report.vcpus_resumed, 1);
        assert!(rings.paused_vcpus(DomId(1)).is_empty(), "resumed");
        assert_eq!(report.rings_left_enabled, [1, 2]);
        assert!(rings.is_enabled(DomId(1)), "Xen keeps the ring");
        drop(h);

        // The retried write still finds no memory: paused again, on the
        // ring nobody listens to; the next daemon resumes it as it starts.
        assert!(rings.post_enomem(DomId(1), 0, Gfn(0x42)));
        assert_eq!(rings.paused_vcpus(DomId(1)), [0]);
        let mut next = EnomemHandler::new(&hv, EnomemConfig::default(), true);
        assert!(next.sync(&hv, &xs, None).is_ok());
        assert!(rings.paused_vcpus(DomId(1)).is_empty());
        assert_eq!(next.stats().rings, [1, 2]);
    }

    #[test]
    fn serve_returns_once_stop_is_requested() {
        let (hv, xs) = host();
        let mut h = EnomemHandler::new(&hv, EnomemConfig::default(), false);
        let stop = StopFlag::new();
        let setter = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            setter.request();
        });
        let started = Instant::now();
        serve(&mut h, &hv, &xs, Duration::from_secs(3600), &stop);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(t.join().is_ok());
    }

    #[test]
    fn daemon_stops_between_rounds_and_writes_its_final_status() {
        let (hv, xs) = host();
        let dir = tempfile::tempdir().expect("tempdir");
        let status_file = dir.path().join("memshare.json");
        let config = crate::MemshareConfig {
            interval: 3600.0,
            status_file,
            ..crate::MemshareConfig::default()
        };
        hv.set_free_pages(1 << 20);
        let stop = StopFlag::new();
        let setter = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            setter.request();
        });
        let started = Instant::now();
        let fm = hv.foreign_memory();
        let r = crate::run_until(&hv, &fm, &xs, &config, &mut std::io::sink(), &stop);
        assert!(r.is_ok(), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(t.join().is_ok());
        let status = DaemonStatus::read(&config.status_file).expect("status written");
        // `circ share status --json` shows it as `daemon.stopped`.
        let shown = crate::ShareStatus::collect(&hv, &xs, Some(status.clone())).expect("collect");
        let json = serde_json::to_value(&shown).expect("json");
        assert_eq!(
            json["daemon"]["stopped"]["rings_disabled"],
            serde_json::json!([1, 2])
        );
        let stopped = status.stopped.expect("final status");
        assert_eq!(stopped.rings_disabled, [1, 2]);
        assert!(!hv.sharing_rings().is_enabled(DomId(1)));
    }
}
