//! `circ measure ...`: measure host files and a domain's boot files into the
//! TPM and the event log. Run before `xl create`:
//!
//! ```sh
//! circ measure domain /etc/xen/web1.cfg && xl create /etc/xen/web1.cfg
//! ```

use std::path::PathBuf;

use circ_cas::client::{OpenOptions, Rollback};
use circ_cli_support::Exit;
use circ_measured_boot::measurements::{self, ServedIndex, SourceError};
use circ_measured_boot::pcr::{DOMAIN_PCR, FILE_PCR};
use circ_measured_boot::replay::Replay;
use circ_measured_boot::xlcfg::ServedDisk;
use circ_measured_boot::{eventlog, EventKind, EventLog, HashAlg, PcrIndex};
use circ_tpm::{measure, EsapiTpm};
use clap::{Args, Subcommand};

use crate::cas::ClientSettings;
use crate::tpm::{parse_pcr, LogArgs, TpmArgs};

#[derive(Debug, Subcommand)]
pub enum MeasureCommand {
    /// Measure one file (its SHA-256) into a PCR and the event log.
    File {
        #[command(flatten)]
        tpm: TpmArgs,
        #[command(flatten)]
        log: LogArgs,
        path: PathBuf,
        /// PCR to extend (8-16 or 23; default 14).
        #[arg(long, value_parser = parse_pcr, default_value_t = FILE_PCR)]
        pcr: PcrIndex,
        /// Free text recorded with the event.
        #[arg(long)]
        description: Option<String>,
    },
    /// Measure what an xl domain configuration boots: the configuration itself,
    /// its kernel and ramdisk, and every cas-blk index its disks name.
    Domain {
        #[command(flatten)]
        tpm: TpmArgs,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        cas: CasDiskArgs,
        xl_cfg: PathBuf,
        /// PCR to extend (default 15, Circular's domain PCR).
        #[arg(long, value_parser = parse_pcr, default_value_t = DOMAIN_PCR)]
        pcr: PcrIndex,
    },
    /// Print the event log and the PCR values it replays to (no TPM needed).
    Show {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Drop a torn last record left by a crash while appending (it was never
    /// extended into the TPM). Corruption anywhere else is left alone and reported.
    RepairLog {
        #[command(flatten)]
        log: LogArgs,
    },
}

pub fn run(cmd: MeasureCommand) -> anyhow::Result<Exit> {
    match cmd {
        MeasureCommand::File {
            tpm,
            log,
            path,
            pcr,
            description,
        } => {
            let config = tpm.config(&log)?;
            let m = measurements::of_file(&path, pcr, EventKind::File, None, description)?;
            let mut dev = EsapiTpm::open(&config.tcti)?;
            let mut log = EventLog::open(&config.log)?;
            let event = measure::record(&mut dev, &mut log, m)?;
            println!("{event}");
        }
        MeasureCommand::Domain {
            tpm,
            log,
            cas,
            xl_cfg,
            pcr,
        } => {
            let config = tpm.config(&log)?;
            // Planning fetches and pins each block-circ disk's index before
            // anything is logged: a pin restricts what is served, so one left
            // by a measurement that then fails grants nothing.
            let plan = measurements::of_domain(&xl_cfg, pcr, &mut cas.served_index(Pin::Write))?;
            let mut dev = EsapiTpm::open(&config.tcti)?;
            let mut log = EventLog::open(&config.log)?;
            for m in plan {
                let event = measure::record(&mut dev, &mut log, m)?;
                println!("{event}");
            }
        }
        MeasureCommand::Show { log } => {
            let path = log.resolve()?;
            let (_, events) = eventlog::read(&path)?;
            for e in &events {
                println!("{e}");
            }
            let replay = Replay::of(&events);
            for pcr in replay.pcrs().iter() {
                if let Some(v) = replay.value(HashAlg::Sha256, pcr) {
                    println!("replay sha256:{pcr} {}", hex::encode(v));
                }
            }
        }
        MeasureCommand::RepairLog { log } => {
            let path = log.resolve()?;
            match EventLog::repair_torn_tail(&path)? {
                None => println!("{}: whole, nothing to repair", path.display()),
                Some(n) => println!("{}: dropped a torn last record ({n} bytes)", path.display()),
            }
        }
    }
    Ok(Exit::Success)
}

/// Where `circ measure domain` and `circ attest policy` find what a
/// `block-circ` disk will be served from: cas-blk's client settings, as the
/// hotplug script passes them to `circ cas nbd`.
#[derive(Debug, Args)]
pub struct CasDiskArgs {
    /// cas-blk client settings (TOML) [default: /etc/circular/cas.toml if it exists].
    #[arg(long, env = "CIRC_CAS_CONFIG")]
    cas_config: Option<PathBuf>,
    /// The cas-blk publisher's public key.
    #[arg(long, env = "CIRC_CAS_PUBKEY")]
    cas_pubkey: Option<PathBuf>,
    /// cas-blk's state directory, which holds the pins [default: /var/lib/circular/cas].
    #[arg(long, env = "CIRC_CAS_STATE_DIR")]
    cas_state_dir: Option<PathBuf>,
}

/// Whether fetching a served disk's index pins it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Measuring: the disk may then be served from this index only.
    Write,
    /// Building a policy: look, change nothing.
    No,
}

impl CasDiskArgs {
    /// The index bytes `block-circ` will serve for a disk, fetched and
    /// verified by cas-blk's client (signature, image asked for), pinned
    /// for the domain's disk when `pin` says so.
    pub fn served_index(
        &self,
        pin: Pin,
    ) -> impl FnMut(&str, &ServedDisk) -> Result<ServedIndex, SourceError> + '_ {
        move |domain, disk| {
            let (config, public_key, state_dir) = ClientSettings {
                config: self.cas_config.as_deref(),
                pubkey: self.cas_pubkey.as_deref(),
                state_dir: self.cas_state_dir.as_deref(),
            }
            .resolve()?;
            let mut opts = OpenOptions::new(disk.target.clone(), public_key, Rollback::Unchecked);
            opts.mirrors = config.mirrors;
            opts.image = config.image;
            let verified = match pin {
                Pin::Write => circ_cas::pin::pin_served_index(&opts, &state_dir, domain)?,
                Pin::No => circ_cas::client::fetch_verified_index(&opts)?,
            };
            Ok(ServedIndex {
                description: Some(format!(
                    "cas-blk image {} generation {}",
                    verified.index.name, verified.index.generation
                )),
                bytes: verified.bytes,
            })
        }
    }
}
