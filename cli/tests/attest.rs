//! `circ measure`, `circ attest` and `circ tpm` end to end against a private swtpm.

mod common;

use std::path::Path;

use common::{circ_serve, python_serve, Server, TpmHost as Env};

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

/// `circ cas nbd` of `url` as `block-circ` runs it for domain `domain`;
/// returns its first line ("serving ..." once it listens, empty if it
/// exited) and its standard error.
fn served_for(env: &Env, url: &str, domain: &str, extra: &[&str]) -> (String, String) {
    let (pubkey, state) = (env.path("cas.pub"), env.path("cas-state"));
    let mut args = vec![
        "cas",
        "nbd",
        url,
        "--read-only",
        "--listen",
        "127.0.0.1:0",
        "--pubkey",
        &pubkey,
        "--state-dir",
        &state,
        "--pin-domain",
        domain,
    ];
    args.extend_from_slice(extra);
    let mut child = common::command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("circ cas nbd starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (line, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A `block-circ` disk (real `.cidx` layout from `circ cas pack`, served over
/// real HTTP) is measured as the index bytes cas-blk serves, pinned, and then
/// served from that index only: a new generation is refused until the domain
/// is measured again.
#[test]
fn a_block_circ_disk_is_measured_pinned_and_served_from_the_pinned_index_only() {
    for serve in [circ_serve as fn(&Path) -> Server, python_serve] {
        let env = Env::new();
        write(&env.path("no-config.toml"), b"");
        let (store, image) = (env.path("store"), env.path("img"));
        env.ok(&["cas", "keygen", "--out", &env.path("cas")]);
        write(&image, &vec![7u8; 300 << 10]);
        let pack = |data: &[u8]| {
            write(&image, data);
            env.ok(&[
                "cas",
                "pack",
                &image,
                &store,
                "--key",
                &env.path("cas"),
                "--chunk-size",
                "64K",
            ])
        };
        pack(&vec![7u8; 300 << 10]);
        let server = serve(Path::new(&store));
        let url = format!("{}indexes/img.cidx", server.url);
        let cfg = env.path("web.cfg");
        write(
            &cfg,
            format!(
                "name = \"web\"\ndisk = ['vdev=xvda, access=ro, script=block-circ, target={url}']\n"
            )
            .as_bytes(),
        );
        let measure = || {
            env.ok(&[
                "measure",
                "domain",
                &cfg,
                "--cas-pubkey",
                &env.path("cas.pub"),
                "--cas-state-dir",
                &env.path("cas-state"),
            ])
        };
        let printed = measure();
        let gen1 = std::fs::read(format!("{store}/indexes/img.cidx")).unwrap();
        let digest = |bytes: &[u8]| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(bytes))
        };
        let shown = env.ok(&["measure", "show"]);
        assert!(
            shown.contains(&url) && shown.contains(&digest(&gen1)),
            "the served index's bytes are measured under its URL: {printed}\n{shown}"
        );

        let (line, err) = served_for(&env, &url, "web", &[]);
        assert!(line.starts_with("serving img generation 1"), "{line} {err}");

        // A new generation is published: the measured domain's disk is not
        // served from it until measured again.
        pack(&vec![9u8; 300 << 10]);
        let gen2 = std::fs::read(format!("{store}/indexes/img.cidx")).unwrap();
        assert_ne!(digest(&gen1), digest(&gen2));
        let (line, err) = served_for(&env, &url, "web", &[]);
        assert!(line.is_empty(), "served an unmeasured index: {line}");
        assert!(
            err.contains("not the one measured") && err.contains(&digest(&gen1)),
            "{err}"
        );
        // Another domain's disk (never measured) is served unmeasured, unless
        // a pin is required.
        let (line, _) = served_for(&env, &url, "other", &[]);
        assert!(line.starts_with("serving img generation 2"), "{line}");
        let (line, err) = served_for(&env, &url, "other", &["--require-pin"]);
        assert!(
            line.is_empty() && err.contains("a pin is required"),
            "{line} {err}"
        );

        measure();
        let (line, err) = served_for(&env, &url, "web", &[]);
        assert!(line.starts_with("serving img generation 2"), "{line} {err}");
        drop(server);
    }
}

/// Without the publisher's key a block-circ disk cannot be measured: the
/// command fails, naming the disk, and nothing is logged or pinned.
#[test]
fn a_block_circ_disk_that_cannot_be_verified_is_refused() {
    let env = Env::new();
    write(&env.path("no-config.toml"), b"");
    let cfg = env.path("web.cfg");
    write(
        &cfg,
        b"name = \"web\"\ndisk = ['vdev=xvda, script=block-circ, target=http://127.0.0.1:9/indexes/img.cidx']\n",
    );
    let out = env.circ(&[
        "measure",
        "domain",
        &cfg,
        "--cas-state-dir",
        &env.path("cas-state"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("img.cidx") && err.contains("public key"),
        "{err}"
    );
    assert!(!Path::new(&env.path("measurements.log")).exists());
    assert!(!Path::new(&env.path("cas-state/pins")).exists());
}
