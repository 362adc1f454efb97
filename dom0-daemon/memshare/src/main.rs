//! `circ-memshare`: the page sharing daemon. Everything is in the library;
//! this parses flags, opens the Xen handles and calls [`circ_memshare::run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use circ_cli_support::{init_logging, Exit};
use circ_xen::{OpenError, XenHypervisor, XenStoreHandle};
use clap::Parser;

/// Share identical pages of opted-in HVM/PVH guests (see `circ share`).
#[derive(Debug, Parser)]
#[command(name = "circ-memshare", version)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CIRC_LOG", default_value = "info")]
    log_filter: String,
    #[command(flatten)]
    scan: circ_memshare::ScanArgs,
    #[command(flatten)]
    lock: circ_memshare::LockArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_filter);
    match run(&cli) {
        Ok(()) => Exit::Success.into(),
        Err(e)
            if e.downcast_ref()
                .is_some_and(circ_memshare::LockError::is_busy) =>
        {
            eprintln!("circ-memshare: {e}");
            Exit::Busy.into()
        }
        Err(e) if matches!(e.downcast_ref(), Some(OpenError::NotDom0(_))) => {
            eprintln!("circ-memshare: {e}");
            Exit::CannotRun.into()
        }
        Err(e) => {
            eprintln!("circ-memshare: {e:#}");
            Exit::Failure.into()
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // Before any Xen handle: a second scanner must touch nothing.
    let _lock = circ_memshare::ScannerLock::acquire(&cli.lock.lock_file)?;
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open().context("cannot open xenstore")?;
    let stop = circ_memshare::StopFlag::on_termination_signals()
        .context("cannot handle SIGTERM/SIGINT")?;
    circ_memshare::run_until(
        &hv,
        hv.foreign_memory(),
        &xs,
        &cli.scan,
        &mut std::io::stdout(),
        &stop,
    )?;
    Ok(())
}
