//! The event log parser must return, never panic, on any bytes; whatever it
//! accepts must re-encode to a log that parses to the same records.
#![no_main]

use circ_measured_boot::eventlog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = eventlog::parse(data) {
        // Hex and escapes have more than one spelling, so compare records, not bytes.
        let mut text = String::from(eventlog::HEADER);
        for e in &events {
            let line = eventlog::encode_record(e.seq, &e.m).expect("parsed records re-encode");
            text.push_str(&line);
            text.push('\n');
        }
        assert_eq!(eventlog::parse(text.as_bytes()).ok(), Some(events));
    }
});
