//! Running the host tools the lab is made of (apt, debootstrap, mke2fs, ...).

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::{LabError, Result};

/// How much of a failed command's stderr goes into the error.
const STDERR_TAIL_BYTES: usize = 2000;

/// Renders a command line for logs and errors.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an
/// error carrying the tail of stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&out.stderr), STDERR_TAIL_BYTES),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, discarding stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}

/// Shorthand for `Command::new(program).args(args)`.
pub(crate) fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo\n", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("ééé", 3), "é");
    }

    #[test]
    fn failed_command_reports_status_and_stderr() {
        let err = output(&mut cmd("sh", ["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = output(&mut cmd("circ-no-such-program", ["x"])).unwrap_err();
        assert!(matches!(err, LabError::Spawn { .. }), "{err:?}");
    }
}
