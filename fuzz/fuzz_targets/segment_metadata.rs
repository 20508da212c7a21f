//! Fuzzes the segment header and catalog block decoders: arbitrary bytes must
//! be refused or decode to values that encode back to the same bytes.
#![no_main]

use engine::journal::segment::SegmentHeader;
use engine::journal::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SegmentHeader::decode(data, data.len() as u64) {
        assert_eq!(&header.encode()[..52], &data[..52]);
    }
    if let Ok(catalog) = Catalog::decode(data) {
        assert_eq!(catalog.encode(), data, "catalog decode is not canonical");
    }
});
