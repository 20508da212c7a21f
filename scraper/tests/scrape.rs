//! The scraper against real journals: following a live tail across rotations,
//! starting anywhere, selecting objects by name, bounding batches, and
//! sleeping (not spinning) while idle.

use std::time::{Duration, Instant};

use engine::journal::{Durability, EntryType, Journal, JournalOptions, NewEntry};
use engine::limits::SEGMENT_BYTES_MIN;
use engine::workload;
use proptest::prelude::*;
use scraper::{ObjectSelector, ScrapeOptions, Scraper};

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: SEGMENT_BYTES_MIN,
        durability: Durability::None,
        ..JournalOptions::default()
    }
}

/// (sequence, type, object, key) of everything a scraper yields until `until`.
fn scrape_until(scraper: &mut Scraper, until: u64) -> Vec<(u64, EntryType, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let started = Instant::now();
    while scraper.next_sequence() < until {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "scraper stuck at {}",
            scraper.next_sequence()
        );
        let batch = scraper.next_batch(Duration::from_millis(100)).unwrap();
        for e in batch.iter() {
            out.push((
                e.sequence(),
                e.entry_type(),
                e.object_id(),
                e.key().to_vec(),
            ));
        }
    }
    out
}

#[test]
fn follows_a_live_tail_across_rotations_while_two_writers_append() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    journal.append(&NewEntry::create_object(1, "T")).unwrap();
    const PER_THREAD: u64 = 30_000;
    let mut scraper = Scraper::open(dir.path(), ScrapeOptions::default()).unwrap();
    let got = std::thread::scope(|s| {
        for t in 0..2u64 {
            let journal = journal.clone();
            s.spawn(move || {
                let mut w = journal.appender();
                let mut after = [0u8; 100];
                for i in 0..PER_THREAD {
                    workload::fill_image(t, i, &mut after);
                    w.append(&NewEntry::put(1, &workload::key(t, i), &after))
                        .unwrap();
                }
            });
        }
        let reader = s.spawn(move || {
            let mut out = Vec::new();
            let started = Instant::now();
            while out.len() < (2 * PER_THREAD + 1) as usize {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "scraper stuck after {} entries",
                    out.len()
                );
                let batch = scraper.next_batch(Duration::from_millis(50)).unwrap();
                for e in batch.iter() {
                    if e.entry_type() == EntryType::RecordPut {
                        let (t, i) = workload::parse_key(e.key()).unwrap();
                        assert_eq!(e.after(), workload::image(t, i, 100));
                    }
                    out.push(e.sequence());
                }
            }
            out
        });
        reader.join().unwrap()
    });
    assert!(engine::journal::list_segments(dir.path()).unwrap().len() > 5);
    assert!(
        got.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= 2),
        "sequence order broken"
    );
    assert_eq!(got.len() as u64, 2 * PER_THREAD + 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// From any starting position the scraper yields exactly the entries at
    /// and after it, in order, with batch limits respected.
    #[test]
    fn starts_at_any_position_and_respects_batch_limits(
        count in 1u64..6000, image in 0usize..600, from_pick in any::<prop::sample::Index>(),
        entries_max in 1usize..300, bytes_max in 1usize..20_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), options()).unwrap();
        journal.append(&NewEntry::create_object(1, "T")).unwrap();
        let mut w = journal.appender();
        let after = vec![3u8; image];
        for i in 0..count {
            w.append(&NewEntry::put(1, &i.to_le_bytes(), &after)).unwrap();
        }
        let end = journal.next_sequence();
        let from = 1 + from_pick.index(end as usize) as u64;
        let mut scraper = Scraper::open(dir.path(), ScrapeOptions {
            from_sequence: from, batch_entries_max: entries_max, batch_bytes_max: bytes_max, ..ScrapeOptions::default()
        }).unwrap();
        // The position starts where asked, even mid-segment, and every
        // batch's entries lie between the position before and after it.
        prop_assert_eq!(scraper.next_sequence(), from);
        let mut got = Vec::new();
        loop {
            let start = scraper.next_sequence();
            let batch = scraper.next_batch(Duration::ZERO).unwrap();
            for e in batch.iter() {
                prop_assert!(start <= e.sequence() && e.sequence() < batch.next_sequence());
            }
            if batch.is_empty() && batch.next_sequence() >= end {
                break;
            }
            prop_assert!(batch.len() <= entries_max);
            let frame = image + 56 + 8;
            prop_assert!(batch.bytes() < bytes_max + frame, "batch of {} bytes", batch.bytes());
            got.extend(batch.iter().map(|e| e.sequence()));
        }
        // Everything from `from` on, except the J-NR entries closing segments.
        let jnr: Vec<u64> = engine::journal::list_segments(dir.path()).unwrap()[1..].iter().map(|(first, _)| first - 1).collect();
        let expected: Vec<u64> = (from..end).filter(|s| !jnr.contains(s)).collect();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn selects_objects_by_name_through_creates_renames_and_drops() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    let mut w = journal.appender();
    w.append(&NewEntry::create_object(1, "LIB/ORDERS")).unwrap();
    w.append(&NewEntry::create_object(2, "LIB/ORDTMP")).unwrap();
    w.append(&NewEntry::create_object(3, "OTHER/X")).unwrap();
    let filler = vec![0u8; 3000];
    // Enough records that the journal rotates, so a scraper that starts late
    // learns names from a segment's catalog.
    for i in 0..800u64 {
        w.append(&NewEntry::put(1 + i % 3, &i.to_le_bytes(), &filler))
            .unwrap();
    }
    w.append(&NewEntry::rename_object(3, "LIB/ORDX")).unwrap(); // now selected
    w.append(&NewEntry::put(3, b"after-rename", b"")).unwrap();
    w.append(&NewEntry::drop_object(1)).unwrap(); // selected drop passes
    w.append(&NewEntry::put(2, b"tmp", b"").in_cycle(9))
        .unwrap(); // excluded object
    w.append(&NewEntry::commit(9)).unwrap(); // boundaries always pass
    let end = journal.next_sequence();
    assert!(engine::journal::list_segments(dir.path()).unwrap().len() > 1);
    let selector = ObjectSelector::new(&["LIB/ORD*"], &["LIB/ORDTMP"]).unwrap();
    for from in [1, end - 600, end - 6] {
        let mut scraper = Scraper::open(
            dir.path(),
            ScrapeOptions {
                from_sequence: from,
                selector: selector.clone(),
                ..ScrapeOptions::default()
            },
        )
        .unwrap();
        let got = scrape_until(&mut scraper, end);
        assert!(got.iter().all(|(seq, ..)| *seq >= from));
        for (seq, entry_type, object, key) in &got {
            let ok = match entry_type {
                EntryType::RecordPut => *object == 1 || (*object == 3 && key == b"after-rename"),
                EntryType::ObjectCreate => *object == 1,
                EntryType::ObjectRename | EntryType::ObjectDrop => *object == 3 || *object == 1,
                EntryType::Commit => true,
                _ => false,
            };
            assert!(
                ok,
                "from {from}: unexpected {entry_type:?} of object {object} at {seq}"
            );
        }
        let tail: Vec<_> = got
            .iter()
            .rev()
            .take(4)
            .map(|(_, t, o, _)| (*t, *o))
            .collect();
        assert_eq!(
            tail,
            vec![
                (EntryType::Commit, 0),
                (EntryType::ObjectDrop, 1),
                (EntryType::RecordPut, 3),
                (EntryType::ObjectRename, 3)
            ],
            "from {from}"
        );
        let puts_of_1 = got
            .iter()
            .filter(|(s, t, o, _)| *t == EntryType::RecordPut && *o == 1 && *s >= from)
            .count();
        if from == 1 {
            assert_eq!(puts_of_1, 267);
        }
    }
}

fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_THREAD is Linux's.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by getrusage above.
    let u = unsafe { usage.assume_init() };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(u.ru_utime) + micros(u.ru_stime))
}

#[test]
fn an_idle_scraper_sleeps_and_wakes_when_an_entry_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    journal.append(&NewEntry::create_object(1, "T")).unwrap();
    let mut scraper = Scraper::open(
        dir.path(),
        ScrapeOptions {
            from_sequence: 2,
            ..ScrapeOptions::default()
        },
    )
    .unwrap();
    // Idle: an empty batch after the wait, with (almost) no CPU burnt.
    let cpu = thread_cpu();
    let started = Instant::now();
    assert!(scraper
        .next_batch(Duration::from_millis(300))
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    let burnt = thread_cpu() - cpu;
    assert!(
        burnt < Duration::from_millis(100),
        "idle wait burnt {burnt:?} of CPU"
    );
    // A publish wakes a long wait early.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            journal.append(&NewEntry::put(1, b"k", b"v")).unwrap();
        });
        let started = Instant::now();
        let batch = scraper.next_batch(Duration::from_secs(20)).unwrap();
        assert_eq!(batch.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woke only after {:?}",
            started.elapsed()
        );
    });
}

/// A scraper of everything after the create of object 1, with `linger` and
/// `batch_bytes_max`.
fn lingering(dir: &std::path::Path, linger: Duration, batch_bytes_max: usize) -> Scraper {
    Scraper::open(
        dir,
        ScrapeOptions {
            from_sequence: 2,
            linger,
            batch_bytes_max,
            ..ScrapeOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn a_small_batch_held_takes_what_was_appended_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    journal.append(&NewEntry::create_object(1, "T")).unwrap();
    let linger = Duration::from_millis(7);
    let mut scraper = lingering(dir.path(), linger, 1 << 20);
    journal.append(&NewEntry::put(1, b"a", b"v")).unwrap();
    let mut offered = Vec::new();
    // The hold stands for the sender's wait for acknowledgements: here
    // the next entry is appended during it.
    let batch = scraper
        .next_batch_held(Duration::ZERO, &mut |d| {
            offered.push(d);
            journal.append(&NewEntry::put(1, b"b", b"v")).unwrap();
            true
        })
        .unwrap();
    let keys: Vec<&[u8]> = batch.iter().map(|e| e.key()).collect();
    assert_eq!(keys, [b"a", b"b"]);
    // Offered once per batch, with the linger.
    assert_eq!(offered, [linger]);
    // A hold that did not wait (nothing in flight) closes the batch.
    journal.append(&NewEntry::put(1, b"c", b"v")).unwrap();
    let batch = scraper
        .next_batch_held(Duration::ZERO, &mut |_| {
            journal.append(&NewEntry::put(1, b"d", b"v")).unwrap();
            false
        })
        .unwrap();
    let keys: Vec<&[u8]> = batch.iter().map(|e| e.key()).collect();
    assert_eq!(keys, [b"c"]);
}

#[test]
fn large_batches_and_a_zero_linger_are_never_held() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    journal.append(&NewEntry::create_object(1, "T")).unwrap();
    let mut never = lingering(dir.path(), Duration::ZERO, 1 << 20);
    let mut large = lingering(dir.path(), Duration::from_secs(1), 8192);
    journal.append(&NewEntry::put(1, b"a", b"v")).unwrap();
    journal
        .append(&NewEntry::put(1, b"b", &[7u8; 4096]))
        .unwrap();
    let mut held = 0;
    let mut hold = |_| {
        held += 1;
        true
    };
    assert_eq!(
        never
            .next_batch_held(Duration::ZERO, &mut hold)
            .unwrap()
            .len(),
        2
    );
    // Half of its byte limit: goes without a hold.
    assert_eq!(
        large
            .next_batch_held(Duration::ZERO, &mut hold)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(held, 0);
}
