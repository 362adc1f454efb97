//! `circ cas nbd` and `circ cas commit` as processes: write through NBD
//! (qemu-io), commit the overlay, read both generations back with `cat`.

mod common;

use common::{circ, ok, s, start, KillOnDrop};
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu_io(socket: &Path, commands: &[&str]) -> String {
    run_qemu_io(socket, false, commands)
}

fn run_qemu_io(socket: &Path, read_only: bool, commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"])
        .args(read_only.then_some("-r"))
        .arg(format!("nbd+unix:///?socket={}", socket.display()));
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().expect("qemu-io runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {commands:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Packs image `disk` in `dir/store` with key `dir/key`: 512 KiB, eight
/// 64 KiB chunks of bytes 1..=8 (returned).
fn pack_disk(dir: &Path) -> Vec<u8> {
    let p = |n: &str| -> PathBuf { dir.join(n) };
    let image: Vec<u8> = (0..8u8)
        .flat_map(|k| std::iter::repeat_n(k + 1, 65_536))
        .collect();
    std::fs::write(p("disk.img"), &image).unwrap();
    ok(&["cas", "keygen", "--out", s(&p("key"))]);
    ok(&[
        "cas",
        "pack",
        s(&p("disk.img")),
        s(&p("store")),
        "--key",
        s(&p("key")),
        "--chunk-size",
        "64K",
        "--name",
        "disk",
    ]);
    image
}

/// Serves `dir/store` with `circ cas serve` on loopback; returns the
/// server and the URL of image `disk`'s index.
fn serve_store(dir: &Path) -> (KillOnDrop, String) {
    let (http, line) = start(&[
        "cas",
        "serve",
        s(&dir.join("store")),
        "--listen",
        "127.0.0.1:0",
    ]);
    let url = format!("{}indexes/disk.cidx", line.rsplit(' ').next().unwrap());
    (http, url)
}

#[test]
fn nbd_write_commit_then_both_generations() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let image = pack_disk(dir.path());
    let old_index = p("disk-gen1.cidx");
    std::fs::copy(p("store/indexes/disk.cidx"), &old_index).unwrap();
    let (_http, url) = serve_store(dir.path());

    // Settings from a config file, as the hotplug script passes them.
    std::fs::write(
        p("cas.toml"),
        format!(
            "pubkey = \"{}\"\ncache = \"{}\"\nstate_dir = \"{}\"\n",
            s(&p("key.pub")),
            s(&p("cache")),
            s(&p("state"))
        ),
    )
    .unwrap();
    let socket = p("nbd.sock");
    let (nbd, line) = start(&[
        "cas",
        "nbd",
        &url,
        "--config",
        s(&p("cas.toml")),
        "--socket",
        s(&socket),
        "--overlay",
        s(&p("disk.ovl")),
    ]);
    assert!(
        line.contains("generation 1") && line.contains("read-write"),
        "{line}"
    );
    qemu_io(&socket, &["write -P 0xee 70000 5000", "flush"]);
    drop(nbd);

    let out = ok(&[
        "cas",
        "commit",
        s(&p("disk.ovl")),
        "--index",
        &url,
        "--pubkey",
        s(&p("key.pub")),
        "--key",
        s(&p("key")),
        "--store",
        s(&p("store")),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["generation"], 2, "{report}");
    assert_eq!(report["changed_chunks"], 1, "{report}");
    assert_eq!(report["new_chunks"], 1, "{report}");
    assert_eq!(report["written_blocks"], 2, "{report}");

    let mut expected = image.clone();
    expected[70_000..75_000].fill(0xee);
    let cache = p("cache");
    let state = p("state");
    let new = ok(&[
        "cas",
        "cat",
        &url,
        "--pubkey",
        s(&p("key.pub")),
        "--cache",
        s(&cache),
        "--state-dir",
        s(&state),
    ]);
    assert!(new.stdout == expected, "new generation differs");
    // The old index is now a rollback: refused, then accepted when asked.
    // Its copy's file name is not the image's: the image is named.
    let refused = circ(&[
        "cas",
        "cat",
        s(&old_index),
        "--image",
        "disk",
        "--pubkey",
        s(&p("key.pub")),
        "--cache",
        s(&cache),
        "--state-dir",
        s(&state),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("rollback refused"));
    let old = ok(&[
        "cas",
        "cat",
        s(&old_index),
        "--image",
        "disk",
        "--pubkey",
        s(&p("key.pub")),
        "--cache",
        s(&cache),
        "--state-dir",
        s(&state),
        "--allow-rollback",
    ]);
    assert!(old.stdout == image, "old generation differs");

    // An overlay made on generation 1 is refused against generation 2.
    let stale = circ(&[
        "cas",
        "nbd",
        &url,
        "--pubkey",
        s(&p("key.pub")),
        "--cache",
        s(&p("cache2")),
        "--state-dir",
        s(&state),
        "--socket",
        s(&p("nbd2.sock")),
        "--overlay",
        s(&p("disk.ovl")),
    ]);
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("generation 1"));
}

#[test]
fn nbd_needs_an_overlay_or_read_only() {
    let out = circ(&[
        "cas", "nbd", "x.cidx", "--pubkey", "k.pub", "--socket", "s.sock",
    ]);
    assert_eq!(out.status.code(), Some(2), "usage error expected");
    let out = circ(&["cas", "nbd", "x.cidx", "--pubkey", "k.pub", "--read-only"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a socket or address is required"
    );
}

/// Polls for up to 20 s until `done` holds.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Chunks held in a cache directory's pack tables (entries in use: 64
/// bytes each after a 4 KiB header, the first byte 1).
fn cached_chunks(cache: &Path) -> usize {
    files_under(cache)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "table"))
        .map(|f| {
            let table = std::fs::read(f).unwrap_or_default();
            (4096..table.len())
                .step_by(64)
                .filter(|&at| table[at] == 1)
                .count()
        })
        .sum()
}

#[test]
fn nbd_records_a_boot_list_that_a_fresh_host_prefetches() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    pack_disk(dir.path());
    let (_http, url) = serve_store(dir.path());
    let nbd = |cache: &str, socket: &str| {
        start(&[
            "cas",
            "nbd",
            &url,
            "--pubkey",
            s(&p("key.pub")),
            "--cache",
            s(&p(cache)),
            "--state-dir",
            s(&p("state")),
            "--socket",
            s(&p(socket)),
            "--read-only",
            "--boot-window",
            "1",
        ])
    };

    // A "boot" reads chunks 3 then 0; a second later the list is recorded
    // beside the cache's copy of the index.
    let (first, _) = nbd("cache1", "a.sock");
    run_qemu_io(
        &p("a.sock"),
        true,
        &["read -P 4 196608 4096", "read -P 1 0 4096"],
    );
    let listed = || {
        files_under(&p("cache1/indexes"))
            .into_iter()
            .find(|f| f.extension().is_some_and(|e| e == "prefetch"))
    };
    wait_for("the boot list", || listed().is_some());
    drop(first);
    let list = std::fs::read_to_string(listed().unwrap()).unwrap();
    assert!(list.ends_with("chunks 2\n3\n0\n"), "{list}");

    // Published beside the index, it makes a fresh host fetch those chunks
    // before anything reads them.
    std::fs::write(p("store/indexes/disk.prefetch"), &list).unwrap();
    let (_second, _) = nbd("cache2", "b.sock");
    let cached = || cached_chunks(&p("cache2"));
    wait_for("two prefetched chunks", || cached() == 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(cached(), 2, "only the listed chunks are prefetched");
    run_qemu_io(
        &p("b.sock"),
        true,
        &["read -P 4 196608 4096", "read -P 8 458752 4096"],
    );
}

#[test]
fn sigterm_flushes_the_overlay_and_exits_0() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    pack_disk(dir.path());
    let (_http, url) = serve_store(dir.path());
    let socket = p("nbd.sock");
    let serve = || {
        start(&[
            "cas",
            "nbd",
            &url,
            "--pubkey",
            s(&p("key.pub")),
            "--state-dir",
            s(&p("state")),
            "--socket",
            s(&socket),
            "--overlay",
            s(&p("disk.ovl")),
        ])
    };
    let (mut nbd, _) = serve();

    // qemu-io stays connected and asks for no flush: only the server's own
    // stop can make the write's block durable.
    let mut client = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(format!("nbd+unix:///?socket={}", socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io runs");
    let mut input = client.stdin.take().unwrap();
    writeln!(input, "write -P 0xee 70000 5000").unwrap();
    input.flush().unwrap();
    let mut output = BufReader::new(client.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("wrote 5000/5000") {
        let mut line = String::new();
        assert!(output.read_line(&mut line).unwrap() > 0, "qemu-io: {seen}");
        seen.push_str(&line);
    }

    let killed = Command::new("kill")
        .args(["-TERM", &nbd.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = nbd.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "circ cas nbd on SIGTERM: {status}");
    drop(input);
    let _ = client.wait();

    // The overlay opened anew holds the write, and the rest as before.
    let (_nbd, line) = serve();
    assert!(line.contains("read-write"), "{line}");
    run_qemu_io(
        &socket,
        true,
        &[
            "read -P 0xee 70000 5000",
            "read -P 2 65536 4464",
            "read -P 2 75000 56072",
        ],
    );
}
