//! Rewrites each `syscall` instruction (`0f 05`) of a static x86-64 ELF
//! executable into `int $0x81` (`cd 81`), the trap a trusted process uses
//! (issue 10, docs/tsys.md "Rewriter"). Both are two bytes, so nothing moves.
//!
//! Only bytes that a real x86 decoder (iced-x86) places at an instruction
//! boundary change. The rewriter reports what it changed and refuses what it
//! cannot prove safe.
//!
//! # What it accepts
//! An ELF64, little-endian, `EM_X86_64`, `ET_EXEC` file without `PT_INTERP`
//! or `PT_DYNAMIC`, whose headers, segments and sections lie inside the
//! file. Its `PT_LOAD` segments must not overlap in memory, an executable
//! segment's file bytes must not be loaded twice, and every code section
//! must sit inside an executable segment at the address that segment gives
//! it. Anything else is a [`RewriteError`] naming the reason.
//!
//! # How it decodes (the rules)
//! 1. **Code.** The code is the allocated `SHF_EXECINSTR` sections. A file
//!    without section headers falls back to the executable `PT_LOAD`
//!    segments.
//! 2. **Anchors.** Decoding starts at known instruction starts: the start of
//!    each code section, the entry point, and each `STT_FUNC` symbol of
//!    `.symtab` when the file has one.
//! 3. **Linear sweep.** From each anchor the decoder goes forward to the
//!    next anchor. A stretch is *proven* if it decodes without an invalid
//!    instruction and its last instruction ends exactly on the next anchor
//!    (or the section's end). Otherwise the whole stretch is *unproven*:
//!    the sweep went out of step with the symbols, or hit data.
//! 4. **Branches into instructions.** Each direct branch, call or jump of a
//!    proven stretch whose target lands inside a decoded instruction (real
//!    code does it, e.g. glibc jumping past a `lock` prefix) is decoded
//!    again from its target until it falls back onto a decoded boundary
//!    (at most 64 instructions). A `syscall` on that path, or an
//!    instruction on it that covers the bytes of a site, makes the site
//!    unsafe. A path that does not fall back in step makes every `0f 05`
//!    it crossed unsafe.
//! 5. **Sites.** Every `0f 05` byte pair in an executable segment is a site:
//!    - at a decoded `syscall` boundary in a proven stretch: **rewritten**;
//!    - inside another decoded instruction (an immediate, a displacement,
//!      `call rel32` bytes), not reached by rule 4: **embedded**, left alone;
//!    - in an unproven stretch, outside every code section, across a
//!      section boundary, in a prefixed `syscall`, or made unsafe by rule 4:
//!      **unsafe**.
//!
//!    `int $0x80` and `sysenter` at decoded boundaries are unsafe too (system
//!    calls that would bypass the trap), and `cd 81` at a decoded boundary is
//!    reported as **already rewritten**, so a second run changes nothing.
//! 6. **Strict or lenient.** [`Mode::Strict`] (the default) refuses the whole
//!    file if any site is unsafe ([`RewriteError::Unsafe`], carrying the
//!    report). [`Mode::Lenient`] rewrites the safe sites and reports the
//!    unsafe ones, untouched.
//!
//! # What linear sweep cannot prove
//! It trusts that the code sections hold only instructions: data placed in
//! `.text` that happens to decode as `syscall` would be rewritten (GCC and
//! Clang put no data in x86-64 `.text`; hand-written assembly may). It sees
//! direct branches only: an indirect jump or a return into the middle of an
//! instruction (a computed target, a hostile ROP chain) is invisible to it.
//! A missed `syscall` is not silently harmless either: it would reach the
//! guest kernel without the trap, so every `0f 05` pair it cannot explain is
//! reported.
#![forbid(unsafe_code)]

mod elf;
mod sweep;

use serde::{Deserialize, Serialize};

pub use sweep::MAX_PATH_INSTRUCTIONS;

/// `syscall`.
pub const SYSCALL: [u8; 2] = [0x0f, 0x05];
/// `int $0x81`.
pub const INT_0X81: [u8; 2] = [0xcd, 0x81];

/// What to do with a site the rewriter cannot prove safe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse the whole file.
    #[default]
    Strict,
    /// Rewrite the safe sites, leave the unsafe ones as they are, report them.
    Lenient,
}

/// Options of [`rewrite`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriteOptions {
    pub mode: Mode,
}

/// The rewritten file and what was done to it.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub bytes: Vec<u8>,
    pub report: Report,
}

/// What the rewriter found, site by site. Serialisable for `circ --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub mode: Mode,
    /// Whether a `.symtab` gave function starts (anchors) to the sweep.
    pub symbols: bool,
    /// The code decoded: one entry per code section (or executable segment).
    pub code: Vec<CodeRegion>,
    /// Every site, in file order.
    pub sites: Vec<Site>,
    pub counts: Counts,
}

/// One stretch of code the sweep decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRegion {
    /// The section name, or `None` for a whole segment.
    pub section: Option<String>,
    /// Index of the program header of the segment holding it.
    pub segment: usize,
    pub file_offset: u64,
    pub vaddr: u64,
    pub size: u64,
    pub anchors: usize,
    pub instructions: u64,
    /// Bytes in stretches the sweep could not prove (rule 3).
    pub unproven_bytes: u64,
}

/// A `0f 05` pair, or another system-call instruction, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub file_offset: u64,
    pub vaddr: u64,
    /// The code section holding it, if any.
    pub section: Option<String>,
    /// Index of the program header of the executable segment holding it.
    pub segment: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What the rewriter did with a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `syscall` became `int $0x81`.
    Rewritten,
    /// A safe `syscall` left alone because the file was refused (strict
    /// mode, another site unsafe): it would have been rewritten.
    Rewritable,
    /// `int $0x81` already at a decoded boundary.
    AlreadyRewritten,
    /// Bytes `0f 05` inside the decoded instruction at `instruction`: not a
    /// system call, left alone.
    Embedded { instruction: u64 },
    /// Left alone: the rewriter cannot prove it safe.
    Unsafe { reason: UnsafeReason },
}

/// Why a site is unsafe (the rules in the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnsafeReason {
    /// In a stretch the sweep could not prove (rule 3), for the reason given.
    Unproven { why: String },
    /// A direct branch at `from` lands inside an instruction, and decoding
    /// from there finds a system call here (rule 4).
    BranchIntoInstruction { from: u64 },
    /// Decoding from a branch target (the branch at `from`) covers these
    /// bytes with a different instruction (rule 4).
    OverlappedByBranchPath { from: u64 },
    /// Decoding from a branch target (the branch at `from`) did not fall
    /// back in step within the limit, and crossed these bytes (rule 4).
    UnresolvedBranchPath { from: u64 },
    /// `syscall` with prefixes: more than two bytes.
    PrefixedSyscall,
    /// Another system-call instruction (`int $0x80`, `sysenter`), which the
    /// trap would not catch.
    OtherSystemCall { instruction: String },
    /// In an executable segment but outside every code section (or across
    /// the boundary of two).
    OutsideCode,
}

/// How many sites of each outcome, and how much was decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub rewritten: u64,
    pub rewritable: u64,
    pub already_rewritten: u64,
    pub embedded: u64,
    pub unsafe_sites: u64,
    pub instructions: u64,
    pub code_bytes: u64,
    pub unproven_bytes: u64,
    /// Direct branches whose target lands inside a decoded instruction.
    pub branches_into_instructions: u64,
}

/// Whether the caller may retry or the input is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not a file this rewriter supports (wrong class, machine, type, dynamic).
    Unsupported,
    /// Broken or hostile headers.
    Malformed,
    /// A supported file with sites the rewriter cannot prove safe.
    Unsafe,
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("truncated: {what} lies outside the file")]
    Truncated { what: String },
    #[error("unsupported ELF: {why}")]
    Unsupported { why: String },
    #[error("dynamically linked ({what} present): only static executables can be rewritten")]
    Dynamic { what: &'static str },
    #[error("malformed ELF: {what}")]
    Malformed { what: String },
    #[error("program headers {first} and {second} overlap (in memory, or load the same code bytes twice)")]
    OverlappingSegments { first: usize, second: usize },
    #[error("no executable segment with file bytes")]
    NoCode,
    #[error("{count} site(s) cannot be proven safe, first at {first_vaddr:#x}: {first_reason}; nothing rewritten (strict mode)")]
    Unsafe {
        count: u64,
        first_vaddr: u64,
        first_reason: String,
        report: Box<Report>,
    },
}

impl RewriteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RewriteError::Unsupported { .. } | RewriteError::Dynamic { .. } => {
                ErrorKind::Unsupported
            }
            RewriteError::Unsafe { .. } => ErrorKind::Unsafe,
            RewriteError::NotElf
            | RewriteError::Truncated { .. }
            | RewriteError::Malformed { .. }
            | RewriteError::OverlappingSegments { .. }
            | RewriteError::NoCode => ErrorKind::Malformed,
        }
    }

    /// The report of a file refused for unsafe sites.
    pub fn report(&self) -> Option<&Report> {
        match self {
            RewriteError::Unsafe { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// What a loader needs to map a program the rewriter accepts: the
/// `launcher` of docs/tsys.md loads a rewritten program into its own address
/// space with this, so it runs exactly the files this crate can check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadImage {
    pub entry: u64,
    /// File offset and count of the program headers (`AT_PHDR`, `AT_PHNUM`).
    pub phoff: u64,
    pub phnum: u16,
    /// The `PT_LOAD` segments, in program-header order, none overlapping.
    pub segments: Vec<LoadSegment>,
}

/// One `PT_LOAD` segment: `filesz` bytes from `offset` at `vaddr`, then
/// zeros up to `memsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

/// The load plan of a static x86-64 `ET_EXEC`, with the same checks as
/// [`rewrite`] (every segment inside the file, none overlapping, no
/// dynamic loader).
pub fn load_image(elf: &[u8]) -> Result<LoadImage, RewriteError> {
    let parsed = elf::Elf::parse(elf)?;
    Ok(LoadImage {
        entry: parsed.entry,
        phoff: parsed.phoff,
        phnum: parsed.phnum,
        segments: parsed
            .segments
            .iter()
            .map(|s| LoadSegment {
                vaddr: s.vaddr,
                offset: s.offset,
                filesz: s.filesz,
                memsz: s.memsz,
                read: s.flags & 4 != 0,
                write: s.flags & 2 != 0,
                execute: s.flags & 1 != 0,
            })
            .collect(),
    })
}

/// Decodes `elf` and reports its sites without changing anything. In strict
/// mode a report with unsafe sites is still returned: only [`rewrite`]
/// refuses.
pub fn analyse(elf: &[u8], options: &RewriteOptions) -> Result<Report, RewriteError> {
    let parsed = elf::Elf::parse(elf)?;
    Ok(sweep::analyse(elf, &parsed, options.mode))
}

/// Rewrites every safe `syscall` of `elf` into `int $0x81` (see the crate
/// docs for the rules). In strict mode any unsafe site refuses the file.
pub fn rewrite(elf: &[u8], options: &RewriteOptions) -> Result<Rewritten, RewriteError> {
    let mut report = analyse(elf, options)?;
    if options.mode == Mode::Strict && report.counts.unsafe_sites > 0 {
        let first = report
            .sites
            .iter()
            .find_map(|s| match &s.outcome {
                Outcome::Unsafe { reason } => Some((s.vaddr, reason.to_string())),
                _ => None,
            })
            .unwrap_or_default();
        return Err(RewriteError::Unsafe {
            count: report.counts.unsafe_sites,
            first_vaddr: first.0,
            first_reason: first.1,
            report: Box::new(report),
        });
    }
    let mut bytes = elf.to_vec();
    for site in &mut report.sites {
        if site.outcome == Outcome::Rewritable {
            // In range: the sweep found these two bytes in the file.
            let at = site.file_offset as usize;
            if let Some(pair) = bytes.get_mut(at..at + 2) {
                pair.copy_from_slice(&INT_0X81);
                site.outcome = Outcome::Rewritten;
            }
        }
    }
    report.counts.rewritten = report.counts.rewritable;
    report.counts.rewritable = 0;
    Ok(Rewritten { bytes, report })
}

impl std::fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnsafeReason::Unproven { why } => {
                write!(f, "in a stretch the sweep cannot prove: {why}")
            }
            UnsafeReason::BranchIntoInstruction { from } => write!(
                f,
                "the branch at {from:#x} lands inside an instruction and reaches a system call here"
            ),
            UnsafeReason::OverlappedByBranchPath { from } => write!(
                f,
                "the path from the branch at {from:#x} decodes these bytes as another instruction"
            ),
            UnsafeReason::UnresolvedBranchPath { from } => write!(
                f,
                "the path from the branch at {from:#x} does not fall back onto decoded boundaries"
            ),
            UnsafeReason::PrefixedSyscall => write!(f, "syscall with prefixes"),
            UnsafeReason::OtherSystemCall { instruction } => {
                write!(f, "{instruction} would bypass the int $0x81 trap")
            }
            UnsafeReason::OutsideCode => write!(f, "0f 05 outside the code sections"),
        }
    }
}

#[cfg(test)]
mod tests;
