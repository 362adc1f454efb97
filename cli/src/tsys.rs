//! `circ tsys ...`: trusted system calls (`int $0x81`, xen-patches/0002).
//!
//! Thin: the domctl is `circ-xen`'s, the hand-over of the token
//! (`circ_hv::tsys::authorise`) is in `circ-hv`. docs/tsys.md has the ABI.

use std::io::Write as _;

use circ_cli_support::Exit;
use circ_hv::tsys::TOKEN_NODE;
use circ_hv::{DomId, DomainType, ErrorKind, Hypervisor as _, TsysStatus};
use circ_xen::{XenHypervisor, XenStoreHandle};
use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum TsysCommand {
    /// Let a 64-bit PV domain's processes become trusted: arms one
    /// registration with a fresh random token, written for the guest to
    /// `data/tsys/token` in its xenstore directory.
    Authorise {
        domid: u16,
        /// Print the token (hex) on stdout instead of writing it to xenstore.
        #[arg(long)]
        print_token: bool,
    },
    /// End a domain's authorisation: its token and every registration.
    Revoke { domid: u16 },
    /// The trusted processes Xen holds, with per-process counters.
    List {
        /// Only this domain (default: every PV domain).
        domid: Option<u16>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct DomainTsys {
    domid: DomId,
    #[serde(flatten)]
    status: TsysStatus,
}

pub fn run(cmd: TsysCommand) -> anyhow::Result<Exit> {
    let hv = XenHypervisor::open()?;
    match cmd {
        TsysCommand::Authorise { domid, print_token } => {
            let dom = DomId(domid);
            let xs = XenStoreHandle::open()?;
            let token = circ_hv::tsys::authorise(&hv, &xs, dom, !print_token)?;
            if print_token {
                println!("{}", token.to_hex());
            } else {
                println!("domain {dom}: authorised; token written to {TOKEN_NODE}");
            }
        }
        TsysCommand::Revoke { domid } => {
            hv.tsys_revoke(DomId(domid))?;
            println!("domain {domid}: revoked");
        }
        TsysCommand::List { domid, json } => list(&hv, domid.map(DomId), json)?,
    }
    Ok(Exit::Success)
}

fn list(hv: &XenHypervisor, only: Option<DomId>, json: bool) -> anyhow::Result<()> {
    let doms = match only {
        Some(dom) => vec![dom],
        None => hv
            .domains()?
            .into_iter()
            .filter(|d| d.domain_type == DomainType::Pv)
            .map(|d| d.domid)
            .collect(),
    };
    let mut rows = Vec::new();
    for dom in doms {
        match hv.tsys_status(dom) {
            Ok(status) => rows.push(DomainTsys { domid: dom, status }),
            // A domain that went away while we listed.
            Err(e) if only.is_none() && e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    for row in &rows {
        let s = &row.status;
        writeln!(
            out,
            "domain {}: {}{}, {} refused int 0x81",
            row.domid,
            if s.authorised {
                "authorised"
            } else {
                "not authorised"
            },
            if s.token_armed { ", token armed" } else { "" },
            s.refused
        )?;
        for p in &s.processes {
            writeln!(
                out,
                "  l4 {}: calls {} bounces {} restores {} deferred {} pending {} dropped {}",
                p.l4_mfn, p.calls, p.bounces, p.restores, p.deferred, p.pending, p.dropped
            )?;
        }
    }
    Ok(())
}
