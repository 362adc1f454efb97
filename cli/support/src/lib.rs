//! What every Circular binary's `main` shares (`circ`, `circ-memshare`,
//! `circ-lab`, the daemons to come): one table of exit statuses that scripts
//! can branch on, and one logging set-up. Flags that two mains take alike
//! live here too, each behind a feature: [`memshare`] (`circ-memshare` and
//! `circ share scan`).
#![forbid(unsafe_code)]

#[cfg(feature = "memshare")]
pub mod memshare;

use std::io::IsTerminal as _;
use std::process::ExitCode;

/// How a Circular binary ends. Each status means one thing in every binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Success,
    /// The command failed; its message says why.
    Failure,
    /// The command cannot run as asked: bad arguments (clap's usage error,
    /// which is also 2), or the wrong place (not a Xen dom0).
    CannotRun,
    /// A check ran and said no: data that does not verify (`circ cas verify`:
    /// a chunk with no good copy; `circ attest verify`: a refused quote) or a
    /// TPM policy that does not hold (`circ tpm unseal`).
    Refused,
    /// Another process holds what this one needs (the host's page-sharing
    /// lock: one scanner per host).
    Busy,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::CannotRun => 2,
            Exit::Refused => 3,
            Exit::Busy => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// How a main that opens Xen handles ends on `result`: the status the error
/// stands for, and its message on standard error after `program: `. "Not a
/// dom0" is [`Exit::CannotRun`] (one line); another scanner holding the
/// host's sharing lock is [`Exit::Busy`]; anything else is
/// [`Exit::Failure`] with the whole error chain.
#[cfg(feature = "xen")]
pub fn finish(program: &str, result: anyhow::Result<Exit>) -> ExitCode {
    let err = match result {
        Ok(exit) => return exit.into(),
        Err(err) => err,
    };
    let exit = status_of(&err);
    if exit == Exit::Failure {
        eprintln!("{program}: {err:#}");
    } else {
        eprintln!("{program}: {err}");
    }
    exit.into()
}

#[cfg(feature = "xen")]
fn status_of(err: &anyhow::Error) -> Exit {
    if matches!(err.downcast_ref(), Some(circ_xen::OpenError::NotDom0(_))) {
        return Exit::CannotRun;
    }
    #[cfg(feature = "memshare")]
    if err
        .downcast_ref()
        .is_some_and(circ_memshare::LockError::is_busy)
    {
        return Exit::Busy;
    }
    Exit::Failure
}

/// Logs to standard error through `tracing`, filtered by `filter`
/// (`EnvFilter` syntax, e.g. `info,tss_esapi=warn`). Colour only on a
/// terminal: logs kept in files (the lab's, CI's, a daemon's) stay plain.
pub fn init_logging(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_distinct_and_stable() {
        let all = [
            Exit::Success,
            Exit::Failure,
            Exit::CannotRun,
            Exit::Refused,
            Exit::Busy,
        ];
        let codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }
}
