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
        /// Attach the sealed-I/O key in FILE (32 bytes, raw or as 64 hex
        /// digits) to the registration (xen-patches/0004). For tests and
        /// by-hand use; circ-keyd hands Xen keys it unsealed from the TPM.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
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
        TsysCommand::Authorise {
            domid,
            print_token,
            key_file,
        } => {
            let dom = DomId(domid);
            let xs = XenStoreHandle::open()?;
            let token = match key_file {
                Some(path) => {
                    let key = read_key_file(&path)?;
                    circ_hv::tsys::authorise_keyed(&hv, &xs, dom, &key, !print_token)?
                }
                None => circ_hv::tsys::authorise(&hv, &xs, dom, !print_token)?,
            };
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
            match (s.token_armed, s.key_armed) {
                (true, true) => ", token armed with a key",
                (true, false) => ", token armed",
                _ => "",
            },
            s.refused
        )?;
        for p in &s.processes {
            writeln!(
                out,
                "  l4 {}: calls {} bounces {} restores {} deferred {} pending {} dropped {} \
                 private pages {} (hidden {}, exposed {}){}",
                p.l4_mfn,
                p.calls,
                p.bounces,
                p.restores,
                p.deferred,
                p.pending,
                p.dropped,
                p.cloak_pages,
                p.cloak_held,
                p.cloak_exposed,
                if p.keyed {
                    format!(
                        ", keyed: sealed fds {} blocks {} refused {}",
                        p.sealed_fds, p.sealed_blocks, p.seal_refused
                    )
                } else {
                    String::new()
                }
            )?;
        }
    }
    Ok(())
}

/// A 32-byte key from `path`: the raw bytes, or 64 hex digits (and a
/// newline). The buffers are wiped.
fn read_key_file(path: &Path) -> anyhow::Result<circ_hv::TsysKey> {
    use zeroize::Zeroizing;

    let bytes = Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?,
    );
    let mut key = Zeroizing::new([0u8; circ_hv::TSYS_KEY_LEN]);
    if bytes.len() == key.len() {
        key.copy_from_slice(&bytes);
    } else {
        let text = std::str::from_utf8(&bytes).unwrap_or("").trim();
        if text.len() != 2 * key.len() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!(
                "{}: a key file holds 32 bytes, raw or as 64 hex digits ({} bytes here)",
                path.display(),
                bytes.len()
            );
        }
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
        }
    }
    Ok(circ_hv::TsysKey::from_bytes(*key))
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
