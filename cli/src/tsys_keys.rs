//! `circ tsys host-key | host-quote | challenge | deploy | rollout | rollin |
//! migrate`: the key protocols of trusted applications (docs/tsys.md, part
//! 2). Thin: everything is `circ-keyd`'s. A refusal (PCRs changed, a
//! destination quote that does not verify, a package bound to another
//! host) prints `refused: ...` on stderr and exits 3.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use circ_cli_support::Exit;
use circ_keyd::bind::HostKey;
use circ_keyd::config::resolve_domain;
use circ_keyd::package::{self, Package};
use circ_keyd::{migrate, KeydError};
use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::policy::Policy;
use circ_measured_boot::{eventlog, PcrSet};
use circ_tpm::{AkBlob, BindKeyBlob, EsapiTpm, Tpm as _};
use circ_xen::{XenHypervisor, XenStoreHandle};
use clap::Subcommand;

use crate::tpm::{parse_pcrs, write_new, LogArgs, TpmArgs};

/// The bind key's name in the state directory.
const BIND_BLOB: &str = "bind.json";
const AK_BLOB: &str = "ak.json";

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create this host's TPM bind key (STATE_DIR/bind.json) if there is
    /// none, and export its public half (PEM): what `deploy` and `migrate`
    /// bind applications' keys to.
    HostKey {
        #[command(flatten)]
        tpm: TpmArgs,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key (packages bound to the old one become
        /// unusable here).
        #[arg(long)]
        new: bool,
    },
    /// A fresh random nonce (hex) for a migration challenge.
    Challenge,
    /// On a migration's destination: quote the event log's PCRs over the
    /// source's nonce, bound to this host's bind key (the AK is
    /// `circ attest ak`'s).
    HostQuote {
        #[command(flatten)]
        tpm: TpmArgs,
        #[command(flatten)]
        log: LogArgs,
        /// The source's challenge, hex.
        #[arg(long)]
        nonce: String,
        #[arg(long)]
        out: PathBuf,
        /// More PCRs to quote besides the log's.
        #[arg(long, value_parser = parse_pcrs)]
        pcrs: Option<PcrSet>,
    },
    /// Encrypt a static program (CTS1) under a fresh key k1 bound to a
    /// host's bind key: writes DIR/NAME.toml and DIR/NAME.cts1. No TPM.
    Deploy {
        program: PathBuf,
        /// The host's bind key (PEM, from `circ tsys host-key`).
        #[arg(long)]
        host_key: PathBuf,
        /// The application's name [default: the program's file name].
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Persist an application on this host: k1 unbound (or unsealed) and
    /// sealed to this host's PCRs. Writes DIR/NAME.toml and the program.
    Rollout {
        #[command(flatten)]
        tpm: TpmArgs,
        /// The package's manifest (NAME.toml).
        package: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// PCRs to seal to.
        #[arg(long, value_parser = parse_pcrs, default_value = "14,15")]
        pcrs: PcrSet,
    },
    /// Unseal a rolled-out application's k1, only on the PCRs it was sealed
    /// to, and hand it to Xen for one registration in DOMAIN (the token goes
    /// to the guest's data/tsys/token). Exit 3 naming the PCR that changed.
    Rollin {
        #[command(flatten)]
        tpm: TpmArgs,
        package: PathBuf,
        /// Domain name or id.
        #[arg(long, required_unless_present = "check", conflicts_with = "check")]
        domain: Option<String>,
        /// Print the token instead of writing it to xenstore.
        #[arg(long)]
        print_token: bool,
        /// Only unseal (and drop) k1: whether rollin would succeed. No Xen.
        #[arg(long)]
        check: bool,
    },
    /// Rebind an application's k1 to another host, after that host's quote
    /// verifies (AK, the nonce from `challenge`, policy). Exit 3 when it
    /// does not. Writes DIR/NAME.toml and the program, for the destination.
    Migrate {
        #[command(flatten)]
        tpm: TpmArgs,
        package: PathBuf,
        /// The destination's bind key (PEM).
        #[arg(long)]
        to: PathBuf,
        /// The destination's `host-quote` answer.
        #[arg(long)]
        quote: PathBuf,
        /// The destination's AK (PEM), enrolled out of band.
        #[arg(long)]
        ak: PathBuf,
        /// The challenge the quote must answer, hex.
        #[arg(long)]
        nonce: String,
        /// Reference policy for the destination's measurements.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> anyhow::Result<Exit> {
    match run_inner(cmd) {
        Ok(()) => Ok(Exit::Success),
        Err(e) => match e.downcast_ref::<KeydError>() {
            Some(
                KeydError::PcrChanged(_)
                | KeydError::PolicyWithoutChange(_)
                | KeydError::DestinationQuote(_)
                | KeydError::OtherHost { .. }
                | KeydError::Unbind,
            ) => {
                eprintln!("circ: {e:#}");
                Ok(Exit::Refused)
            }
            _ => Err(e),
        },
    }
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn host_key(path: &Path) -> anyhow::Result<HostKey> {
    Ok(HostKey::from_pem(&read_text(path)?)?)
}

fn hex_arg(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    let v = hex::decode(s.trim()).with_context(|| format!("{what} `{s}` is not hex"))?;
    anyhow::ensure!(!v.is_empty(), "the {what} is empty");
    Ok(v)
}

/// This host's bind key, if it has one.
fn bind_key(tpm: &TpmArgs) -> anyhow::Result<Option<BindKeyBlob>> {
    let path = tpm.config(&LogArgs::default())?.state_dir.join(BIND_BLOB);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(BindKeyBlob::from_json(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn run_inner(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::HostKey { tpm, out, new } => {
            let path = tpm.config(&LogArgs::default())?.state_dir.join(BIND_BLOB);
            let blob = match bind_key(&tpm)? {
                Some(blob) if !new => blob,
                _ => {
                    let blob = tpm.open()?.create_bind_key()?;
                    write_new(&path, blob.to_json().as_bytes())?;
                    blob
                }
            };
            let key = HostKey::of_blob(&blob)?;
            write_new(&out, key.to_pem()?.as_bytes())?;
            println!("host key {} -> {}", key.fingerprint(), out.display());
        }
        KeysCommand::Challenge => {
            let mut nonce = [0u8; 32];
            getrandom::fill(&mut nonce).context("drawing a nonce")?;
            println!("{}", hex::encode(nonce));
        }
        KeysCommand::HostQuote {
            tpm,
            log,
            nonce,
            out,
            pcrs,
        } => {
            let nonce = hex_arg("nonce", &nonce)?;
            let config = tpm.config(&log)?;
            let blob = bind_key(&tpm)?.context("no bind key: run `circ tsys host-key` first")?;
            let ak_path = config.state_dir.join(AK_BLOB);
            let ak = AkBlob::from_json(&std::fs::read(&ak_path).with_context(|| {
                format!(
                    "reading {} (create it with `circ attest ak`)",
                    ak_path.display()
                )
            })?)?;
            let (log_bytes, _) = eventlog::read(&config.log)?;
            let mut dev = EsapiTpm::open(&config.tcti)?;
            let quote = migrate::destination_quote(
                &mut dev,
                &ak,
                &HostKey::of_blob(&blob)?,
                &nonce,
                &log_bytes,
                &pcrs.unwrap_or_default(),
            )?;
            write_new(&out, quote.to_json()?.as_bytes())?;
        }
        KeysCommand::Deploy {
            program,
            host_key: key_path,
            name,
            out,
        } => {
            let host = host_key(&key_path)?;
            let name = match name {
                Some(n) => n,
                None => program
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .context("the program has no file name: pass --name")?,
            };
            let bytes = std::fs::read(&program)
                .with_context(|| format!("reading {}", program.display()))?;
            let (manifest, code) = package::deploy(&name, &bytes, &host)?;
            let path = Package::write(&out, &manifest, &code)?;
            println!(
                "deployed {name} for host {} -> {}",
                host.fingerprint(),
                path.display()
            );
        }
        KeysCommand::Rollout {
            tpm,
            package,
            out,
            pcrs,
        } => {
            let pkg = Package::read(&package)?;
            let blob = bind_key(&tpm)?;
            let mut dev = tpm.open()?;
            let key = pkg.manifest.key(&mut dev, blob.as_ref())?;
            let rolled = pkg.manifest.sealed_to(&mut dev, &key, &pcrs)?;
            drop(key);
            let path = Package::write(&out, &rolled, &pkg.code()?)?;
            println!(
                "rolled out {} sealed to PCRs {pcrs} -> {}",
                rolled.name,
                path.display()
            );
        }
        KeysCommand::Rollin {
            tpm,
            package,
            domain,
            print_token,
            check,
        } => {
            let pkg = Package::read(&package)?;
            let mut dev = tpm.open()?;
            if check {
                anyhow::ensure!(
                    pkg.manifest.sealed.is_some(),
                    "{} is not rolled out (no [sealed])",
                    package.display()
                );
                drop(pkg.manifest.key(&mut dev, None)?);
                println!(
                    "rollin {}: k1 unseals on this host's PCRs (not loaded)",
                    pkg.manifest.name
                );
                return Ok(());
            }
            let domain = domain.context("--domain is required")?;
            let hv = XenHypervisor::open()?;
            let xs = XenStoreHandle::open()?;
            let dom = resolve_domain(&xs, &domain)?;
            let token = circ_keyd::load::load(&mut dev, &hv, &xs, &pkg, dom, !print_token)?;
            if print_token {
                println!("{}", token.to_hex());
            } else {
                println!(
                    "rollin {}: k1 loaded for one registration in domain {dom}; token written to {}",
                    pkg.manifest.name,
                    circ_hv::tsys::TOKEN_NODE
                );
            }
        }
        KeysCommand::Migrate {
            tpm,
            package,
            to,
            quote,
            ak,
            nonce,
            policy,
            out,
        } => {
            let pkg = Package::read(&package)?;
            let dest = host_key(&to)?;
            let ak = AkPublic::from_pem(&read_text(&ak)?)?;
            let nonce = hex_arg("nonce", &nonce)?;
            let policy = policy
                .map(|p| Policy::from_toml(&read_text(&p)?).map_err(anyhow::Error::from))
                .transpose()?;
            let quote_bytes =
                std::fs::read(&quote).with_context(|| format!("reading {}", quote.display()))?;
            // Before the key is touched.
            migrate::verify_destination(&quote_bytes, &ak, &nonce, policy.as_ref(), &dest)?;
            let blob = bind_key(&tpm)?;
            let mut dev = tpm.open()?;
            let key = pkg.manifest.key(&mut dev, blob.as_ref())?;
            let moved = pkg.manifest.bound_to(&key, &dest)?;
            drop(key);
            let path = Package::write(&out, &moved, &pkg.code()?)?;
            println!(
                "migrated {}: destination quote verified; k1 bound to host {} -> {}",
                moved.name,
                dest.fingerprint(),
                path.display()
            );
        }
    }
    Ok(())
}
