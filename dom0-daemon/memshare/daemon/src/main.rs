//! `circ-memshare`: the page sharing daemon. Everything is in the library;
//! this parses flags (shared with `circ share scan`:
//! [`circ_cli_support::memshare::ScanArgs`]), opens the Xen handles and calls
//! [`circ_memshare::run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use circ_cli_support::memshare::{LockArgs, ScanArgs};
use circ_cli_support::{finish, init_logging, Exit};
use circ_memshare::MemshareConfig;
use circ_xen::{XenHypervisor, XenStoreHandle};
use clap::Parser;

/// Share identical pages of opted-in HVM/PVH guests (see `circ share`).
#[derive(Debug, Parser)]
#[command(name = "circ-memshare", version)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CIRC_LOG", default_value = "info")]
    log_filter: String,
    #[command(flatten)]
    scan: ScanArgs,
    #[command(flatten)]
    lock: LockArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.scan.to_config().unwrap_or_else(|e| e.exit());
    init_logging(&cli.log_filter);
    finish(
        "circ-memshare",
        run(&config, &cli.lock).map(|()| Exit::Success),
    )
}

fn run(config: &MemshareConfig, lock: &LockArgs) -> anyhow::Result<()> {
    // Before any Xen handle: a second scanner must touch nothing.
    let _lock = circ_memshare::ScannerLock::acquire(&lock.lock_file)?;
    let hv = XenHypervisor::open()?;
    let xs = XenStoreHandle::open().context("cannot open xenstore")?;
    let stop = circ_memshare::StopFlag::on_termination_signals()
        .context("cannot handle SIGTERM/SIGINT")?;
    circ_memshare::run_until(
        &hv,
        hv.foreign_memory(),
        &xs,
        config,
        &mut std::io::stdout(),
        &stop,
    )?;
    Ok(())
}
