//! `rewrite` over any bytes, in both modes. It may refuse, never panic,
//! and what it returns keeps its promises: the same length, only the
//! reported sites changed (`0f 05` -> `cd 81`), and a second run changes
//! nothing more.
#![no_main]

use circ_tsys_rewrite::{rewrite, Mode, Outcome, RewriteOptions, INT_0X81, SYSCALL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for mode in [Mode::Strict, Mode::Lenient] {
        let options = RewriteOptions { mode };
        let Ok(out) = rewrite(data, &options) else {
            continue;
        };
        assert_eq!(out.bytes.len(), data.len());
        let mut expected = data.to_vec();
        for site in &out.report.sites {
            if site.outcome == Outcome::Rewritten {
                let at = site.file_offset as usize;
                assert_eq!(data[at..at + 2], SYSCALL);
                expected[at..at + 2].copy_from_slice(&INT_0X81);
            }
        }
        assert!(out.bytes == expected, "bytes other than the sites changed");
        let again = rewrite(&out.bytes, &options).expect("a rewritten file is accepted again");
        assert_eq!(again.report.counts.rewritten, 0);
        assert!(again.bytes == out.bytes);
    }
});
