//! The binaries under test: found beside `circ-lab` (or in `--bin-dir`) and
//! checked before anything boots, so a wrong build fails in one line instead
//! of as a guest that never comes up minutes later.

use std::path::{Path, PathBuf};

use crate::{LabError, Result};

/// Copied into dom0's `/lab/bin`: the CLI, the daemons, and the application
/// the `tsys` scenario rewrites and deploys (static, for the guest in the end).
pub const DOM0_BINARIES: &[&str] = &["circ", "circ-memshare", "circ-tsys-sealapp"];

/// Go into the test guests' initrd (`/bin`) instead; the guest init starts
/// `circ-guest-agent`, and `circ-tsys-probe` when the kernel command line
/// asks (`circ.tsys`), which runs rewritten busybox applets through
/// `circ-tsys-launch`. The guests are busybox with no C library, so these
/// must be static executables.
pub const GUEST_BINARIES: &[&str] = &["circ-guest-agent", "circ-tsys-probe", "circ-tsys-launch"];

/// How to build what the lab needs, for error messages.
const HOW_TO_BUILD: &str = "build them with scripts/build";

/// `PT_INTERP`: the program header naming a dynamic loader.
const PT_INTERP: u32 = 3;

/// Every binary the lab ships, from `dir`, after checking each one exists
/// and each guest binary is statically linked.
pub fn binaries_under_test(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for name in DOM0_BINARIES.iter().chain(GUEST_BINARIES) {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(LabError::BadBinary {
                path,
                why: format!("missing; {HOW_TO_BUILD}"),
            });
        }
        if GUEST_BINARIES.contains(name) {
            let bytes = std::fs::read(&path).map_err(LabError::io(&path))?;
            match elf_interpreter(&bytes) {
                Ok(None) => {}
                Ok(Some(interp)) => {
                    return Err(LabError::BadBinary {
                        path,
                        why: format!(
                            "dynamically linked (interpreter {interp}), but the lab's guests \
                             have no C library; {HOW_TO_BUILD} (static)"
                        ),
                    })
                }
                Err(why) => return Err(LabError::BadBinary { path, why }),
            }
        }
        found.push(path);
    }
    Ok(found)
}

/// The dynamic loader an x86-64 ELF executable asks for (`PT_INTERP`), or
/// `None` for a static one.
pub fn elf_interpreter(elf: &[u8]) -> std::result::Result<Option<String>, String> {
    // Every offset comes from the file: add with overflow checks.
    let bytes_at = |at: usize, n: usize| -> std::result::Result<&[u8], String> {
        at.checked_add(n)
            .and_then(|end| elf.get(at..end))
            .ok_or_else(|| format!("truncated ELF file (offset {at:#x})"))
    };
    let u16_at = |at| bytes_at(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at| bytes_at(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at| {
        bytes_at(at, 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    if elf.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = usize::try_from(u64_at(0x20)?).map_err(|_| "bad program header offset")?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 0x38 {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or("bad program header offset")?;
        if u32_at(ph)? != PT_INTERP {
            continue;
        }
        let field = |off: usize| {
            ph.checked_add(off)
                .ok_or_else(|| "bad program header offset".to_owned())
                .and_then(u64_at)
                .and_then(|v| usize::try_from(v).map_err(|_| "bad PT_INTERP".to_owned()))
        };
        let path = bytes_at(field(0x08)?, field(0x20)?)
            .map_err(|_| "PT_INTERP points outside the file")?;
        let path = path.strip_suffix(&[0]).unwrap_or(path);
        return Ok(Some(String::from_utf8_lossy(path).into_owned()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `phdrs` program headers of (type, offset, size).
    fn elf(phdrs: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 0x40];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(kind, offset, size) in phdrs {
            let mut ph = vec![0u8; 0x38];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[0x08..0x10].copy_from_slice(&offset.to_le_bytes());
            ph[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            e.extend(ph);
        }
        e.extend_from_slice(tail);
        e
    }

    #[test]
    fn static_executable_has_no_interpreter() {
        assert_eq!(elf_interpreter(&elf(&[(1, 0, 0x40)], &[])), Ok(None));
    }

    #[test]
    fn dynamic_executable_names_its_loader() {
        let loader = b"/lib64/ld-linux-x86-64.so.2\0";
        let at = 0x40 + 2 * 0x38;
        let image = elf(
            &[(1, 0, 0x40), (PT_INTERP, at, loader.len() as u64)],
            loader,
        );
        assert_eq!(
            elf_interpreter(&image),
            Ok(Some("/lib64/ld-linux-x86-64.so.2".into()))
        );
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
        assert!(elf_interpreter(b"\x7fELF\x01\x01").is_err());
        let outside = elf(&[(PT_INTERP, u64::MAX - 4, 16)], &[]);
        assert!(elf_interpreter(&outside).is_err());
        let mut many = elf(&[], &[]);
        many[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(elf_interpreter(&many).is_err());
        let mut far = elf(&[], &[]);
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        far[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        assert!(elf_interpreter(&far).is_err());
    }

    #[test]
    fn the_host_shell_is_dynamic() {
        // A real binary of the host, as a cross-check of the parser.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(elf_interpreter(&sh).unwrap().is_some());
    }

    #[test]
    fn a_missing_or_dynamic_guest_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = binaries_under_test(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("circ") && err.contains("scripts/build"),
            "{err}"
        );
        for name in DOM0_BINARIES {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::copy("/bin/sh", dir.path().join("circ-guest-agent")).unwrap();
        let err = binaries_under_test(dir.path()).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        for name in GUEST_BINARIES {
            std::fs::write(dir.path().join(name), elf(&[(1, 0, 0x40)], &[])).unwrap();
        }
        assert_eq!(
            binaries_under_test(dir.path()).unwrap().len(),
            DOM0_BINARIES.len() + GUEST_BINARIES.len()
        );
    }
}
