//! Fuzzes the journal entry decoder: arbitrary bytes must decode to an error
//! or to an entry that re-encodes to exactly the same bytes (the model).
#![no_main]

use engine::journal::{decode, entry::encode_to_vec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = decode(data) {
        let mut again = Vec::new();
        encode_to_vec(
            &entry.to_new_entry(),
            entry.sequence(),
            entry.timestamp_ns(),
            &mut again,
        );
        let bytes = entry.as_bytes();
        assert_eq!(
            &again[..bytes.len()],
            bytes,
            "decode accepted bytes the encoder would not write"
        );
        assert!(again[bytes.len()..].iter().all(|b| *b == 0));
    }
});
