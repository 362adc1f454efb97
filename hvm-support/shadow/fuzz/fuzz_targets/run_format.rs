//! `RunFormatV1::decode` on arbitrary bytes (a capture a guest agent or a
//! peer sends): an error or runs that re-encode to the same bytes, never a
//! panic or an allocation the input does not pay for.
#![no_main]

use circ_shadow::RunFormatV1;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(runs) = RunFormatV1::decode(data) {
        assert!(runs.len() <= data.len() / 3);
        assert_eq!(RunFormatV1::encode(&runs), data);
    }
});
