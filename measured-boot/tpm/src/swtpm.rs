//! A private swtpm on loopback, for tests and benchmarks: started on free
//! ports, polled until it answers, killed on drop.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one start may take before it counts as failed.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Ports can be taken between our probe and swtpm's bind: try a few pairs.
const ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error("cannot run swtpm (is the `swtpm` package installed?)")]
    Spawn(#[source] std::io::Error),
    #[error("cannot prepare swtpm's state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("swtpm did not come up after {ATTEMPTS} attempts; last log:\n{log}")]
    NotReady { log: String },
}

/// A running swtpm (TPM 2.0, started up with `startup-clear`).
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    state_dir: PathBuf,
}

impl Swtpm {
    /// Starts a swtpm keeping its state in `state_dir` (created if needed).
    pub fn start(state_dir: &Path) -> Result<Self, SwtpmError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| SwtpmError::StateDir(state_dir.to_owned(), e))?;
        let log_path = state_dir.join("swtpm.log");
        for _ in 0..ATTEMPTS {
            let Some(port) = free_port_pair() else {
                continue;
            };
            let log =
                File::create(&log_path).map_err(|e| SwtpmError::StateDir(log_path.clone(), e))?;
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", state_dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(SwtpmError::Spawn)?;
            let mut swtpm = Swtpm {
                child,
                port,
                state_dir: state_dir.to_owned(),
            };
            if swtpm.wait_ready() {
                return Ok(swtpm);
            }
            // Dropping kills it; try another pair of ports.
        }
        Err(SwtpmError::NotReady {
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        })
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_DEADLINE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false; // exited: most likely a port was taken
            }
            let up = |p: u16| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
                    Duration::from_millis(200),
                )
                .is_ok()
            };
            if up(self.port + 1) && up(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The TCTI string that reaches this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port P such that P and P+1 were both free a moment ago.
fn free_port_pair() -> Option<u16> {
    let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    let port = first.local_addr().ok()?.port();
    let next = port.checked_add(1)?;
    let _second = TcpListener::bind((Ipv4Addr::LOCALHOST, next)).ok()?;
    Some(port)
}
