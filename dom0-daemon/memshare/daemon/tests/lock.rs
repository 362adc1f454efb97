//! `circ-memshare` refuses to start while another process holds the host's
//! single-scanner lock (before it opens any Xen handle, so this runs anywhere).

use std::process::Command;

use circ_memshare::ScannerLock;

fn daemon(lock: &std::path::Path, env: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_circ-memshare"));
    cmd.args(["--once", "--status-file"])
        .arg(lock.with_extension("json"))
        .env_remove("CIRC_LOG");
    if env {
        cmd.env("CIRC_MEMSHARE_LOCK", lock);
    } else {
        cmd.env_remove("CIRC_MEMSHARE_LOCK")
            .arg("--lock-file")
            .arg(lock);
    }
    cmd.output().expect("circ-memshare runs")
}

#[test]
fn circ_memshare_refuses_while_the_lock_is_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("memshare.lock");
    let held = ScannerLock::acquire(&path).expect("free lock");
    for env in [false, true] {
        let out = daemon(&path, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "busy: {stderr}");
        assert!(
            stderr.contains(&format!("pid {}", std::process::id())),
            "{stderr}"
        );
        assert!(stderr.contains(path.to_str().expect("utf-8")), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    drop(held);
    if !std::path::Path::new("/proc/xen/capabilities").exists() {
        // Free: it gets past the lock and stops at Xen (not a dom0: 2).
        let out = daemon(&path, false);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
