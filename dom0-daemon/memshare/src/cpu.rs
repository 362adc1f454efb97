//! The daemon's own CPU time, so that the cost of scanning can be stated
//! as CPU seconds per GiB scanned (the figure KSM's ksmd is judged by).
//!
//! Read from `/proc/self/stat` (user and system time of all threads):
//! `getrusage` would need `libc` and `unsafe`, which this crate forbids.

use std::path::Path;

use crate::MemshareError;

/// Where a process reads its own times.
pub const PROC_SELF_STAT: &str = "/proc/self/stat";

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`,
/// what `sysconf(_SC_CLK_TCK)` returns): 100 on every Linux architecture
/// Xen's dom0 runs on (x86, arm, arm64).
const USER_HZ: u64 = 100;

/// User and system CPU time, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_ms: u64,
    pub system_ms: u64,
}

impl CpuTime {
    /// This process's CPU time so far.
    pub fn own() -> Result<Self, MemshareError> {
        Self::read(Path::new(PROC_SELF_STAT))
    }

    /// The CPU time in a `/proc/<pid>/stat` file.
    pub fn read(path: &Path) -> Result<Self, MemshareError> {
        let err = |source| MemshareError::Read {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(err)?;
        Self::parse_proc_stat(&text).ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no utime/stime fields",
            ))
        })
    }

    /// Fields 14 (`utime`) and 15 (`stime`) of a `/proc/<pid>/stat` line.
    /// The command name (field 2) is in parentheses and may itself hold
    /// spaces and parentheses, so fields are counted after the last `)`.
    pub fn parse_proc_stat(line: &str) -> Option<Self> {
        let (_, rest) = line.rsplit_once(')')?;
        // `rest` starts with field 3 (state): utime is the 12th field of it.
        let mut fields = rest.split_ascii_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Self {
            user_ms: utime.saturating_mul(1000) / USER_HZ,
            system_ms: stime.saturating_mul(1000) / USER_HZ,
        })
    }

    pub fn total_ms(&self) -> u64 {
        self.user_ms.saturating_add(self.system_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line (`cat /proc/self/stat`), with an awkward command name.
    const LINE: &str = "4242 (circ-mem) share) S 1 4242 4242 0 -1 4194560 2613 0 0 0 \
                        1234 567 0 0 20 0 1 0 3611 9068544 840 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn parses_utime_and_stime_after_the_command_name() {
        let t = CpuTime::parse_proc_stat(LINE).unwrap();
        assert_eq!(
            t,
            CpuTime {
                user_ms: 12_340,
                system_ms: 5_670
            }
        );
        assert_eq!(t.total_ms(), 18_010);
    }

    #[test]
    fn refuses_truncated_or_garbled_lines() {
        assert_eq!(CpuTime::parse_proc_stat(""), None);
        assert_eq!(CpuTime::parse_proc_stat("4242 (x) S 1 2 3"), None);
        assert_eq!(
            CpuTime::parse_proc_stat(&LINE.replace(" 1234 ", " 12x4 ")),
            None
        );
    }

    #[test]
    fn own_time_is_readable_and_grows() {
        let before = CpuTime::own().unwrap();
        // Burn CPU until a few clock ticks show (a loaded machine may give
        // this thread little of it: wait up to 20 s of wall time).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            let now = CpuTime::own().unwrap();
            if now.total_ms() >= before.total_ms() + 30 {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "CPU time did not grow: {before:?} {now:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = CpuTime::read(Path::new("/nonexistent/stat")).unwrap_err();
        assert!(matches!(e, MemshareError::Read { .. }), "{e}");
    }
}
