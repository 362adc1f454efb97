//! The index parser past the signature: a format-2 index's position and
//! frame tables are only read once the signature verifies, so random bytes
//! never reach them. This target signs whatever it is given (with a fixed
//! key) and parses it: framing, canonical order of the distinct chunks,
//! frame bounds, and allocation limits, on inputs the key holder wrote.
#![no_main]

use circ_cas::index::Index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let signed = Index::sign_body_for_fuzzing(body, &key);
    if let Ok(index) = Index::parse_verified(&signed, &key.verifying_key()) {
        // What the reader does with a parsed index must not panic either.
        for i in 0..index.chunk_count().min(64) {
            if let Some(chunk) = index.chunk_ref(i) {
                let _ = chunk.path();
                if let Some(frames) = index.chunk_frames(&chunk.id) {
                    assert_eq!(frames.count(), chunk.frame_count());
                    let _ = frames.stored_range(0..frames.count());
                }
            }
        }
    }
});
