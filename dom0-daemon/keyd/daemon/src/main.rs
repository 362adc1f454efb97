//! `circ-keyd`: at boot (systemd unit `dom0-daemon/keyd/circ-keyd.service`, after the
//! domains started), loads each configured rolled-out application's k1
//! into Xen for one registration in its domain. Everything is in the
//! library; `circ tsys rollin` does the same for one application by hand.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use circ_keyd::config::{resolve_domain, KeydConfig, CONFIG_PATH};
use circ_keyd::package::Package;
use circ_tpm::config::{TpmConfig, TpmSettings};
use circ_tpm::EsapiTpm;
use circ_xen::{XenHypervisor, XenStoreHandle};
use clap::Parser;

/// Load rolled-out trusted applications' keys into Xen (docs/tsys.md).
#[derive(Debug, Parser)]
#[command(name = "circ-keyd", version)]
struct Cli {
    /// Which applications, for which domains.
    #[arg(long, env = "CIRC_KEYD_CONFIG", default_value = CONFIG_PATH)]
    config: PathBuf,
    /// TPM settings file (as `circ tpm --tpm-config`).
    #[arg(long, env = "CIRC_TPM_CONFIG")]
    tpm_config: Option<PathBuf>,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CIRC_LOG", default_value = "info")]
    log_filter: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_filter))
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("circ-keyd: {failed} application(s) not loaded");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("circ-keyd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads every application; returns how many failed (each one logged).
fn run(cli: &Cli) -> anyhow::Result<usize> {
    let config = KeydConfig::read(&cli.config)?;
    let tpm_config = TpmConfig::load(cli.tpm_config.as_deref(), TpmSettings::default())?;
    let mut tpm = EsapiTpm::open(&tpm_config.tcti)?;
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open().context("cannot open xenstore")?;
    let mut failed = 0;
    for app in &config.app {
        let result = Package::read(&app.package).and_then(|pkg| {
            let dom = resolve_domain(&xs, &app.domain)?;
            circ_keyd::load::load(&mut tpm, &hv, &xs, &pkg, dom, app.hand_over)
        });
        if let Err(e) = result {
            tracing::error!(package = %app.package.display(), domain = %app.domain, "{e}");
            failed += 1;
        }
    }
    Ok(failed)
}
