//! The `circ` binary as a user meets it: arguments, exit codes, messages.

mod common;

use common::circ;
use std::path::Path;

#[test]
fn xen_info_outside_dom0_says_so_in_one_line() {
    if Path::new("/proc/xen/capabilities").exists() {
        // On a real dom0 the command must work instead.
        let out = circ(&["xen", "info", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let out = circ(&["xen", "info"]);
    assert_eq!(out.status.code(), Some(2), "exit code for `not a dom0`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    assert!(stderr.contains("not running in a Xen dom0"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_lab_scenario_is_a_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = circ(&[
        "lab",
        "run",
        "no-such-scenario",
        "--root",
        root.to_str().unwrap(),
        "--cache",
        "/nonexistent/circ-cache",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown scenario `no-such-scenario`"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_with_usage_error() {
    let out = circ(&["xen", "info", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}
