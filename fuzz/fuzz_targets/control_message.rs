//! Fuzzes the control-message decoder: arbitrary bytes must be refused, need
//! more bytes, or decode to a message whose encoding is exactly the bytes
//! consumed (the format is canonical); a stream of messages decodes in turn.
#![no_main]

use engine::protocol::{Control, CONTROL_HEADER_BYTES, CONTROL_PAYLOAD_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = Control::decode(rest) {
        assert!(used <= CONTROL_HEADER_BYTES + CONTROL_PAYLOAD_BYTES_MAX);
        let mut again = Vec::new();
        message.encode(&mut again);
        assert_eq!(again, &rest[..used], "re-encoding {message:?} differs");
        rest = &rest[used..];
    }
});
