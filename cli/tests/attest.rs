//! `circ measure`, `circ attest` and `circ tpm` end to end against a private swtpm.

use std::path::Path;
use std::process::{Command, Output};

use circ_tpm::swtpm::Swtpm;

struct Env {
    dir: tempfile::TempDir,
    swtpm: Swtpm,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let swtpm = Swtpm::start(&dir.path().join("tpm")).expect("swtpm must start for this test");
        Env { dir, swtpm }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs circ with this environment's TPM, event log and state directory.
    fn circ(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_circ"))
            .args(args)
            .env_remove("CIRC_LOG")
            .env("CIRC_TPM_TCTI", self.swtpm.tcti())
            .env("CIRC_TPM_CONFIG", self.path("no-config.toml"))
            .env("CIRC_MEASURE_LOG", self.path("measurements.log"))
            .env("CIRC_STATE_DIR", self.path("state"))
            .output()
            .expect("circ runs")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.circ(args);
        assert!(
            out.status.success(),
            "circ {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn write(path: &str, data: &[u8]) {
    std::fs::write(path, data).expect("write fixture");
}

#[test]
fn measure_quote_verify_with_policy() {
    let env = Env::new();
    write(&env.path("no-config.toml"), b"");

    let kernel = env.path("vmlinuz");
    let ramdisk = env.path("initrd");
    let index = env.path("root.idx");
    write(&kernel, b"kernel v1");
    write(&ramdisk, b"initrd");
    write(&index, b"index");
    let cfg = env.path("web1.cfg");
    write(
        &cfg,
        format!(
            "name = \"web1\"\nkernel = \"{kernel}\"\nramdisk = \"{ramdisk}\"\n\
             disk = [ 'vdev=xvda, target={index}' ]\n"
        )
        .as_bytes(),
    );

    let measured = env.ok(&["measure", "domain", &cfg]);
    assert_eq!(measured.lines().count(), 4, "{measured}");
    assert!(
        measured.contains("domain-cas-index domain=web1"),
        "{measured}"
    );

    let ak = env.path("ak.pem");
    env.ok(&["attest", "ak", "--out", &ak]);
    let quote = env.path("quote.json");
    env.ok(&["attest", "quote", "--nonce", "00c0ffee", "--out", &quote]);

    let policy = env.path("policy.toml");
    env.ok(&[
        "attest",
        "policy",
        "--domain-config",
        &cfg,
        "--out",
        &policy,
    ]);
    let verdict = env.ok(&[
        "attest", "verify", &quote, "--ak", &ak, "--nonce", "00c0ffee", "--policy", &policy,
    ]);
    assert!(verdict.contains("verified: 4 event(s)"), "{verdict}");
    assert!(
        verdict.contains(
            "ak: fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|sign\n"
        ),
        "the AK's attributes, from its public area: {verdict}"
    );

    // Wrong nonce: exit 1, cause named.
    let out = env.circ(&["attest", "verify", &quote, "--ak", &ak, "--nonce", "01"]);
    assert_eq!(out.status.code(), Some(3), "a refused quote");
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrong nonce"));

    // A policy built from another kernel names the file.
    write(&kernel, b"kernel v2");
    env.ok(&[
        "attest",
        "policy",
        "--domain-config",
        &cfg,
        "--out",
        &policy,
    ]);
    let out = env.circ(&[
        "attest", "verify", &quote, "--ak", &ak, "--nonce", "00c0ffee", "--policy", &policy,
    ]);
    assert_eq!(out.status.code(), Some(3), "a refused quote");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let canonical = std::fs::canonicalize(&kernel).expect("kernel path");
    assert!(
        stdout.contains(&format!("not allowed for {}", canonical.display())),
        "{stdout}"
    );
}

#[test]
fn seal_unseal_and_policy_exit_code() {
    let env = Env::new();
    write(&env.path("no-config.toml"), b"");
    let secret = env.path("secret");
    write(&secret, b"volume key");
    let blob = env.path("sealed.json");
    env.ok(&[
        "tpm", "seal", "--pcrs", "16,23", "--in", &secret, "--out", &blob,
    ]);
    assert_eq!(env.ok(&["tpm", "unseal", &blob]), "volume key");

    let other = env.path("other");
    write(&other, b"x");
    env.ok(&["measure", "file", &other, "--pcr", "23"]);
    let out = env.circ(&["tpm", "unseal", &blob]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty(), "no secret printed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sealed to"));
    assert!(Path::new(&blob).exists());
}
