//! `circ shadow ...`: capture a guest process's address space from dom0.
//!
//! Thin by design: the walk, runs and run format live in `circ-shadow`.

use std::io::Write as _;
use std::time::Instant;

use anyhow::Context as _;
use circ_cli_support::Exit;
use circ_hv::{DomId, Hypervisor as _};
use circ_shadow::{check_paging, walk, Identity, Scope, TableCache, WalkOptions};
use circ_xen::XenHypervisor;
use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Walk a guest's page tables from a CR3 (no guest cooperation) and
    /// report pages present, VA runs, VA+PA runs, the capture's size in the
    /// run format and the capture time.
    ///
    /// The CR3 is a vCPU's (`--vcpu`, default 0) unless `--cr3` names one,
    /// e.g. a process's page-table base from the guest. The vCPU's control
    /// registers are read either way, to refuse 5-level paging.
    Capture {
        domid: u16,
        /// Page-table base to walk, hex (`0x` optional).
        #[arg(long, value_parser = parse_hex)]
        cr3: Option<u64>,
        #[arg(long, default_value_t = 0)]
        vcpu: u32,
        /// Kernel mappings too, not only the user half.
        #[arg(long)]
        all: bool,
        /// Pause the domain for the walk: a consistent snapshot.
        #[arg(long)]
        pause: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ShadowCommand) -> anyhow::Result<Exit> {
    match cmd {
        ShadowCommand::Capture {
            domid,
            cr3,
            vcpu,
            all,
            pause,
            json,
        } => capture(DomId(domid), cr3, vcpu, all, pause, json),
    }
}

fn parse_hex(s: &str) -> Result<u64, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|e| format!("not a hex number: {e}"))
}

#[derive(Debug, Serialize)]
struct Report {
    domid: DomId,
    domain_type: &'static str,
    cr3: String,
    /// `gfn` for HVM/PVH; `mfn` for PV, whose p2m is not read yet, so its
    /// VA+PA runs are counted in machine frames.
    frame_space: &'static str,
    scope: &'static str,
    capture_ms: f64,
    #[serde(flatten)]
    summary: circ_shadow::CaptureSummary,
    cache: circ_shadow::CacheStats,
}

fn capture(
    dom: DomId,
    cr3: Option<u64>,
    vcpu: u32,
    all: bool,
    pause: bool,
    json: bool,
) -> anyhow::Result<Exit> {
    let hv = XenHypervisor::open()?;
    let info = hv.domain(dom)?;
    let mut regs = hv.vcpu_registers(dom, vcpu)?;
    if let Some(cr3) = cr3 {
        regs.cr3 = cr3;
    }
    let root = check_paging(dom, info.domain_type, &regs)?;
    let options = WalkOptions {
        scope: if all { Scope::All } else { Scope::User },
        ..WalkOptions::default()
    };
    let mut cache = TableCache::new(hv.foreign_memory().clone(), dom);

    if pause {
        hv.pause(dom)?;
    }
    let start = Instant::now();
    // PV: entries hold mfns; without the guest's p2m they stay mfns.
    let result = walk(&mut cache, root, &Identity, &options);
    let elapsed = start.elapsed();
    if pause {
        hv.unpause(dom)
            .with_context(|| format!("domain {dom} is left paused"))?;
    }
    let capture = result?;

    let report = Report {
        domid: dom,
        domain_type: info.domain_type.as_str(),
        cr3: format!("{:#x}", regs.cr3),
        frame_space: if info.domain_type.is_translated() {
            "gfn"
        } else {
            "mfn"
        },
        scope: if all { "all" } else { "user" },
        capture_ms: elapsed.as_secs_f64() * 1e3,
        summary: capture.summary(),
        cache: cache.stats(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let s = &report.summary;
        writeln!(
            out,
            "domain {} ({}), cr3 {}, {} mappings, frames are {}s",
            report.domid, report.domain_type, report.cr3, report.scope, report.frame_space
        )?;
        writeln!(
            out,
            "pages present  {} ({} leaves: {} x 2 MiB, {} x 1 GiB)",
            s.pages, s.leaves, s.stats.pages_2m, s.stats.pages_1g
        )?;
        writeln!(out, "VA runs        {}", s.va_runs)?;
        writeln!(out, "VA+PA runs     {}", s.va_pa_runs)?;
        writeln!(
            out,
            "capture size   {} B in run format v1 ({} B as 24-byte runs, {} B as frame array)",
            s.run_format_bytes, s.fixed_triple_bytes, s.frame_array_bytes
        )?;
        writeln!(
            out,
            "capture time   {:.3} ms ({} tables visited, {} map calls)",
            report.capture_ms, s.stats.tables_visited, report.cache.map_calls
        )?;
        writeln!(
            out,
            "skipped        {} kernel, {} reserved-bit, {} looping entries",
            s.stats.kernel_skipped, s.stats.reserved_skipped, s.stats.loops_skipped
        )?;
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr3_is_hex_with_or_without_prefix() {
        assert_eq!(parse_hex("0x1234000"), Ok(0x123_4000));
        assert_eq!(parse_hex("abc000"), Ok(0xabc000));
        assert!(parse_hex("0xzz").is_err());
    }
}
