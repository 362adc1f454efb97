//! `circ tpm ...`: sealing secrets to PCRs, and the TPM options every
//! TPM-using command shares (`--tcti`, `--log`, `--state-dir`).
//!
//! Each option comes from, in increasing priority: built-in default, the TOML
//! config (`/etc/circular/tpm.toml`, or `--tpm-config`), the environment, the flag.
//! The default TCTI is `device:/dev/tpmrm0` (the kernel's resource manager,
//! which several programs can share) when it exists, else `device:/dev/tpm0`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use circ_cli_support::Exit;
use circ_measured_boot::{PcrIndex, PcrSet};
use circ_tpm::{EsapiTpm, SealedBlob, Secret, Tpm as _};
use clap::{Args, Subcommand};
use serde::Deserialize;

const CONFIG_PATH: &str = "/etc/circular/tpm.toml";
const DEFAULT_LOG: &str = "/var/lib/circular/measurements.log";
const DEFAULT_STATE_DIR: &str = "/var/lib/circular";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TpmConfig {
    tcti: Option<String>,
    log: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

/// Options of every command that talks to the TPM.
#[derive(Debug, Args)]
pub struct TpmArgs {
    /// TPM access (TCTI), e.g. `device:/dev/tpm0` or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(long, env = "CIRC_TPM_TCTI")]
    tcti: Option<String>,
    /// Configuration file (default /etc/circular/tpm.toml, if present).
    #[arg(long, env = "CIRC_TPM_CONFIG")]
    tpm_config: Option<PathBuf>,
    /// Directory holding the attestation key blob (default /var/lib/circular).
    #[arg(long, env = "CIRC_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// The event log option.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The measurement event log (default /var/lib/circular/measurements.log).
    #[arg(long = "log", visible_alias = "event-log", env = "CIRC_MEASURE_LOG")]
    event_log: Option<PathBuf>,
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<TpmConfig> {
    let path = explicit.unwrap_or(Path::new(CONFIG_PATH));
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            Ok(TpmConfig::default())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl TpmArgs {
    fn config(&self) -> anyhow::Result<TpmConfig> {
        load_config(self.tpm_config.as_deref())
    }

    pub fn tcti(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.tcti {
            return Ok(t.clone());
        }
        if let Some(t) = self.config()?.tcti {
            return Ok(t);
        }
        Ok(if Path::new("/dev/tpmrm0").exists() {
            "device:/dev/tpmrm0".into()
        } else {
            "device:/dev/tpm0".into()
        })
    }

    pub fn open(&self) -> anyhow::Result<EsapiTpm> {
        let tcti = self.tcti()?;
        Ok(EsapiTpm::open(&tcti)?)
    }

    pub fn state_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        Ok(self
            .config()?
            .state_dir
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()))
    }

    pub fn log_path(&self, log: &LogArgs) -> anyhow::Result<PathBuf> {
        if let Some(p) = &log.event_log {
            return Ok(p.clone());
        }
        Ok(self.config()?.log.unwrap_or_else(|| DEFAULT_LOG.into()))
    }
}

impl LogArgs {
    /// For commands without a TPM: the flag, else the default config's, else the default.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.event_log {
            return Ok(p.clone());
        }
        Ok(load_config(None)?.log.unwrap_or_else(|| DEFAULT_LOG.into()))
    }
}

#[derive(Debug, Subcommand)]
pub enum TpmCommand {
    /// Seal a small secret (at most 128 bytes) to the current SHA-256 values of PCRs.
    Seal {
        #[command(flatten)]
        tpm: TpmArgs,
        /// PCRs, e.g. `16,23`.
        #[arg(long, value_parser = parse_pcrs)]
        pcrs: PcrSet,
        /// File holding the secret.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the sealed blob (JSON, `circ-sealed/1`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Unseal a blob; the secret goes to stdout (or --out). Fails with exit
    /// status 3 when the PCRs changed since sealing.
    Unseal {
        #[command(flatten)]
        tpm: TpmArgs,
        blob: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print SHA-256 PCR values.
    Pcrread {
        #[command(flatten)]
        tpm: TpmArgs,
        #[arg(long, value_parser = parse_pcrs, default_value = "14,15")]
        pcrs: PcrSet,
    },
    /// Flush every transient object left loaded (e.g. by a killed process).
    Flush {
        #[command(flatten)]
        tpm: TpmArgs,
    },
}

pub fn parse_pcrs(s: &str) -> Result<PcrSet, String> {
    s.parse()
}

pub fn parse_pcr(s: &str) -> Result<PcrIndex, String> {
    s.parse()
}

pub fn run(cmd: TpmCommand) -> anyhow::Result<Exit> {
    match cmd {
        TpmCommand::Seal {
            tpm,
            pcrs,
            input,
            out,
        } => {
            let secret = Secret::new(
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?,
            );
            let blob = tpm.open()?.seal(&secret, &pcrs)?;
            write_new(&out, blob.to_json().as_bytes())?;
            eprintln!("sealed to sha256 PCRs {pcrs}: {}", out.display());
        }
        TpmCommand::Unseal { tpm, blob, out } => {
            let bytes =
                std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
            let blob = SealedBlob::from_json(&bytes)?;
            let secret = match tpm.open()?.unseal(&blob) {
                Err(circ_tpm::TpmError::PcrPolicy) => {
                    eprintln!("circ: {}", circ_tpm::TpmError::PcrPolicy);
                    return Ok(Exit::Refused);
                }
                r => r?,
            };
            match out {
                Some(path) => write_new(&path, secret.expose())?,
                None => std::io::stdout().lock().write_all(secret.expose())?,
            }
        }
        TpmCommand::Pcrread { tpm, pcrs } => {
            for (pcr, value) in tpm.open()?.read_pcrs(&pcrs)? {
                println!("sha256:{pcr:<2} {}", hex::encode(value));
            }
        }
        TpmCommand::Flush { tpm } => {
            let n = tpm.open()?.flush_transients()?;
            println!("flushed {n} transient object(s)");
        }
    }
    Ok(Exit::Success)
}

/// Writes a file atomically (temporary file, fsync, rename), so a crash never
/// leaves half a key or quote behind.
pub fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
