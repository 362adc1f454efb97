//! `circ xen ...`: look at the Xen host through Circular's own bindings.
//!
//! Thin by design: the data gathering and formatting live in `circ-hv`
//! (`HostReport`) and `circ-xen` (handles, dom0 detection).

use anyhow::Context as _;
use circ_cli_support::Exit;
use circ_hv::populated::populated_ranges;
use circ_hv::report::HostReport;
use circ_hv::{console, DomId, GrantTable as _, Hypervisor as _, Transaction, XenStore as _};
use circ_xen::{XenGrantTable, XenHypervisor, XenStoreHandle};
use clap::Subcommand;
use std::io::Write as _;

#[derive(Debug, Subcommand)]
pub enum XenCommand {
    /// Xen version, host memory, memory sharing and the list of domains.
    Info {
        /// Print JSON (schema in circ-hv's `report` module) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read and watch xenstore through libxenstore.
    #[command(subcommand)]
    Store(StoreCommand),
    /// A vCPU's control registers (what a page-table walk starts from).
    Vcpu {
        domid: u16,
        #[arg(long, default_value_t = 0)]
        vcpu: u32,
        #[arg(long)]
        json: bool,
    },
    /// A guest's populated memory (HVM/PVH): maximum gpfn and populated gfn ranges.
    Memory {
        domid: u16,
        #[arg(long)]
        json: bool,
    },
    /// A guest's recent console output (the last 2 KiB of its console
    /// ring), read through the page it granted dom0 (grant 0), as
    /// xenconsoled maps it.
    Console { domid: u16 },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print a node's value.
    Read { path: String },
    /// Set a node's value (creating it and its parents).
    Write { path: String, value: String },
    /// List a node's children, one per line.
    Ls {
        path: String,
        /// Print a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the path of each change at or below PATH, one per line.
    ///
    /// The first line is xenstored's acknowledgement of the watch itself
    /// (PATH), as with every xenstore watch.
    Watch {
        path: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub fn run(cmd: XenCommand) -> anyhow::Result<Exit> {
    match cmd {
        XenCommand::Info { json } => info(json),
        XenCommand::Store(cmd) => store(cmd),
        XenCommand::Vcpu { domid, vcpu, json } => vcpu_registers(DomId(domid), vcpu, json),
        XenCommand::Memory { domid, json } => memory(DomId(domid), json),
        XenCommand::Console { domid } => console(DomId(domid)),
    }?;
    Ok(Exit::Success)
}

fn info(json: bool) -> anyhow::Result<()> {
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open()?;
    let report = HostReport::collect(&hv, &xs)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(report.to_table().as_bytes())?;
    }
    Ok(())
}

fn store(cmd: StoreCommand) -> anyhow::Result<()> {
    circ_xen::check_dom0()?;
    let xs = XenStoreHandle::open()?;
    let tx = Transaction::NONE;
    let mut out = std::io::stdout().lock();
    match cmd {
        StoreCommand::Read { path } => {
            // Raw bytes: values are whatever the writer (maybe a guest) put there.
            out.write_all(&xs.read(tx, &path)?)?;
            writeln!(out)?;
        }
        StoreCommand::Write { path, value } => xs.write(tx, &path, value.as_bytes())?,
        StoreCommand::Ls { path, json } => {
            let children = xs.directory(tx, &path)?;
            if json {
                serde_json::to_writer(&mut out, &children)?;
                writeln!(out)?;
            } else {
                for child in children {
                    writeln!(out, "{child}")?;
                }
            }
        }
        StoreCommand::Watch { path, count } => {
            let token = format!("circ-{}", std::process::id());
            xs.watch(&path, &token)?;
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let event = xs.read_watch()?;
                if event.token != token {
                    continue;
                }
                writeln!(out, "{}", event.path)?;
                out.flush()?;
                seen += 1;
            }
            xs.unwatch(&path, &token)
                .context("failed to remove the watch")?;
        }
    }
    Ok(())
}

fn vcpu_registers(dom: DomId, vcpu: u32, json: bool) -> anyhow::Result<()> {
    let hv = XenHypervisor::open()?;
    let regs = hv.vcpu_registers(dom, vcpu)?;
    let fields = [
        ("rip", regs.rip),
        ("rsp", regs.rsp),
        ("rflags", regs.rflags),
        ("cr0", regs.cr0),
        ("cr3", regs.cr3),
        ("cr4", regs.cr4),
    ];
    let mut out = std::io::stdout().lock();
    if json {
        let map: serde_json::Map<_, _> = fields
            .iter()
            .map(|(name, value)| ((*name).to_owned(), format!("{value:#x}").into()))
            .collect();
        serde_json::to_writer(&mut out, &map)?;
        writeln!(out)?;
    } else {
        for (name, value) in fields {
            writeln!(out, "{name:<7}{value:#018x}")?;
        }
    }
    Ok(())
}

fn memory(dom: DomId, json: bool) -> anyhow::Result<()> {
    let hv = XenHypervisor::open()?;
    let max_gpfn = hv.maximum_gpfn(dom)?;
    let started = std::time::Instant::now();
    let ranges = populated_ranges(&hv, hv.foreign_memory(), dom)?;
    let probe_ms = started.elapsed().as_millis();
    let pages: u64 = ranges.iter().map(|r| r.len()).sum();
    let mut out = std::io::stdout().lock();
    if json {
        let ranges: Vec<_> = ranges.iter().map(|r| [r.start.0, r.end.0]).collect();
        let doc = serde_json::json!({
            "domid": dom.0,
            "max_gpfn": max_gpfn.0,
            "populated_pages": pages,
            "ranges": ranges,
            "probe_ms": probe_ms,
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "domain {}: max gpfn {:#x}, {pages} populated pages",
            dom.0, max_gpfn.0
        )?;
        for range in ranges {
            writeln!(
                out,
                "  {:#x}..{:#x} ({} pages)",
                range.start.0,
                range.end.0,
                range.len()
            )?;
        }
    }
    Ok(())
}

fn console(dom: DomId) -> anyhow::Result<()> {
    let page = XenGrantTable::open()?.map_ring(dom, &[console::CONSOLE_GRANT])?;
    let out =
        console::recent_output(&page).context("the console page is smaller than its interface")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}
