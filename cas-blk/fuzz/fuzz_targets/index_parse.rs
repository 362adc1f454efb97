//! The index parser takes bytes from any mirror: it must never panic and
//! never allocate beyond its documented bounds, whatever the input.
#![no_main]

use circ_cas::index::Index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed key: inputs that pass the signature are vanishingly rare, so
    // this mainly exercises framing, bounds and error paths.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
    let _ = Index::parse_verified(data, &key);
    let _ = Index::peek_generation(data);
});
