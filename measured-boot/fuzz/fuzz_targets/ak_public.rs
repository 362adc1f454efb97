//! An attestation key's TPM public area (`TPMT_PUBLIC`) on hostile input:
//! parsing, re-marshalling what parsed, and the AK checks.
#![no_main]

use circ_measured_boot::akpub::AkPublic;
use circ_measured_boot::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(area) = wire::parse_ecc_public(data) {
        // What parsed is exactly what marshalling it gives back.
        assert_eq!(area.marshal(), data);
    }
    // With the area's own key, every attribute and parameter check runs.
    if let Ok(ak) = AkPublic::from_public_area(data) {
        let _ = ak.check_public_area(data);
    }
});
