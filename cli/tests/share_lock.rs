//! `circ share scan` (also `--once`) refuses to run beside another scanner:
//! the lock is taken before any Xen handle, so this needs no Xen.

mod common;

use circ_memshare::ScannerLock;
use common::{command, s};

#[test]
fn share_scan_once_refuses_while_another_scanner_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = dir.path().join("memshare.lock");
    let held = ScannerLock::acquire(&lock).expect("free lock");
    let out = command(&["share", "scan", "--once", "--lock-file", s(&lock)])
        .output()
        .expect("circ runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "busy: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    assert!(stderr.contains(s(&lock)), "{stderr}");
    assert!(out.stdout.is_empty());

    // The environment variable names the lock too.
    let out = command(&["share", "scan"])
        .env("CIRC_MEMSHARE_LOCK", &lock)
        .output()
        .expect("circ runs");
    assert_eq!(out.status.code(), Some(4));
    drop(held);
}
