//! `circ cas` as a user runs it: separate processes talking HTTP on
//! 127.0.0.1, with `circ cas serve` and with python's http.server.

mod common;

use common::{circ, ok, s};
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills the server process when the test ends, pass or fail.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn circ_serve(store: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_circ"))
        .args(["cas", "serve", s(store), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("circ cas serve starts");
    // The first line names the bound address; reading it waits for bind.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("serving line")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Server { child, url }
}

fn python_serve(store: &Path) -> Server {
    // Reserve a free port, then let python bind it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            s(store),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}/"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "python http.server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

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
        let out = ok(&[
            "cas",
            "pack",
            s(&setup.p("disk.img")),
            s(&setup.p("store")),
            "--key",
            s(&setup.p("key")),
            "--chunk-size",
            "64K",
            "--compress",
            compress,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("indexes/disk.img.cidx"), "{stdout}");
        assert!(stdout.contains("sha256 "), "{stdout}");
        setup
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
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
    let pubkey = setup.p("key.pub");
    let state = setup.p("state");
    ok(&[
        "cas",
        "verify",
        &index_url,
        "--pubkey",
        s(&pubkey),
        "--state-dir",
        s(&state),
    ]);

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
    let name = chunk.file_stem().unwrap().to_str().unwrap().to_owned();

    let out = circ(&[
        "cas",
        "verify",
        &index_url,
        "--pubkey",
        s(&pubkey),
        "--state-dir",
        s(&state),
    ]);
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
        stderr.contains(&name) && stderr.contains("hashes to"),
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
    let out = ok(&[
        "cas",
        "pack",
        s(&setup.p("disk.img")),
        s(&setup.p("store")),
        "--key",
        s(&setup.p("key")),
        "--chunk-size",
        "64K",
        "--json",
    ]);
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
