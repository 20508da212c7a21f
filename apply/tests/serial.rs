//! The serial replica's semantics, driven through a real journal and scraper:
//! commit boundaries, rollbacks, interleaved cycles, object operations, and
//! all-or-nothing transactions.

use std::collections::BTreeMap;
use std::time::Duration;

use apply::{ApplyError, SerialReplica};
use engine::journal::{Durability, Journal, JournalOptions, NewEntry};
use scraper::{ScrapeOptions, Scraper};

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: engine::limits::SEGMENT_BYTES_MIN,
        durability: Durability::None,
        ..JournalOptions::default()
    }
}

/// What a replica looks like: object -> (name, records).
type State = BTreeMap<u64, (String, BTreeMap<Vec<u8>, Vec<u8>>)>;

fn state(replica: &SerialReplica) -> State {
    replica
        .objects()
        .iter()
        .map(|(id, o)| (*id, (o.name.clone(), o.records.clone())))
        .collect()
}

/// Writes `entries`, scrapes them, applies them one by one, and after the
/// entry at index `i` compares the replica with `expected[i]` when given.
fn check(
    entries: &[NewEntry<'_>],
    expected: &[(usize, State)],
) -> Result<SerialReplica, ApplyError> {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    let mut w = journal.appender();
    for entry in entries {
        w.append(entry).unwrap();
    }
    let mut scraper = Scraper::open(dir.path(), ScrapeOptions::default()).unwrap();
    let mut replica = SerialReplica::new();
    let mut index = 0;
    while index < entries.len() {
        let batch = scraper.next_batch(Duration::ZERO).unwrap();
        assert!(!batch.is_empty(), "journal ended early");
        for entry in batch.iter() {
            replica.apply(&entry)?;
            for (at, want) in expected {
                if *at == index {
                    assert_eq!(
                        &state(&replica),
                        want,
                        "after entry {index} ({:?})",
                        entries[index].entry_type
                    );
                }
            }
            index += 1;
        }
    }
    Ok(replica)
}

fn object(name: &str, records: &[(&[u8], &[u8])]) -> (String, BTreeMap<Vec<u8>, Vec<u8>>) {
    (
        name.to_owned(),
        records
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
    )
}

#[test]
fn transactions_become_visible_at_their_commit_and_rollbacks_leave_no_trace() {
    let entries = [
        NewEntry::create_object(1, "T"),
        NewEntry::put(1, b"a", b"1"), // 1: visible at once
        NewEntry::commit_start(5),
        NewEntry::put(1, b"b", b"2").in_cycle(5), // 3: held
        NewEntry::put(1, b"c", b"3").in_cycle(6), // 4: other cycle, held
        NewEntry::delete(1, b"a", None).in_cycle(6), // 5: held
        NewEntry::commit(5),                      // 6: b appears
        NewEntry::rollback(6),                    // 7: c never, a stays
        NewEntry::update(1, b"b", b"22", Some(b"2")).in_cycle(9),
        NewEntry::commit(9), // 9
    ];
    let replica = check(
        &entries,
        &[
            (1, [(1, object("T", &[(b"a", b"1")]))].into()),
            (5, [(1, object("T", &[(b"a", b"1")]))].into()),
            (6, [(1, object("T", &[(b"a", b"1"), (b"b", b"2")]))].into()),
            (7, [(1, object("T", &[(b"a", b"1"), (b"b", b"2")]))].into()),
            (9, [(1, object("T", &[(b"a", b"1"), (b"b", b"22")]))].into()),
        ],
    )
    .unwrap();
    assert_eq!(replica.open_transactions(), 0);
    assert_eq!(replica.rolled_back_transactions(), 1);
}

#[test]
fn object_operations_apply_in_order_with_records() {
    let entries = [
        NewEntry::create_object(1, "A"),
        NewEntry::put(1, b"k", b"v"),
        NewEntry::rename_object(1, "B").in_cycle(3),
        NewEntry::put(1, b"k2", b"v2").in_cycle(3),
        NewEntry::commit(3),
        NewEntry::clear_object(1),
        NewEntry::create_object(2, "C"),
        NewEntry::drop_object(1).in_cycle(4),
        NewEntry::put(2, b"x", b"y").in_cycle(4),
        NewEntry::commit(4),
    ];
    check(
        &entries,
        &[
            (
                4,
                [(1, object("B", &[(b"k", b"v"), (b"k2", b"v2")]))].into(),
            ),
            (5, [(1, object("B", &[]))].into()),
            (9, [(2, object("C", &[(b"x", b"y")]))].into()),
        ],
    )
    .unwrap();
}

#[test]
fn a_transaction_touching_an_unknown_object_applies_nothing() {
    let entries = [
        NewEntry::create_object(1, "A"),
        NewEntry::put(1, b"k", b"v").in_cycle(2),
        NewEntry::put(7, b"k", b"v").in_cycle(2),
        NewEntry::commit(2),
    ];
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    // The journal itself does not check record entries against its catalog.
    for entry in &entries {
        journal.append(entry).unwrap();
    }
    let mut scraper = Scraper::open(dir.path(), ScrapeOptions::default()).unwrap();
    let batch = scraper.next_batch(Duration::ZERO).unwrap();
    let mut replica = SerialReplica::new();
    let mut results = batch.iter().map(|e| replica.apply(&e));
    assert!(results.by_ref().take(3).all(|r| r.is_ok()));
    let err = results.next().unwrap().unwrap_err();
    assert!(err.to_string().starts_with("HAD0201E"), "{err}");
    assert_eq!(
        replica.get(1, b"k"),
        None,
        "part of a failed transaction was applied"
    );
}

/// Two threads write interleaved transactions, committing or rolling back at
/// random (seeded); the replica built from the scraped journal equals what the
/// threads know they committed.
#[test]
fn interleaved_transactions_from_two_writers_replicate_exactly() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    eprintln!("interleaved_transactions: SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), options()).unwrap();
    journal.append(&NewEntry::create_object(1, "T")).unwrap();
    let expected: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let journal = journal.clone();
                s.spawn(move || {
                    let mut rng = seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut committed = BTreeMap::new();
                    let mut w = journal.appender();
                    for txn in 0..400u64 {
                        let cycle = (t << 32) | (txn + 1);
                        let mut pending = BTreeMap::new();
                        for _ in 0..1 + next() % 20 {
                            let key = [t as u8, (next() % 50) as u8];
                            let value = next().to_le_bytes();
                            if next() % 5 == 0 {
                                w.append(&NewEntry::delete(1, &key, None).in_cycle(cycle))
                                    .unwrap();
                                pending.insert(key.to_vec(), None);
                            } else {
                                w.append(&NewEntry::put(1, &key, &value).in_cycle(cycle))
                                    .unwrap();
                                pending.insert(key.to_vec(), Some(value.to_vec()));
                            }
                        }
                        if next() % 4 == 0 {
                            w.append(&NewEntry::rollback(cycle)).unwrap();
                        } else {
                            w.append(&NewEntry::commit(cycle)).unwrap();
                            for (key, value) in pending {
                                match value {
                                    Some(value) => committed.insert(key, value),
                                    None => committed.remove(&key),
                                };
                            }
                        }
                    }
                    committed
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let end = journal.next_sequence();
    let mut scraper = Scraper::open(dir.path(), ScrapeOptions::default()).unwrap();
    let mut replica = SerialReplica::new();
    while scraper.next_sequence() < end {
        for entry in scraper.next_batch(Duration::ZERO).unwrap().iter() {
            replica.apply(&entry).unwrap();
        }
    }
    let mut want = BTreeMap::new();
    for map in expected {
        want.extend(map);
    }
    assert_eq!(replica.objects()[&1].records, want, "SEED={seed}");
    assert_eq!(replica.open_transactions(), 0);
    assert!(replica.rolled_back_transactions() > 100);
}
