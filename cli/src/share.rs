//! `circ share ...`: page sharing between guests (the `circ-memshare`
//! library; `circ share scan` is the daemon run in the foreground).

use std::io::Write as _;
use std::path::PathBuf;

use circ_cli_support::Exit;
use circ_memshare::policy::{self, domain_name, Policy, POLICY_ROOT};
use circ_memshare::status::DEFAULT_STATUS_FILE;
use circ_memshare::{DaemonStatus, LockArgs, ScanArgs, ScannerLock, ShareStatus};
use circ_xen::{XenHypervisor, XenStoreHandle};
use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Pages shared and memory freed: host figures and one line per domain.
    Status {
        #[arg(long)]
        json: bool,
        /// The daemon's status file, for its counters.
        #[arg(long, default_value = DEFAULT_STATUS_FILE, value_name = "PATH")]
        status_file: PathBuf,
    },
    /// Scan the opted-in domains and share identical pages (the daemon, in
    /// the foreground).
    Scan {
        #[command(flatten)]
        scan: ScanArgs,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// Opt a domain (name or domid) in: sharing on, key written.
    Enable { domain: String },
    /// Opt a domain out; pages already shared stay so until written.
    Disable { domain: String },
    /// Which domains the daemon scans, and why the others are left alone.
    Policy {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ShareCommand) -> anyhow::Result<Exit> {
    // One scanner per host, checked before any Xen handle is opened.
    let _lock = match &cmd {
        ShareCommand::Scan { lock, .. } => match ScannerLock::acquire(&lock.lock_file) {
            Ok(l) => Some(l),
            Err(e) if e.is_busy() => {
                eprintln!("circ: {e}");
                return Ok(Exit::Busy);
            }
            Err(e) => return Err(e.into()),
        },
        _ => None,
    };
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        ShareCommand::Status { json, status_file } => {
            let status = ShareStatus::collect(&hv, &xs, DaemonStatus::read(&status_file))?;
            if json {
                serde_json::to_writer_pretty(&mut out, &status)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", status.to_text())?;
            }
        }
        ShareCommand::Scan { scan, .. } => {
            // SIGTERM/SIGINT: vCPUs resumed, rings released, exit 0.
            let stop = circ_memshare::StopFlag::on_termination_signals()?;
            circ_memshare::run_until(&hv, hv.foreign_memory(), &xs, &scan, &mut out, &stop)?;
        }
        ShareCommand::Enable { domain } => {
            let dom = policy::enable(&hv, &xs, &domain)?;
            writeln!(out, "domain {dom} opted in ({})", policy::policy_key(dom))?;
        }
        ShareCommand::Disable { domain } => {
            let dom = policy::disable(&hv, &xs, &domain)?;
            writeln!(out, "domain {dom} opted out")?;
        }
        ShareCommand::Policy { json } => {
            #[derive(Serialize)]
            struct Entry {
                domid: u16,
                name: String,
                policy: circ_memshare::Eligibility,
            }
            let policy = Policy::read(&xs)?;
            let mut entries = Vec::new();
            for info in circ_hv::Hypervisor::domains(&hv)? {
                let name = domain_name(&xs, info.domid)?;
                entries.push(Entry {
                    domid: info.domid.0,
                    policy: policy.eligibility(&info, &name),
                    name,
                });
            }
            if json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
            } else {
                writeln!(out, "opt-in keys: {POLICY_ROOT}/<domid> = <name>")?;
                for e in entries {
                    writeln!(out, "{:>5}  {:<20}  {}", e.domid, e.name, e.policy.as_str())?;
                }
            }
        }
    }
    Ok(Exit::Success)
}
