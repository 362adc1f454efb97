//! The rewriter on a real program: Debian bookworm's busybox-static, pinned
//! by version and SHA-256, fetched with `apt-get download` into
//! `target/tmp/busybox-static/` (kept there between runs). objdump (binutils)
//! is the independent disassembler the result is checked against.
//!
//! It needs Debian's archive the first time. It never skips: a failed
//! download, a changed package or a missing objdump fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use circ_tsys_rewrite::{analyse, rewrite, Mode, Outcome, RewriteOptions, INT_0X81, SYSCALL};
use sha2::{Digest, Sha256};

const PACKAGE: &str = "busybox-static";
const VERSION: &str = "1:1.35.0-4+deb12u1+b1";
const SHA256: &str = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pinned .deb in `dir`, downloaded if absent or different.
fn fetch_deb(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let deb = dir.join("busybox-static.deb");
    if let Ok(bytes) = std::fs::read(&deb) {
        if sha256_hex(&bytes) == SHA256 {
            return Ok(deb);
        }
    }
    let download = dir.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{PACKAGE}={VERSION}")])
        .current_dir(&download))
    .context(
        "downloading the pinned busybox-static from Debian's archive \
         (needs apt's bookworm lists: scripts/setup; a point release may have \
         replaced the pinned version: then update VERSION and SHA256)",
    )?;
    let got = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let bytes = std::fs::read(&got)?;
    let sum = sha256_hex(&bytes);
    ensure!(
        sum == SHA256,
        "{} has SHA-256 {sum}, the pin is {SHA256}",
        got.display()
    );
    std::fs::rename(&got, &deb)?;
    Ok(deb)
}

/// Addresses of the instructions objdump decodes as `mnemonic`.
fn objdump_sites(path: &Path, mnemonic: &str) -> Result<Vec<u64>> {
    let out = run(Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(path))
    .context("objdump (binutils) is the independent checker")?;
    let text = String::from_utf8(out)?;
    let mut sites = Vec::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(":\t") else {
            continue;
        };
        if rest.trim() == mnemonic {
            sites.push(u64::from_str_radix(addr.trim(), 16)?);
        }
    }
    Ok(sites)
}

#[test]
fn busybox_static_every_syscall_and_nothing_else() -> Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busybox-static");
    let deb = fetch_deb(&dir)?;
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let original_path = root.join("bin/busybox");
    let original = std::fs::read(&original_path)?;

    let started = Instant::now();
    let out = rewrite(&original, &RewriteOptions::default())?;
    let took = started.elapsed();
    let counts = &out.report.counts;
    eprintln!(
        "busybox {VERSION}: {} bytes, {} code bytes in {} regions, {} anchors, {} instructions; {} rewritten, {} embedded 0f 05, {} unsafe, {} branches into instructions; {:.3} s",
        original.len(),
        counts.code_bytes,
        out.report.code.len(),
        out.report.code.iter().map(|c| c.anchors).sum::<usize>(),
        counts.instructions,
        counts.rewritten,
        counts.embedded,
        counts.unsafe_sites,
        counts.branches_into_instructions,
        took.as_secs_f64()
    );

    // The same sites as an independent disassembler's syscall instructions.
    let expected = objdump_sites(&original_path, "syscall")?;
    ensure!(!expected.is_empty(), "objdump found no syscall at all");
    let ours: Vec<u64> = out
        .report
        .sites
        .iter()
        .filter(|s| s.outcome == Outcome::Rewritten)
        .map(|s| s.vaddr)
        .collect();
    assert_eq!(
        ours, expected,
        "rewritten sites differ from objdump's syscalls"
    );
    assert_eq!(counts.rewritten, expected.len() as u64);

    // Every other byte unchanged; each site 0f 05 -> cd 81.
    assert_eq!(out.bytes.len(), original.len());
    let mut changed = Vec::new();
    for (i, (a, b)) in original.iter().zip(&out.bytes).enumerate() {
        if a != b {
            changed.push(i as u64);
        }
    }
    let mut site_bytes = Vec::new();
    for s in out
        .report
        .sites
        .iter()
        .filter(|s| s.outcome == Outcome::Rewritten)
    {
        let at = s.file_offset as usize;
        assert_eq!(original[at..at + 2], SYSCALL);
        assert_eq!(out.bytes[at..at + 2], INT_0X81);
        site_bytes.extend([s.file_offset, s.file_offset + 1]);
    }
    assert_eq!(changed, site_bytes, "bytes other than the sites changed");

    // The result is still an ELF objdump reads, with int $0x81 where the
    // syscalls were and no syscall left.
    let rewritten_path = dir.join("busybox.rewritten");
    std::fs::write(&rewritten_path, &out.bytes)?;
    run(Command::new("readelf")
        .args(["-h", "-l", "-S"])
        .arg(&rewritten_path))?;
    assert_eq!(
        objdump_sites(&rewritten_path, "syscall")?,
        Vec::<u64>::new()
    );
    let traps: Vec<u64> = {
        let text = String::from_utf8(run(Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&rewritten_path))?)?;
        text.lines()
            .filter_map(|l| l.split_once(":\t"))
            .filter(|(_, rest)| {
                let mut words = rest.split_whitespace();
                words.next() == Some("int") && words.next() == Some("$0x81")
            })
            .map(|(addr, _)| u64::from_str_radix(addr.trim(), 16))
            .collect::<Result<_, _>>()?
    };
    assert_eq!(traps, expected);

    // A second run finds them all rewritten and changes nothing.
    let again = rewrite(&out.bytes, &RewriteOptions::default())?;
    assert_eq!(again.bytes, out.bytes);
    assert_eq!(again.report.counts.rewritten, 0);
    assert_eq!(again.report.counts.already_rewritten, expected.len() as u64);

    // Lenient mode agrees when nothing is unsafe.
    let lenient = analyse(
        &original,
        &RewriteOptions {
            mode: Mode::Lenient,
        },
    )?;
    assert_eq!(lenient.counts.rewritable, expected.len() as u64);
    Ok(())
}
