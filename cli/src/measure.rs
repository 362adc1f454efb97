//! `circ measure ...`: measure host files and a domain's boot files into the
//! TPM and the event log. Run before `xl create`:
//!
//! ```sh
//! circ measure domain /etc/xen/web1.cfg && xl create /etc/xen/web1.cfg
//! ```

use std::path::PathBuf;

use circ_cli_support::Exit;
use circ_measured_boot::measurements::{self, ServedIndex, SourceError};
use circ_measured_boot::pcr::{DOMAIN_PCR, FILE_PCR};
use circ_measured_boot::replay::Replay;
use circ_measured_boot::xlcfg::ServedDisk;
use circ_measured_boot::{eventlog, EventKind, EventLog, HashAlg, PcrIndex};
use circ_tpm::{measure, EsapiTpm};
use clap::Subcommand;

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
            xl_cfg,
            pcr,
        } => {
            let config = tpm.config(&log)?;
            let plan = measurements::of_domain(&xl_cfg, pcr, &mut served_index)?;
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

/// The index `block-circ` will serve for a disk.
pub fn served_index(_domain: &str, disk: &ServedDisk) -> Result<ServedIndex, SourceError> {
    Err(format!(
        "measuring the index block-circ serves from {} is not supported yet",
        disk.target
    )
    .into())
}
