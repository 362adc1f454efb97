//! The launcher's loader on this host, with a real static program that gcc
//! builds here (glibc, `-static`): what it prints when the launcher loads it
//! (`--unregistered`: no Xen here) must be what it prints when the kernel
//! does. The registration path runs too, and is refused, as on any kernel
//! without patch 0002. On real Xen the lab's `tsys` scenario runs the
//! launcher with registration (rewritten busybox applets).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Prints what a C runtime takes from the kernel at exec: arguments,
/// environment, auxv-derived values, TLS, a large allocation (mmap) and
/// small ones (brk), stdin.
const PROGRAM: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>
static __thread int tls_counter = 41;
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    printf("CIRC_TEST=%s\n", getenv("CIRC_TEST") ? getenv("CIRC_TEST") : "(unset)");
    printf("pagesz=%lu phent=%lu secure=%lu\n", getauxval(AT_PAGESZ),
           getauxval(AT_PHENT), getauxval(AT_SECURE));
    printf("random=%s execfn=%s\n", getauxval(AT_RANDOM) ? "yes" : "no",
           (char *)getauxval(AT_EXECFN));
    tls_counter++;
    printf("tls=%d\n", tls_counter);
    size_t big = 64 << 20;
    char *p = malloc(big);
    memset(p, 7, big);
    long sum = 0;
    for (size_t i = 0; i < big; i += 4096) sum += p[i];
    free(p);
    for (int i = 0; i < 1000; i++) free(malloc(100 + i));
    printf("sum=%ld\n", sum);
    char line[64] = "";
    if (fgets(line, sizeof line, stdin)) printf("stdin=%s", line);
    errno = 0;
    if (write(-1, "", 0) < 0) printf("errno=%d\n", errno);
    return argc;
}
"#;

fn launcher() -> Command {
    Command::new(env!("CARGO_BIN_EXE_circ-tsys-launch"))
}

fn build_program(dir: &Path) -> PathBuf {
    let src = dir.join("probe.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let prog = dir.join("probe");
    let gcc = Command::new("gcc")
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
    prog
}

fn run(cmd: &mut Command) -> Output {
    use std::io::Write as _;
    let mut child = cmd
        .env("CIRC_TEST", "value with spaces")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A program that dies first leaves a broken pipe: not this check's business.
    let _ = child.stdin.take().unwrap().write_all(b"from stdin\n");
    child.wait_with_output().unwrap()
}

#[test]
fn a_static_program_runs_the_same_loaded_by_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let direct = run(Command::new(&prog).args(["one", "two words", "-x"]));
    let launched =
        run(launcher()
            .arg("--unregistered")
            .arg(&prog)
            .args(["one", "two words", "-x"]));
    assert_eq!(
        String::from_utf8_lossy(&launched.stderr),
        "",
        "the launcher said something"
    );
    let (direct_out, launched_out) = (
        String::from_utf8(direct.stdout).unwrap(),
        String::from_utf8(launched.stdout).unwrap(),
    );
    assert!(direct_out.contains("tls=42\n") && direct_out.contains("sum=114688\n"));
    assert!(direct_out.contains("stdin=from stdin\n"), "{direct_out}");
    assert_eq!(launched_out, direct_out);
    assert_eq!(direct.status.code(), Some(4));
    assert_eq!(launched.status.code(), Some(4));

    // --argv0, as `exec -a`.
    let renamed = run(launcher()
        .args(["--unregistered", "--argv0", "renamed"])
        .arg(&prog));
    assert!(String::from_utf8_lossy(&renamed.stdout).starts_with("argv[0]=renamed\n"));
}

#[test]
fn a_rewritten_program_traps_when_not_registered() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let rewritten = circ_tsys_rewrite::rewrite(
        &std::fs::read(&prog).unwrap(),
        &circ_tsys_rewrite::RewriteOptions::default(),
    )
    .unwrap();
    let path = dir.path().join("probe.tsys");
    std::fs::write(&path, &rewritten.bytes).unwrap();
    let out = run(launcher().arg("--unregistered").arg(&path));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{out:?}");
}

#[test]
fn registration_without_the_patch_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let prog = build_program(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "00".repeat(32)).unwrap();
    let out = run(launcher().arg("--token-file").arg(&token).arg(&prog));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("Xen refused the registration"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_programs_and_tokens_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(launcher()
        .arg("--unregistered")
        .arg(dir.path().join("none")));
    assert_eq!(missing.status.code(), Some(127));
    // A dynamic program (this host's shell) is not what the rewriter takes.
    let dynamic = run(launcher().args(["--unregistered", "/bin/sh"]));
    assert_eq!(dynamic.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&dynamic.stderr).contains("cannot load /bin/sh"));
    let prog = build_program(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "none").unwrap();
    let bad = run(launcher().arg("--token-file").arg(&token).arg(&prog));
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad token"));
}
