//! `circ-memshare`: the page sharing daemon. Everything is in the library;
//! this parses flags, opens the Xen handles and calls [`circ_memshare::run`].
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use circ_xen::{OpenError, XenHypervisor, XenStoreHandle};
use clap::Parser;

/// Exit code when not running in a Xen dom0 (as `circ xen`).
const EXIT_NOT_DOM0: u8 = 2;

/// Share identical pages of opted-in HVM/PVH guests (see `circ share`).
#[derive(Debug, Parser)]
#[command(name = "circ-memshare", version)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CIRC_LOG", default_value = "info")]
    log_filter: String,
    #[command(flatten)]
    scan: circ_memshare::ScanArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_filter))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: the daemon's log usually goes to a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if matches!(e.downcast_ref(), Some(OpenError::NotDom0(_))) => {
            eprintln!("circ-memshare: {e}");
            ExitCode::from(EXIT_NOT_DOM0)
        }
        Err(e) => {
            eprintln!("circ-memshare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open().context("cannot open xenstore")?;
    circ_memshare::run(
        &hv,
        hv.foreign_memory(),
        &xs,
        &cli.scan,
        &mut std::io::stdout(),
    )?;
    Ok(())
}
