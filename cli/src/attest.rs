//! `circ attest ...`: the attestation key, quotes, their verification (which
//! needs no TPM and runs anywhere), and building a reference policy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use circ_cli_support::Exit;
use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::eventlog;
use circ_measured_boot::measurements;
use circ_measured_boot::policy::Policy;
use circ_measured_boot::verify::{self, Verdict};
use circ_measured_boot::wire::attr;
use circ_measured_boot::{EventKind, PcrSet};
use circ_tpm::{attest, AkBlob, EsapiTpm, Tpm as _};
use clap::Subcommand;

use crate::measure::{CasDiskArgs, Pin};
use crate::tpm::{parse_pcrs, write_new, LogArgs, TpmArgs};

/// The AK blob's name in the state directory.
const AK_BLOB: &str = "ak.json";

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Create the attestation key (kept as STATE_DIR/ak.json) if there is none,
    /// and export its public half as PEM.
    Ak {
        #[command(flatten)]
        tpm: TpmArgs,
        /// Where to write the public key (PEM `PUBLIC KEY`, P-256).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key (quotes made with the old one stop verifying).
        #[arg(long)]
        new: bool,
    },
    /// Quote the PCRs the event log extends, embedding the log: one self-contained file.
    Quote {
        #[command(flatten)]
        tpm: TpmArgs,
        #[command(flatten)]
        log: LogArgs,
        /// The verifier's nonce, in hex (at most 64 bytes).
        #[arg(long)]
        nonce: String,
        #[arg(long)]
        out: PathBuf,
        /// More PCRs to quote besides the log's.
        #[arg(long, value_parser = parse_pcrs)]
        pcrs: Option<PcrSet>,
    },
    /// Verify a quote file (no TPM needed): signature, nonce, log replay, policy.
    /// Prints a verdict per event; exits 3 when the quote is refused.
    Verify {
        file: PathBuf,
        /// The AK's public key (PEM) from `circ attest ak`.
        #[arg(long)]
        ak: PathBuf,
        /// The nonce the quote must answer, in hex.
        #[arg(long)]
        nonce: String,
        /// Reference policy (TOML) every event must satisfy.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Build a policy allowing the current contents of FILEs, and of every file
    /// the xl configurations given with --domain-config boot.
    Policy {
        files: Vec<PathBuf>,
        #[arg(long = "domain-config")]
        domain_configs: Vec<PathBuf>,
        #[command(flatten)]
        cas: CasDiskArgs,
        /// Add to this existing policy instead of starting a new one.
        #[arg(long)]
        merge: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: AttestCommand) -> anyhow::Result<Exit> {
    match cmd {
        AttestCommand::Ak { tpm, out, new } => {
            let blob_path = tpm.config(&LogArgs::default())?.state_dir.join(AK_BLOB);
            let ak = if blob_path.exists() && !new {
                read_ak(&blob_path)?
            } else {
                let ak = tpm.open()?.create_ak()?;
                write_new(&blob_path, ak.to_json().as_bytes())?;
                ak
            };
            write_new(&out, ak.public_key()?.to_pem()?.as_bytes())?;
            eprintln!(
                "attestation key {} -> {}",
                blob_path.display(),
                out.display()
            );
        }
        AttestCommand::Quote {
            tpm,
            log,
            nonce,
            out,
            pcrs,
        } => {
            let nonce = parse_nonce(&nonce)?;
            let config = tpm.config(&log)?;
            let ak = read_ak(&config.state_dir.join(AK_BLOB))?;
            let (bytes, _) = eventlog::read(&config.log)?;
            let mut dev = EsapiTpm::open(&config.tcti)?;
            let quote = attest::quote(&mut dev, &ak, &nonce, &bytes, &pcrs.unwrap_or_default())?;
            write_new(&out, quote.to_json()?.as_bytes())?;
        }
        AttestCommand::Verify {
            file,
            ak,
            nonce,
            policy,
        } => return verify_cmd(&file, &ak, &nonce, policy.as_deref()),
        AttestCommand::Policy {
            files,
            domain_configs,
            cas,
            merge,
            out,
        } => {
            let mut policy = match merge {
                Some(p) => read_policy(&p)?,
                None => Policy::new(),
            };
            let pcr = circ_measured_boot::pcr::FILE_PCR;
            for f in &files {
                let m = measurements::of_file(f, pcr, EventKind::File, None, None)?;
                if let Some(path) = &m.path {
                    policy.allow_file(path, m.digests.sha256);
                }
            }
            for cfg in &domain_configs {
                let pcr = circ_measured_boot::pcr::DOMAIN_PCR;
                for m in measurements::of_domain(cfg, pcr, &mut cas.served_index(Pin::No))? {
                    if let Some(path) = &m.path {
                        policy.allow_file(path, m.digests.sha256);
                    }
                }
            }
            write_new(&out, policy.to_toml()?.as_bytes())?;
        }
    }
    Ok(Exit::Success)
}

fn verify_cmd(file: &Path, ak: &Path, nonce: &str, policy: Option<&Path>) -> anyhow::Result<Exit> {
    let nonce = parse_nonce(nonce)?;
    let pem = std::fs::read_to_string(ak).with_context(|| format!("reading {}", ak.display()))?;
    let ak = AkPublic::from_pem(&pem)?;
    let policy = policy.map(read_policy).transpose()?;
    let outcome = verify::verify_file(file, &ak, &nonce, policy.as_ref())
        .with_context(|| format!("reading {}", file.display()))?;
    if let Some(q) = &outcome.quote {
        let pcrs: Vec<String> = q
            .selection
            .iter()
            .map(|(alg, set)| format!("{alg}:{set}"))
            .collect();
        println!(
            "quote: pcrs {} reset_count {} clock {} ms",
            pcrs.join(" "),
            q.reset_count,
            q.clock
        );
    }
    if let Some(bits) = outcome.ak_attributes {
        println!("ak: {}", attr::names(bits).join("|"));
    }
    for (event, verdict) in &outcome.events {
        let tag = if matches!(verdict, Verdict::Refused(_)) {
            "FAIL"
        } else {
            "ok  "
        };
        println!("{tag} {event}: {verdict}");
    }
    match outcome.result {
        Ok(()) => {
            println!("verified: {} event(s)", outcome.events.len());
            Ok(Exit::Success)
        }
        Err(failure) => {
            println!("FAILED: {:#}", anyhow::Error::from(failure));
            Ok(Exit::Refused)
        }
    }
}

fn parse_nonce(s: &str) -> anyhow::Result<Vec<u8>> {
    let n = hex::decode(s.trim()).with_context(|| format!("nonce `{s}` is not hex"))?;
    if n.is_empty() {
        bail!("the nonce is empty: a quote without one could be replayed");
    }
    Ok(n)
}

fn read_ak(path: &Path) -> anyhow::Result<AkBlob> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the attestation key {} (create it with `circ attest ak`)",
            path.display()
        )
    })?;
    Ok(AkBlob::from_json(&bytes)?)
}

fn read_policy(path: &Path) -> anyhow::Result<Policy> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::from_toml(&text).with_context(|| format!("reading policy {}", path.display()))
}
