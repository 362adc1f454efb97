//! Stored chunks come from mirrors and caches: decompression and
//! verification must refuse anything wrong without panicking or
//! allocating more than one chunk.
#![no_main]

use circ_cas::chunk::{decode_verified, ChunkId, ChunkRef, Compression};
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
    let chunk = ChunkRef {
        id: ChunkId::from_bytes([selector; 20]),
        compression,
        len: 4096 << (selector % 4),
        frame_shift: None,
    };
    let _ = decode_verified(&chunk, stored);
});
