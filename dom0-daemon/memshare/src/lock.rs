//! One sharing scanner per host.
//!
//! The scanner's rule that a share client must be a page that was private
//! until *it* nominated it (docs/memshare.md, "Never an already-shared page
//! as a share client") holds only if no other scanner nominates and shares
//! at the same time: two scanners could each take the other's fresh pages
//! as private and merge frames that already back pages of several domains,
//! which BUGs Xen 4.17 (`mm locking order violation`). So `circ-memshare`
//! and `circ share scan` (`--once` too) take an exclusive `flock` on a
//! runtime file before they open any Xen handle, and a second one is
//! refused with the holder's pid.
//!
//! The file stays in place after the holder exits (its lock goes with the
//! process, even on SIGKILL); removing it would let a process lock an inode
//! that a newer one no longer sees.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Where the lock lives unless `--lock-file` or `CIRC_MEMSHARE_LOCK` says
/// otherwise (tests use their own).
pub const DEFAULT_LOCK_FILE: &str = "/run/circular/memshare.lock";

/// The environment variable that overrides [`DEFAULT_LOCK_FILE`].
pub const LOCK_FILE_ENV: &str = "CIRC_MEMSHARE_LOCK";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: exit status 4 (busy).
    #[error(
        "another page-sharing scanner is running (pid {}, holding {}): only one may run per host",
        holder.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        path.display()
    )]
    Busy { path: PathBuf, holder: Option<u32> },
    #[error("cannot use the page-sharing lock {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LockError {
    /// Another scanner holds the lock (as opposed to a file that cannot be
    /// used at all).
    pub fn is_busy(&self) -> bool {
        matches!(self, LockError::Busy { .. })
    }
}

/// The host's scanner lock, held until dropped (or the process ends).
#[derive(Debug)]
pub struct ScannerLock {
    file: File,
    path: PathBuf,
}

impl ScannerLock {
    /// Take the lock at `path` without waiting (creating the file and its
    /// directory if needed), then write our pid into it.
    pub fn acquire(path: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(LockError::Busy {
                    path: path.to_owned(),
                    holder: read_pid(&mut file),
                });
            }
            Err(e) => return Err(io_err(e.into())),
        }
        let write_pid = |file: &mut File| -> io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write_pid(&mut file).map_err(io_err)?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScannerLock {
    fn drop(&mut self) {
        // Still locked here: nobody reads a pid that is gone. The lock
        // itself goes as the file closes.
        let _ = self.file.set_len(0);
    }
}

/// The pid a holder wrote, if it wrote one yet.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_is_written_and_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/memshare.lock");
        let lock = ScannerLock::acquire(&path).expect("free lock");
        let pid = std::fs::read_to_string(&path).expect("lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert_eq!(lock.path(), path);
        drop(lock);
        assert_eq!(std::fs::read_to_string(&path).expect("lock file"), "");
        // Free again, and the file stayed.
        assert!(ScannerLock::acquire(&path).is_ok());
    }

    #[test]
    fn busy_message_names_pid_and_path() {
        let e = LockError::Busy {
            path: PathBuf::from("/run/x.lock"),
            holder: Some(42),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("pid 42") && msg.contains("/run/x.lock"),
            "{msg}"
        );
        assert!(e.is_busy());
    }
}
