//! Boot prefetch lists come from the server beside the index, unsigned: the
//! parser must refuse anything malformed without panicking, and accept
//! only positions inside the image.
#![no_main]

use circ_cas::chunk::{ChunkId, ChunkSize, Compression};
use circ_cas::index::Index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let index = Index {
        name: "img".into(),
        generation: 1,
        image_size: 64 << 16,
        chunk_size: ChunkSize::from_shift(16).expect("64 KiB is valid"),
        compression: Compression::Zstd,
        chunks: (0..64u8).map(|i| Some(ChunkId::from_bytes([i; 20]))).collect(),
        frames: None,
    };
    if let Ok(positions) = circ_cas::prefetch::parse(data, &index) {
        assert!(positions.iter().all(|&p| (p as usize) < index.chunk_count()));
    }
});
