//! The NBD parsers take bytes from any client that can reach the socket:
//! request headers and NBD_OPT_INFO/GO payloads must never panic, and a
//! planned read or write always lies inside the export.
#![no_main]

use circ_cas::nbd::proto::{self, Action};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = proto::parse_info_request(data);
    let Some((size_bytes, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size_bytes);
    let read_only = size & 1 == 1;
    if let Ok(request) = proto::parse_request(rest) {
        match proto::plan(&request, size, read_only) {
            Action::Read { offset, length } | Action::Write { offset, length, .. } => {
                assert!(length <= proto::MAX_REQUEST_LEN);
                assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            }
            Action::Refuse { payload, .. } => assert!(payload <= proto::MAX_REQUEST_LEN),
            Action::Flush | Action::Disconnect | Action::Hangup => {}
        }
    }
});
