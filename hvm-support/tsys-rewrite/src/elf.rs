//! A small ELF64 little-endian reader: the file header, program headers,
//! section headers and the symbol table, every offset and size checked
//! against the file before use. It accepts only what the rewriter supports
//! (a static x86-64 ET_EXEC) and says why it refuses anything else.

use crate::RewriteError;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;

const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;

const SHT_NULL: u32 = 0;
const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;

const STT_FUNC: u8 = 2;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;

/// At most this many program or section headers, symbols: far above real
/// programs (busybox: 10, 27, 0), low enough that a hostile header cannot
/// make the parser allocate much.
const MAX_HEADERS: usize = 4096;
const MAX_SYMBOLS: usize = 4 << 20;

/// A `PT_LOAD` program header.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Its index among all program headers (as `readelf -l` numbers them).
    pub index: usize,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub executable: bool,
    /// `p_flags`: `PF_X` 1, `PF_W` 2, `PF_R` 4.
    pub flags: u32,
}

impl Segment {
    fn file_end(&self) -> u64 {
        self.offset + self.filesz
    }
}

/// A section header, its name resolved.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub index: usize,
    pub name: String,
    pub kind: u32,
    pub flags: u64,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

impl Section {
    pub(crate) fn is_code(&self) -> bool {
        self.kind != SHT_NOBITS
            && self.kind != SHT_NULL
            && self.flags & SHF_EXECINSTR != 0
            && self.flags & SHF_ALLOC != 0
            && self.size != 0
    }
}

/// A function symbol: where decoding may start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FuncSymbol {
    pub section: usize,
    pub value: u64,
}

/// What the rewriter needs of a static x86-64 executable.
#[derive(Debug)]
pub(crate) struct Elf {
    pub entry: u64,
    /// Where the program headers are in the file, and how many (for a
    /// loader's `AT_PHDR` and `AT_PHNUM`).
    pub phoff: u64,
    pub phnum: u16,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
    /// `None` when the file has no `.symtab` (stripped).
    pub functions: Option<Vec<FuncSymbol>>,
}

fn malformed(what: impl Into<String>) -> RewriteError {
    RewriteError::Malformed { what: what.into() }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// `count` records of `size` bytes at `offset`, all inside `file`.
fn table<'a>(
    file: &'a [u8],
    offset: u64,
    count: usize,
    size: usize,
    what: &str,
) -> Result<&'a [u8], RewriteError> {
    if count > MAX_HEADERS && what != "symbol table" {
        return Err(malformed(format!("{what}: {count} entries")));
    }
    let len = count
        .checked_mul(size)
        .ok_or_else(|| malformed(format!("{what}: size overflows")))?;
    let start = usize::try_from(offset).map_err(|_| RewriteError::Truncated {
        what: what.to_owned(),
    })?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| malformed(format!("{what}: offset overflows")))?;
    file.get(start..end).ok_or_else(|| RewriteError::Truncated {
        what: format!(
            "{what} (bytes {start}..{end} of a {}-byte file)",
            file.len()
        ),
    })
}

impl Elf {
    pub(crate) fn parse(file: &[u8]) -> Result<Self, RewriteError> {
        let ehdr = file.get(..EHDR_SIZE).ok_or(RewriteError::Truncated {
            what: "ELF header".to_owned(),
        })?;
        if ehdr[..4] != *b"\x7fELF" {
            return Err(RewriteError::NotElf);
        }
        if ehdr[4] != 2 {
            return Err(RewriteError::Unsupported {
                why: format!("ELF class {} (only ELF64 is supported)", ehdr[4]),
            });
        }
        if ehdr[5] != 1 {
            return Err(RewriteError::Unsupported {
                why: format!("data encoding {} (only little-endian)", ehdr[5]),
            });
        }
        let field16 = |off| u16_at(ehdr, off).unwrap_or_default();
        let e_type = field16(16);
        let machine = field16(18);
        if machine != EM_X86_64 {
            return Err(RewriteError::Unsupported {
                why: format!("machine {machine} (only x86-64, 62)"),
            });
        }
        match e_type {
            ET_EXEC => {}
            ET_DYN => {
                return Err(RewriteError::Unsupported {
                    why: "ET_DYN: a shared object or position-independent executable (only static ET_EXEC)".to_owned(),
                })
            }
            other => {
                return Err(RewriteError::Unsupported {
                    why: format!("ELF type {other} (only ET_EXEC)"),
                })
            }
        }
        let entry = u64_at(ehdr, 24).unwrap_or_default();
        let phoff = u64_at(ehdr, 32).unwrap_or_default();
        let shoff = u64_at(ehdr, 40).unwrap_or_default();
        let phentsize = field16(54);
        let phnum = field16(56);
        let shentsize = field16(58);
        let shnum = field16(60);
        let shstrndx = field16(62);

        if phnum == 0 {
            return Err(malformed("no program headers"));
        }
        if usize::from(phentsize) != PHDR_SIZE {
            return Err(malformed(format!("program header size {phentsize}")));
        }
        let phdrs = table(file, phoff, phnum.into(), PHDR_SIZE, "program header table")?;
        let mut segments = Vec::new();
        for (index, ph) in phdrs.chunks_exact(PHDR_SIZE).enumerate() {
            let p_type = u32_at(ph, 0).unwrap_or_default();
            match p_type {
                PT_INTERP => return Err(RewriteError::Dynamic { what: "PT_INTERP" }),
                PT_DYNAMIC => return Err(RewriteError::Dynamic { what: "PT_DYNAMIC" }),
                PT_LOAD => {}
                _ => continue,
            }
            let flags = u32_at(ph, 4).unwrap_or_default();
            let seg = Segment {
                index,
                executable: flags & PF_X != 0,
                flags,
                offset: u64_at(ph, 8).unwrap_or_default(),
                vaddr: u64_at(ph, 16).unwrap_or_default(),
                filesz: u64_at(ph, 32).unwrap_or_default(),
                memsz: u64_at(ph, 40).unwrap_or_default(),
            };
            let in_file = seg
                .offset
                .checked_add(seg.filesz)
                .is_some_and(|end| end <= file.len() as u64);
            if !in_file {
                return Err(RewriteError::Truncated {
                    what: format!(
                        "segment {index} (file bytes {:#x}+{:#x} of a {:#x}-byte file)",
                        seg.offset,
                        seg.filesz,
                        file.len()
                    ),
                });
            }
            if seg.filesz > seg.memsz {
                return Err(malformed(format!(
                    "segment {index}: file size {:#x} above memory size {:#x}",
                    seg.filesz, seg.memsz
                )));
            }
            if seg.vaddr.checked_add(seg.memsz).is_none() {
                return Err(malformed(format!(
                    "segment {index}: address range overflows"
                )));
            }
            segments.push(seg);
        }
        check_overlaps(&segments)?;
        if !segments.iter().any(|s| s.executable && s.filesz > 0) {
            return Err(RewriteError::NoCode);
        }

        let sections = if shoff == 0 || shnum == 0 {
            Vec::new()
        } else {
            if usize::from(shentsize) != SHDR_SIZE {
                return Err(malformed(format!("section header size {shentsize}")));
            }
            parse_sections(file, shoff, shnum.into(), shstrndx.into())?
        };
        let mut code: Vec<&Section> = sections.iter().filter(|s| s.is_code()).collect();
        for s in &code {
            check_section_in_segment(s, &segments)?;
        }
        // In one segment at matching addresses: file order is address order.
        code.sort_by_key(|s| s.offset);
        for pair in code.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(malformed(format!(
                    "code sections {} ({}) and {} ({}) overlap",
                    pair[0].index, pair[0].name, pair[1].index, pair[1].name
                )));
            }
        }
        let functions = parse_symbols(file, &sections)?;
        Ok(Elf {
            entry,
            phoff,
            phnum,
            segments,
            sections,
            functions,
        })
    }
}

/// Two loadable segments may not share addresses, and an executable
/// segment's file bytes may not be loaded a second time by another segment:
/// rewriting them would change that other mapping too.
fn check_overlaps(segments: &[Segment]) -> Result<(), RewriteError> {
    for (i, a) in segments.iter().enumerate() {
        for b in &segments[i + 1..] {
            let mem = a.vaddr < b.vaddr + b.memsz && b.vaddr < a.vaddr + a.memsz;
            let file = (a.executable || b.executable)
                && a.offset < b.file_end()
                && b.offset < a.file_end();
            if (mem && a.memsz > 0 && b.memsz > 0) || (file && a.filesz > 0 && b.filesz > 0) {
                return Err(RewriteError::OverlappingSegments {
                    first: a.index,
                    second: b.index,
                });
            }
        }
    }
    Ok(())
}

/// A code section must sit inside the file bytes of one executable segment,
/// at the address that segment maps it to; otherwise the section table does
/// not describe what runs.
fn check_section_in_segment(s: &Section, segments: &[Segment]) -> Result<(), RewriteError> {
    let inside = segments.iter().any(|seg| {
        seg.executable
            && s.offset >= seg.offset
            && s.offset
                .checked_add(s.size)
                .is_some_and(|e| e <= seg.file_end())
            && s.addr.checked_sub(seg.vaddr) == Some(s.offset - seg.offset)
    });
    if inside {
        Ok(())
    } else {
        Err(malformed(format!(
            "code section {} ({}) at file {:#x}+{:#x}, address {:#x}, is not inside an executable segment",
            s.index, s.name, s.offset, s.size, s.addr
        )))
    }
}

fn parse_sections(
    file: &[u8],
    shoff: u64,
    shnum: usize,
    shstrndx: usize,
) -> Result<Vec<Section>, RewriteError> {
    let shdrs = table(file, shoff, shnum, SHDR_SIZE, "section header table")?;
    let mut raw = Vec::with_capacity(shnum);
    for (index, sh) in shdrs.chunks_exact(SHDR_SIZE).enumerate() {
        raw.push((
            u32_at(sh, 0).unwrap_or_default(),
            Section {
                index,
                name: String::new(),
                kind: u32_at(sh, 4).unwrap_or_default(),
                flags: u64_at(sh, 8).unwrap_or_default(),
                addr: u64_at(sh, 16).unwrap_or_default(),
                offset: u64_at(sh, 24).unwrap_or_default(),
                size: u64_at(sh, 32).unwrap_or_default(),
            },
        ));
    }
    for (_, s) in &raw {
        let end = s.offset.checked_add(s.size);
        if s.kind != SHT_NOBITS && s.kind != SHT_NULL && end.is_none_or(|e| e > file.len() as u64) {
            return Err(RewriteError::Truncated {
                what: format!(
                    "section {} (file bytes {:#x}+{:#x} of a {:#x}-byte file)",
                    s.index,
                    s.offset,
                    s.size,
                    file.len()
                ),
            });
        }
    }
    // Names are a courtesy for the report: a bad string table leaves them
    // empty rather than refusing the file.
    let strtab = raw
        .get(shstrndx)
        .filter(|(_, s)| s.kind != SHT_NOBITS && s.kind != SHT_NULL)
        .and_then(|(_, s)| {
            let start = usize::try_from(s.offset).ok()?;
            file.get(start..start.checked_add(usize::try_from(s.size).ok()?)?)
        });
    Ok(raw
        .into_iter()
        .map(|(name_off, mut s)| {
            if let Some(tab) = strtab {
                s.name = c_string(tab, name_off as usize);
            }
            s
        })
        .collect())
}

fn c_string(tab: &[u8], off: usize) -> String {
    let Some(rest) = tab.get(off..) else {
        return String::new();
    };
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end.min(256)]).into_owned()
}

/// The `STT_FUNC` symbols of `.symtab` that lie in a code section, or
/// `None` without a symbol table.
fn parse_symbols(
    file: &[u8],
    sections: &[Section],
) -> Result<Option<Vec<FuncSymbol>>, RewriteError> {
    let Some(symtab) = sections.iter().find(|s| s.kind == SHT_SYMTAB) else {
        return Ok(None);
    };
    let count = usize::try_from(symtab.size / SYM_SIZE as u64).unwrap_or(usize::MAX);
    if count > MAX_SYMBOLS {
        return Err(malformed(format!("symbol table: {count} symbols")));
    }
    let bytes = table(file, symtab.offset, count, SYM_SIZE, "symbol table")?;
    let mut functions = Vec::new();
    for sym in bytes.chunks_exact(SYM_SIZE) {
        let info = sym[4];
        let shndx = u16_at(sym, 6).unwrap_or_default();
        let value = u64_at(sym, 8).unwrap_or_default();
        if info & 0xf != STT_FUNC || shndx == SHN_UNDEF || shndx >= SHN_LORESERVE {
            continue;
        }
        let Some(section) = sections.get(usize::from(shndx)) else {
            continue;
        };
        if section.is_code() && value >= section.addr && value - section.addr < section.size {
            functions.push(FuncSymbol {
                section: section.index,
                value,
            });
        }
    }
    Ok(Some(functions))
}
