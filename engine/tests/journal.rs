//! The journal writer end to end: append, rotate, read back, several appenders,
//! durability policies, fsync failure, retention and exclusive opening.

mod common;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_none_cached, dir_that_drops_cached_pages, image, read_all, read_all_from, resident_mib,
    small_options, Owned,
};
use engine::journal::{
    decode, Durability, EntryType, Journal, JournalCursor, JournalError, JournalOptions, NewEntry,
    ReadError, Step, SyncFile,
};

#[test]
fn appended_entries_read_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let journal = Journal::open(dir.path(), small_options()).unwrap();
        let mut w = journal.appender();
        let create = NewEntry::create_object(7, "LIB/ORDERS");
        expected.push(Owned::from_new(w.append(&create).unwrap(), &create));
        for i in 0..1000u64 {
            let key = i.to_le_bytes();
            let after = image(1, i, (i % 300) as usize);
            let e = match i % 4 {
                0 => NewEntry::put(7, &key, &after),
                1 => NewEntry::update(7, &key, &after, Some(b"old")),
                2 => NewEntry::delete(7, &key, None).in_cycle(5),
                _ => NewEntry::commit(5),
            };
            let seq = w.append(&e).unwrap();
            expected.push(Owned::from_new(seq, &e));
        }
    }
    assert_eq!(read_all(dir.path()), expected);
    assert_eq!(
        expected.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=1001).collect::<Vec<_>>()
    );
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    assert_eq!(journal.next_sequence(), 1002);
    assert_eq!(journal.recovery_report().truncated_bytes, 0);
    assert_eq!(journal.catalog().name(7), Some("LIB/ORDERS"));
}

#[test]
fn rotation_keeps_sequences_gap_free_and_carries_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    let mut w = journal.appender();
    w.append(&NewEntry::create_object(1, "A")).unwrap();
    let after = vec![0xAB; 1000];
    let mut batch = Vec::new();
    for i in 0..5000u64 {
        batch.push(NewEntry::put(1, b"key", &after).in_cycle(i % 3));
        if batch.len() == 37 {
            w.append_batch(&batch).unwrap();
            batch.clear();
        }
        if i == 2500 {
            w.append(&NewEntry::rename_object(1, "B")).unwrap();
        }
    }
    w.append_batch(&batch).unwrap();
    let segments = engine::journal::list_segments(dir.path()).unwrap();
    assert!(
        segments.len() >= 4,
        "expected several segments, got {}",
        segments.len()
    );
    // The reader hides J-NR entries but they take sequence numbers: check the
    // raw cursor sees every number once.
    let all = read_all(dir.path());
    let jnr = segments.len() as u64 - 1;
    assert_eq!(all.len() as u64 + jnr, journal.next_sequence() - 1);
    // A cursor opened in the last segment knows the object by its later name.
    let (last_first, _) = segments.last().unwrap();
    let mut cursor = engine::journal::JournalCursor::open(dir.path(), *last_first).unwrap();
    assert_eq!(cursor.catalog().name(1), Some("B"));
    assert!(matches!(
        cursor.step().unwrap(),
        engine::journal::Step::Entry(_)
    ));
}

#[test]
fn a_steps_place_gives_its_entry_back_only_while_the_cursor_is_in_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    let mut w = journal.appender();
    let after = vec![0x5A; 1000];
    for i in 0..3000u64 {
        w.append(&NewEntry::put(1, &i.to_be_bytes(), &after))
            .unwrap();
    }
    let mut cursor = JournalCursor::open(dir.path(), 1).unwrap();
    let mut places = Vec::new();
    let mut segments = 0;
    let mut bytes = std::fs::read(cursor.segment().path()).unwrap();
    loop {
        match cursor.step().unwrap() {
            Step::Entry(at) => {
                let entry = cursor.entry(at).unwrap();
                // The same bytes a full decode at that offset yields.
                let decoded = decode(&bytes[at.offset()..]).unwrap();
                assert_eq!(entry.as_bytes(), decoded.as_bytes());
                assert_eq!(entry.sequence(), decoded.sequence());
                places.push(at);
            }
            Step::EndOfSegment => {
                // Every place in the segment left behind is refused from now on.
                let before = places.len();
                cursor.next_segment().unwrap();
                bytes = std::fs::read(cursor.segment().path()).unwrap();
                segments += 1;
                assert!(places[..before]
                    .iter()
                    .all(|&at| cursor.entry(at).is_none()));
                places.clear();
            }
            Step::Idle => break,
        }
    }
    assert!(
        segments >= 2,
        "only {segments} segments: the test needs rotations"
    );
    assert!(places.iter().all(|&at| cursor.entry(at).is_some()));
}

#[test]
fn concurrent_appenders_get_unique_gap_free_sequences_in_their_own_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(
        dir.path(),
        JournalOptions {
            background_preallocation: true,
            ..small_options()
        },
    )
    .unwrap();
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 20_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let journal = journal.clone();
            s.spawn(move || {
                let mut w = journal.appender();
                for i in 0..PER_THREAD {
                    let key = i.to_le_bytes();
                    let after = image(t, i, 40 + (i % 64) as usize);
                    if i % 10 == 0 {
                        w.append_batch(&[
                            NewEntry::put(t, &key, &after),
                            NewEntry::commit(t * PER_THREAD + i + 1),
                        ])
                        .unwrap();
                    } else {
                        w.append(&NewEntry::put(t, &key, &after)).unwrap();
                    }
                }
            });
        }
    });
    let all = read_all(dir.path());
    let puts: Vec<_> = all
        .iter()
        .filter(|e| e.entry_type == EntryType::RecordPut)
        .collect();
    assert_eq!(puts.len() as u64, THREADS * PER_THREAD);
    for t in 0..THREADS {
        let mine: Vec<_> = puts.iter().filter(|e| e.object_id == t).collect();
        for (i, e) in mine.iter().enumerate() {
            assert_eq!(
                e.key,
                (i as u64).to_le_bytes(),
                "thread {t} entry {i} out of order"
            );
            assert_eq!(e.after, image(t, i as u64, 40 + (i % 64)));
        }
    }
    assert!(engine::journal::list_segments(dir.path()).unwrap().len() > 3);
}

/// Counts syncs; fails every sync after the first `fail_after`.
#[derive(Debug)]
struct TestSync {
    calls: AtomicUsize,
    fail_after: usize,
}

impl SyncFile for TestSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.fail_after {
            return Err(io::Error::other("injected EIO"));
        }
        file.sync_data()
    }
}

#[test]
fn a_failed_fsync_makes_the_journal_refuse_further_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sync = Arc::new(TestSync {
        calls: AtomicUsize::new(0),
        fail_after: 2,
    });
    let options = JournalOptions {
        durability: Durability::Fsync,
        syncer: sync.clone(),
        ..small_options()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let mut w = journal.appender();
    w.append(&NewEntry::put(1, b"a", b"1")).unwrap();
    w.append(&NewEntry::put(1, b"b", b"2")).unwrap();
    let err = w.append(&NewEntry::put(1, b"c", b"3")).unwrap_err();
    assert!(matches!(err, JournalError::SyncFailed { .. }), "{err}");
    assert!(err.to_string().starts_with("HAD0103E"));
    let again = w.append(&NewEntry::put(1, b"d", b"4")).unwrap_err();
    assert!(matches!(again, JournalError::Poisoned { .. }), "{again}");
    assert!(matches!(
        journal.flush(),
        Err(JournalError::Poisoned { .. })
    ));
    drop(w);
    drop(journal);
    // Reopening recovers: the two durable entries are there.
    let all = read_all(dir.path());
    assert_eq!(
        all[..2].iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_committers() {
    let dir = tempfile::tempdir().unwrap();
    let sync = Arc::new(TestSync {
        calls: AtomicUsize::new(0),
        fail_after: usize::MAX,
    });
    let options = JournalOptions {
        durability: Durability::GroupCommit {
            max_delay: Duration::from_millis(2),
        },
        syncer: sync.clone(),
        ..small_options()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    const THREADS: usize = 8;
    const COMMITS: usize = 25;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let journal = journal.clone();
            s.spawn(move || {
                let mut w = journal.appender();
                for i in 0..COMMITS {
                    let seq = w
                        .append(&NewEntry::put(t as u64, &i.to_le_bytes(), b"v"))
                        .unwrap();
                    assert!(
                        journal.durable_sequence() >= seq,
                        "append returned before its entry was durable"
                    );
                }
            });
        }
    });
    let syncs = sync.calls.load(Ordering::SeqCst);
    assert!(
        syncs < THREADS * COMMITS / 2,
        "{syncs} fsyncs for {} commits: not grouped",
        THREADS * COMMITS
    );
    assert_eq!(journal.durable_sequence(), (THREADS * COMMITS) as u64);
}

#[test]
fn purge_removes_only_segments_entirely_at_or_below_the_safe_position() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    let mut w = journal.appender();
    let after = vec![1u8; 2000];
    for _ in 0..2000 {
        w.append(&NewEntry::put(1, b"k", &after)).unwrap();
    }
    let before = engine::journal::list_segments(dir.path()).unwrap();
    assert!(before.len() >= 3);
    let second_first = before[1].0;
    // Safe position one short of the first segment's last entry: nothing goes.
    assert!(journal
        .purge_before(second_first - 2)
        .unwrap()
        .removed
        .is_empty());
    let report = journal.purge_before(second_first - 1).unwrap();
    assert_eq!(report.removed, vec![before[0].1.clone()]);
    assert_eq!(report.retained_from, second_first);
    assert!(matches!(
        read_all_from(dir.path(), 1),
        Err(ReadError::Purged { .. })
    ));
    assert_eq!(
        read_all_from(dir.path(), second_first).unwrap()[0].sequence,
        second_first
    );
    // Everything acknowledged: all but the active segment go.
    journal.purge_before(u64::MAX).unwrap();
    assert_eq!(engine::journal::list_segments(dir.path()).unwrap().len(), 1);
}

#[test]
fn retention_keeps_every_segment_some_backup_has_not_acknowledged() {
    use engine::journal::AckRecord;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    let mut w = journal.appender();
    let after = vec![1u8; 2000];
    for _ in 0..2000 {
        w.append(&NewEntry::put(1, b"k", &after)).unwrap();
    }
    let segments = engine::journal::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 4);
    // No backup recorded: nothing is purged.
    assert!(journal.purge_acknowledged().unwrap().is_none());
    assert_eq!(
        engine::journal::list_segments(dir.path()).unwrap(),
        segments
    );

    // Two backups; the slower one holds everything it has not acknowledged.
    let mut fast = AckRecord::open(dir.path(), "fast").unwrap();
    let mut slow = AckRecord::open(dir.path(), "slow").unwrap();
    fast.store(segments[3].0).unwrap();
    slow.store(segments[1].0).unwrap();
    // An older position never moves a record back.
    fast.store(2).unwrap();
    assert_eq!(
        AckRecord::open(dir.path(), "fast").unwrap().position(),
        segments[3].0
    );
    let report = journal.purge_acknowledged().unwrap().unwrap();
    assert_eq!(report.removed, vec![segments[0].1.clone()]);
    assert_eq!(report.retained_from, segments[1].0);

    // A local consumer's hold keeps what both backups have acknowledged.
    let mut hold = engine::journal::HoldRecord::open_hold(dir.path(), "source-store").unwrap();
    hold.store(segments[2].0).unwrap();
    slow.store(segments[3].0).unwrap();
    let report = journal.purge_acknowledged().unwrap().unwrap();
    assert_eq!(report.removed, vec![segments[1].1.clone()]);
    assert_eq!(report.retained_from, segments[2].0);
    assert_eq!(
        engine::journal::held_positions(dir.path()).unwrap(),
        vec![("source-store".to_owned(), segments[2].0)]
    );

    // A damaged record retains everything for that backup.
    std::fs::write(dir.path().join("acked-slow.pos"), [0xff; 16]).unwrap();
    assert_eq!(
        engine::journal::acked_positions(dir.path()).unwrap(),
        vec![("fast".to_owned(), segments[3].0), ("slow".to_owned(), 1)]
    );
    assert!(journal
        .purge_acknowledged()
        .unwrap()
        .unwrap()
        .removed
        .is_empty());
    assert!(AckRecord::open(dir.path(), "../x").is_err());
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _journal = Journal::open(dir.path(), small_options()).unwrap();
    let err = Journal::open(dir.path(), small_options()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}

#[test]
fn object_operations_are_checked_against_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), small_options()).unwrap();
    journal.append(&NewEntry::create_object(1, "A")).unwrap();
    for bad in [
        NewEntry::create_object(1, "B"),
        NewEntry::create_object(2, "A"),
        NewEntry::drop_object(9),
    ] {
        let err = journal.append(&bad).unwrap_err();
        assert!(matches!(err, JournalError::Catalog(_)), "{err}");
    }
    journal.append(&NewEntry::drop_object(1)).unwrap();
    journal.append(&NewEntry::create_object(2, "A")).unwrap();
    assert_eq!(read_all(dir.path()).len(), 3);
}

#[test]
fn wrong_journal_id_and_bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Journal::open(dir.path(), small_options()).unwrap());
    let err = Journal::open(
        dir.path(),
        JournalOptions {
            journal_id: 2,
            ..small_options()
        },
    )
    .unwrap_err();
    assert!(matches!(err, JournalError::WrongJournal { .. }), "{err}");
    let err = Journal::open(
        dir.path(),
        JournalOptions {
            segment_bytes: 1000,
            ..small_options()
        },
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("HAD0111E"), "{err}");
}

/// Small segments with the background thread (zero-filled spares) and the
/// purge of acknowledged segments on.
fn purging_options() -> JournalOptions {
    JournalOptions {
        background_preallocation: true,
        zero_fill_spares: true,
        purge_acknowledged: true,
        ..small_options()
    }
}

/// Appends `count` entries whose images tell them apart; what was appended.
fn append_tagged(journal: &Journal, from: u64, count: u64) -> Vec<Owned> {
    let mut w = journal.appender();
    (from..from + count)
        .map(|i| {
            let key = i.to_le_bytes();
            let after = image(9, i, 200 + (i % 100) as usize);
            let e = NewEntry::put(1, &key, &after);
            Owned::from_new(w.append(&e).unwrap(), &e)
        })
        .collect()
}

/// What is left of the journal in `dir` (from its oldest segment on)
/// reads back entry for entry as `appended` has it.
fn assert_rest_reads_back(dir: &std::path::Path, appended: &[Owned]) {
    let oldest = engine::journal::list_segments(dir).unwrap()[0].0;
    let kept: Vec<Owned> = appended
        .iter()
        .filter(|e| e.sequence >= oldest)
        .cloned()
        .collect();
    assert_eq!(read_all_from(dir, oldest).unwrap(), kept);
}

/// The inode of `path`, unless purge removed it meanwhile.
/// A file by inode and birth time: the file system gives a deleted file's
/// inode to the next file made, and a rename keeps both.
fn file_id(path: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    let created = metadata.created().ok()?;
    Some((std::os::unix::fs::MetadataExt::ino(&metadata), created))
}

#[test]
fn acknowledged_segments_are_purged_at_rotation_and_their_files_become_new_segments() {
    use engine::journal::{list_segments, AckRecord, HoldRecord};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), purging_options()).unwrap();
    let mut appended = Vec::new();
    // No backup recorded yet: everything is kept.
    while list_segments(dir.path()).unwrap().len() < 4 {
        appended.extend(append_tagged(&journal, appended.len() as u64, 500));
    }
    let mut ack = AckRecord::open(dir.path(), "backup").unwrap();
    // Which name first had each file: a segment whose file an earlier
    // segment had is a purged segment's file made into a new one.
    let mut first_name = std::collections::HashMap::new();
    let mut reused = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reused.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no segment reused");
        appended.extend(append_tagged(&journal, appended.len() as u64, 200));
        // The backup has everything up to here.
        ack.store(journal.next_sequence()).unwrap();
        for (_, path) in list_segments(dir.path()).unwrap() {
            let Some(file) = file_id(&path) else {
                continue;
            };
            let first = first_name.entry(file).or_insert_with(|| path.clone());
            if *first != path {
                reused.insert(path);
            }
        }
    }
    assert!(
        list_segments(dir.path()).unwrap()[0].0 > 1,
        "acknowledged segments were purged"
    );
    // A local consumer's hold (new: at 1) stops purging. Once the oldest
    // segment has stayed put across two rotations no purge begun before it
    // is still under way (the background thread purges, then makes the
    // spare the next rotation takes; on a slow host it can be a rotation or
    // more behind), and what is left reads back whole, through the reused
    // files too. (A reader of a segment being purged may see it reused
    // underneath it: decisions.md 35.)
    let mut hold = HoldRecord::open_hold(dir.path(), "consumer").unwrap();
    let newest = |dir: &std::path::Path| list_segments(dir).unwrap().last().unwrap().0;
    let mut oldest = list_segments(dir.path()).unwrap()[0].0;
    let (mut last, mut rotations) = (newest(dir.path()), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rotations < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "purging did not stop under the hold"
        );
        appended.extend(append_tagged(&journal, appended.len() as u64, 200));
        let now_oldest = list_segments(dir.path()).unwrap()[0].0;
        if now_oldest != oldest {
            (oldest, rotations) = (now_oldest, 0);
        } else if newest(dir.path()) != last {
            (last, rotations) = (newest(dir.path()), rotations + 1);
        }
    }
    assert_rest_reads_back(dir.path(), &appended);

    // The hold keeps its segments whatever the backup has.
    hold.store(journal.next_sequence()).unwrap();
    let held_from = list_segments(dir.path()).unwrap().last().unwrap().0;
    for _ in 0..20 {
        appended.extend(append_tagged(&journal, appended.len() as u64, 200));
        ack.store(journal.next_sequence()).unwrap();
    }
    assert!(
        list_segments(dir.path()).unwrap()[0].0 <= held_from,
        "a held segment was purged"
    );
    let last = journal.next_sequence();
    drop(journal);

    // Reopened: no torn tail in a reused file, nothing lost, no spare left.
    // (Without purging: the reopened journal's background thread would
    // purge up to the hold meanwhile, under the reader's feet.)
    let reopened = JournalOptions {
        purge_acknowledged: false,
        ..purging_options()
    };
    let journal = Journal::open(dir.path(), reopened).unwrap();
    let report = journal.recovery_report();
    assert_eq!((report.next_sequence, report.truncated_bytes), (last, 0));
    assert_rest_reads_back(dir.path(), &appended);
}

/// A backup that acknowledges late lets several segments go at one purge:
/// their files make the next spares, not only the first of them.
#[test]
fn segments_purged_together_make_the_spares_of_the_rotations_that_follow() {
    use engine::journal::{list_segments, AckRecord};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), purging_options()).unwrap();
    // The files made at open (decisions.md 79) are taken by the first
    // rotations, so the list of files for reuse is empty at the purge.
    wait_for_spare_files(dir.path(), 3);
    let mut appended = 0;
    while list_segments(dir.path()).unwrap().len() < 7 {
        appended += append_tagged(&journal, appended, 200).len() as u64;
    }
    let purged: std::collections::HashSet<_> = list_segments(dir.path())
        .unwrap()
        .iter()
        .filter_map(|(_, path)| file_id(path))
        .collect();
    // Everything so far acknowledged at once; no acknowledgement after.
    AckRecord::open(dir.path(), "backup")
        .unwrap()
        .store(journal.next_sequence())
        .unwrap();
    let before = list_segments(dir.path()).unwrap().last().unwrap().0;
    let mut later = Vec::new();
    // Six rotations: the first may take a spare made before the purge.
    while later.len() < 6 {
        appended += append_tagged(&journal, appended, 200).len() as u64;
        let seen = later.len();
        later = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .filter(|(first, _)| *first > before)
            .collect();
        if later.len() > seen {
            // A rotation: give the background thread the time a writer
            // that does not outrun it leaves (a rotation that finds no
            // spare ready makes a new file: this test is about which files
            // spares are made of, not about that race, which a slow host
            // loses).
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let reused = later
        .iter()
        .filter(|(_, path)| file_id(path).is_some_and(|f| purged.contains(&f)))
        .count();
    assert!(
        reused >= 4,
        "{reused} of the 6 segments after the purge reused a purged file"
    );
}

/// Files ending in `.spare` in `dir`, by file identity.
fn spare_files(dir: &std::path::Path) -> std::collections::HashSet<(u64, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spare"))
        .filter_map(|p| file_id(&p))
        .collect()
}

/// Waits (up to 30 s) until `dir` holds `n` spare files; them.
fn wait_for_spare_files(
    dir: &std::path::Path,
    n: usize,
) -> std::collections::HashSet<(u64, std::time::SystemTime)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let made = spare_files(dir);
        if made.len() >= n {
            return made;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} spare files after open, not {n}",
            made.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An opened journal has no purged files to reuse until its backups
/// acknowledge: its background thread makes two new ones after its first
/// spare, so the rotations that follow take ready spares rather than
/// waiting for new files' paced zero-fills (decisions.md 79).
#[test]
fn an_opened_journal_makes_files_for_its_next_spares_before_anything_is_purged() {
    use engine::journal::list_segments;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), purging_options()).unwrap();
    // The spare and two files for reuse.
    let made = wait_for_spare_files(dir.path(), 3);
    // No backup is recorded: nothing is purged, so every segment after
    // the first is a file made before anything was appended, or a new one.
    let mut appended = 0;
    let mut rotations = 0;
    while rotations < 3 {
        appended += append_tagged(&journal, appended, 200).len() as u64;
        let now = list_segments(dir.path()).unwrap().len() - 1;
        if now > rotations {
            rotations = now;
            // The time a writer that does not outrun the background thread
            // leaves it to make the next spare, as in the test above.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let segments = list_segments(dir.path()).unwrap();
    let from_made = segments[1..4]
        .iter()
        .filter(|(_, path)| file_id(path).is_some_and(|f| made.contains(&f)))
        .count();
    assert_eq!(
        from_made, 3,
        "segments 2-4 of {segments:?}: {from_made} made at open"
    );
    assert_eq!(read_all(dir.path()).len() as u64, appended);
    // Closing removes what is left of them.
    drop(journal);
    assert!(spare_files(dir.path()).is_empty());
}

#[test]
fn without_the_background_purge_acknowledged_segments_are_kept() {
    use engine::journal::{list_segments, AckRecord};
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        purge_acknowledged: false,
        ..purging_options()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let mut ack = AckRecord::open(dir.path(), "backup").unwrap();
    let mut appended = 0;
    while list_segments(dir.path()).unwrap().len() < 6 {
        appended += append_tagged(&journal, appended, 200).len() as u64;
        ack.store(journal.next_sequence()).unwrap();
    }
    assert_eq!(list_segments(dir.path()).unwrap()[0].0, 1);
    assert_eq!(read_all(dir.path()).len() as u64, appended);
}

#[test]
fn a_flush_after_purged_segments_were_reused_syncs_what_is_published() {
    use engine::journal::{list_segments, AckRecord};
    for durability in [
        Durability::None,
        Durability::GroupCommit {
            max_delay: Duration::ZERO,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            durability,
            ..purging_options()
        };
        let journal = Journal::open(dir.path(), options).unwrap();
        let mut ack = AckRecord::open(dir.path(), "backup").unwrap();
        let mut w = journal.appender();
        let after = vec![5u8; 300];
        let mut first_name = std::collections::HashMap::new();
        let mut reused = 0;
        let mut i = 0u64;
        let syncs = durability != Durability::None;
        if syncs {
            // Entries no commit has made durable here yet are kept, even
            // when the backup has them all.
            while list_segments(dir.path()).unwrap().len() < 5 {
                w.append_deferred(&NewEntry::put(1, &i.to_le_bytes(), &after).in_cycle(1))
                    .unwrap();
                i += 1;
                ack.store(journal.next_sequence()).unwrap();
            }
            assert_eq!(list_segments(dir.path()).unwrap()[0].0, 1);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Entries appended without a commit point (with `Durability::None`
        // nothing ever syncs): the backup acknowledges them and their
        // segments are purged and reused, behind the sync cursor.
        while reused < 3 {
            assert!(std::time::Instant::now() < deadline, "no segment reused");
            for _ in 0..200 {
                w.append_deferred(&NewEntry::put(1, &i.to_le_bytes(), &after).in_cycle(1))
                    .unwrap();
                i += 1;
            }
            if syncs {
                w.append(&NewEntry::commit(1)).unwrap();
            }
            ack.store(journal.next_sequence()).unwrap();
            for (_, path) in list_segments(dir.path()).unwrap() {
                let Some(file) = file_id(&path) else {
                    continue;
                };
                if *first_name.entry(file).or_insert_with(|| path.clone()) != path {
                    reused += 1;
                    first_name.insert(file, path);
                }
            }
        }
        let last = journal.next_sequence() - 1;
        assert_eq!(journal.flush().unwrap(), last, "{durability:?}");
        assert_eq!(journal.durable_sequence(), last);
    }
}

/// Notes, at each sync, the first sequence in the synced file's header and
/// whether a segment of that name was in the directory yet.
#[derive(Debug)]
struct HeaderAtSync {
    dir: std::path::PathBuf,
    seen: parking_lot::Mutex<Vec<(u64, bool)>>,
}

impl SyncFile for HeaderAtSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut raw = [0u8; engine::limits::SEGMENT_HEADER_BYTES];
        file.read_at(&mut raw, 0)?;
        let len = file.metadata()?.len();
        if let Ok(header) = engine::journal::segment::SegmentHeader::decode(&raw, len) {
            let first = header.first_sequence;
            let named = self
                .dir
                .join(engine::journal::segment_file_name(first))
                .exists();
            self.seen.lock().push((first, named));
        }
        file.sync_data()
    }
}

/// At rotation, the new segment's header and catalog are synced before
/// the segment takes its name: a name never points at a blank header that
/// was not written yet when the file was last synced.
#[test]
fn a_new_segment_is_synced_with_its_header_before_it_takes_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Arc::new(HeaderAtSync {
        dir: dir.path().to_owned(),
        seen: Default::default(),
    });
    let options = JournalOptions {
        durability: Durability::GroupCommit {
            max_delay: Duration::ZERO,
        },
        syncer: syncer.clone(),
        ..small_options()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    let mut w = journal.appender();
    let after = image(1, 1, 300);
    while engine::journal::list_segments(dir.path()).unwrap().len() < 4 {
        w.append(&NewEntry::put(1, b"key", &after)).unwrap();
        w.append(&NewEntry::commit(1)).unwrap();
    }
    let segments = engine::journal::list_segments(dir.path()).unwrap();
    let seen = syncer.seen.lock().clone();
    for (first, _) in &segments[1..] {
        assert!(
            seen.contains(&(*first, false)),
            "segment {first} was not synced with its header before its rename: {seen:?}"
        );
    }
}

#[test]
fn a_cursor_gives_back_the_segments_it_finishes_far_behind_the_writer() {
    let Some(root) = dir_that_drops_cached_pages() else {
        return;
    };
    let dir = root.path().join("journal");
    {
        let journal = Journal::open(&dir, small_options()).unwrap();
        let mut w = journal.appender();
        w.append(&NewEntry::create_object(1, "A")).unwrap();
        let after = vec![0xAB; 1000];
        for i in 0..6000u64 {
            w.append(&NewEntry::put(1, &i.to_le_bytes(), &after))
                .unwrap();
        }
    }
    let segments = engine::journal::list_segments(&dir).unwrap();
    assert!(segments.len() >= 5, "expected rotation: {segments:?}");
    for (_, path) in &segments {
        // Clean pages: dirty ones are only queued for write-back when dropped.
        File::open(path).unwrap().sync_all().unwrap();
        assert!(resident_mib(path)[0], "{} is not cached", path.display());
    }
    assert_eq!(read_all(&dir).len(), 6001);
    // Finished with two or more segments still to read: given back.
    let (behind, tail) = segments.split_at(segments.len() - 3);
    for (_, path) in behind {
        assert_none_cached(path);
    }
    // Finished with fewer, the cursor was at the writer's tail: kept (for
    // their files' reuse as spares), as is the one it stopped in.
    for (_, path) in tail {
        assert!(resident_mib(path)[0], "{} was dropped", path.display());
    }
}

/// A full disk fails the append that needs a new segment, with an error
/// naming the file, and the journal refuses writes from then on (HAD0104E,
/// as after a failed fsync) even once there is room; every entry
/// acknowledged before is read back, and reopened it takes the next ones,
/// with or without background preallocation.
#[test]
fn a_full_disk_fails_the_append_that_needs_a_segment_and_loses_nothing() {
    for background_preallocation in [false, true] {
        let Some(fs) = testkit::SmallFs::mount(8 << 20) else {
            return;
        };
        let dir = fs.path().join("journal");
        let ballast = fs.path().join("ballast");
        std::fs::write(&ballast, vec![1u8; 2 << 20]).unwrap();
        let options = || JournalOptions {
            durability: Durability::Fsync,
            background_preallocation,
            ..small_options()
        };
        let mut expected = Vec::new();
        let after = image(3, 0, 1000);
        let put = |w: &mut engine::journal::Appender, i: u64, expected: &mut Vec<Owned>| {
            let key = i.to_le_bytes();
            let e = NewEntry::put(1, &key, &after);
            let seq = w.append(&e)?;
            expected.push(Owned::from_new(seq, &e));
            Ok::<(), JournalError>(())
        };
        let journal = Journal::open(&dir, options()).unwrap();
        let mut w = journal.appender();
        let err = (0..100_000u64)
            .find_map(|i| put(&mut w, i, &mut expected).err())
            .expect("the disk filled up");
        let text = err.to_string();
        assert!(
            text.contains("No space left") && text.contains(&*dir.to_string_lossy()),
            "{text}"
        );
        assert_eq!(read_all(&dir), expected);

        std::fs::remove_file(&ballast).unwrap();
        let err = put(&mut w, 1_000_000, &mut expected).unwrap_err();
        assert!(err.to_string().starts_with("HAD0104E"), "{err}");
        drop(w);
        drop(journal);
        let journal = Journal::open(&dir, options()).unwrap();
        // Nothing of the failed append is there.
        assert_eq!(
            journal.next_sequence(),
            expected.last().unwrap().sequence + 1
        );
        let mut w = journal.appender();
        for i in 0..100u64 {
            put(&mut w, 1_000_000 + i, &mut expected).unwrap();
        }
        drop(w);
        drop(journal);
        assert_eq!(read_all(&dir), expected);
    }
}

/// A newest segment cut short (by a crash or by hand) is restored to its
/// length with its blocks allocated: on a full disk that fails the open,
/// naming the segment, instead of letting an append store to a mapped page
/// with nothing behind it (a SIGBUS: the test binary dies without it);
/// with room again it opens and takes appends, every entry kept.
#[test]
fn a_cut_segment_is_restored_with_its_blocks_or_refused_on_a_full_disk() {
    let Some(fs) = testkit::SmallFs::mount(4 << 20) else {
        return;
    };
    let dir = fs.path().join("journal");
    let mut expected = Vec::new();
    {
        let journal = Journal::open(&dir, small_options()).unwrap();
        let mut w = journal.appender();
        for i in 0..100u64 {
            let key = i.to_le_bytes();
            let e = NewEntry::put(1, &key, b"value");
            expected.push(Owned::from_new(w.append(&e).unwrap(), &e));
        }
    }
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jrn"))
        .collect();
    segments.sort();
    let newest = segments.last().expect("a segment");
    File::options()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(256 << 10)
        .unwrap();
    let ballast = fs.path().join("ballast");
    let mut fill = File::create(&ballast).unwrap();
    while io::Write::write_all(&mut fill, &[1u8; 4096]).is_ok() {}

    let err = Journal::open(&dir, small_options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("restore segment length") && err.contains("No space left"),
        "{err}"
    );
    drop(fill);
    std::fs::remove_file(&ballast).unwrap();
    let journal = Journal::open(&dir, small_options()).unwrap();
    let mut w = journal.appender();
    for i in 100..3000u64 {
        let key = i.to_le_bytes();
        let e = NewEntry::put(1, &key, b"value");
        expected.push(Owned::from_new(w.append(&e).unwrap(), &e));
    }
    drop(w);
    drop(journal);
    assert_eq!(read_all(&dir), expected);
}
