//! The linear sweep and the site classification (rules 1-5 of the crate
//! docs).

use std::collections::BTreeMap;

use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Instruction, OpKind};

use crate::elf::Elf;
use crate::{CodeRegion, Counts, Mode, Outcome, Report, Site, UnsafeReason, INT_0X81, SYSCALL};

/// How far rule 4 follows a path that starts inside an instruction before
/// it gives up waiting for it to fall back onto decoded boundaries.
pub const MAX_PATH_INSTRUCTIONS: usize = 64;

/// What a decoded instruction start is, when it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    Syscall,
    Int81,
    PrefixedSyscall,
    Other(&'static str),
}

fn special(ins: &Instruction, bytes: &[u8]) -> Option<Special> {
    match ins.code() {
        Code::Syscall if ins.len() == 2 => Some(Special::Syscall),
        Code::Syscall => Some(Special::PrefixedSyscall),
        Code::Int_imm8 if bytes == INT_0X81 => Some(Special::Int81),
        Code::Int_imm8 if bytes.get(..2) == Some(&[0xcd, 0x80]) => {
            Some(Special::Other("int $0x80"))
        }
        Code::Sysenter => Some(Special::Other("sysenter")),
        _ => None,
    }
}

/// One code section (or executable segment) and what the sweep learnt.
struct Region<'a> {
    section: Option<String>,
    segment: usize,
    file_offset: u64,
    vaddr: u64,
    bytes: &'a [u8],
    anchors: Vec<usize>,
    /// Length of the decoded instruction starting at each byte, 0 if none.
    len: Vec<u8>,
    specials: BTreeMap<usize, Special>,
    /// Unproven stretches `[start, end)` and why.
    unproven: Vec<(usize, usize, String)>,
    /// Sites made unsafe by rule 4, by offset.
    path_unsafe: BTreeMap<usize, UnsafeReason>,
    instructions: u64,
}

impl Region<'_> {
    fn unproven_at(&self, off: usize) -> Option<&str> {
        self.unproven
            .iter()
            .find(|(s, e, _)| (*s..*e).contains(&off))
            .map(|(_, _, why)| why.as_str())
    }

    /// The decoded instruction that contains `off` without starting there.
    fn containing(&self, off: usize) -> Option<usize> {
        (off.saturating_sub(15)..off)
            .rev()
            .find(|&s| self.len[s] != 0 && s + usize::from(self.len[s]) > off)
    }
}

pub(crate) fn analyse(file: &[u8], elf: &Elf, mode: Mode) -> Report {
    let mut regions = regions(file, elf);
    let mut branches = Vec::new();
    for r in &mut regions {
        sweep(r, &mut branches);
    }
    let mut into_instructions = 0;
    for (from, target) in branches {
        if follow_branch(&mut regions, from, target) {
            into_instructions += 1;
        }
    }
    let mut report = classify(file, elf, &regions, mode);
    report.counts.branches_into_instructions = into_instructions;
    report
}

/// Rule 1 and 2: the code regions and their anchors.
fn regions<'a>(file: &'a [u8], elf: &Elf) -> Vec<Region<'a>> {
    let segment_of = |offset: u64| {
        elf.segments
            .iter()
            .find(|s| s.executable && offset >= s.offset && offset < s.offset + s.filesz)
            .map_or(0, |s| s.index)
    };
    let mut out: Vec<Region<'a>> = Vec::new();
    let code: Vec<_> = elf.sections.iter().filter(|s| s.is_code()).collect();
    // Offsets and sizes were checked against the file by the parser.
    if code.is_empty() {
        for seg in elf.segments.iter().filter(|s| s.executable && s.filesz > 0) {
            let start = seg.offset as usize;
            out.push(Region::new(
                None,
                seg.index,
                seg.offset,
                seg.vaddr,
                &file[start..start + seg.filesz as usize],
            ));
        }
    } else {
        for s in code {
            let start = s.offset as usize;
            let mut r = Region::new(
                Some(s.name.clone()),
                segment_of(s.offset),
                s.offset,
                s.addr,
                &file[start..start + s.size as usize],
            );
            if let Some(functions) = &elf.functions {
                r.anchors.extend(
                    functions
                        .iter()
                        .filter(|f| f.section == s.index)
                        .map(|f| (f.value - s.addr) as usize),
                );
            }
            out.push(r);
        }
    }
    for r in &mut out {
        if let Some(off) = elf.entry.checked_sub(r.vaddr) {
            if off < r.bytes.len() as u64 {
                r.anchors.push(off as usize);
            }
        }
        r.anchors.sort_unstable();
        r.anchors.dedup();
    }
    out.sort_by_key(|r| r.vaddr);
    out
}

impl<'a> Region<'a> {
    fn new(
        section: Option<String>,
        segment: usize,
        file_offset: u64,
        vaddr: u64,
        bytes: &'a [u8],
    ) -> Self {
        Region {
            section,
            segment,
            file_offset,
            vaddr,
            bytes,
            anchors: vec![0],
            len: vec![0; bytes.len()],
            specials: BTreeMap::new(),
            unproven: Vec::new(),
            path_unsafe: BTreeMap::new(),
            instructions: 0,
        }
    }
}

/// Rule 3: decodes each stretch between anchors, keeping it only if it
/// lands exactly on the next anchor. Collects the direct branches of the
/// proven stretches as (instruction address, target).
fn sweep(r: &mut Region<'_>, branches: &mut Vec<(u64, u64)>) {
    let mut decoder = Decoder::with_ip(64, r.bytes, r.vaddr, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    let mut stretch = Vec::new();
    for k in 0..r.anchors.len() {
        let start = r.anchors[k];
        let end = r.anchors.get(k + 1).copied().unwrap_or(r.bytes.len());
        stretch.clear();
        let mut pos = start;
        let mut failure = None;
        if decoder.set_position(pos).is_err() {
            failure = Some(format!(
                "anchor {:#x} outside its section",
                r.vaddr + pos as u64
            ));
        }
        decoder.set_ip(r.vaddr + pos as u64);
        while failure.is_none() && pos < end {
            decoder.decode_out(&mut ins);
            let len = ins.len();
            if ins.is_invalid() || len == 0 {
                failure = Some(if decoder.last_error() == DecoderError::NoMoreBytes {
                    format!(
                        "the instruction at {:#x} runs past the end of the code",
                        ins.ip()
                    )
                } else {
                    format!("undecodable bytes at {:#x}", ins.ip())
                });
            } else if pos + len > end {
                failure = Some(format!(
                    "the instruction at {:#x} runs across the function start {:#x}",
                    ins.ip(),
                    r.vaddr + end as u64
                ));
            } else {
                stretch.push(ins);
                pos += len;
            }
        }
        if let Some(why) = failure {
            r.unproven.push((start, end, why));
            continue;
        }
        for i in &stretch {
            let off = (i.ip() - r.vaddr) as usize;
            let len = i.len();
            // An instruction is at most 15 bytes.
            r.len[off] = len as u8;
            if let Some(s) = special(i, &r.bytes[off..off + len]) {
                r.specials.insert(off, s);
            }
            if matches!(
                i.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) {
                branches.push((i.ip(), i.near_branch_target()));
            }
        }
        r.instructions += stretch.len() as u64;
    }
}

/// Rule 4. Returns whether `target` lands inside a decoded instruction.
fn follow_branch(regions: &mut [Region<'_>], from: u64, target: u64) -> bool {
    let Some(r) = regions
        .iter_mut()
        .rfind(|r| target >= r.vaddr && target - r.vaddr < r.bytes.len() as u64)
    else {
        return false;
    };
    let t = (target - r.vaddr) as usize;
    if r.len[t] != 0 || r.unproven_at(t).is_some() || r.containing(t).is_none() {
        return false;
    }
    let mut decoder = Decoder::with_ip(64, r.bytes, target, DecoderOptions::NONE);
    if decoder.set_position(t).is_err() {
        return true;
    }
    let mut ins = Instruction::default();
    let mut q = t;
    let mut fell_in_step = false;
    for _ in 0..MAX_PATH_INSTRUCTIONS {
        if q >= r.bytes.len() || r.len[q] != 0 {
            fell_in_step = true;
            break;
        }
        decoder.decode_out(&mut ins);
        let len = ins.len();
        if ins.is_invalid() || len == 0 {
            // Executing this faults before any system call.
            fell_in_step = true;
            break;
        }
        if special(&ins, &r.bytes[q..q + len]).is_some_and(|s| s != Special::Int81) {
            r.path_unsafe
                .insert(q, UnsafeReason::BranchIntoInstruction { from });
        }
        // Decoded sites whose bytes this instruction covers without
        // starting at them.
        let covered: Vec<usize> = r
            .specials
            .range(q.saturating_sub(1)..q + len)
            .filter(|(&s, _)| s != q)
            .map(|(&s, _)| s)
            .collect();
        for s in covered {
            r.path_unsafe
                .entry(s)
                .or_insert(UnsafeReason::OverlappedByBranchPath { from });
        }
        q += len;
    }
    if !fell_in_step {
        for p in t..q.min(r.bytes.len().saturating_sub(1)) {
            if r.bytes[p..p + 2] == SYSCALL {
                r.path_unsafe
                    .entry(p)
                    .or_insert(UnsafeReason::UnresolvedBranchPath { from });
            }
        }
    }
    true
}

/// Rule 5: every `0f 05` pair of the executable segments, and every other
/// system-call instruction the sweep decoded.
fn classify(file: &[u8], elf: &Elf, regions: &[Region<'_>], mode: Mode) -> Report {
    let mut sites = Vec::new();
    for seg in elf.segments.iter().filter(|s| s.executable && s.filesz > 1) {
        let start = seg.offset as usize;
        let bytes = &file[start..start + seg.filesz as usize];
        for i in 0..bytes.len() - 1 {
            if bytes[i..i + 2] != SYSCALL {
                continue;
            }
            let file_offset = seg.offset + i as u64;
            let vaddr = seg.vaddr + i as u64;
            let region = regions.iter().find(|r| {
                file_offset >= r.file_offset
                    && file_offset + 2 <= r.file_offset + r.bytes.len() as u64
            });
            let Some(r) = region else {
                sites.push(Site {
                    file_offset,
                    vaddr,
                    section: None,
                    segment: seg.index,
                    outcome: Outcome::Unsafe {
                        reason: UnsafeReason::OutsideCode,
                    },
                });
                continue;
            };
            let off = (file_offset - r.file_offset) as usize;
            let outcome = if let Some(why) = r.unproven_at(off).or(r.unproven_at(off + 1)) {
                Outcome::Unsafe {
                    reason: UnsafeReason::Unproven {
                        why: why.to_owned(),
                    },
                }
            } else if let Some(reason) = r.path_unsafe.get(&off) {
                Outcome::Unsafe {
                    reason: reason.clone(),
                }
            } else if r.specials.get(&off) == Some(&Special::Syscall) {
                Outcome::Rewritable
            } else {
                match r.containing(off) {
                    Some(s) if r.specials.get(&s) == Some(&Special::PrefixedSyscall) => {
                        Outcome::Unsafe {
                            reason: UnsafeReason::PrefixedSyscall,
                        }
                    }
                    Some(s) => Outcome::Embedded {
                        instruction: r.vaddr + s as u64,
                    },
                    // Proven stretches cover their bytes: not reached.
                    None => Outcome::Unsafe {
                        reason: UnsafeReason::Unproven {
                            why: "not covered by a decoded instruction".to_owned(),
                        },
                    },
                }
            };
            sites.push(Site {
                file_offset,
                vaddr,
                section: r.section.clone(),
                segment: r.segment,
                outcome,
            });
        }
    }
    for r in regions {
        for (&off, &s) in &r.specials {
            let outcome = match s {
                Special::Int81 => Outcome::AlreadyRewritten,
                Special::Other(name) => Outcome::Unsafe {
                    reason: UnsafeReason::OtherSystemCall {
                        instruction: name.to_owned(),
                    },
                },
                // Already counted as 0f 05 pairs.
                Special::Syscall | Special::PrefixedSyscall => continue,
            };
            let outcome = match r.path_unsafe.get(&off) {
                Some(reason) if s == Special::Int81 => Outcome::Unsafe {
                    reason: reason.clone(),
                },
                _ => outcome,
            };
            sites.push(Site {
                file_offset: r.file_offset + off as u64,
                vaddr: r.vaddr + off as u64,
                section: r.section.clone(),
                segment: r.segment,
                outcome,
            });
        }
    }
    sites.sort_by_key(|s| s.file_offset);
    sites.dedup_by_key(|s| s.file_offset);

    let mut counts = Counts::default();
    for s in &sites {
        match s.outcome {
            Outcome::Rewritten => counts.rewritten += 1,
            Outcome::Rewritable => counts.rewritable += 1,
            Outcome::AlreadyRewritten => counts.already_rewritten += 1,
            Outcome::Embedded { .. } => counts.embedded += 1,
            Outcome::Unsafe { .. } => counts.unsafe_sites += 1,
        }
    }
    let code = regions
        .iter()
        .map(|r| {
            let unproven: u64 = r.unproven.iter().map(|(s, e, _)| (e - s) as u64).sum();
            counts.instructions += r.instructions;
            counts.code_bytes += r.bytes.len() as u64;
            counts.unproven_bytes += unproven;
            CodeRegion {
                section: r.section.clone(),
                segment: r.segment,
                file_offset: r.file_offset,
                vaddr: r.vaddr,
                size: r.bytes.len() as u64,
                anchors: r.anchors.len(),
                instructions: r.instructions,
                unproven_bytes: unproven,
            }
        })
        .collect();
    Report {
        mode,
        symbols: elf.functions.is_some(),
        code,
        sites,
        counts,
    }
}
