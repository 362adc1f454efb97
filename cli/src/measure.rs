//! `circ measure ...`: measure host files and a domain's boot files into the
//! TPM and the event log. Run before `xl create`:
//!
//! ```sh
//! circ measure domain /etc/xen/web1.cfg && xl create /etc/xen/web1.cfg
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use circ_cli_support::Exit;
use circ_measured_boot::pcr::{DOMAIN_PCR, FILE_PCR};
use circ_measured_boot::replay::Replay;
use circ_measured_boot::{
    eventlog, xlcfg, Digests, EventKind, EventLog, HashAlg, Measurement, PcrIndex,
};
use circ_tpm::measure;
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
            let log_path = tpm.log_path(&log)?;
            let m = file_measurement(&path, pcr, EventKind::File, None, description)?;
            let mut dev = tpm.open()?;
            let mut log = EventLog::open(&log_path)?;
            let event = measure::record(&mut dev, &mut log, m)?;
            println!("{event}");
        }
        MeasureCommand::Domain {
            tpm,
            log,
            xl_cfg,
            pcr,
        } => {
            let log_path = tpm.log_path(&log)?;
            let plan = domain_measurements(&xl_cfg, pcr)?;
            let mut dev = tpm.open()?;
            let mut log = EventLog::open(&log_path)?;
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

/// Hashes a file, recording its canonical path (what a policy names).
pub fn file_measurement(
    path: &Path,
    pcr: PcrIndex,
    kind: EventKind,
    domain: Option<&str>,
    description: Option<String>,
) -> anyhow::Result<Measurement> {
    let canonical =
        xlcfg::resolve(path).with_context(|| format!("measuring {}", path.display()))?;
    let Some(name) = canonical.to_str() else {
        bail!(
            "{} is not UTF-8; the event log records paths as text",
            canonical.display()
        );
    };
    let file = std::fs::File::open(&canonical).with_context(|| format!("opening {name}"))?;
    let digests = Digests::of_reader(file, false).with_context(|| format!("reading {name}"))?;
    Ok(Measurement {
        pcr,
        kind,
        digests,
        domain: domain.map(str::to_owned),
        path: Some(name.to_owned()),
        description,
    })
}

/// Everything `circ measure domain` measures, hashed before anything is logged
/// so a missing file fails the command without a partial measurement.
pub fn domain_measurements(xl_cfg: &Path, pcr: PcrIndex) -> anyhow::Result<Vec<Measurement>> {
    let text =
        std::fs::read_to_string(xl_cfg).with_context(|| format!("reading {}", xl_cfg.display()))?;
    let plan = xlcfg::plan(&text).with_context(|| format!("parsing {}", xl_cfg.display()))?;
    let name = plan.name.as_str();
    if plan.guest_chooses_kernel {
        tracing::warn!(domain = name, "the guest chooses its own kernel: only its configuration and disk indexes are measured");
    }
    let mut out = vec![file_measurement(
        xl_cfg,
        pcr,
        EventKind::DomainConfig,
        Some(name),
        None,
    )?];
    if let Some(k) = &plan.kernel {
        out.push(file_measurement(
            k,
            pcr,
            EventKind::DomainKernel,
            Some(name),
            None,
        )?);
    }
    if let Some(r) = &plan.ramdisk {
        out.push(file_measurement(
            r,
            pcr,
            EventKind::DomainRamdisk,
            Some(name),
            None,
        )?);
    }
    for idx in &plan.cas_indexes {
        out.push(file_measurement(
            idx,
            pcr,
            EventKind::DomainCasIndex,
            Some(name),
            None,
        )?);
    }
    Ok(out)
}
