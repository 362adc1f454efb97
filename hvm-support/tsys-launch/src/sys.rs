//! The launcher's unsafe part, all of it: the `int $0x81` calls (the
//! registration, its check, and the sealed read of a deployed program), the
//! mappings of the program and its stack, the signal dispositions, and the
//! jump to the program's entry point.

use std::arch::asm;
use std::ffi::c_void;
use std::io;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::plan::{LoadPlan, Protection};
use crate::stack::StackImage;
use crate::{Token, TSYS_OP_REGISTER};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error(
        "Xen refused the registration: the guest kernel got the #GP of an unregistered int $0x81 \
         (stock Xen, a domain not authorised, or a token that is wrong or used up)"
    )]
    Refused,
    #[error("Xen answered the registration with {0:#x}, not 0")]
    Unexpected(u64),
    #[error(
        "getpid through int $0x81 returned {got} but getpid() is {want}: the call was not \
         forwarded as a registered process's"
    )]
    NotForwarded { got: i64, want: i64 },
    #[error(
        "this registration has no key: dom0 attaches one with the token (`circ tsys rollin`, \
         xen-patches/0004)"
    )]
    NoKey,
    #[error("a sealed program is a whole number of 4144-byte CTS1 blocks, not {0} bytes")]
    NotSealed(u64),
    #[error(
        "the program's pages {start:#x}..{end:#x} are already mapped (by the launcher itself?)"
    )]
    Taken { start: u64, end: u64 },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn os(what: &'static str) -> SysError {
    SysError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

/// Set by [`on_refused`] when the guest kernel delivered the #GP of a
/// refused registration as SIGSEGV.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// SIGSEGV while registering. Xen refusing the registration leaves the
/// `int $0x81` to the guest kernel, which sends SIGSEGV with `rip` at the
/// instruction and `rax` still [`TSYS_OP_REGISTER`]: that case resumes
/// after the instruction with `rax = u64::MAX`. Any other SIGSEGV gets the
/// default action back and happens again, killing the launcher as usual.
extern "C" fn on_refused(_signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: an SA_SIGINFO handler's third argument is the interrupted
    // context, a `ucontext_t` the kernel wrote on this thread's stack.
    let context = unsafe { &mut *context.cast::<libc::ucontext_t>() };
    let regs = &mut context.uc_mcontext.gregs;
    let rip = regs[libc::REG_RIP as usize] as u64;
    let ours = regs[libc::REG_RAX as usize] as u64 == TSYS_OP_REGISTER
        // SAFETY: only `register` puts that value in rax, at its own
        // `int $0x81`: rip points into this program's code.
        && unsafe { ptr::read_volatile(rip as *const [u8; 2]) } == [0xcd, 0x81];
    if ours {
        REFUSED.store(true, Ordering::SeqCst);
        regs[libc::REG_RIP as usize] = (rip + 2) as i64;
        regs[libc::REG_RAX as usize] = -1;
    } else {
        // SAFETY: SIG_DFL is a valid disposition; async-signal-safe.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    }
}

/// Registers this address space with Xen, using up `token`.
pub fn register(token: &Token) -> Result<(), SysError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_refused as *const () as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialised sigaction structs.
    if unsafe { libc::sigaction(libc::SIGSEGV, &action, &mut old) } != 0 {
        return Err(os("cannot catch SIGSEGV for the registration"));
    }
    REFUSED.store(false, Ordering::SeqCst);
    let [w0, w1, w2, w3] = token.0;
    let rax: u64;
    // SAFETY: patch 0002's registration ABI: Xen answers in rax and leaves
    // every other register as it was; without the patch the kernel's
    // SIGSEGV goes to `on_refused`, which resumes after the instruction.
    // Like `syscall`, rcx and r11 may change.
    unsafe {
        asm!(
            "int 0x81",
            inlateout("rax") TSYS_OP_REGISTER => rax,
            in("rdi") w0,
            in("rsi") w1,
            in("rdx") w2,
            in("r10") w3,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // SAFETY: puts back the disposition read above.
    unsafe { libc::sigaction(libc::SIGSEGV, &old, ptr::null_mut()) };
    if REFUSED.load(Ordering::SeqCst) {
        return Err(SysError::Refused);
    }
    if rax != 0 {
        return Err(SysError::Unexpected(rax));
    }
    Ok(())
}

/// xen-patches/0004: seal an fd (`rdi` fd, `rsi` file id, `rdx` 1/0) and
/// declare the exchange window (`rdi` start, `rsi` length).
const TSYS_OP_SEAL: u64 = 0x7473_7973_0000_0003;
const TSYS_OP_WINDOW: u64 = 0x7473_7973_0000_0004;
/// CTS1: a stored block and the plaintext it holds; Xen moves at most 16
/// blocks per call.
const CTS1_STORED: u64 = 4144;
const CTS1_BLOCK: u64 = 4096;
const SEAL_BLOCKS: u64 = 16;
/// Linux's ENOKEY: sealing without a key from dom0.
const ENOKEY: i64 = 126;

/// A system call (or a Xen op) through `int $0x81` with up to four
/// arguments; the raw result (-errno on failure).
///
/// # Safety
/// The arguments must be valid for the call: any pointer among them must
/// name memory the call may read or write, alive for the call.
unsafe fn int81(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller's; the system-call ABI: rax in and out, rcx and r11
    // clobbered, memory the arguments name may change.
    unsafe {
        asm!(
            "int 0x81",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

fn sealed_error(what: &'static str, ret: i64) -> SysError {
    if ret == -ENOKEY {
        return SysError::NoKey;
    }
    SysError::Os {
        what,
        source: io::Error::from_raw_os_error(i32::try_from(-ret).unwrap_or(libc::EIO)),
    }
}

/// Reads a CTS1 file (`circ tsys deploy`) through Xen's sealed I/O
/// (xen-patches/0004): this registered process must hold the key dom0
/// attached to its token (`circ tsys rollin`). Xen opens every block into
/// the returned buffer; the guest kernel only ever moves ciphertext, so the
/// plaintext exists in this address space alone.
pub fn read_sealed(file: &std::fs::File, file_id: u64) -> Result<Vec<u8>, SysError> {
    use std::os::fd::AsRawFd as _;

    let stored = file
        .metadata()
        .map_err(|source| SysError::Os {
            what: "cannot stat the sealed program",
            source,
        })?
        .len();
    if stored == 0 || stored % CTS1_STORED != 0 {
        return Err(SysError::NotSealed(stored));
    }
    let plain_max = stored / CTS1_STORED * CTS1_BLOCK;
    // Both written through, so every page is present: Xen copies the
    // plaintext in at the call's return and cannot fault a page in.
    let window = vec![0xa5u8; (SEAL_BLOCKS * CTS1_STORED) as usize];
    let mut plain = vec![0xa5u8; plain_max as usize];
    let fd = file.as_raw_fd() as u64;
    // SAFETY: the window is a live heap buffer of that length; it stays
    // alive and unmoved until the window is withdrawn below, and the kernel
    // and Xen write it only during the sealed calls in between.
    let ret = unsafe {
        int81(
            TSYS_OP_WINDOW,
            window.as_ptr() as u64,
            window.len() as u64,
            0,
            0,
        )
    };
    if ret != 0 {
        return Err(sealed_error("Xen refused the exchange window", ret));
    }
    // SAFETY: no pointer: an fd and a file id.
    let ret = unsafe { int81(TSYS_OP_SEAL, fd, file_id, 1, 0) };
    let mut result = if ret != 0 {
        Err(sealed_error("Xen refused to seal the program's fd", ret))
    } else {
        Ok(0u64)
    };
    while let Ok(done) = result {
        if done >= plain_max {
            break;
        }
        let want = (plain_max - done).min(SEAL_BLOCKS * CTS1_BLOCK);
        // SAFETY: pread64 into plain[done..done + want], inside the buffer.
        let ret = unsafe {
            int81(
                libc::SYS_pread64 as u64,
                fd,
                plain.as_mut_ptr() as u64 + done,
                want,
                done,
            )
        };
        result = match ret {
            r if r < 0 => Err(sealed_error("Xen's sealed read of the program failed", r)),
            0 => break,
            r => Ok(done + r as u64),
        };
        if matches!(result, Ok(d) if d - done < want) {
            break;
        }
    }
    // SAFETY: no pointers: unseal the fd, withdraw the window.
    unsafe {
        int81(TSYS_OP_SEAL, fd, 0, 0, 0);
        int81(TSYS_OP_WINDOW, 0, 0, 0, 0);
    }
    let len = result?;
    plain.truncate(len as usize);
    Ok(plain)
}

/// Checks the registration holds: `getpid` through `int $0x81`, which only
/// a registered process gets forwarded (any other gets SIGSEGV).
pub fn check_forwarded() -> Result<(), SysError> {
    let got: i64;
    // SAFETY: the system-call ABI through `int $0x81`; getpid has no
    // arguments and changes no memory.
    unsafe {
        asm!(
            "int 0x81",
            inlateout("rax") libc::SYS_getpid => got,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // SAFETY: getpid has no preconditions.
    let want = i64::from(unsafe { libc::getpid() });
    if got != want {
        return Err(SysError::NotForwarded { got, want });
    }
    Ok(())
}

fn prot_bits(p: Protection) -> libc::c_int {
    let mut bits = libc::PROT_NONE;
    if p.read {
        bits |= libc::PROT_READ;
    }
    if p.write {
        bits |= libc::PROT_WRITE;
    }
    if p.execute {
        bits |= libc::PROT_EXEC;
    }
    bits
}

/// Maps the program as `plan` says, with the bytes of `file`. Nothing that
/// is already mapped is replaced (`MAP_FIXED_NOREPLACE`).
pub fn map_image(plan: &LoadPlan, file: &[u8]) -> Result<(), SysError> {
    for m in &plan.mappings {
        let taken = SysError::Taken {
            start: m.start,
            end: m.start + m.len,
        };
        // SAFETY: a new anonymous mapping at an address nothing else uses
        // (NOREPLACE), so no Rust object is affected.
        let at = unsafe {
            libc::mmap(
                m.start as *mut c_void,
                m.len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
                return Err(taken);
            }
            return Err(os("cannot map the program"));
        }
        if at as u64 != m.start {
            // A kernel older than 4.17 took NOREPLACE as a hint.
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(at, m.len as usize) };
            return Err(taken);
        }
    }
    for c in &plan.copies {
        let bytes = usize::try_from(c.offset)
            .ok()
            .and_then(|start| file.get(start..start.checked_add(c.len as usize)?))
            .ok_or_else(|| SysError::Os {
                what: "segment outside the file",
                source: io::ErrorKind::InvalidData.into(),
            })?;
        // SAFETY: the plan's mappings cover every copy (plan::plan) and are
        // writable now; `bytes` is in the file buffer, which they do not
        // overlap.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), c.vaddr as *mut u8, bytes.len()) };
    }
    for m in &plan.mappings {
        // SAFETY: our own mappings from above.
        let r = unsafe {
            libc::mprotect(
                m.start as *mut c_void,
                m.len as usize,
                prot_bits(m.protection),
            )
        };
        if r != 0 {
            return Err(os("cannot set the program's page protections"));
        }
    }
    Ok(())
}

/// A fresh stack of `size` bytes; returns its top.
pub fn map_stack(size: u64) -> Result<u64, SysError> {
    // SAFETY: a new anonymous mapping where the kernel chooses.
    let at = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(os("cannot map the program's stack"));
    }
    Ok(at as u64 + size)
}

/// Copies `image` to its place on a stack from [`map_stack`].
///
/// # Safety
/// `[image.rsp, image.rsp + image.bytes.len())` must lie in a writable
/// mapping no Rust object uses.
pub unsafe fn place_stack(image: &StackImage) {
    // SAFETY: the caller's promise.
    unsafe {
        ptr::copy_nonoverlapping(
            image.bytes.as_ptr(),
            image.rsp as *mut u8,
            image.bytes.len(),
        )
    };
}

/// Puts signals back to what `execve` leaves: handled ones to the default
/// (Rust's runtime handles SIGSEGV and SIGBUS), SIGPIPE to the default
/// (Rust ignores it), no alternate signal stack.
pub fn reset_signals() -> Result<(), SysError> {
    for signal in 1..libc::SIGRTMIN() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: as in `register`.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: reads the disposition only.
        if unsafe { libc::sigaction(signal, ptr::null(), &mut old) } != 0 {
            continue;
        }
        let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if handled || signal == libc::SIGPIPE {
            // SAFETY: SIG_DFL is always a valid disposition.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    let disable = libc::stack_t {
        ss_sp: ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    };
    // SAFETY: disables the alternate stack; nothing runs on it now.
    if unsafe { libc::sigaltstack(&disable, ptr::null_mut()) } != 0 {
        return Err(os("cannot disable the alternate signal stack"));
    }
    Ok(())
}

/// 16 bytes from the kernel's random pool, for `AT_RANDOM`.
pub fn random16() -> Result<[u8; 16], SysError> {
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        return Err(os("cannot read 16 random bytes"));
    }
    Ok(bytes)
}

/// The launcher's own auxv value of `kind` (0 when absent).
pub fn auxv(kind: u64) -> u64 {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(kind) }
}

/// Starts the program: `rsp` at its stack, `rdx` 0 (no function for the
/// program to register with `atexit`), and a jump to `entry`.
///
/// # Safety
/// The program must be mapped ([`map_image`]) and its stack placed
/// ([`place_stack`]). Nothing of the launcher runs again: its destructors
/// never run, so everything it holds must be closed or freed first.
pub unsafe fn jump(entry: u64, rsp: u64) -> ! {
    // SAFETY: the caller's promise; the ABI of a process's entry point.
    unsafe {
        asm!(
            "mov rsp, rdi",
            "xor ebp, ebp",
            "xor edx, edx",
            "jmp rsi",
            in("rdi") rsp,
            in("rsi") entry,
            options(noreturn),
        )
    }
}
