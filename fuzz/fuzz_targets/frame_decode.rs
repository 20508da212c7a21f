//! Fuzzes the frame decoder: arbitrary bytes must be refused with an error or
//! decode to entries that, framed again, decode to the same entries (model).
#![no_main]

use engine::frame::{Codec, FrameDecoder, FrameEncoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new().unwrap();
    let Ok(frame) = decoder.decode(data) else {
        return;
    };
    let entries: Vec<Vec<u8>> = frame.entries().map(|e| e.as_bytes().to_vec()).collect();
    let codec = if frame.header.compressed {
        Codec::Zstd { level: 1 }
    } else {
        Codec::None
    };
    let (journal_id, next) = (frame.journal_id, frame.header.next_sequence);
    let mut again = Vec::new();
    let mut encoder = FrameEncoder::new(codec).unwrap();
    let parsed = entries
        .iter()
        .map(|e| engine::journal::entry::decode_validated(e).unwrap());
    encoder
        .encode(
            journal_id,
            frame.header.start_position,
            next,
            parsed,
            &mut again,
        )
        .unwrap();
    let mut decoder2 = FrameDecoder::new().unwrap();
    let round = decoder2
        .decode(&again)
        .expect("a re-encoded valid frame decodes");
    let entries2: Vec<Vec<u8>> = round.entries().map(|e| e.as_bytes().to_vec()).collect();
    assert_eq!(entries, entries2);
});
