//! Sealed files come from the guest's disk, which dom0 and the guest kernel
//! can write: opening must refuse anything wrong without panicking, and
//! whatever opens must seal back to the same bytes (same nonces).
#![no_main]

use circ_tsys_seal::{open_file, seal_file_with, NONCE_LEN, STORED_LEN};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let Some((id, sealed)) = data.split_first_chunk::<8>() else {
        return;
    };
    let file_id = u64::from_le_bytes(*id);
    if let Ok(plain) = open_file(&KEY, file_id, sealed) {
        let again = seal_file_with(&KEY, file_id, &plain, |i| {
            let at = i as usize * STORED_LEN + 16;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&sealed[at..at + NONCE_LEN]);
            Ok(nonce)
        })
        .expect("an opened file seals again");
        assert_eq!(again, sealed, "open/seal round trip");
    }
});
