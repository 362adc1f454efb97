//! Helpers for the tests that run `circ` as a separate process.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `circ ARGS`, with none of the caller's `CIRC_*` settings.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_circ"));
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CIRC_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `circ ARGS` to completion.
pub fn circ(args: &[&str]) -> Output {
    command(args).output().expect("circ runs")
}

/// Runs `circ ARGS` and insists it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let out = circ(args);
    assert!(
        out.status.success(),
        "circ {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A background process, killed when the test ends, pass or fail.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `circ ARGS` and waits for its first stdout line (servers print it
/// once they listen); returns the process and that line.
pub fn start(args: &[&str]) -> (KillOnDrop, String) {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("circ starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("first line");
    (KillOnDrop(child), line.trim().to_owned())
}

/// Kills the server process when the test ends, pass or fail.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn circ_serve(store: &Path) -> Server {
    let mut child = command(&["cas", "serve", s(store), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("circ cas serve starts");
    // The first line names the bound address; reading it waits for bind.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("serving line")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Server { child, url }
}

pub fn python_serve(store: &Path) -> Server {
    // Reserve a free port, then let python bind it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            s(store),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}/"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "python http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

/// A host with a private swtpm, its own state directory and event log, for
/// the commands that use a TPM. A test that cannot start swtpm fails.
pub struct TpmHost {
    pub dir: tempfile::TempDir,
    pub swtpm: circ_tpm::swtpm::Swtpm,
}

impl TpmHost {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let swtpm = circ_tpm::swtpm::Swtpm::start(&dir.path().join("tpm"))
            .expect("swtpm must start for this test");
        std::fs::write(dir.path().join("no-config.toml"), b"").expect("write config");
        TpmHost { dir, swtpm }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs circ with this host's TPM, event log and state directory.
    pub fn circ(&self, args: &[&str]) -> Output {
        command(args)
            .env("TSS2_LOG", "all+none")
            .env("CIRC_TPM_TCTI", self.swtpm.tcti())
            .env("CIRC_TPM_CONFIG", self.path("no-config.toml"))
            .env("CIRC_MEASURE_LOG", self.path("measurements.log"))
            .env("CIRC_STATE_DIR", self.path("state"))
            .output()
            .expect("circ runs")
    }

    /// Runs circ and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.circ(args);
        assert!(
            out.status.success(),
            "circ {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs circ, which must refuse: exit 3; returns stderr.
    pub fn refused(&self, args: &[&str]) -> String {
        refused(&self.circ(args), args)
    }
}

/// Insists `out` (of `circ ARGS`) is a refusal (exit 3); returns stderr.
pub fn refused(out: &Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "circ {args:?}: {stderr}");
    stderr
}
