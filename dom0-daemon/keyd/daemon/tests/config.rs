//! The thin main's failures before it needs Xen or a TPM.

use std::process::Command;

fn keyd(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_circ-keyd"))
        .arg("--config")
        .arg(config)
        .env_remove("CIRC_TPM_CONFIG")
        .output()
        .expect("circ-keyd runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_with_an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyd.toml");
    std::fs::write(
        &path,
        "[[app]]\npackage = \"/p/a.toml\"\ndomain = \"web1\"\nk1 = \"00\"\n",
    )
    .unwrap();
    let (code, err) = keyd(&path);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown field `k1`"), "{err}");
}

#[test]
fn a_missing_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (code, err) = keyd(&path);
    assert_eq!(code, Some(1));
    assert!(err.contains("absent.toml"), "{err}");
}
