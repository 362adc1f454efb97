//! `circ`: one command-line entry point, one subcommand per component.
//!
//! `main` only parses arguments, sets up logging and hands over to the
//! component's module; the work lives in the libraries.
#![forbid(unsafe_code)]

mod attest;
mod cas;
mod measure;
mod shadow;
mod share;
mod tpm;
mod tsys;
mod tsys_keys;
mod xen;

use std::process::ExitCode;

use circ_cli_support::{finish, init_logging};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "circ", version, about = "Circular: a Xen toolstack extension")]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `debug` or `circ_cas=trace`.
    /// (`--log` names the measurement event log of the TPM commands.)
    #[arg(
        long,
        global = true,
        env = "CIRC_LOG",
        default_value = "info,tss_esapi=warn"
    )]
    log_filter: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the Xen host this dom0 runs on.
    #[command(subcommand)]
    Xen(xen::XenCommand),
    /// Share identical guest pages copy-on-write (circ-memshare).
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// Content-addressed, signed disk images over HTTP (cas-blk).
    #[command(subcommand)]
    Cas(cas::CasCommand),
    /// Measure files and domains into the TPM and the event log (before `xl create`).
    #[command(subcommand)]
    Measure(measure::MeasureCommand),
    /// Attestation: the AK, quotes with the event log, verification, policies.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Seal and unseal secrets to PCR values; TPM housekeeping.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
    /// Shadows: capture a guest process's page tables from dom0.
    #[command(subcommand)]
    Shadow(shadow::ShadowCommand),
    /// Trusted system calls (int 0x81, patched Xen): authorise domains, list trusted processes.
    #[command(subcommand)]
    Tsys(tsys::TsysCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_filter);

    let result = match cli.command {
        Command::Xen(cmd) => xen::run(cmd),
        Command::Share(cmd) => share::run(cmd),
        Command::Cas(cmd) => cas::run(cmd),
        Command::Measure(cmd) => measure::run(cmd),
        Command::Attest(cmd) => attest::run(cmd),
        Command::Tpm(cmd) => tpm::run(cmd),
        Command::Shadow(cmd) => shadow::run(cmd),
        Command::Tsys(cmd) => tsys::run(cmd),
    };
    finish("circ", result)
}
