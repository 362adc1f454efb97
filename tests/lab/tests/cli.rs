//! The `circ-lab` binary as a developer meets it.

use std::path::Path;
use std::process::{Command, Output};

fn circ_lab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_circ-lab"))
        .args(args)
        .env_remove("CIRC_LAB_SCENARIOS")
        .output()
        .expect("run circ-lab")
}

fn root() -> &'static str {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .and_then(Path::to_str)
        .unwrap()
}

#[test]
fn unknown_lab_scenario_is_a_clear_error() {
    let out = circ_lab(&[
        "run",
        "no-such-scenario",
        "--root",
        root(),
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
fn a_suite_narrowed_to_an_unknown_scenario_fails_before_anything_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_circ-lab"))
        .args([
            "suite",
            "ci",
            "--root",
            root(),
            "--cache",
            "/nonexistent/circ-cache",
        ])
        .env("CIRC_LAB_SCENARIOS", "smoke csa")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no scenario named csa") && stderr.contains("memshare"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("=== lab scenario"),
        "nothing may run"
    );
}
