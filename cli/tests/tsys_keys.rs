//! `circ tsys host-key | host-quote | challenge | deploy | rollout | rollin
//! --check | migrate` end to end, as a dom0 shell script drives them: two
//! hosts, each a private swtpm with its own state directory and event log.
//! Each refusal exits 3 with its clear error.

mod common;

use std::process::Output;

use common::TpmHost as Host;

/// What dom0 does at boot: measure Xen (with the tsys patches) and dom0.
fn boot(host: &Host, xen: &[u8]) {
    let xen_path = host.path("xen.gz");
    std::fs::write(&xen_path, xen).unwrap();
    let kernel = host.path("vmlinuz");
    std::fs::write(&kernel, b"dom0 kernel").unwrap();
    host.ok(&["measure", "file", &xen_path]);
    host.ok(&["measure", "file", &kernel]);
}

/// A policy allowing `host`'s measured Xen and dom0 kernel, written to `out`.
fn policy_of(host: &Host, out: &str) -> String {
    let (xen, kernel) = (host.path("xen.gz"), host.path("vmlinuz"));
    host.ok(&["attest", "policy", &xen, &kernel, "--out", out]);
    out.to_string()
}

fn program(host: &Host) -> (String, Vec<u8>) {
    let path = host.path("hello");
    let bytes = b"\x7fELF static trusted program ".repeat(500);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn deploy_rollout_rollin_and_the_refusal_naming_the_pcr() {
    let host = Host::new();
    boot(&host, b"xen 4.17 + tsys");
    let pem = host.path("host.pem");
    let out = host.ok(&["tsys", "host-key", "--out", &pem]);
    assert!(out.starts_with("host key "), "{out}");
    // Kept: a second call exports the same key.
    let first = std::fs::read(&pem).unwrap();
    host.ok(&["tsys", "host-key", "--out", &pem]);
    assert_eq!(std::fs::read(&pem).unwrap(), first);

    let (prog, bytes) = program(&host);
    let deployed = host.path("deployed");
    host.ok(&[
        "tsys",
        "deploy",
        &prog,
        "--host-key",
        &pem,
        "--out",
        &deployed,
    ]);
    let code = std::fs::read(host.dir.path().join("deployed/hello.cts1")).unwrap();
    assert_eq!(&code[..4], b"CTS1");
    assert!(!code.windows(24).any(|w| w == &bytes[..24]));

    let rolled = host.path("rolled");
    let out = host.ok(&[
        "tsys",
        "rollout",
        &host.path("deployed/hello.toml"),
        "--out",
        &rolled,
    ]);
    assert!(out.contains("sealed to PCRs 14,15"), "{out}");
    let manifest = host.path("rolled/hello.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains("[sealed]") && !text.contains("[bound]"),
        "{text}"
    );

    let out = host.ok(&["tsys", "rollin", &manifest, "--check"]);
    assert!(out.contains("k1 unseals"), "{out}");

    // Xen replaced by another build: measured at boot, PCR 14 moves.
    std::fs::write(host.path("xen.gz"), b"xen, another build").unwrap();
    host.ok(&["measure", "file", &host.path("xen.gz")]);
    let err = host.refused(&["tsys", "rollin", &manifest, "--check"]);
    assert!(
        err.contains(
            "refused: the host's measurements changed since k1 was sealed: PCR 14 (sealed to "
        ),
        "{err}"
    );
    assert!(!err.contains("PCR 15"), "{err}");

    // A manifest whose program was swapped is not used at all.
    std::fs::write(host.path("rolled/hello.cts1"), b"CTS1 junk").unwrap();
    let out = host.circ(&["tsys", "rollin", &manifest, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the manifest"));
}

#[test]
fn a_package_for_another_host_is_refused() {
    let a = Host::new();
    let b = Host::new();
    let (prog, _) = program(&a);
    a.ok(&["tsys", "host-key", "--out", &a.path("a.pem")]);
    b.ok(&["tsys", "host-key", "--out", &b.path("b.pem")]);
    let out = a.path("pkg");
    a.ok(&[
        "tsys",
        "deploy",
        &prog,
        "--host-key",
        &a.path("a.pem"),
        "--out",
        &out,
    ]);
    let err = b.refused(&[
        "tsys",
        "rollout",
        &a.path("pkg/hello.toml"),
        "--out",
        &b.path("r"),
    ]);
    assert!(err.contains("is bound to host key"), "{err}");
}

/// Source `a`, destination `b`: b's AK and bind key enrolled at a, b
/// answers a's challenge.
struct Pair {
    a: Host,
    b: Host,
    package: String,
}

fn pair() -> Pair {
    let a = Host::new();
    let b = Host::new();
    boot(&a, b"xen A");
    boot(&b, b"xen B");
    a.ok(&["tsys", "host-key", "--out", &a.path("a.pem")]);
    b.ok(&["tsys", "host-key", "--out", &b.path("b.pem")]);
    b.ok(&["attest", "ak", "--out", &b.path("b-ak.pem")]);
    let (prog, _) = program(&a);
    a.ok(&[
        "tsys",
        "deploy",
        &prog,
        "--host-key",
        &a.path("a.pem"),
        "--out",
        &a.path("pkg"),
    ]);
    a.ok(&[
        "tsys",
        "rollout",
        &a.path("pkg/hello.toml"),
        "--out",
        &a.path("rolled"),
    ]);
    let package = a.path("rolled/hello.toml");
    Pair { a, b, package }
}

impl Pair {
    fn challenge(&self) -> String {
        self.a.ok(&["tsys", "challenge"]).trim().to_string()
    }

    fn answer(&self, nonce: &str, name: &str) -> String {
        let out = self.b.path(name);
        self.b
            .ok(&["tsys", "host-quote", "--nonce", nonce, "--out", &out]);
        out
    }

    fn migrate(&self, quote: &str, nonce: &str, extra: &[&str]) -> Output {
        let to = self.b.path("b.pem");
        let ak = self.b.path("b-ak.pem");
        let out = self.a.path("to-b");
        let mut args = vec![
            "tsys",
            "migrate",
            &self.package,
            "--to",
            &to,
            "--quote",
            quote,
            "--ak",
            &ak,
            "--nonce",
            nonce,
            "--out",
            &out,
        ];
        args.extend(extra);
        self.a.circ(&args)
    }
}

#[test]
fn migrate_after_the_destination_quote_verifies() {
    let p = pair();
    let nonce = p.challenge();
    assert_eq!(nonce.len(), 64);
    assert_ne!(nonce, p.challenge(), "fresh each time");
    let quote = p.answer(&nonce, "q1.json");
    let policy = policy_of(&p.b, &p.a.path("b-policy.toml"));
    let out = p.migrate(&quote, &nonce, &["--policy", &policy]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("destination quote verified"), "{stdout}");
    // The destination rolls it out and in; the source can no longer.
    let moved = p.a.path("to-b/hello.toml");
    let err =
        p.a.refused(&["tsys", "rollout", &moved, "--out", &p.a.path("x")]);
    assert!(err.contains("is bound to host key"), "{err}");
    p.b.ok(&["tsys", "rollout", &moved, "--out", &p.b.path("rolled")]);
    p.b.ok(&["tsys", "rollin", &p.b.path("rolled/hello.toml"), "--check"]);
}

#[test]
fn migrate_refuses_a_replayed_or_forged_destination_quote() {
    let p = pair();
    let old_nonce = p.challenge();
    let old = p.answer(&old_nonce, "old.json");

    // Replayed: the answer to an earlier challenge.
    let nonce = p.challenge();
    let err = common::refused(&p.migrate(&old, &nonce, &[]), &["tsys", "migrate"]);
    assert!(
        err.contains("refused: the destination's quote does not verify: wrong nonce"),
        "{err}"
    );
    assert!(!std::path::Path::new(&p.a.path("to-b/hello.toml")).exists());

    // Forged: the source's own TPM answering in the destination's name.
    p.a.ok(&["attest", "ak", "--out", &p.a.path("a-ak.pem")]);
    let forged = p.a.path("forged.json");
    p.a.ok(&["tsys", "host-quote", "--nonce", &nonce, "--out", &forged]);
    let err = common::refused(&p.migrate(&forged, &nonce, &[]), &["tsys", "migrate"]);
    assert!(err.contains("bad signature"), "{err}");

    // Genuine and fresh, but the destination's Xen is not the allowed one.
    let fresh = p.answer(&nonce, "fresh.json");
    let policy = policy_of(&p.a, &p.a.path("policy.toml"));
    let out = p.migrate(&fresh, &nonce, &["--policy", &policy]);
    let err = common::refused(&out, &["tsys", "migrate", "--policy"]);
    assert!(err.contains("refused by the policy"), "{err}");
}
