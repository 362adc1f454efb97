//! Stored frames of a format-2 chunk come from mirrors (a Range reply, or
//! a whole object from a server without ranges): decoding must refuse
//! anything wrong (bad lengths, bombs, garbage, frames short of the range)
//! without panicking or allocating more than the frames asked for.
#![no_main]

use circ_cas::chunk::{
    compress_frames, decode_frames_verified, frame_lens_of, ChunkId, ChunkRef, Compression,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stored)) = data.split_first() else {
        return;
    };
    let compression = match selector % 3 {
        0 => Compression::None,
        1 => Compression::Zlib,
        _ => Compression::Zstd,
    };
    // A chunk of 1 to 4 frames of 4 KiB whose frame table is that of a
    // real pack of a fixed content: the fuzzed bytes stand for what a
    // mirror sent.
    let frames_n = usize::from(selector >> 2) % 4 + 1;
    let plain: Vec<u8> = (0..frames_n * 4096).map(|i| (i % 251) as u8).collect();
    let chunk = ChunkRef {
        id: ChunkId::from_bytes([selector; 20]),
        compression,
        len: plain.len() as u32,
        frame_shift: Some(12),
    };
    let Ok((_, layout)) = compress_frames(compression, &plain, 12) else {
        return;
    };
    let first = usize::from(selector >> 4) % frames_n;
    let at = layout.stored_range(first..frames_n).start;
    if let Ok(out) = decode_frames_verified(&chunk, &layout, first..frames_n, at, stored) {
        assert_eq!(out, plain[first * 4096..]);
    }
    let _ = decode_frames_verified(&chunk, &layout, 0..frames_n, 0, stored);
    let _ = frame_lens_of(&chunk, stored);
});
