//! The guest-side launcher of trusted system calls (issue 10, docs/tsys.md
//! "Launcher"): starts a static program, rewritten by `circ tsys rewrite`
//! (`syscall` -> `int $0x81`), as a trusted process of a 64-bit PV guest.
//!
//! Xen names a trusted process by its address space (the MFN of its user
//! L4), and `execve` makes a new one, so trust cannot pass through exec.
//! The launcher therefore does a *userland exec*:
//! 1. reads the one-time token dom0 armed (`circ tsys authorise` writes it
//!    to the guest's xenstore `data/tsys/token`; the launcher removes it);
//! 2. registers its own address space with Xen and checks the registration
//!    with a call Xen forwards ([`sys::register`], [`sys::trusted_getpid`]);
//! 3. maps the program's `PT_LOAD` segments at their addresses in its own
//!    address space ([`plan`], [`sys::map_image`]), builds a fresh stack
//!    with argv, envp and auxv as the kernel would ([`stack`]), puts the
//!    signal dispositions back to what `execve` gives, and jumps to the
//!    program's entry point.
//!
//! The program then runs in the registered address space, unchanged. The
//! launcher's own image (static-pie, loaded high by the kernel) stays
//! mapped but is never run again. What differs from a kernel exec:
//! `/proc/PID/exe` and `comm` still name the launcher, the program break
//! (`brk`) continues the launcher's, and the kernel did not check the
//! program's permissions (the launcher reads it like a file).
//!
//! Only what the rewriter accepts is loaded (a static x86-64 `ET_EXEC`, see
//! [`circ_tsys_rewrite::load_image`]); anything else is refused before Xen
//! is asked.

pub mod plan;
pub mod stack;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod sys;
pub mod token;

pub use plan::{LoadPlan, PlanError};
pub use stack::{StackError, StackImage, StackSpec};
pub use token::{parse_token, Token, TokenError};

/// `int $0x81` with this in `rax` asks Xen to register the caller (patch
/// 0002): `'tsys' << 32 | 1`, far above any system-call number.
pub const TSYS_OP_REGISTER: u64 = 0x7473_7973_0000_0001;

/// The guest's xenstore node `circ tsys authorise` writes the token to,
/// relative to the guest's own directory.
pub const TOKEN_NODE: &str = "data/tsys/token";

/// Page size of x86-64 user mappings.
pub const PAGE_SIZE: u64 = 4096;
