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
fn circ_ships_no_lab() {
    // The lab (apt, debootstrap, QEMU) is test infrastructure: `circ-lab`.
    let out = circ(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("cas"), "{help}");
    assert!(!help.contains("lab"), "{help}");
    assert!(!circ(&["lab", "build"]).status.success());
}

#[test]
fn bad_arguments_exit_with_usage_error() {
    let out = circ(&["xen", "info", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
fn tsys_outside_dom0_says_so_in_one_line() {
    if Path::new("/proc/xen/capabilities").exists() {
        return; // the lab's `tsys` scenario covers a real dom0
    }
    for args in [
        &["tsys", "list", "--json"][..],
        &["tsys", "authorise", "3"],
        &["tsys", "revoke", "3"],
    ] {
        let out = circ(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("not running in a Xen dom0"), "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A domain id is a number.
    assert_eq!(circ(&["tsys", "authorise", "guest"]).status.code(), Some(2));
}
