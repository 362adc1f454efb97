//! An attestation key's TPM public area (`TPMT_PUBLIC`) on hostile input:
//! parsing, re-marshalling what parsed, and the AK checks.
#![no_main]

use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::wire;
use libfuzzer_sys::fuzz_target;

const AK: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEuybdBVV796B/55EYsJi5VaNNPJ8P
09Q6WSbo/zI8EKs5gs2jSS7xgOE4BgP5ELmkFM7ZjIBtZR5E2aan+RNlHA==
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    if let Ok(area) = wire::parse_ecc_public(data) {
        // What parsed is exactly what marshalling it gives back.
        assert_eq!(area.marshal(), data);
    }
    let ak = AkPublic::from_pem(AK).expect("the fuzz AK is a valid key");
    let _ = ak.check_public_area(data);
    let _ = AkPublic::from_public_area(data);
});
