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

/// `circ tsys rewrite` on a real static program that gcc builds here (glibc,
/// `-static`): every `syscall` becomes `int $0x81` and nothing else changes;
/// a second pass finds them all rewritten; bad inputs are refused clearly.
#[test]
fn tsys_rewrite_a_static_program() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { return write(1, \"hi\\n\", 3) != 3; }\n",
    )
    .unwrap();
    let prog = dir.path().join("hello");
    let gcc = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&prog)
        .arg(&src)
        .output()
        .expect("gcc (build-essential, scripts/setup) must be installed");
    assert!(
        gcc.status.success(),
        "{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let out_path = dir.path().join("hello.tsys");
    let report = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let first = report(&circ(&[
        "tsys",
        "rewrite",
        prog.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--json",
    ]));
    let rewritten = first["counts"]["rewritten"].as_u64().unwrap();
    assert!(rewritten > 0, "{first}");
    assert_eq!(first["counts"]["unsafe_sites"], 0, "{first}");

    let before = std::fs::read(&prog).unwrap();
    let after = std::fs::read(&out_path).unwrap();
    assert_eq!(before.len(), after.len());
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert_eq!(changed.len() as u64, 2 * rewritten, "two bytes per site");
    for pair in changed.chunks(2) {
        let at = pair[0];
        assert_eq!(pair[1], at + 1);
        assert_eq!(&before[at..at + 2], [0x0f, 0x05]);
        assert_eq!(&after[at..at + 2], [0xcd, 0x81]);
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
    assert_ne!(mode & 0o111, 0, "still executable");

    let second = report(&circ(&[
        "tsys",
        "rewrite",
        out_path.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(
        second["counts"]["already_rewritten"].as_u64(),
        Some(rewritten)
    );
    assert_eq!(second["counts"]["rewritable"], 0);

    for (input, says) in [
        (src.to_str().unwrap(), "not an ELF"),
        ("/bin/sh", "unsupported ELF"),
    ] {
        let out = circ(&[
            "tsys",
            "rewrite",
            input,
            "-o",
            dir.path().join("x").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{input}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{input}: {stderr}");
        assert!(
            !dir.path().join("x").exists(),
            "nothing written for {input}"
        );
    }
}
