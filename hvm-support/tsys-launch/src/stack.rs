//! The initial stack a program expects at its entry point, as the kernel's
//! `create_elf_tables()` lays it out (x86-64 SysV ABI, section 3.4.1):
//!
//! ```text
//! rsp -> argc
//!        argv[0] .. argv[argc - 1], NULL
//!        envp[0] .. , NULL
//!        auxv (type, value) pairs, AT_NULL
//!        strings: argv, envp, AT_EXECFN, AT_PLATFORM; AT_RANDOM's 16 bytes
//! top
//! ```
//!
//! Built as bytes for a given top address, so it is checked in unit tests
//! and copied to the real stack in one go.

pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;
pub const AT_MINSIGSTKSZ: u64 = 51;

/// What goes on the stack.
#[derive(Debug, Clone, Default)]
pub struct StackSpec {
    /// Each without its terminating NUL.
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    /// The file name for `AT_EXECFN`.
    pub execfn: Vec<u8>,
    /// `AT_PLATFORM`'s string (the kernel gives `x86_64`).
    pub platform: Vec<u8>,
    /// `AT_RANDOM`'s 16 bytes (glibc seeds its stack protector and pointer
    /// guard from them).
    pub random: [u8; 16],
    /// The other auxv entries, in order. `AT_RANDOM`, `AT_EXECFN`,
    /// `AT_PLATFORM` and the closing `AT_NULL` are added by [`build`].
    pub aux: Vec<(u64, u64)>,
}

/// The stack's bytes, to be copied to `[rsp, top)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackImage {
    pub rsp: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StackError {
    #[error("an argument or environment string holds a NUL byte")]
    Nul,
    #[error("arguments and environment take {needed} bytes, more than the {limit}-byte limit")]
    TooLarge { needed: u64, limit: u64 },
}

/// At most this much for argv, envp and auxv: the kernel's own limit for
/// them is a quarter of the stack rlimit (2 MiB of 8 MiB).
pub const MAX_STACK_IMAGE: u64 = 2 << 20;

/// Lays out `spec` below `top` (16-byte aligned). `rsp` is 16-byte aligned,
/// as the ABI wants at a process's entry point.
pub fn build(top: u64, spec: &StackSpec) -> Result<StackImage, StackError> {
    let strings = spec
        .args
        .iter()
        .chain(&spec.env)
        .chain([&spec.execfn, &spec.platform]);
    let mut strings_len = 17u64; // AT_RANDOM, and the spare byte `put` leaves
    for s in strings {
        if s.contains(&0) {
            return Err(StackError::Nul);
        }
        strings_len += s.len() as u64 + 1;
    }
    let aux_pairs = spec.aux.len() as u64 + 4; // + RANDOM, EXECFN, PLATFORM, NULL
    let words = 1 + (spec.args.len() as u64 + 1) + (spec.env.len() as u64 + 1) + 2 * aux_pairs;
    let needed = 8 * words + strings_len;
    if needed > MAX_STACK_IMAGE {
        return Err(StackError::TooLarge {
            needed,
            limit: MAX_STACK_IMAGE,
        });
    }
    let top = top & !15;
    let rsp = (top - needed) & !15;
    let mut bytes = vec![0u8; (top - rsp) as usize];
    let mut vector: Vec<u64> = Vec::with_capacity(words as usize);
    // Strings go right after the vector, in order.
    let mut at = 8 * words;
    let mut put = |s: &[u8]| -> u64 {
        let addr = rsp + at;
        bytes[at as usize..at as usize + s.len()].copy_from_slice(s);
        at += s.len() as u64 + 1; // the NUL is already there
        addr
    };
    vector.push(spec.args.len() as u64);
    for a in &spec.args {
        vector.push(put(a));
    }
    vector.push(0);
    for e in &spec.env {
        vector.push(put(e));
    }
    vector.push(0);
    let execfn = put(&spec.execfn);
    let platform = put(&spec.platform);
    // 16 random bytes, not NUL-terminated: `put` leaves one spare byte.
    let random = put(&spec.random);
    for &(kind, value) in &spec.aux {
        vector.extend([kind, value]);
    }
    vector.extend([AT_RANDOM, random, AT_EXECFN, execfn, AT_PLATFORM, platform]);
    vector.extend([AT_NULL, 0]);
    debug_assert_eq!(vector.len() as u64, words);
    for (i, word) in vector.iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
    }
    Ok(StackImage { rsp, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the stack back the way a C runtime does.
    struct Reader<'a> {
        image: &'a StackImage,
    }

    impl Reader<'_> {
        fn word(&self, addr: u64) -> u64 {
            let at = (addr - self.image.rsp) as usize;
            u64::from_le_bytes(self.image.bytes[at..at + 8].try_into().unwrap())
        }
        fn string(&self, addr: u64) -> Vec<u8> {
            let at = (addr - self.image.rsp) as usize;
            let rest = &self.image.bytes[at..];
            rest[..rest.iter().position(|&b| b == 0).unwrap()].to_vec()
        }
    }

    fn spec() -> StackSpec {
        StackSpec {
            args: vec![
                b"busybox".to_vec(),
                b"sha256sum".to_vec(),
                b"/bin/busybox".to_vec(),
            ],
            env: vec![b"PATH=/bin".to_vec(), b"HOME=/".to_vec()],
            execfn: b"/bin/busybox-tsys".to_vec(),
            platform: b"x86_64".to_vec(),
            random: *b"0123456789abcdef",
            aux: vec![(AT_PAGESZ, 4096), (AT_ENTRY, 0x401b40)],
        }
    }

    #[test]
    fn a_c_runtime_finds_argv_envp_and_auxv() {
        let top = 0x7fff_0000_1008; // not aligned: build aligns it
        let image = build(top, &spec()).unwrap();
        assert_eq!(image.rsp % 16, 0);
        assert_eq!(image.rsp + image.bytes.len() as u64, top & !15);
        let r = Reader { image: &image };
        let mut at = image.rsp;
        let argc = r.word(at);
        assert_eq!(argc, 3);
        at += 8;
        let args: Vec<_> = (0..argc).map(|i| r.string(r.word(at + 8 * i))).collect();
        assert_eq!(args, spec().args);
        at += 8 * argc;
        assert_eq!(r.word(at), 0);
        at += 8;
        let mut env = Vec::new();
        while r.word(at) != 0 {
            env.push(r.string(r.word(at)));
            at += 8;
        }
        assert_eq!(env, spec().env);
        at += 8;
        let mut aux = Vec::new();
        loop {
            let (kind, value) = (r.word(at), r.word(at + 8));
            at += 16;
            if kind == AT_NULL {
                break;
            }
            aux.push((kind, value));
        }
        assert_eq!(&aux[..2], &[(AT_PAGESZ, 4096), (AT_ENTRY, 0x401b40)]);
        let find = |k| aux.iter().find(|a| a.0 == k).unwrap().1;
        assert_eq!(r.string(find(AT_EXECFN)), b"/bin/busybox-tsys");
        assert_eq!(r.string(find(AT_PLATFORM)), b"x86_64");
        let random = (find(AT_RANDOM) - image.rsp) as usize;
        assert_eq!(&image.bytes[random..random + 16], b"0123456789abcdef");
    }

    #[test]
    fn nul_bytes_and_huge_environments_are_refused() {
        let mut nul = spec();
        nul.args.push(b"a\0b".to_vec());
        assert_eq!(build(0x7fff_0000_0000, &nul), Err(StackError::Nul));
        let mut huge = spec();
        huge.env = vec![vec![b'x'; 1 << 20]; 3];
        assert!(matches!(
            build(0x7fff_0000_0000, &huge),
            Err(StackError::TooLarge { .. })
        ));
    }
}
