//! `circ-tsys-launch`: runs a rewritten static program as a trusted process
//! (see the library docs and docs/tsys.md "Launcher").
//!
//! Exit status: the program's own once it runs; before that 125 (no token,
//! registration refused), 126 (the program cannot be loaded) or 127 (no
//! such program), as `env` and shells use them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use circ_guest_xenbus::Xenbus;
use circ_tsys_launch::stack::{self, StackSpec};
use circ_tsys_launch::{parse_token, plan, sys, Token, TOKEN_NODE};
use clap::Parser;

/// Run a static program, rewritten by `circ tsys rewrite`, as a trusted
/// process: register with Xen using the token dom0 armed, then load the
/// program into this registered address space and start it.
#[derive(Debug, Parser)]
#[command(name = "circ-tsys-launch", version)]
struct Args {
    /// Read the token (64 hex digits) from this file instead of the guest's
    /// xenstore node `data/tsys/token`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds to wait for `data/tsys/token` to appear (dom0 writes it with
    /// `circ tsys authorise`).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    wait: u64,
    /// Load and start the program without a token or registration: the
    /// loader alone, for testing it anywhere. A rewritten program's
    /// `int $0x81` then gets SIGSEGV, as in any unregistered process.
    #[arg(long)]
    unregistered: bool,
    /// PROGRAM is sealed (CTS1, from `circ tsys deploy`) with this file id
    /// (16 hex digits, the package's `file_id`): read it through Xen's sealed
    /// I/O with the key dom0 attached to the token (`circ tsys rollin`), so
    /// its plaintext exists only in this registered process.
    #[arg(long, value_name = "FILE_ID", value_parser = parse_file_id, conflicts_with = "unregistered")]
    sealed: Option<u64>,
    /// The program's `argv[0]` (by default PROGRAM as given).
    #[arg(long, value_name = "NAME")]
    argv0: Option<OsString>,
    /// A static x86-64 program, usually rewritten (`syscall` -> `int $0x81`).
    program: PathBuf,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

const EXIT_LAUNCHER: u8 = 125;
const EXIT_CANNOT_LOAD: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

/// Stack size for the program: the stack rlimit, within these bounds.
const MIN_STACK: u64 = 1 << 20;
const MAX_STACK: u64 = 64 << 20;
const DEFAULT_STACK: u64 = 8 << 20;

fn parse_file_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("a file id is 16 hex digits: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let fail = |code: u8, err: anyhow::Error| {
        eprintln!("circ-tsys-launch: {err:#}");
        ExitCode::from(code)
    };
    let read = match args.sealed {
        Some(file_id) => read_sealed(&args, file_id),
        None => std::fs::read(&args.program).map_err(|e| (e, None)),
    };
    let file = match read {
        Ok(file) => file,
        Err((e, _)) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                EXIT_NOT_FOUND,
                anyhow::anyhow!("{}: no such file", args.program.display()),
            )
        }
        Err((e, code)) => {
            return fail(
                code.unwrap_or(EXIT_CANNOT_LOAD),
                anyhow::Error::new(e).context(format!("cannot read {}", args.program.display())),
            )
        }
    };
    let plan = match circ_tsys_rewrite::load_image(&file)
        .map_err(anyhow::Error::new)
        .and_then(|image| plan::plan(&image).map_err(anyhow::Error::new))
    {
        Ok(plan) => plan,
        Err(e) => {
            return fail(
                EXIT_CANNOT_LOAD,
                e.context(format!("cannot load {}", args.program.display())),
            )
        }
    };
    if !args.unregistered && args.sealed.is_none() {
        let token = match read_token(&args) {
            Ok(token) => token,
            Err(e) => return fail(EXIT_LAUNCHER, e),
        };
        if let Err(e) = sys::register(&token).and_then(|()| sys::check_forwarded()) {
            return fail(EXIT_LAUNCHER, e.into());
        }
    }
    match start(&args, &plan, file) {
        Ok(never) => match never {},
        Err(e) => fail(EXIT_CANNOT_LOAD, e),
    }
}

/// `--sealed`: registers first (the key comes with the token), then reads
/// the program through Xen. The error carries the exit status when it is not
/// "cannot load".
fn read_sealed(args: &Args, file_id: u64) -> Result<Vec<u8>, (std::io::Error, Option<u8>)> {
    let launcher =
        |e: anyhow::Error| (std::io::Error::other(format!("{e:#}")), Some(EXIT_LAUNCHER));
    let file = std::fs::File::open(&args.program).map_err(|e| (e, None))?;
    let token = read_token(args).map_err(launcher)?;
    sys::register(&token)
        .and_then(|()| sys::check_forwarded())
        .map_err(|e| launcher(e.into()))?;
    sys::read_sealed(&file, file_id)
        .map_err(|e| (std::io::Error::other(format!("sealed read: {e}")), None))
}

/// The token from `--token-file`, or from xenstore (removed once read, so
/// nothing else in the guest finds it there afterwards).
fn read_token(args: &Args) -> anyhow::Result<Token> {
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token from {}", path.display()))?;
        return parse_token(&text).with_context(|| format!("bad token in {}", path.display()));
    }
    let mut xenbus = Xenbus::open().context("cannot open the guest's xenstore device")?;
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    let text = loop {
        if let Some(text) = xenbus.read(TOKEN_NODE)? {
            break text;
        }
        if Instant::now() >= deadline {
            bail!(
                "no token in xenstore {TOKEN_NODE} after {} s (dom0: circ tsys authorise DOMID)",
                args.wait
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    xenbus
        .remove(TOKEN_NODE)
        .with_context(|| format!("cannot remove {TOKEN_NODE}"))?;
    parse_token(&text).with_context(|| format!("bad token in {TOKEN_NODE}"))
}

/// Maps the program and its stack and jumps; returns only on error.
fn start(
    args: &Args,
    plan: &plan::LoadPlan,
    file: Vec<u8>,
) -> anyhow::Result<std::convert::Infallible> {
    let argv0 = args
        .argv0
        .clone()
        .unwrap_or_else(|| args.program.clone().into());
    let spec = StackSpec {
        args: std::iter::once(&argv0)
            .chain(&args.args)
            .map(|a| a.as_bytes().to_vec())
            .collect(),
        env: std::env::vars_os()
            .map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat())
            .collect(),
        execfn: args.program.as_os_str().as_bytes().to_vec(),
        platform: b"x86_64".to_vec(),
        random: sys::random16()?,
        aux: auxv(plan),
    };
    let top = sys::map_stack(stack_size())?;
    let image = stack::build(top, &spec)?;
    // SAFETY: `image` was built for the top of the fresh stack mapping.
    unsafe { sys::place_stack(&image) };
    sys::map_image(plan, &file)?;
    let (entry, rsp) = (plan.entry, image.rsp);
    drop((file, spec, image));
    sys::reset_signals()?;
    // SAFETY: the program is mapped and its stack placed; the launcher holds
    // no open file (the token's xenstore connection closed in `read_token`)
    // and its remaining heap is only lost, never used.
    unsafe { sys::jump(entry, rsp) }
}

/// The auxiliary vector: the program's own entries, the rest as the kernel
/// gave them to the launcher.
fn auxv(plan: &plan::LoadPlan) -> Vec<(u64, u64)> {
    let mut aux = Vec::new();
    for kind in [stack::AT_SYSINFO_EHDR, stack::AT_MINSIGSTKSZ] {
        let value = sys::auxv(kind);
        if value != 0 {
            aux.push((kind, value));
        }
    }
    for kind in [stack::AT_HWCAP, stack::AT_PAGESZ, stack::AT_CLKTCK] {
        aux.push((kind, sys::auxv(kind)));
    }
    aux.extend([
        (stack::AT_PHDR, plan.phdr),
        (stack::AT_PHENT, 56),
        (stack::AT_PHNUM, u64::from(plan.phnum)),
        (stack::AT_BASE, 0),
        (stack::AT_FLAGS, 0),
        (stack::AT_ENTRY, plan.entry),
    ]);
    for kind in [
        stack::AT_UID,
        stack::AT_EUID,
        stack::AT_GID,
        stack::AT_EGID,
        stack::AT_SECURE,
        stack::AT_HWCAP2,
    ] {
        aux.push((kind, sys::auxv(kind)));
    }
    aux
}

fn stack_size() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: writes one rlimit.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return DEFAULT_STACK;
    }
    limit.rlim_cur.clamp(MIN_STACK, MAX_STACK)
}
