//! `circ share ...`: page sharing between guests (the `circ-memshare`
//! library; `circ share scan` is the daemon run in the foreground).

use std::io::Write as _;

use anyhow::Context as _;
use std::path::PathBuf;

use circ_cli_support::memshare::{LockArgs, ScanArgs};
use circ_cli_support::Exit;
use circ_memshare::policy::{self, domain_name, Policy, POLICY_ROOT};
use circ_memshare::status::DEFAULT_STATUS_FILE;
use circ_memshare::{DaemonStatus, ScannerLock, ShareStatus};
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
    /// Sharing state of given pages of a domain: which gfns are backed by a
    /// shared frame, and by how many gfns each frame is referenced.
    Pages {
        /// Name or domid.
        domain: String,
        /// gfns in hexadecimal, separated by white space.
        #[arg(long, value_name = "PATH")]
        gfn_file: PathBuf,
        #[arg(long)]
        json: bool,
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
            // Values the library refuses were refused while parsing; should
            // one get here, it is still a usage error (status 2).
            let config = scan.to_config().unwrap_or_else(|e| e.exit());
            // SIGTERM/SIGINT: vCPUs resumed, rings released, exit 0.
            let stop = circ_memshare::StopFlag::on_termination_signals()?;
            circ_memshare::run_until(&hv, hv.foreign_memory(), &xs, &config, &mut out, &stop)?;
        }
        ShareCommand::Pages {
            domain,
            gfn_file,
            json,
        } => {
            let (info, name) = policy::resolve_domain(&hv, &xs, &domain)?;
            // Any sharing call turns sharing on for its domain (Xen 4.17's
            // mem_sharing_memop): never for one that did not opt in.
            let decision = Policy::read(&xs)?.eligibility(&info, &name);
            if decision != circ_memshare::Eligibility::Eligible {
                anyhow::bail!(
                    "domain {} is {}: asking Xen would turn sharing on for it \
                     (its shr_pages in `circ share status` says whether any page is shared)",
                    info.domid,
                    decision.as_str()
                );
            }
            let text = std::fs::read_to_string(&gfn_file)
                .with_context(|| format!("cannot read {}", gfn_file.display()))?;
            let gfns = circ_memshare::pages::parse_gfns(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", gfn_file.display()))?;
            let pages = circ_memshare::pages::page_sharing(&hv, info.domid, &gfns)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &pages)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", pages.to_text())?;
            }
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
