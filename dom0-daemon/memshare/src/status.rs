//! What the operator sees: `circ share status [--json]` and the daemon's
//! status file, plus an optional Prometheus text file.
//!
//! The host and per-domain sharing figures come from Xen itself, so they
//! are right even with no daemon running or after a restart; the daemon's
//! own counters (pages scanned, shared by it, copy-on-write breaks seen)
//! come from the status file it rewrites after every round.
//!
//! The JSON field names are an interface: the lab's `memshare` scenario
//! reads them with jq.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use circ_hv::report::{Align, Table};
use circ_hv::{
    pages_to_kib, DomainState, DomainType, ErrorKind, HvError, Hypervisor, XenStore, PAGE_SIZE,
};
use serde::{Deserialize, Serialize};

use crate::enomem::EnomemStats;
use crate::policy::{domain_name, Eligibility, Policy};
use crate::scanner::{DomainStats, RoundSummary};
use crate::MemshareError;

/// Where the daemon writes its status by default.
pub const DEFAULT_STATUS_FILE: &str = "/run/circular/memshare.json";

/// The daemon's status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub rounds: u64,
    pub last_round: Option<RoundSummary>,
    pub domains: Vec<DomainStats>,
    /// Pages read since the daemon started, over all rounds and domains.
    #[serde(default)]
    pub pages_scanned_total: u64,
    /// The daemon's own CPU time since it started (`/proc/self/stat`).
    #[serde(default)]
    pub cpu_user_ms: u64,
    #[serde(default)]
    pub cpu_system_ms: u64,
    /// Copy-on-write breaks that found no free memory (see `enomem`).
    #[serde(default)]
    pub enomem: EnomemStats,
    /// Set in the status the daemon writes as it stops (SIGTERM/SIGINT,
    /// or its last round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<crate::stop::StopReport>,
}

impl DaemonStatus {
    /// Read a status file; `None` if there is none (no daemon ran).
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(status) => Some(status),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable status file");
                None
            }
        }
    }

    /// Replace the file atomically (write aside, rename).
    pub fn write(&self, path: &Path) -> Result<(), MemshareError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| MemshareError::Write {
            path: path.to_owned(),
            source: e.into(),
        })?;
        write_atomically(path, &json)
    }
}

/// Host-wide sharing figures from Xen.
#[derive(Debug, Clone, Serialize)]
pub struct HostSharing {
    /// False on a hypervisor without memory sharing (stock Debian Xen).
    pub sharing_supported: bool,
    /// Pages saved by sharing (`xc_sharing_freed_pages`).
    pub freed_pages: u64,
    /// Frames backing shared pages (`xc_sharing_used_frames`).
    pub used_frames: u64,
    pub freed_kib: u64,
    pub free_memory_kib: u64,
    pub total_memory_kib: u64,
}

/// The daemon as seen through its status file.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonSummary {
    pub pid: u32,
    pub rounds: u64,
    pub started_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub last_round: Option<RoundSummary>,
    /// Pages read since the daemon started.
    pub pages_scanned_total: u64,
    /// The daemon's CPU time (user + system) since it started.
    pub cpu_user_ms: u64,
    pub cpu_system_ms: u64,
    pub cpu_seconds: f64,
    /// The cost of scanning: `cpu_seconds` per GiB of `pages_scanned_total`
    /// (sharing included); `None` before anything was scanned.
    pub cpu_seconds_per_gib_scanned: Option<f64>,
    /// Sharing rings, vCPUs paused for memory, dom0 ballooned.
    pub enomem: EnomemStats,
    /// How the daemon ended, once it has (see `crate::stop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<crate::stop::StopReport>,
}

impl DaemonSummary {
    pub fn from_status(d: DaemonStatus) -> Self {
        let cpu_seconds = (d.cpu_user_ms.saturating_add(d.cpu_system_ms)) as f64 / 1000.0;
        let gib = d.pages_scanned_total as f64 * PAGE_SIZE as f64 / GIB;
        Self {
            pid: d.pid,
            rounds: d.rounds,
            started_unix_ms: d.started_unix_ms,
            updated_unix_ms: d.updated_unix_ms,
            last_round: d.last_round,
            pages_scanned_total: d.pages_scanned_total,
            cpu_user_ms: d.cpu_user_ms,
            cpu_system_ms: d.cpu_system_ms,
            cpu_seconds,
            cpu_seconds_per_gib_scanned: (d.pages_scanned_total > 0).then(|| cpu_seconds / gib),
            enomem: d.enomem,
            stopped: d.stopped,
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// One domain: Xen's figures, the policy's decision, the daemon's counters.
#[derive(Debug, Clone, Serialize)]
pub struct DomainShare {
    pub domid: u16,
    pub name: String,
    #[serde(rename = "type")]
    pub domain_type: DomainType,
    pub state: DomainState,
    pub policy: Eligibility,
    pub memory_kib: u64,
    /// Xen: pages of this domain backed by a shared frame.
    pub shr_pages: u64,
    /// Daemon, last round: pages read.
    pub pages_scanned: u64,
    /// Daemon, cumulative: pages of this domain it shared (frames freed).
    pub pages_shared: u64,
    pub zero_pages_shared: u64,
    /// Daemon: copy-on-write breaks seen since it started.
    pub unshared_since: u64,
    pub rejected_changed: u64,
}

/// `circ share status`.
#[derive(Debug, Clone, Serialize)]
pub struct ShareStatus {
    pub host: HostSharing,
    pub daemon: Option<DaemonSummary>,
    pub domains: Vec<DomainShare>,
}

impl ShareStatus {
    pub fn collect<H: Hypervisor, S: XenStore>(
        hv: &H,
        xs: &S,
        daemon: Option<DaemonStatus>,
    ) -> Result<Self, MemshareError> {
        let phys = hv.physinfo()?;
        let (supported, freed, used) = match (hv.sharing_freed_pages(), hv.sharing_used_frames()) {
            (Ok(freed), Ok(used)) => (true, freed, used),
            (Err(e), _) | (_, Err(e)) if e.kind() == ErrorKind::NotSupported => (false, 0, 0),
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let host = HostSharing {
            sharing_supported: supported,
            freed_pages: freed,
            used_frames: used,
            freed_kib: pages_to_kib(freed),
            free_memory_kib: pages_to_kib(phys.free_pages),
            total_memory_kib: pages_to_kib(phys.total_pages),
        };
        let policy = Policy::read(xs)?;
        let mut domains = Vec::new();
        for info in hv.domains()? {
            let name = domain_name(xs, info.domid)?;
            let stats = daemon
                .as_ref()
                .and_then(|d| d.domains.iter().find(|s| s.domid == info.domid.0))
                .filter(|s| s.name == name)
                .cloned()
                .unwrap_or_default();
            domains.push(DomainShare {
                domid: info.domid.0,
                policy: policy.eligibility(&info, &name),
                name,
                domain_type: info.domain_type,
                state: info.state,
                memory_kib: info.memory_kib(),
                shr_pages: info.shr_pages,
                pages_scanned: stats.pages_scanned,
                pages_shared: stats.pages_shared,
                zero_pages_shared: stats.zero_pages_shared,
                unshared_since: stats.unshared_since,
                rejected_changed: stats.rejected_changed,
            });
        }
        Ok(Self {
            host,
            daemon: daemon.map(DaemonSummary::from_status),
            domains,
        })
    }

    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let h = &self.host;
        let mut out = String::new();
        // Writing to a String cannot fail.
        if h.sharing_supported {
            let _ = writeln!(
                out,
                "sharing: {} pages freed ({} MiB), {} frames back shared pages; {} MiB free of {} MiB",
                h.freed_pages,
                h.freed_kib / 1024,
                h.used_frames,
                h.free_memory_kib / 1024,
                h.total_memory_kib / 1024
            );
        } else {
            let _ = writeln!(out, "sharing: not supported by this hypervisor");
        }
        match &self.daemon {
            Some(d) => {
                let _ = write!(
                    out,
                    "daemon:  pid {}, {} rounds, {} pages scanned ({:.2} GiB), {:.1} s CPU",
                    d.pid,
                    d.rounds,
                    d.pages_scanned_total,
                    d.pages_scanned_total as f64 * PAGE_SIZE as f64 / GIB,
                    d.cpu_seconds
                );
                if let Some(per_gib) = d.cpu_seconds_per_gib_scanned {
                    let _ = write!(out, " ({per_gib:.2} s/GiB)");
                }
                let _ = writeln!(out);
                let e = &d.enomem;
                if e.events > 0 || e.paused_now > 0 {
                    let _ = writeln!(
                        out,
                        "memory:  {} copy-on-write breaks found no free memory; {} vCPU(s) paused now, \
                         {} resumed; dom0 ballooned down {} MiB{}",
                        e.events,
                        e.paused_now,
                        e.vcpus_resumed,
                        e.dom0_ballooned_kib / 1024,
                        if e.at_dom0_floor {
                            " (at its floor: free memory to resume them)"
                        } else {
                            ""
                        }
                    );
                }
            }
            None => {
                let _ = writeln!(out, "daemon:  no status file (not running?)");
            }
        }
        let _ = writeln!(out);
        let mut table = Table::new(&[
            ("ID", Align::Right, 5),
            ("NAME", Align::Left, 0),
            ("TYPE", Align::Left, 4),
            ("POLICY", Align::Left, 14),
            ("MEM(MiB)", Align::Right, 8),
            ("SHR", Align::Right, 9),
            ("SCANNED", Align::Right, 9),
            ("SHARED", Align::Right, 9),
            ("UNSHARED", Align::Right, 9),
        ]);
        for d in &self.domains {
            table.row([
                d.domid.to_string(),
                d.name.clone(),
                d.domain_type.as_str().to_owned(),
                d.policy.as_str().to_owned(),
                (d.memory_kib / 1024).to_string(),
                d.shr_pages.to_string(),
                d.pages_scanned.to_string(),
                d.pages_shared.to_string(),
                d.unshared_since.to_string(),
            ]);
        }
        let _ = write!(out, "{table}");
        out
    }

    /// Prometheus text exposition format (for node_exporter's textfile
    /// collector).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let h = &self.host;
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        gauge(
            &mut out,
            "circ_memshare_freed_pages",
            "Pages freed by sharing (Xen).",
        );
        let _ = writeln!(out, "circ_memshare_freed_pages {}", h.freed_pages);
        gauge(
            &mut out,
            "circ_memshare_used_frames",
            "Frames backing shared pages (Xen).",
        );
        let _ = writeln!(out, "circ_memshare_used_frames {}", h.used_frames);
        if let Some(d) = &self.daemon {
            gauge(
                &mut out,
                "circ_memshare_rounds",
                "Scan rounds done by the daemon.",
            );
            let _ = writeln!(out, "circ_memshare_rounds {}", d.rounds);
            let counter = |out: &mut String, name: &str, help: &str| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            };
            counter(
                &mut out,
                "circ_memshare_pages_scanned_total",
                "Pages read by the daemon since it started.",
            );
            let _ = writeln!(
                out,
                "circ_memshare_pages_scanned_total {}",
                d.pages_scanned_total
            );
            counter(
                &mut out,
                "circ_memshare_cpu_seconds_total",
                "CPU time (user + system) of the daemon since it started.",
            );
            let _ = writeln!(out, "circ_memshare_cpu_seconds_total {}", d.cpu_seconds);
            counter(
                &mut out,
                "circ_memshare_enomem_events_total",
                "Copy-on-write breaks that found no free memory (vCPU paused).",
            );
            let _ = writeln!(out, "circ_memshare_enomem_events_total {}", d.enomem.events);
            gauge(
                &mut out,
                "circ_memshare_enomem_paused_vcpus",
                "vCPUs paused now, waiting for free memory.",
            );
            let _ = writeln!(
                out,
                "circ_memshare_enomem_paused_vcpus {}",
                d.enomem.paused_now
            );
            counter(
                &mut out,
                "circ_memshare_dom0_ballooned_kib_total",
                "dom0 memory ballooned down to free memory for paused vCPUs.",
            );
            let _ = writeln!(
                out,
                "circ_memshare_dom0_ballooned_kib_total {}",
                d.enomem.dom0_ballooned_kib
            );
        }
        type Field = fn(&DomainShare) -> u64;
        let per_domain: [(&str, &str, Field); 4] = [
            (
                "circ_memshare_domain_shr_pages",
                "Pages backed by a shared frame (Xen).",
                |d| d.shr_pages,
            ),
            (
                "circ_memshare_domain_pages_scanned",
                "Pages read in the last round.",
                |d| d.pages_scanned,
            ),
            (
                "circ_memshare_domain_pages_shared",
                "Pages shared by the daemon.",
                |d| d.pages_shared,
            ),
            (
                "circ_memshare_domain_unshared",
                "Copy-on-write breaks seen by the daemon.",
                |d| d.unshared_since,
            ),
        ];
        for (name, help, field) in per_domain {
            gauge(&mut out, name, help);
            for d in self
                .domains
                .iter()
                .filter(|d| d.policy == Eligibility::Eligible)
            {
                let _ = writeln!(
                    out,
                    "{name}{{domid=\"{}\",name=\"{}\"}} {}",
                    d.domid,
                    escape_label(&d.name),
                    field(d)
                );
            }
        }
        out
    }
}

/// Prometheus label values escape backslash, quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write `path` through a temporary file in the same directory and rename,
/// so readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MemshareError> {
    let err = |source| MemshareError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// For callers that only want to know whether sharing exists.
pub fn sharing_supported<H: Hypervisor>(hv: &H) -> Result<bool, HvError> {
    match hv.sharing_freed_pages() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotSupported => Ok(false),
        Err(e) => Err(e),
    }
}
