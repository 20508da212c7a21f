//! Fuzzes the sync-check message decoders (requests and replies): arbitrary
//! bytes must be refused, need more bytes, or decode to a message whose
//! encoding is exactly the bytes consumed (the format is canonical); a
//! stream of messages decodes in turn.
#![no_main]

use apply::check::{Reply, Request, CHECK_HEADER_BYTES, CHECK_PAYLOAD_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((message, used))) = Request::decode(rest) {
        assert!(used <= CHECK_HEADER_BYTES + CHECK_PAYLOAD_BYTES_MAX);
        let mut again = Vec::new();
        message.encode(&mut again);
        assert_eq!(again, &rest[..used], "re-encoding {message:?} differs");
        rest = &rest[used..];
    }
    let mut rest = data;
    while let Ok(Some((message, used))) = Reply::decode(rest) {
        assert!(used <= CHECK_HEADER_BYTES + CHECK_PAYLOAD_BYTES_MAX);
        let mut again = Vec::new();
        message.encode(&mut again);
        assert_eq!(again, &rest[..used], "re-encoding {message:?} differs");
        rest = &rest[used..];
    }
});
