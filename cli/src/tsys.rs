//! `circ tsys ...`: trusted system calls (`int $0x81`, xen-patches/0002).
//!
//! Thin: the domctl is `circ-xen`'s, the hand-over of the token
//! (`circ_hv::tsys::authorise`) is in `circ-hv`. docs/tsys.md has the ABI.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

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
    /// Turn each `syscall` of a static x86-64 program into `int $0x81`,
    /// only at instruction boundaries a decoder proves (docs/tsys.md,
    /// "Rewriter"). Refuses (exit 3) a program with a site it cannot prove
    /// safe, unless --lenient. Needs no Xen.
    Rewrite {
        /// The static ELF executable to read.
        input: PathBuf,
        /// Where to write the rewritten program (its mode copied from the
        /// input). Without it, only the report.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Rewrite the safe sites and leave the unsafe ones, reported.
        #[arg(long)]
        lenient: bool,
        /// The whole report (every site) as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Keys(crate::tsys_keys::KeysCommand),
}

#[derive(Debug, Serialize)]
struct DomainTsys {
    domid: DomId,
    #[serde(flatten)]
    status: TsysStatus,
}

pub fn run(cmd: TsysCommand) -> anyhow::Result<Exit> {
    if let TsysCommand::Keys(cmd) = cmd {
        return crate::tsys_keys::run(cmd);
    }
    if let TsysCommand::Rewrite {
        input,
        output,
        lenient,
        json,
    } = cmd
    {
        return rewrite(&input, output.as_deref(), lenient, json);
    }
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
        TsysCommand::Rewrite { .. } | TsysCommand::Keys(_) => {
            unreachable!("handled above, without Xen")
        }
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
                "  l4 {}: calls {} bounces {} restores {} deferred {} pending {} dropped {} \
                 private pages {} (hidden {}, exposed {})",
                p.l4_mfn,
                p.calls,
                p.bounces,
                p.restores,
                p.deferred,
                p.pending,
                p.dropped,
                p.cloak_pages,
                p.cloak_held,
                p.cloak_exposed
            )?;
        }
    }
    Ok(())
}

fn rewrite(input: &Path, output: Option<&Path>, lenient: bool, json: bool) -> anyhow::Result<Exit> {
    use circ_tsys_rewrite::{Mode, Report, RewriteOptions};

    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let options = RewriteOptions {
        mode: if lenient { Mode::Lenient } else { Mode::Strict },
    };
    let show = |report: &Report, wrote: Option<&Path>| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
        } else {
            let c = &report.counts;
            writeln!(
                out,
                "{}: {} syscall sites {} ({} already int $0x81, {} 0f 05 pairs inside other \
                 instructions left alone, {} unsafe) in {} instructions",
                input.display(),
                c.rewritten + c.rewritable,
                if wrote.is_some() {
                    "rewritten"
                } else {
                    "rewritable"
                },
                c.already_rewritten,
                c.embedded,
                c.unsafe_sites,
                c.instructions,
            )?;
            if let Some(path) = wrote {
                writeln!(out, "wrote {}", path.display())?;
            }
        }
        Ok(())
    };
    let Some(output) = output else {
        let report = circ_tsys_rewrite::analyse(&bytes, &options)
            .with_context(|| format!("cannot rewrite {}", input.display()))?;
        show(&report, None)?;
        let refused = !lenient && report.counts.unsafe_sites > 0;
        return Ok(if refused {
            Exit::Refused
        } else {
            Exit::Success
        });
    };
    match circ_tsys_rewrite::rewrite(&bytes, &options) {
        Ok(done) => {
            write_like(input, output, &done.bytes)?;
            show(&done.report, Some(output))?;
            Ok(Exit::Success)
        }
        Err(err) if err.kind() == circ_tsys_rewrite::ErrorKind::Unsafe => {
            if let Some(report) = err.report() {
                show(report, None)?;
            }
            eprintln!("circ: {}: {err}; nothing written", input.display());
            Ok(Exit::Refused)
        }
        Err(err) => Err(err).with_context(|| format!("cannot rewrite {}", input.display())),
    }
}

/// Writes `bytes` to `output` through a temporary file in its directory
/// (a reader never sees half a program), with `input`'s permission bits.
fn write_like(input: &Path, output: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mode = std::fs::metadata(input)?.permissions().mode();
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    tmp.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
