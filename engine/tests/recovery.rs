//! Crash recovery of the journal: writes cut at every byte, single bits
//! flipped, holes left by concurrent appenders, rotations interrupted. In each
//! case reopening must bring back exactly the entries that were whole before
//! the damage, in order, bit for bit, or refuse with the file and offset when
//! the damage is not at the tail.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use testkit::copy_dir;

use common::{assert_same, read_all, small_options, Owned};
use engine::journal::{
    list_segments, EntryType, Journal, JournalCursor, JournalError, NewEntry, SegmentError, Step,
};
use proptest::prelude::*;

/// Where an entry lives: segment file, offset and unpadded length.
#[derive(Clone, Debug)]
struct Placed {
    entry: Owned,
    path: PathBuf,
    offset: u64,
    frame_bytes: u64,
}

/// Every entry (J-NR included) with its location.
fn placements(dir: &Path) -> Vec<Placed> {
    let mut cursor = JournalCursor::open(dir, 1).unwrap();
    let mut out = Vec::new();
    let mut last_offset = None;
    loop {
        let step = cursor.step().unwrap();
        let path = cursor.segment().path().to_owned();
        match step {
            Step::Entry(at) => {
                let (e, offset) = (cursor.entry(at).unwrap(), at.offset());
                last_offset = Some(offset + e.padded_bytes());
                out.push(Placed {
                    entry: Owned::from_new(e.sequence(), &e.to_new_entry()),
                    path,
                    offset: offset as u64,
                    frame_bytes: e.as_bytes().len() as u64,
                });
            }
            Step::EndOfSegment => {
                let sequence = cursor.next_sequence() - 1;
                out.push(Placed {
                    entry: Owned::from_new(sequence, &NewEntry::NEXT_SEGMENT),
                    path,
                    offset: last_offset.take().unwrap() as u64,
                    frame_bytes: 56,
                });
                cursor.next_segment().unwrap();
            }
            Step::Idle => return out,
        }
    }
}

fn write_entries(dir: &Path, entries: &[(u8, Vec<u8>, Vec<u8>, bool)]) {
    let journal = Journal::open(dir, small_options()).unwrap();
    let mut w = journal.appender();
    w.append(&NewEntry::create_object(1, "LIB/T")).unwrap();
    for (kind, key, image, with_before) in entries {
        let before = with_before.then_some(&image[..image.len() / 2]);
        let e = match kind % 4 {
            0 => NewEntry::put(1, key, image),
            1 => NewEntry::update(1, key, image, before).in_cycle(3),
            2 => NewEntry::delete(1, key, before),
            _ => NewEntry::commit(3),
        };
        w.append(&e).unwrap();
    }
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The file ends at the byte (as if the file system lost the rest).
    Truncate,
    /// The bytes from the cut on are zero (preallocated space never written).
    Zero,
}

fn cut_file(path: &Path, at: u64, how: Cut) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    match how {
        Cut::Truncate => file.set_len(at).unwrap(),
        Cut::Zero => {
            let len = file.metadata().unwrap().len();
            file.write_all_at(&vec![0u8; (len - at) as usize], at)
                .unwrap();
        }
    }
}

/// Cuts the last segment of a copy of `template` at `at` and checks that
/// recovery keeps exactly the entries that end at or before the cut, and that
/// the journal accepts appends afterwards.
fn check_cut(template: &Path, all: &[Placed], at: u64, how: Cut) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template, dir.path());
    let last_path = dir
        .path()
        .join(all.last().unwrap().path.file_name().unwrap());
    cut_file(&last_path, at, how);
    // An entry survives if it ends before the cut, or if every byte the cut
    // removed was zero already (a cut through zero fields changes nothing).
    let original = std::fs::read(&all.last().unwrap().path).unwrap();
    let survives = |p: &Placed| {
        let end = p.offset + p.frame_bytes;
        end <= at || original[at as usize..end as usize].iter().all(|b| *b == 0)
    };
    let mut torn = false;
    let expected: Vec<Owned> = all
        .iter()
        .filter(|p| p.entry.entry_type != EntryType::NextSegment)
        .filter(|p| {
            let keep = p.path.file_name() != last_path.file_name() || (!torn && survives(p));
            torn |= !keep;
            keep
        })
        .map(|p| p.entry.clone())
        .collect();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    assert_same(
        &read_all(dir.path()),
        &expected,
        &format!("cut at {at} ({how:?})"),
    );
    let next = journal
        .append(&NewEntry::put(1, b"after-recovery", b"x"))
        .unwrap();
    let lost = all
        .iter()
        .find(|p| p.entry.entry_type != EntryType::NextSegment && !expected.contains(&p.entry));
    assert_eq!(
        next,
        lost.map_or(all.last().unwrap().entry.sequence + 1, |p| p.entry.sequence)
    );
    drop(journal);
    let again = read_all(dir.path());
    assert_eq!(again.len(), expected.len() + 1);
    assert_eq!(again.last().unwrap().key, b"after-recovery");
}

fn entry_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>, Vec<u8>, bool)>> {
    prop::collection::vec(
        (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..3000),
            any::<bool>(),
        ),
        1..700,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random entries written, the last segment cut at a random byte, reopened
    /// and read: exactly the entries that were whole come back, bit for bit.
    #[test]
    fn a_cut_at_any_byte_keeps_exactly_the_whole_entries(entries in entry_strategy(), cut in any::<prop::sample::Index>(), zero in any::<bool>()) {
        let template = tempfile::tempdir().unwrap();
        write_entries(template.path(), &entries);
        let all = placements(template.path());
        let last = all.last().unwrap();
        let in_last: Vec<_> = all.iter().filter(|p| p.path == last.path).collect();
        let start = in_last[0].offset;
        let end = last.offset + last.frame_bytes;
        let at = start + cut.index((end - start + 1) as usize) as u64;
        check_cut(template.path(), &all, at, if zero { Cut::Zero } else { Cut::Truncate });
    }
}

#[test]
fn every_byte_offset_of_the_last_entries_recovers() {
    let template = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (0..40u8)
        .map(|i| (i, vec![i; 8], vec![i; 90 + i as usize], i % 3 == 0))
        .collect();
    write_entries(template.path(), &entries);
    let all = placements(template.path());
    let first_cut = all[all.len() - 3].offset;
    let end = all.last().unwrap().offset + all.last().unwrap().frame_bytes;
    for at in first_cut..=end {
        for how in [Cut::Truncate, Cut::Zero] {
            check_cut(template.path(), &all, at, how);
        }
    }
}

fn flip_bit(path: &Path, bit: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, bit / 8).unwrap();
    byte[0] ^= 1 << (bit % 8);
    file.write_all_at(&byte, bit / 8).unwrap();
}

#[test]
fn single_bit_flips_truncate_the_tail_and_refuse_the_middle() {
    let template = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (0..12u8)
        .map(|i| (i, vec![i; 5], vec![i; 60 + i as usize], true))
        .collect();
    write_entries(template.path(), &entries);
    let all = placements(template.path());
    let seed = common::seed("single_bit_flips");
    let mut rng = common::Rng(seed | 1);
    let n = all.len();
    for (index, placed) in all.iter().enumerate().skip(n - 4) {
        let is_last = index == n - 1;
        let bits = placed.frame_bytes * 8;
        // Every bit of the last entry; a seeded sample of the ones before it.
        let chosen: Vec<u64> = if is_last {
            (0..bits).collect()
        } else {
            (0..48).map(|_| rng.below(bits)).collect()
        };
        for bit in chosen {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template.path(), dir.path());
            let path = dir.path().join(placed.path.file_name().unwrap());
            flip_bit(&path, placed.offset * 8 + bit);
            match Journal::open(dir.path(), small_options()) {
                Ok(journal) => {
                    assert!(is_last, "flip of bit {bit} in entry {index} (not the last) was taken for a torn tail");
                    assert_eq!(
                        journal.recovery_report().next_sequence,
                        placed.entry.sequence
                    );
                    let expected: Vec<_> = all[..index].iter().map(|p| p.entry.clone()).collect();
                    assert_same(
                        &read_all(dir.path()),
                        &expected,
                        &format!("flip of bit {bit} in the last entry"),
                    );
                }
                Err(JournalError::Segment(SegmentError::Corrupt {
                    path: bad,
                    offset,
                    detail,
                })) => {
                    assert!(
                        !is_last,
                        "flip of bit {bit} in the last entry refused: {detail}"
                    );
                    assert_eq!(bad, path);
                    assert_eq!(offset, placed.offset, "{detail}");
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }
}

#[test]
fn a_hole_left_by_a_concurrent_appender_drops_the_unacknowledged_entries_after_it() {
    let template = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (0..10u8)
        .map(|i| (0, vec![i], vec![i; 30], false))
        .collect();
    write_entries(template.path(), &entries);
    let all = placements(template.path());
    let hole = &all[7];
    // An appender claimed slot 7 and died before publishing its length word.
    let file = OpenOptions::new().write(true).open(&hole.path).unwrap();
    file.write_all_at(&[0u8; 4], hole.offset).unwrap();
    let journal = Journal::open(template.path(), small_options()).unwrap();
    assert_eq!(
        journal.recovery_report().dropped_entries,
        (all.len() - 8) as u64
    );
    assert_eq!(journal.next_sequence(), hole.entry.sequence);
    let expected: Vec<_> = all[..7].iter().map(|p| p.entry.clone()).collect();
    assert_same(&read_all(template.path()), &expected, "hole");
}

fn fill_until_rotation(dir: &Path) -> Vec<(u64, PathBuf)> {
    let journal = Journal::open(dir, small_options()).unwrap();
    let mut w = journal.appender();
    let image = vec![7u8; 1500];
    while list_segments(dir).unwrap().len() < 2 {
        w.append(&NewEntry::put(1, b"k", &image)).unwrap();
    }
    list_segments(dir).unwrap()
}

/// Zeroes the first J-NR, as if rotation crashed before publishing it: the
/// new segment exists but nothing points to it. Returns the placements from
/// before and the J-NR's.
fn undo_first_jnr(dir: &Path) -> (Vec<Placed>, Placed) {
    let all = placements(dir);
    let jnr = all
        .iter()
        .find(|p| p.entry.entry_type == EntryType::NextSegment)
        .unwrap()
        .clone();
    let file = OpenOptions::new().write(true).open(&jnr.path).unwrap();
    file.write_all_at(&[0u8; 56], jnr.offset).unwrap();
    (all, jnr)
}

#[test]
fn a_newest_segment_blank_from_its_header_on_is_removed_and_one_holding_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let segments = fill_until_rotation(dir.path());
    let (_, jnr) = undo_first_jnr(dir.path());
    // A rotation that crashed before even the new segment's header was
    // durable: the whole file reads as zeros.
    let damaged = tempfile::tempdir().unwrap();
    for (_, path) in &segments {
        std::fs::copy(path, damaged.path().join(path.file_name().unwrap())).unwrap();
    }
    let newest = damaged.path().join(segments[1].1.file_name().unwrap());
    cut_file(&newest, 0, Cut::Zero);
    let journal = Journal::open(damaged.path(), small_options()).unwrap();
    assert_eq!(
        journal.recovery_report().removed_segments,
        vec![newest.clone()]
    );
    assert_eq!(journal.next_sequence(), jnr.entry.sequence);
    drop(journal);
    // The same with one byte far past the header: not blank, so refused
    // rather than removed.
    std::fs::copy(&segments[1].1, &newest).unwrap();
    cut_file(&newest, 0, Cut::Zero);
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    file.write_all_at(&[1], 512 << 10).unwrap();
    let err = Journal::open(damaged.path(), small_options()).unwrap_err();
    assert!(
        err.to_string().contains(&newest.display().to_string()),
        "{err}"
    );
    assert!(newest.exists());
}

#[test]
fn a_rotation_cut_before_its_jnr_removes_the_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let segments = fill_until_rotation(dir.path());
    let before = read_all(dir.path());
    let (all, jnr) = undo_first_jnr(dir.path());
    // Nothing reaches the new segment before its J-NR is published: a crash
    // between the two leaves it empty.
    let first_in_new = all.iter().find(|p| p.path == segments[1].1).unwrap().offset;
    cut_file(&segments[1].1, first_in_new, Cut::Zero);
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    assert_eq!(
        journal.recovery_report().removed_segments,
        vec![segments[1].1.clone()]
    );
    assert_eq!(journal.next_sequence(), jnr.entry.sequence);
    let kept: Vec<_> = before
        .into_iter()
        .filter(|e| e.sequence < jnr.entry.sequence)
        .collect();
    assert_same(&read_all(dir.path()), &kept, "J-NR undone");
}

#[test]
fn a_rotation_whose_new_segment_was_lost_is_completed() {
    let dir = tempfile::tempdir().unwrap();
    let segments = fill_until_rotation(dir.path());
    let before: Vec<_> = read_all(dir.path())
        .into_iter()
        .filter(|e| e.sequence < segments[1].0)
        .collect();
    std::fs::remove_file(&segments[1].1).unwrap();
    std::fs::write(dir.path().join("123-4.spare"), b"leftover").unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    assert_eq!(journal.recovery_report().removed_spares, 1);
    assert_eq!(journal.next_sequence(), segments[1].0);
    assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
    journal.append(&NewEntry::put(1, b"new", b"v")).unwrap();
    let after = read_all(dir.path());
    assert_same(&after[..before.len()], &before, "after lost segment");
    assert_eq!(after.last().unwrap().sequence, segments[1].0);
}

#[test]
fn entries_in_a_segment_no_jnr_leads_to_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    fill_until_rotation(dir.path());
    undo_first_jnr(dir.path());
    let err = Journal::open(dir.path(), small_options()).unwrap_err();
    assert!(err.to_string().contains("without the J-NR"), "{err}");
}

#[test]
fn damage_in_a_sealed_segment_is_reported_by_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let segments = fill_until_rotation(dir.path());
    let all = placements(dir.path());
    let victim = &all[3];
    flip_bit(&segments[0].1, victim.offset * 8 + 100);
    let err = common::read_all_from(dir.path(), 1).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("HAD0102E"), "{message}");
    assert!(
        message.contains(&format!("at offset {}", victim.offset)),
        "{message}"
    );
}

/// A reused segment file whose zeros stayed in the page cache (a journal
/// that nothing syncs, then a power loss: decisions.md 44) holds its earlier
/// use's entries after the tail. Same-sized entries after the same catalog
/// put an earlier entry exactly where the next one was due: recovery ends
/// the segment there, and appends go on from it.
#[test]
fn entries_of_a_reused_files_earlier_use_end_the_segment() {
    let template = tempfile::tempdir().unwrap();
    let segments = fill_until_rotation(template.path());
    {
        let journal = Journal::open(template.path(), small_options()).unwrap();
        let mut w = journal.appender();
        for _ in 0..3 {
            w.append(&NewEntry::put(1, b"k", &[7u8; 1500])).unwrap();
        }
    }
    let all = placements(template.path());
    let in_second: Vec<_> = all.iter().filter(|p| p.path == segments[1].1).collect();
    let last = in_second.last().unwrap();
    let tail = last.offset + last.frame_bytes.next_multiple_of(8);
    let earlier = std::fs::read(&segments[0].1).unwrap();
    assert!(
        all.iter()
            .any(|p| p.path == segments[0].1 && p.offset == tail),
        "the first segment has an entry starting at {tail}"
    );
    let expected: Vec<_> = read_all(template.path());
    // Stale from the tail itself, and from the next page (zeros between, as
    // written back with the page holding the tail).
    for stale_from in [tail, tail.next_multiple_of(4096)] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let second = dir.path().join(segments[1].1.file_name().unwrap());
        let file = OpenOptions::new().write(true).open(&second).unwrap();
        let end = earlier.len() - 56;
        file.write_all_at(&earlier[stale_from as usize..end], stale_from)
            .unwrap();
        drop(file);
        let journal = Journal::open(dir.path(), small_options()).unwrap();
        let at = format!("earlier use from {stale_from}");
        assert_eq!(journal.next_sequence(), last.entry.sequence + 1, "{at}");
        assert!(journal.recovery_report().truncated_bytes > 0, "{at}");
        journal.append(&NewEntry::put(1, b"after", b"v")).unwrap();
        drop(journal);
        let after = read_all(dir.path());
        assert_same(&after[..expected.len()], &expected, &at);
        assert_eq!(after.len(), expected.len() + 1, "{at}");
        assert_eq!(after.last().unwrap().key, b"after", "{at}");
    }
}
