//! Fuzzes journal recovery: arbitrary bytes written over the entry area of a
//! segment that holds a few valid entries. Opening must never panic; it either
//! refuses with an error or recovers a journal whose every entry reads back
//! valid and in sequence, and which accepts a new append right after.
#![no_main]

use std::os::unix::fs::FileExt;

use engine::journal::{Durability, Journal, JournalCursor, JournalOptions, NewEntry, Step};
use libfuzzer_sys::fuzz_target;

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: engine::limits::SEGMENT_BYTES_MIN,
        durability: Durability::None,
        background_preallocation: false,
        ..JournalOptions::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let entries_start = {
        let journal = Journal::open(dir.path(), options()).unwrap();
        journal.append(&NewEntry::create_object(1, "F")).unwrap();
        journal.append(&NewEntry::put(1, b"key", b"value")).unwrap();
        let cursor = JournalCursor::open(dir.path(), 1).unwrap();
        cursor.segment().entries_start()
    };
    // The fuzz input overwrites the journal from a point it chooses.
    let (skip, bytes) = match data.split_first() {
        Some((skip, rest)) => (*skip as usize * 8, rest),
        None => return,
    };
    let path = engine::journal::list_segments(dir.path()).unwrap()[0]
        .1
        .clone();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(
        &bytes[..bytes.len().min(64 * 1024)],
        (entries_start + skip) as u64,
    )
    .unwrap();
    drop(file);
    let Ok(journal) = Journal::open(dir.path(), options()) else {
        return;
    };
    let next = journal.next_sequence();
    let mut cursor = JournalCursor::open(dir.path(), 1).unwrap();
    let mut expected = 1;
    loop {
        match cursor.step().expect("a recovered journal reads back clean") {
            Step::Entry(at) => {
                assert_eq!(cursor.entry(at).unwrap().sequence(), expected);
                expected += 1;
            }
            Step::EndOfSegment => {
                // A crafted, valid J-NR: recovery started the next segment.
                expected = cursor.next_sequence();
                cursor
                    .next_segment()
                    .expect("recovery created the next segment");
            }
            Step::Idle => break,
        }
    }
    assert_eq!(expected, next);
    assert_eq!(journal.append(&NewEntry::commit(7)).unwrap(), next);
});
