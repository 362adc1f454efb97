//! The daemon loop shared by `circ-memshare` and `circ share scan`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use circ_hv::{DomId, ForeignMemory, Hypervisor, XenStore};

use crate::config::MemshareConfig;
use crate::cpu::CpuTime;
use crate::enomem::EnomemHandler;
use crate::policy::{domain_name, prune_stale, resolve_domain, Policy};
use crate::scanner::{RoundSummary, SharingScanner};
use crate::status::{write_atomically, DaemonStatus, ShareStatus};
use crate::stop::StopFlag;
use crate::MemshareError;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Scan rounds until `once`/`rounds` says stop (or forever), writing
/// the status file (and Prometheus file) after each and a line to `out`.
/// `args` is validated first ([`MemshareConfig::validate`]).
pub fn run<H, F, S>(
    hv: &H,
    fm: &F,
    xs: &S,
    args: &MemshareConfig,
    out: &mut dyn Write,
) -> Result<(), MemshareError>
where
    H: Hypervisor,
    F: ForeignMemory,
    S: XenStore,
{
    run_until(hv, fm, xs, args, out, &StopFlag::new())
}

/// [`run`], also stopping at the next safe point once `stop` is set
/// (SIGTERM/SIGINT): paused vCPUs resumed, rings released, final status
/// written (see [`crate::stop`]).
pub fn run_until<H, F, S>(
    hv: &H,
    fm: &F,
    xs: &S,
    args: &MemshareConfig,
    out: &mut dyn Write,
    stop: &StopFlag,
) -> Result<(), MemshareError>
where
    H: Hypervisor,
    F: ForeignMemory,
    S: XenStore,
{
    args.validate()?;
    let mut scanner = SharingScanner::new(hv, fm, xs, args.scan_config());
    let mut status = DaemonStatus {
        pid: std::process::id(),
        started_unix_ms: unix_ms(),
        ..DaemonStatus::default()
    };
    let limit = if args.once { Some(1) } else { args.rounds };
    // A single round leaves nobody to answer the rings: none for --once.
    let mut enomem = EnomemHandler::new(hv, args.enomem_config(), !args.once);
    let interval = Duration::from_secs_f64(args.interval.max(0.0));
    let mut cpu_warned = false;
    while !stop.requested() {
        let only = resolve_only(hv, xs, &args.domains)?;
        if !args.domains.is_empty() && only.is_empty() {
            tracing::warn!("none of the --domain domains exists; nothing to scan");
        }
        prune(hv, xs)?;
        let narrowed = (!args.domains.is_empty()).then_some(only.as_slice());
        enomem.sync(hv, xs, narrowed)?;
        if enomem.short_of_memory() {
            // vCPUs wait for memory: share nothing new (each shared page is
            // a copy-on-write break to come) until they run again.
            status.enomem = enomem.stats();
            status.updated_unix_ms = unix_ms();
            status.write(&args.status_file)?;
            crate::stop::serve(&mut enomem, hv, xs, interval, stop);
            continue;
        }
        let summary = if args.domains.is_empty() || !only.is_empty() {
            scanner.round(&only)?
        } else {
            RoundSummary::default()
        };
        report(out, &summary, args.json);

        status.rounds = scanner.rounds();
        status.updated_unix_ms = unix_ms();
        status.domains = scanner.stats();
        status.pages_scanned_total = status
            .pages_scanned_total
            .saturating_add(summary.pages_scanned);
        match CpuTime::own() {
            Ok(cpu) => {
                status.cpu_user_ms = cpu.user_ms;
                status.cpu_system_ms = cpu.system_ms;
            }
            // Without /proc the figures stay at their last value.
            Err(e) if !cpu_warned => {
                tracing::warn!(error = %e, "cannot read the daemon's CPU time");
                cpu_warned = true;
            }
            Err(_) => {}
        }
        status.last_round = Some(summary);
        status.enomem = enomem.stats();
        status.write(&args.status_file)?;
        if let Some(path) = &args.prometheus {
            let share = ShareStatus::collect(hv, xs, Some(status.clone()))?;
            write_atomically(path, share.to_prometheus().as_bytes())?;
        }
        if limit.is_some_and(|n| scanner.rounds() >= n) {
            break;
        }
        crate::stop::serve(&mut enomem, hv, xs, interval, stop);
    }
    crate::stop::finish(&mut enomem, hv, &mut status, &args.status_file, unix_ms())?;
    Ok(())
}

/// Domids of the `--domain` specs that exist now (names are resolved every
/// round: a guest recreated under the same name gets a new domid).
fn resolve_only<H: Hypervisor, S: XenStore>(
    hv: &H,
    xs: &S,
    specs: &[String],
) -> Result<Vec<DomId>, MemshareError> {
    let mut only = Vec::new();
    for spec in specs {
        match resolve_domain(hv, xs, spec) {
            Ok((info, _)) => only.push(info.domid),
            Err(MemshareError::NoSuchDomain(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(only)
}

/// Drop opt-in keys of domains that are gone.
fn prune<H: Hypervisor, S: XenStore>(hv: &H, xs: &S) -> Result<(), MemshareError> {
    let policy = Policy::read(xs)?;
    if policy.keyed_domids().next().is_none() {
        return Ok(());
    }
    let mut live = Vec::new();
    for info in hv.domains()? {
        let name = domain_name(xs, info.domid)?;
        live.push((info, name));
    }
    for dom in prune_stale(xs, &policy, &live)? {
        tracing::info!(domid = %dom, "removed the opt-in key of a domain that is gone");
    }
    Ok(())
}

fn report(out: &mut dyn Write, s: &RoundSummary, json: bool) {
    let line = if json {
        serde_json::to_string(s).unwrap_or_default()
    } else {
        format!(
            "round {}: {} domain(s), {} pages scanned, {} candidates in {} groups, \
             {} shared ({} zero), {} already shared, {} changed, {} failed, \
             {} vanished, {} ms ({} ms throttled)",
            s.round,
            s.domains.len(),
            s.pages_scanned,
            s.candidates,
            s.groups,
            s.pages_shared,
            s.zero_pages_shared,
            s.already_shared,
            s.rejected_changed,
            s.failed,
            s.vanished.len(),
            s.duration_ms,
            s.throttled_ms
        )
    };
    // A closed stdout must not stop the daemon.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
