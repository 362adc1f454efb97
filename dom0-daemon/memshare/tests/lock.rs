//! One scanner per host: the lock itself (the daemon refusing to start
//! while another process holds it: `daemon/tests/lock.rs`).

use circ_memshare::{LockError, ScannerLock};

#[test]
fn second_lock_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("memshare.lock");
    let held = ScannerLock::acquire(&path).expect("free lock");
    // flock locks belong to open files: a second open in this process
    // conflicts like another process would.
    match ScannerLock::acquire(&path) {
        Err(LockError::Busy { path: p, holder }) => {
            assert_eq!(p, path);
            assert_eq!(holder, Some(std::process::id()));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    drop(held);
    assert!(ScannerLock::acquire(&path).is_ok(), "free once dropped");
}

#[test]
fn unusable_lock_path_is_an_io_error_not_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").expect("write");
    let e = ScannerLock::acquire(&file.join("memshare.lock")).expect_err("not a directory");
    assert!(!e.is_busy(), "{e}");
}
