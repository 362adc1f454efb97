//! `circ tpm ...`: sealing secrets to PCRs, and the TPM options every
//! TPM-using command shares (`--tcti`, `--log`, `--state-dir`). Their
//! resolution (default < `/etc/circular/tpm.toml` < environment < flag) is
//! `circ_tpm::config`'s.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use circ_cli_support::Exit;
use circ_measured_boot::{PcrIndex, PcrSet};
use circ_tpm::config::{TpmConfig, TpmSettings};
use circ_tpm::{EsapiTpm, SealedBlob, Secret, Tpm as _};
use clap::{Args, Subcommand};

/// Options of every command that talks to the TPM.
#[derive(Debug, Args)]
pub struct TpmArgs {
    /// TPM access (TCTI), e.g. `device:/dev/tpm0` or `swtpm:host=127.0.0.1,port=2321`
    /// [env: CIRC_TPM_TCTI] [default: device:/dev/tpmrm0 if present, else device:/dev/tpm0].
    #[arg(long)]
    tcti: Option<String>,
    /// Configuration file [env: CIRC_TPM_CONFIG] [default: /etc/circular/tpm.toml, if present].
    #[arg(long)]
    tpm_config: Option<PathBuf>,
    /// Directory holding the attestation key blob [env: CIRC_STATE_DIR] [default: /var/lib/circular].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// The event log option.
#[derive(Debug, Default, Args)]
pub struct LogArgs {
    /// The measurement event log [env: CIRC_MEASURE_LOG] [default: /var/lib/circular/measurements.log].
    #[arg(long = "log", visible_alias = "event-log")]
    event_log: Option<PathBuf>,
}

impl TpmArgs {
    /// The settings to use, with `log`'s flag.
    pub fn config(&self, log: &LogArgs) -> anyhow::Result<TpmConfig> {
        let flags = TpmSettings {
            tcti: self.tcti.clone(),
            log: log.event_log.clone(),
            state_dir: self.state_dir.clone(),
        };
        Ok(TpmConfig::load(self.tpm_config.as_deref(), flags)?)
    }

    /// Opens the configured TPM (for commands that use no event log).
    pub fn open(&self) -> anyhow::Result<EsapiTpm> {
        Ok(EsapiTpm::open(&self.config(&LogArgs::default())?.tcti)?)
    }
}

impl LogArgs {
    /// For commands without a TPM: the event log's path.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        Ok(TpmArgs {
            tcti: None,
            tpm_config: None,
            state_dir: None,
        }
        .config(self)?
        .log)
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
