//! A quote file, its TPM structures and the whole verifier on hostile input.
#![no_main]

use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::{verify, wire};
use libfuzzer_sys::fuzz_target;

const AK: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuybdBVV796B/55EYsJi5VaNNPJ8P
09Q6WSbo/zI8EKs5gs2jSS7xgOE4BgP5ELmkFM7ZjIBtZR5E2aan+RNlHA==
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_quote_attest(data);
    let _ = wire::parse_signature(data);
    let ak = AkPublic::from_pem(AK).expect("the fuzz AK is a valid key");
    let _ = verify::verify(data, &ak, b"nonce", None);
});
