//! `circ cas` as a user runs it: separate processes talking HTTP on
//! 127.0.0.1, with `circ cas serve` and with python's http.server.

mod common;

use common::{circ, circ_serve, ok, python_serve, s, Server};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Setup {
    dir: tempfile::TempDir,
    image: Vec<u8>,
}

impl Setup {
    /// A key, and a 1 MiB + 77 bytes image (random, zeros, duplicates) packed
    /// at 64K chunks with `compress`.
    fn new(compress: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut state = 88172645463325252u64;
        let mut image: Vec<u8> = (0..(1 << 20) + 77)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        image[65_536..3 * 65_536].fill(0);
        let setup = Self { dir, image };
        std::fs::write(setup.p("disk.img"), &setup.image).unwrap();
        ok(&["cas", "keygen", "--out", s(&setup.p("key"))]);
        let out = setup.pack("disk.img", "store", &["--compress", compress]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("indexes/disk.img.cidx"), "{stdout}");
        assert!(stdout.contains("sha256 "), "{stdout}");
        setup
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `circ cas verify INDEX_URL` with the setup's key and state directory.
    fn verify(&self, index_url: &str) -> Output {
        let (pubkey, state) = (self.p("key.pub"), self.p("state"));
        circ(&[
            "cas",
            "verify",
            index_url,
            "--pubkey",
            s(&pubkey),
            "--state-dir",
            s(&state),
        ])
    }

    /// `circ cas pack` of file `image` into store `store` (both in the
    /// setup's directory), 64K chunks, with the setup's key.
    fn pack(&self, image: &str, store: &str, extra: &[&str]) -> Output {
        let (image, store, key) = (self.p(image), self.p(store), self.p("key"));
        let mut args = vec![
            "cas",
            "pack",
            s(&image),
            s(&store),
            "--key",
            s(&key),
            "--chunk-size",
            "64K",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    }

    fn cat(&self, index_url: &str, extra: &[&str]) -> Output {
        let pubkey = self.p("key.pub");
        let cache = self.p("cache");
        let state = self.p("state");
        let mut args = vec![
            "cas",
            "cat",
            index_url,
            "--pubkey",
            s(&pubkey),
            "--cache",
            s(&cache),
            "--state-dir",
            s(&state),
        ];
        args.extend_from_slice(extra);
        circ(&args)
    }
}

#[test]
fn pack_serve_cat_round_trip_with_both_servers_and_all_compressions() {
    for compress in ["zstd", "zlib", "none"] {
        let setup = Setup::new(compress);
        let ours = circ_serve(&setup.p("store"));
        let out = setup.cat(&format!("{}indexes/disk.img.cidx", ours.url), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == setup.image,
            "{compress}: image differs via circ cas serve"
        );
        drop(ours);

        let python = python_serve(&setup.p("store"));
        std::fs::remove_dir_all(setup.p("cache")).unwrap();
        let out = setup.cat(&format!("{}indexes/disk.img.cidx", python.url), &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == setup.image,
            "{compress}: image differs via python"
        );
    }
}

#[test]
fn cat_fails_over_to_a_mirror_and_works_offline() {
    let setup = Setup::new("zstd");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let mirror = python_serve(&setup.p("store"));
    let out = setup.cat(
        &format!("{dead}indexes/disk.img.cidx"),
        &["--mirror", &mirror.url],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == setup.image);
    drop(mirror);
    // Both down now: index and chunks come from the cache.
    let out = setup.cat(&format!("{dead}indexes/disk.img.cidx"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == setup.image);
}

#[test]
fn verify_reports_a_corrupt_chunk_and_cat_refuses_it() {
    let setup = Setup::new("zstd");
    let server = circ_serve(&setup.p("store"));
    let index_url = format!("{}indexes/disk.img.cidx", server.url);
    let out = setup.verify(&index_url);
    assert!(out.status.success(), "{}", stderr(&out));

    // Damage one chunk file in the store.
    let chunk = std::fs::read_dir(setup.p("store/chunks"))
        .unwrap()
        .map(|d| {
            std::fs::read_dir(d.unwrap().path())
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
        })
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    // The chunk's name (a format-2 file is `NAME.f64k.zst`).
    let name = chunk.file_name().unwrap().to_str().unwrap()[..40].to_owned();

    let out = setup.verify(&index_url);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("BAD chunk") && stdout.contains(&name),
        "{stdout}"
    );
    assert!(stdout.contains("1 bad"), "{stdout}");

    let out = setup.cat(&index_url, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&name) && stderr.contains("index's digest"),
        "{stderr}"
    );
    // Whatever was written before the bad chunk is a correct prefix.
    assert!(out.stdout.len() < setup.image.len());
    assert!(setup.image.starts_with(&out.stdout));
}

#[test]
fn bad_signature_and_rollback_are_refused() {
    let setup = Setup::new("zstd");
    let server = circ_serve(&setup.p("store"));
    let index_url = format!("{}indexes/disk.img.cidx", server.url);
    ok(&["cas", "keygen", "--out", s(&setup.p("other"))]);
    let out = circ(&[
        "cas",
        "cat",
        &index_url,
        "--pubkey",
        s(&setup.p("other.pub")),
        "--state-dir",
        s(&setup.p("state")),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"));

    // Generation 2 accepted, then the store goes back to generation 1.
    let index_path = setup.p("store/indexes/disk.img.cidx");
    let gen1 = std::fs::read(&index_path).unwrap();
    let mut changed = setup.image.clone();
    changed[5] ^= 1;
    std::fs::write(setup.p("disk.img"), &changed).unwrap();
    let out = setup.pack("disk.img", "store", &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["generation"], 2);
    assert_eq!(report["new_chunks"], 1, "only the changed chunk is written");
    assert!(setup.cat(&index_url, &[]).stdout == changed);
    std::fs::write(&index_path, gen1).unwrap();
    let out = setup.cat(&index_url, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rollback refused"));
    let out = setup.cat(&index_url, &["--allow-rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == setup.image);
}

#[test]
fn stats_table_and_json() {
    let setup = Setup::new("zstd");
    let img = setup.p("disk.img");
    let out = ok(&[
        "cas",
        "stats",
        s(&img),
        s(&img),
        "--chunk-sizes",
        "16K,64K",
        "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    // The same image twice: every non-zero chunk is a duplicate.
    let dedup = rows[1]["dedup_ratio"].as_f64().unwrap();
    assert!((dedup - 2.0).abs() < 0.01, "{rows}");
    let out = ok(&["cas", "stats", s(&img), "--chunk-sizes", "4K"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dedup"));
    let out = circ(&["cas", "stats", s(&img), "--chunk-sizes", "3K"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Starts an HTTP server on a store.
type Serve = fn(&Path) -> Server;

/// Both HTTP servers the tests run: ours and python's.
const SERVERS: [(&str, Serve); 2] = [("circ cas serve", circ_serve), ("python", python_serve)];

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_index_is_trusted_only_for_the_image_asked_for_with_both_servers() {
    let setup = Setup::new("zstd");
    // The store answers image `other`'s URL with `disk.img`'s index, signed
    // by the same key.
    std::fs::copy(
        setup.p("store/indexes/disk.img.cidx"),
        setup.p("store/indexes/other.cidx"),
    )
    .unwrap();
    let pubkey = setup.p("key.pub");
    let state = setup.p("state");
    let refusal = "index is for image `disk.img`, but image `other` was asked for";
    for (which, serve) in SERVERS {
        let server = serve(&setup.p("store"));
        let url = format!("{}indexes/other.cidx", server.url);
        let out = setup.cat(&url, &[]);
        assert!(!out.status.success(), "{which}: cat accepted another image");
        assert!(out.stdout.is_empty(), "{which}");
        assert!(stderr(&out).contains(refusal), "{which}: {}", stderr(&out));
        let out = setup.verify(&url);
        assert_eq!(out.status.code(), Some(1), "{which}: {}", stderr(&out));
        assert!(stderr(&out).contains(refusal), "{which}: {}", stderr(&out));
        let out = circ(&[
            "cas",
            "nbd",
            &url,
            "--pubkey",
            s(&pubkey),
            "--state-dir",
            s(&state),
            "--read-only",
            "--socket",
            s(&setup.p("nbd.sock")),
        ]);
        assert_eq!(out.status.code(), Some(1), "{which}: {}", stderr(&out));
        assert!(stderr(&out).contains(refusal), "{which}: {}", stderr(&out));
        // Named explicitly, the same URL serves `disk.img`.
        let out = setup.cat(&url, &["--image", "disk.img"]);
        assert!(out.status.success(), "{which}: {}", stderr(&out));
        assert!(out.stdout == setup.image, "{which}: image differs");
    }
    // A URL whose file name is not NAME.cidx: refused before any fetch,
    // unless the image is named (here in the configuration).
    let python = python_serve(&setup.p("store"));
    std::fs::copy(
        setup.p("store/indexes/disk.img.cidx"),
        setup.p("store/indexes/latest"),
    )
    .unwrap();
    let url = format!("{}indexes/latest", python.url);
    let out = setup.cat(&url, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot tell which image"),
        "{}",
        stderr(&out)
    );
    std::fs::write(setup.p("cas.toml"), "image = \"disk.img\"\n").unwrap();
    let out = setup.cat(&url, &["--config", s(&setup.p("cas.toml"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == setup.image);
}

#[test]
fn rollback_state_lives_in_the_state_dir_with_both_servers() {
    let setup = Setup::new("zstd");
    let index_path = setup.p("store/indexes/disk.img.cidx");
    let gen1 = std::fs::read(&index_path).unwrap();
    let mut changed = setup.image.clone();
    changed[5] ^= 1;
    std::fs::write(setup.p("disk.img"), &changed).unwrap();
    setup.pack("disk.img", "store", &[]);
    let gen2 = std::fs::read(&index_path).unwrap();
    let pubkey = setup.p("key.pub");
    for (k, (which, serve)) in SERVERS.into_iter().enumerate() {
        let server = serve(&setup.p("store"));
        let url = format!("{}indexes/disk.img.cidx", server.url);
        let state = setup.p(&format!("state-{k}"));
        // No --cache at all: the state is kept all the same.
        let source = |extra: &[&str]| -> Vec<String> {
            let mut args = vec![url.clone(), "--pubkey".into(), s(&pubkey).into()];
            args.extend(extra.iter().map(|a| a.to_string()));
            args
        };
        let run = |verb: &str, extra: &[&str]| -> Output {
            let mut args = vec!["cas".to_owned(), verb.to_owned()];
            args.extend(source(extra));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            circ(&args)
        };
        std::fs::write(&index_path, &gen2).unwrap();
        let out = run("cat", &["--state-dir", s(&state)]);
        assert!(out.status.success(), "{which}: {}", stderr(&out));
        assert!(out.stdout == changed, "{which}");
        assert!(state.join("generations/disk.img").exists(), "{which}");

        // The mirror goes back to generation 1: cat, verify and nbd refuse.
        std::fs::write(&index_path, &gen1).unwrap();
        let socket = setup.p("nbd.sock");
        for (verb, extra) in [
            ("cat", vec![]),
            ("verify", vec![]),
            ("nbd", vec!["--read-only", "--socket", s(&socket)]),
        ] {
            let mut extra = extra.clone();
            extra.extend(["--state-dir", s(&state)]);
            let out = run(verb, &extra);
            assert_eq!(out.status.code(), Some(1), "{which} {verb}");
            assert!(
                stderr(&out).contains("rollback refused"),
                "{which} {verb}: {}",
                stderr(&out)
            );
        }
        // The state directory from the configuration, and from the
        // environment.
        let config = setup.p("state.toml");
        std::fs::write(&config, format!("state_dir = \"{}\"\n", s(&state))).unwrap();
        let out = run("cat", &["--config", s(&config)]);
        assert!(
            stderr(&out).contains("rollback refused"),
            "{which}: {}",
            stderr(&out)
        );
        let mut args = vec!["cas".to_owned(), "cat".to_owned()];
        args.extend(source(&[]));
        let out = common::command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .env("CIRC_CAS_STATE_DIR", &state)
            .output()
            .unwrap();
        assert!(
            stderr(&out).contains("rollback refused"),
            "{which}: {}",
            stderr(&out)
        );

        // `verify` records what it accepted: generation 2 verified on a
        // fresh state makes generation 1 a rollback there too.
        let verified = setup.p(&format!("verified-{k}"));
        std::fs::write(&index_path, &gen2).unwrap();
        let out = run("verify", &["--state-dir", s(&verified)]);
        assert!(out.status.success(), "{which}: {}", stderr(&out));
        std::fs::write(&index_path, &gen1).unwrap();
        let out = run("cat", &["--state-dir", s(&verified)]);
        assert!(
            stderr(&out).contains("rollback refused"),
            "{which}: {}",
            stderr(&out)
        );

        // Allowed, generation 1 is served and becomes the record.
        let out = run("cat", &["--state-dir", s(&state), "--allow-rollback"]);
        assert!(out.status.success(), "{which}: {}", stderr(&out));
        assert!(out.stdout == setup.image, "{which}");
        let out = run("cat", &["--state-dir", s(&state)]);
        assert!(out.status.success(), "{which}: {}", stderr(&out));
    }
}

#[test]
fn unusable_rollback_state_fails_closed() {
    let setup = Setup::new("zstd");
    let server = circ_serve(&setup.p("store"));
    let url = format!("{}indexes/disk.img.cidx", server.url);
    // A state directory that cannot be created: a file is in its place.
    let blocked = setup.p("blocked");
    std::fs::write(&blocked, "").unwrap();
    let pubkey = setup.p("key.pub");
    let cat = |extra: &[&str]| {
        let mut args = vec![
            "cas",
            "cat",
            &url,
            "--pubkey",
            s(&pubkey),
            "--state-dir",
            s(&blocked),
        ];
        args.extend_from_slice(extra);
        circ(&args)
    };
    let out = cat(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("cannot use the anti-rollback state"),
        "{}",
        stderr(&out)
    );
    let out = cat(&["--allow-rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == setup.image);
}

#[test]
fn a_chunk_decompressing_to_other_content_is_refused_with_both_servers() {
    // As the lab does it: chunk 4's plaintext changed, packed on its own
    // (so compressed as the image's chunks are, format 2: 64 KiB frames),
    // its file copied over the good chunk's. It decompresses fine; its
    // frame's BLAKE3 is not the index's.
    let setup = Setup::new("zstd");
    let chunk = 65_536;
    let good = &setup.image[4 * chunk..5 * chunk];
    let mut wrong = good.to_vec();
    wrong[100] ^= 0xff;
    std::fs::write(setup.p("wrong.bin"), &wrong).unwrap();
    setup.pack("wrong.bin", "scratch", &[]);
    let only_file = |root: &Path| -> PathBuf {
        let fan = std::fs::read_dir(root.join("chunks"))
            .unwrap()
            .next()
            .unwrap();
        std::fs::read_dir(fan.unwrap().path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    };
    let frame = std::fs::read(only_file(&setup.p("scratch"))).unwrap();
    // The good chunk's name: the SHA-1 of its plaintext.
    let name = {
        std::fs::write(setup.p("good.bin"), good).unwrap();
        let out = Command::new("sha1sum")
            .arg(setup.p("good.bin"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..40].to_owned()
    };
    let target = setup
        .p("store/chunks")
        .join(&name[..2])
        .join(format!("{name}.f64k.zst"));
    assert!(target.exists(), "chunk 4 is {name}");
    std::fs::write(&target, frame).unwrap();

    for (which, serve) in SERVERS {
        let server = serve(&setup.p("store"));
        let url = format!("{}indexes/disk.img.cidx", server.url);
        let _ = std::fs::remove_dir_all(setup.p("cache"));
        let out = setup.cat(&url, &[]);
        assert!(!out.status.success(), "{which}: wrong content served");
        assert!(
            stderr(&out).contains(&name) && stderr(&out).contains("index's digest"),
            "{which}: {}",
            stderr(&out)
        );
        assert!(
            out.stdout.len() <= 4 * chunk,
            "{which}: nothing past chunk 4"
        );
        assert!(
            setup.image.starts_with(&out.stdout),
            "{which}: a wrong byte"
        );
        let out = setup.verify(&url);
        assert_eq!(out.status.code(), Some(3), "{which}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("BAD chunk 4 ({name})")),
            "{which}: {stdout}"
        );
    }
}
