//! Unit tests on tiny ELFs built here, byte by byte.

use super::*;

const TEXT_OFFSET: usize = 0x1000;
const TEXT_VADDR: u64 = 0x40_1000;

/// What [`build`] lays out: one R+X PT_LOAD holding `code` then `tail`,
/// a `.text` section over `code` only (if `sections`), and a `.symtab`
/// with one function per offset of `functions` (if given).
#[derive(Default)]
struct Spec {
    code: Vec<u8>,
    tail: Vec<u8>,
    sections: bool,
    functions: Option<Vec<u64>>,
    /// Extra program headers: type, flags, offset, vaddr, filesz, memsz.
    extra_phdrs: Vec<[u64; 6]>,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn phdr(b: &mut [u8], at: usize, [kind, flags, offset, vaddr, filesz, memsz]: [u64; 6]) {
    put32(b, at, kind as u32);
    put32(b, at + 4, flags as u32);
    put64(b, at + 8, offset);
    put64(b, at + 16, vaddr);
    put64(b, at + 24, vaddr);
    put64(b, at + 32, filesz);
    put64(b, at + 40, memsz);
    put64(b, at + 48, 0x1000);
}

#[allow(clippy::too_many_arguments)]
fn shdr(
    b: &mut [u8],
    at: usize,
    name: u32,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
) {
    put32(b, at, name);
    put32(b, at + 4, kind);
    put64(b, at + 8, flags);
    put64(b, at + 16, addr);
    put64(b, at + 24, offset);
    put64(b, at + 32, size);
    put32(b, at + 40, link);
    put64(b, at + 56, entsize);
}

fn build(spec: &Spec) -> Vec<u8> {
    let phnum = 1 + spec.extra_phdrs.len();
    let seg_len = spec.code.len() + spec.tail.len();
    let mut b = vec![0u8; TEXT_OFFSET];
    b.extend(&spec.code);
    b.extend(&spec.tail);
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b[6] = 1;
    put16(&mut b, 16, 2); // ET_EXEC
    put16(&mut b, 18, 62); // x86-64
    put32(&mut b, 20, 1);
    put64(&mut b, 24, TEXT_VADDR);
    put64(&mut b, 32, 64);
    put16(&mut b, 52, 64);
    put16(&mut b, 54, 56);
    put16(&mut b, 56, phnum as u16);
    let text = [
        1,
        5,
        TEXT_OFFSET as u64,
        TEXT_VADDR,
        seg_len as u64,
        seg_len as u64,
    ];
    phdr(&mut b, 64, text);
    for (i, p) in spec.extra_phdrs.iter().enumerate() {
        phdr(&mut b, 64 + 56 * (i + 1), *p);
    }
    if !spec.sections {
        return b;
    }
    let names = b"\0.text\0.shstrtab\0.symtab\0.strtab\0";
    let shstrtab = b.len();
    b.extend(names);
    let strtab = b.len();
    b.extend(b"\0f\0");
    while b.len() % 8 != 0 {
        b.push(0);
    }
    let symtab = b.len();
    let funcs = spec.functions.clone().unwrap_or_default();
    b.extend([0u8; 24]);
    for f in &funcs {
        let at = b.len();
        b.extend([0u8; 24]);
        put32(&mut b, at, 1);
        b[at + 4] = (1 << 4) | 2; // GLOBAL FUNC
        put16(&mut b, at + 6, 1);
        put64(&mut b, at + 8, TEXT_VADDR + f);
    }
    let symtab_len = b.len() - symtab;
    let shnum = if spec.functions.is_some() { 5 } else { 3 };
    let shoff = b.len();
    b.resize(shoff + 64 * shnum, 0);
    let code_len = spec.code.len() as u64;
    shdr(
        &mut b,
        shoff + 64,
        1,
        1,
        6,
        TEXT_VADDR,
        TEXT_OFFSET as u64,
        code_len,
        0,
        0,
    );
    shdr(
        &mut b,
        shoff + 128,
        7,
        3,
        0,
        0,
        shstrtab as u64,
        names.len() as u64,
        0,
        0,
    );
    if spec.functions.is_some() {
        shdr(
            &mut b,
            shoff + 192,
            17,
            2,
            0,
            0,
            symtab as u64,
            symtab_len as u64,
            4,
            24,
        );
        shdr(&mut b, shoff + 256, 25, 3, 0, 0, strtab as u64, 3, 0, 0);
    }
    put64(&mut b, 40, shoff as u64);
    put16(&mut b, 58, 64);
    put16(&mut b, 60, shnum as u16);
    put16(&mut b, 62, 2);
    b
}

fn with_code(code: &[u8]) -> Vec<u8> {
    build(&Spec {
        code: code.to_vec(),
        sections: true,
        ..Spec::default()
    })
}

const STRICT: RewriteOptions = RewriteOptions { mode: Mode::Strict };
const LENIENT: RewriteOptions = RewriteOptions {
    mode: Mode::Lenient,
};

fn outcomes(report: &Report) -> Vec<(u64, Outcome)> {
    report
        .sites
        .iter()
        .map(|s| (s.vaddr - TEXT_VADDR, s.outcome.clone()))
        .collect()
}

fn unsafe_reason(err: RewriteError) -> UnsafeReason {
    assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
    let report = err.report().expect("unsafe errors carry the report");
    report
        .sites
        .iter()
        .find_map(|s| match &s.outcome {
            Outcome::Unsafe { reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("an unsafe site")
}

// mov eax, 39; syscall; ret
const GETPID: [u8; 8] = [0xb8, 0x27, 0, 0, 0, 0x0f, 0x05, 0xc3];

#[test]
fn rewrites_a_syscall_and_nothing_else() {
    let elf = with_code(&GETPID);
    let out = rewrite(&elf, &STRICT).unwrap();
    let at = TEXT_OFFSET + 5;
    assert_eq!(out.bytes[at..at + 2], INT_0X81);
    assert_eq!(out.bytes[..at], elf[..at]);
    assert_eq!(out.bytes[at + 2..], elf[at + 2..]);
    assert_eq!(outcomes(&out.report), [(5, Outcome::Rewritten)]);
    let site = &out.report.sites[0];
    assert_eq!(site.file_offset, at as u64);
    assert_eq!(site.section.as_deref(), Some(".text"));
    assert_eq!(site.segment, 0);
    assert_eq!(out.report.counts.rewritten, 1);
    assert_eq!(out.report.counts.instructions, 3);
    assert!(!out.report.symbols);
}

#[test]
fn a_second_run_reports_the_rewritten_sites_and_changes_nothing() {
    let once = rewrite(&with_code(&GETPID), &STRICT).unwrap();
    let twice = rewrite(&once.bytes, &STRICT).unwrap();
    assert_eq!(twice.bytes, once.bytes);
    assert_eq!(outcomes(&twice.report), [(5, Outcome::AlreadyRewritten)]);
    assert_eq!(twice.report.counts.rewritten, 0);
    assert_eq!(twice.report.counts.already_rewritten, 1);
}

#[test]
fn syscall_bytes_inside_an_instruction_are_left_alone() {
    // mov eax, 0x050f; ret
    let elf = with_code(&[0xb8, 0x0f, 0x05, 0, 0, 0xc3]);
    let out = rewrite(&elf, &STRICT).unwrap();
    assert_eq!(out.bytes, elf);
    assert_eq!(
        outcomes(&out.report),
        [(
            1,
            Outcome::Embedded {
                instruction: TEXT_VADDR
            }
        )]
    );
}

#[test]
fn a_branch_into_an_instruction_that_reaches_a_syscall_is_refused() {
    // jmp 3; mov eax, 0x9090050f (3: 0f 05 = syscall if entered there); ret
    let elf = with_code(&[0xeb, 0x01, 0xb8, 0x0f, 0x05, 0x90, 0x90, 0xc3]);
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert_eq!(
        reason,
        UnsafeReason::BranchIntoInstruction { from: TEXT_VADDR }
    );
    let out = rewrite(&elf, &LENIENT).unwrap();
    assert_eq!(out.bytes, elf);
    assert_eq!(out.report.counts.unsafe_sites, 1);
    assert_eq!(out.report.counts.branches_into_instructions, 1);
}

#[test]
fn a_branch_path_that_covers_a_syscall_makes_it_unsafe() {
    // jmp 3; test al, 0xb8; syscall; ret; nop; ret
    // Entered at 3: mov eax, 0x90c3050f covers the syscall's bytes.
    let elf = with_code(&[0xeb, 0x01, 0xa8, 0xb8, 0x0f, 0x05, 0xc3, 0x90, 0xc3]);
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert_eq!(
        reason,
        UnsafeReason::OverlappedByBranchPath { from: TEXT_VADDR }
    );
}

#[test]
fn a_branch_past_a_lock_prefix_is_fine() {
    // je 1f; lock; 1: cmpxchg [rdi], esi; syscall; ret  (glibc's pattern)
    let elf = with_code(&[0x74, 0x01, 0xf0, 0x0f, 0xb1, 0x37, 0x0f, 0x05, 0xc3]);
    let out = rewrite(&elf, &STRICT).unwrap();
    assert_eq!(outcomes(&out.report), [(6, Outcome::Rewritten)]);
    assert_eq!(out.report.counts.branches_into_instructions, 1);
}

#[test]
fn undecodable_bytes_leave_the_stretch_unproven() {
    // syscall; 0x06 (push es: invalid in 64-bit mode); ret
    let elf = with_code(&[0x0f, 0x05, 0x06, 0xc3]);
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert!(
        matches!(&reason, UnsafeReason::Unproven { why } if why.contains("undecodable bytes at 0x401002")),
        "{reason:?}"
    );
    let out = rewrite(&elf, &LENIENT).unwrap();
    assert_eq!(out.bytes, elf);
    assert_eq!(out.report.counts.unproven_bytes, 4);
}

#[test]
fn an_instruction_running_off_the_end_leaves_the_stretch_unproven() {
    // syscall; mov eax, imm32 cut short
    let elf = with_code(&[0x0f, 0x05, 0xb8, 0x01]);
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert!(
        matches!(reason, UnsafeReason::Unproven { .. }),
        "{reason:?}"
    );
}

#[test]
fn function_symbols_resynchronise_the_sweep() {
    // f0: 0x06 (invalid); f1: syscall; ret
    let elf = build(&Spec {
        code: vec![0x06, 0x0f, 0x05, 0xc3],
        sections: true,
        functions: Some(vec![0, 1]),
        ..Spec::default()
    });
    let out = rewrite(&elf, &STRICT).unwrap();
    assert!(out.report.symbols);
    assert_eq!(outcomes(&out.report), [(1, Outcome::Rewritten)]);
    assert_eq!(out.report.counts.unproven_bytes, 1);
    assert_eq!(out.report.code[0].anchors, 2);
}

#[test]
fn a_function_start_inside_an_instruction_cuts_the_stretch() {
    // f0: mov eax, 0x050f (5 bytes) but f1 starts at 1: syscall; add [rax], al; ret
    let elf = build(&Spec {
        code: vec![0xb8, 0x0f, 0x05, 0x00, 0x00, 0xc3],
        sections: true,
        functions: Some(vec![0, 1]),
        ..Spec::default()
    });
    let report = analyse(&elf, &STRICT).unwrap();
    assert_eq!(outcomes(&report), [(1, Outcome::Rewritable)]);
    assert_eq!(report.counts.unproven_bytes, 1);
}

#[test]
fn a_syscall_cut_by_a_function_start_is_unsafe() {
    // f0: syscall; ret; but f1 claims to start at 1, inside the syscall
    let elf = build(&Spec {
        code: vec![0x0f, 0x05, 0xc3],
        sections: true,
        functions: Some(vec![0, 1]),
        ..Spec::default()
    });
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert!(
        matches!(&reason, UnsafeReason::Unproven { why } if why.contains("runs across the function start 0x401001")),
        "{reason:?}"
    );
}

#[test]
fn other_system_calls_are_unsafe() {
    for (code, name) in [
        (&[0xcd, 0x80, 0xc3][..], "int $0x80"),
        (&[0x0f, 0x34, 0xc3], "sysenter"),
    ] {
        let reason = unsafe_reason(rewrite(&with_code(code), &STRICT).unwrap_err());
        assert_eq!(
            reason,
            UnsafeReason::OtherSystemCall {
                instruction: name.to_owned()
            }
        );
    }
}

#[test]
fn a_prefixed_syscall_is_unsafe() {
    let reason =
        unsafe_reason(rewrite(&with_code(&[0x66, 0x0f, 0x05, 0xc3]), &STRICT).unwrap_err());
    assert_eq!(reason, UnsafeReason::PrefixedSyscall);
}

#[test]
fn syscall_bytes_outside_the_code_sections_are_unsafe() {
    let elf = build(&Spec {
        code: GETPID.to_vec(),
        tail: vec![0x0f, 0x05],
        sections: true,
        ..Spec::default()
    });
    let reason = unsafe_reason(rewrite(&elf, &STRICT).unwrap_err());
    assert_eq!(reason, UnsafeReason::OutsideCode);
    let out = rewrite(&elf, &LENIENT).unwrap();
    assert_eq!(
        outcomes(&out.report),
        [
            (5, Outcome::Rewritten),
            (
                8,
                Outcome::Unsafe {
                    reason: UnsafeReason::OutsideCode
                }
            )
        ]
    );
    assert_eq!(out.bytes[TEXT_OFFSET + 8..TEXT_OFFSET + 10], [0x0f, 0x05]);
}

#[test]
fn without_section_headers_the_segment_is_decoded_from_the_entry() {
    let elf = build(&Spec {
        code: GETPID.to_vec(),
        ..Spec::default()
    });
    let out = rewrite(&elf, &STRICT).unwrap();
    assert_eq!(outcomes(&out.report), [(5, Outcome::Rewritten)]);
    assert_eq!(out.report.code[0].section, None);
}

#[test]
fn strict_refusal_reports_the_safe_sites_as_rewritable() {
    // syscall; ret; then int $0x80
    let elf = with_code(&[0x0f, 0x05, 0xcd, 0x80, 0xc3]);
    let err = rewrite(&elf, &STRICT).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 site(s) cannot be proven safe, first at 0x401002"),
        "{err}"
    );
    let report = err.report().unwrap();
    assert_eq!(report.counts.rewritable, 1);
    assert_eq!(report.counts.rewritten, 0);
}

#[test]
fn the_report_serialises() {
    let out = rewrite(&with_code(&GETPID), &STRICT).unwrap();
    let json = serde_json::to_value(&out.report).unwrap();
    assert_eq!(json["sites"][0]["outcome"], "rewritten");
    assert_eq!(json["sites"][0]["vaddr"], 0x40_1005);
    assert_eq!(json["mode"], "strict");
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, out.report);
    let err = rewrite(&with_code(&[0xcd, 0x80]), &STRICT).unwrap_err();
    let json = serde_json::to_value(err.report().unwrap()).unwrap();
    assert_eq!(json["sites"][0]["outcome"], "unsafe");
    assert_eq!(json["sites"][0]["reason"]["kind"], "other_system_call");
}

// Hostile and unsupported input: a clear error, never a panic.

fn error_of(elf: &[u8]) -> RewriteError {
    rewrite(elf, &STRICT).expect_err("refused")
}

#[test]
fn every_truncation_is_an_error() {
    let elf = build(&Spec {
        code: GETPID.to_vec(),
        sections: true,
        functions: Some(vec![0]),
        ..Spec::default()
    });
    for len in 0..elf.len() {
        let err = error_of(&elf[..len]);
        assert_ne!(err.kind(), ErrorKind::Unsafe, "at {len}: {err}");
    }
    assert!(matches!(
        error_of(&elf[..10]),
        RewriteError::Truncated { .. }
    ));
    assert!(error_of(&elf[..10]).to_string().contains("ELF header"));
}

#[test]
fn unsupported_files_say_why() {
    let good = with_code(&GETPID);
    let patched = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        error_of(&b)
    };
    assert!(matches!(patched(0, b"\x7fELG"), RewriteError::NotElf));
    let class = patched(4, &[1]);
    assert_eq!(class.kind(), ErrorKind::Unsupported);
    assert!(class.to_string().contains("ELF class 1"), "{class}");
    assert!(patched(5, &[2]).to_string().contains("little-endian"));
    let machine = patched(18, &3u16.to_le_bytes());
    assert!(machine.to_string().contains("machine 3"), "{machine}");
    let dyn_ = patched(16, &3u16.to_le_bytes());
    assert!(dyn_.to_string().contains("ET_DYN"), "{dyn_}");
    assert!(patched(16, &1u16.to_le_bytes())
        .to_string()
        .contains("ELF type 1"));
}

#[test]
fn dynamic_executables_are_refused() {
    for (kind, name) in [(3, "PT_INTERP"), (2, "PT_DYNAMIC")] {
        let elf = build(&Spec {
            code: GETPID.to_vec(),
            sections: true,
            extra_phdrs: vec![[kind, 4, 0x200, 0x40_0200, 0x10, 0x10]],
            ..Spec::default()
        });
        let err = error_of(&elf);
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn overlapping_segments_are_refused() {
    // Another segment at the code's addresses.
    let mem = build(&Spec {
        code: GETPID.to_vec(),
        extra_phdrs: vec![[1, 6, 0, TEXT_VADDR + 4, 0, 0x100]],
        ..Spec::default()
    });
    assert!(matches!(
        error_of(&mem),
        RewriteError::OverlappingSegments {
            first: 0,
            second: 1
        }
    ));
    // A writable mapping of the code's file bytes elsewhere.
    let file = build(&Spec {
        code: GETPID.to_vec(),
        extra_phdrs: vec![[1, 6, TEXT_OFFSET as u64, 0x60_0000, 8, 8]],
        ..Spec::default()
    });
    assert!(matches!(
        error_of(&file),
        RewriteError::OverlappingSegments { .. }
    ));
}

#[test]
fn huge_offsets_and_counts_are_errors() {
    let good = build(&Spec {
        code: GETPID.to_vec(),
        sections: true,
        functions: Some(vec![0]),
        ..Spec::default()
    });
    let shoff = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
    let cases: Vec<(usize, Vec<u8>)> = vec![
        (32, u64::MAX.to_le_bytes().to_vec()), // e_phoff
        (32, (u64::MAX - 8).to_le_bytes().to_vec()),
        (40, u64::MAX.to_le_bytes().to_vec()),  // e_shoff
        (56, 0xffffu16.to_le_bytes().to_vec()), // e_phnum
        (56, 0u16.to_le_bytes().to_vec()),
        (60, 0xffffu16.to_le_bytes().to_vec()),     // e_shnum
        (54, 55u16.to_le_bytes().to_vec()),         // e_phentsize
        (64 + 8, u64::MAX.to_le_bytes().to_vec()),  // p_offset
        (64 + 32, u64::MAX.to_le_bytes().to_vec()), // p_filesz
        (64 + 16, (u64::MAX - 2).to_le_bytes().to_vec()), // p_vaddr
        (64 + 40, 1u64.to_le_bytes().to_vec()),     // p_memsz < p_filesz
        (shoff + 64 + 24, u64::MAX.to_le_bytes().to_vec()), // .text sh_offset
        (shoff + 64 + 32, u64::MAX.to_le_bytes().to_vec()), // .text sh_size
        (shoff + 64 + 16, 0x1234u64.to_le_bytes().to_vec()), // .text sh_addr
        (shoff + 192 + 32, u64::MAX.to_le_bytes().to_vec()), // .symtab sh_size
        (shoff + 192 + 24, (1u64 << 40).to_le_bytes().to_vec()), // .symtab sh_offset
    ];
    for (at, bytes) in cases {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(&bytes);
        let err = error_of(&b);
        assert_ne!(err.kind(), ErrorKind::Unsafe, "at {at}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_bad_section_name_table_only_loses_names() {
    let mut elf = with_code(&GETPID);
    let shoff = u64::from_le_bytes(elf[40..48].try_into().unwrap()) as usize;
    put64(&mut elf, shoff + 128 + 24, u64::MAX - 1);
    put64(&mut elf, shoff + 128 + 32, 4);
    put32(&mut elf, shoff + 128 + 4, 0); // SHT_NULL: not checked against the file
    let out = rewrite(&elf, &STRICT).unwrap();
    assert_eq!(out.report.sites[0].section.as_deref(), Some(""));
}

#[test]
fn a_code_section_outside_its_segment_is_malformed() {
    let mut elf = with_code(&GETPID);
    let shoff = u64::from_le_bytes(elf[40..48].try_into().unwrap()) as usize;
    put64(&mut elf, shoff + 64 + 24, 0x10); // sh_offset in the headers
    let err = error_of(&elf);
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(
        err.to_string().contains("not inside an executable segment"),
        "{err}"
    );
}

#[test]
fn no_executable_segment_is_an_error() {
    let mut elf = with_code(&GETPID);
    put32(&mut elf, 64 + 4, 4); // PF_R only
    assert!(matches!(error_of(&elf), RewriteError::NoCode));
}

#[test]
fn single_byte_corruptions_never_panic() {
    let good = build(&Spec {
        code: [
            &GETPID[..],
            &[0xeb, 0x01, 0xb8, 0x0f, 0x05, 0x90, 0x90, 0xc3],
        ]
        .concat(),
        sections: true,
        functions: Some(vec![0, 8]),
        ..Spec::default()
    });
    let mut positions: Vec<usize> = (0..0x200).collect();
    positions.extend(TEXT_OFFSET..good.len());
    for at in positions {
        for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = good.clone();
            b[at] = v;
            let _ = rewrite(&b, &STRICT);
            let _ = rewrite(&b, &LENIENT);
        }
    }
}

#[test]
fn load_image_gives_the_loader_its_segments_and_program_headers() {
    let file = with_code(&GETPID);
    let image = load_image(&file).unwrap();
    assert_eq!(image.entry, TEXT_VADDR);
    assert_eq!((image.phoff, image.phnum), (64, 1));
    assert_eq!(
        image.segments,
        vec![LoadSegment {
            vaddr: TEXT_VADDR,
            offset: TEXT_OFFSET as u64,
            filesz: GETPID.len() as u64,
            memsz: GETPID.len() as u64,
            read: true,
            write: false,
            execute: true,
        }]
    );
    // What the rewriter refuses, the loader refuses too.
    assert!(load_image(b"#!/bin/sh\n").is_err());
}
