//! Parallel equals serial (DESIGN.md invariant 5) and exactly-once replay:
//! random workloads with hot keys, large transactions, rollbacks, interleaved
//! cycles and object operations, applied by `ParallelApply` into replica
//! tables, must end in exactly the state `SerialReplica` reaches in commit
//! order. proptest prints the failing seed and settings.

use std::sync::Arc;

use apply::{
    AppliedPosition, ApplyOptions, Assembler, ObjectInfo, ParallelApply, ReplicaTables,
    SqliteStore, Store, StoreError, Txn, TxnBatch,
};
use engine::journal::decode;
use proptest::prelude::*;

mod common;
use common::{serial_state, store_state, workload};

/// Replica tables that remember the commit sequence of every transaction
/// handed to them.
#[derive(Debug)]
struct Recording {
    tables: ReplicaTables,
    applied: parking_lot::Mutex<Vec<u64>>,
}

impl Store for Recording {
    fn apply(&self, txn: &Txn<'_>) -> Result<(), StoreError> {
        self.applied.lock().push(txn.meta().commit_sequence);
        self.tables.apply(txn)
    }
    fn checkpoint(&self, position: &AppliedPosition) -> Result<(), StoreError> {
        self.tables.checkpoint(position)
    }
    fn applied_position(&self) -> AppliedPosition {
        self.tables.applied_position()
    }
    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        self.tables.objects()
    }
    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        self.tables.scan(object_id, visit)
    }
    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.get(object_id, key)
    }
}

/// Commit sequences of every transaction in `entries`, in commit order.
fn all_commits(entries: &[Vec<u8>]) -> Vec<u64> {
    let mut assembler = Assembler::new(&AppliedPosition::default());
    let mut batch = TxnBatch::new();
    for e in entries {
        assembler.push(0, &decode(e).unwrap(), &mut batch).unwrap();
    }
    batch.iter().map(|t| t.meta().commit_sequence).collect()
}

/// Assembles `entries` from `position` and applies them in chunks of
/// `chunk` entries.
fn apply_from<S: Store + 'static>(
    tables: &Arc<S>,
    entries: &[Vec<u8>],
    options: &ApplyOptions,
    chunk: usize,
) -> ParallelApply {
    let position = tables.applied_position();
    let mut assembler = Assembler::new(&position);
    let mut apply = ParallelApply::new(tables.clone(), options);
    let resume = position.journal(0).resume_from as usize;
    let mut batch = TxnBatch::new();
    for part in entries[resume - 1..].chunks(chunk) {
        for e in part {
            assembler.push(0, &decode(e).unwrap(), &mut batch).unwrap();
        }
        apply.submit(&batch).unwrap();
        batch.clear();
    }
    apply
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn parallel_apply_ends_in_the_serial_state(
        seed in any::<u64>(),
        workers in 1usize..4,
        stripes in prop::sample::select(vec![1usize, 2, 7, 64, 1024]),
        chunk in prop::sample::select(vec![1usize, 17, 500]),
        // Never, sometimes and always apply a batch on the caller alone.
        serial_ops_per_txn in prop::sample::select(vec![usize::MAX, 2, 0]),
        // Runs split into parts from the shortest on, or only long ones.
        parted_min_txns in prop::sample::select(vec![1usize, 64]),
        // The tables split batches into parts by record; wrapped, they do
        // not, and workers take stripe tickets.
        split in any::<bool>(),
    ) {
        let entries = workload(seed, 3000);
        let dir = tempfile::tempdir().unwrap();
        let options = ApplyOptions {
            workers,
            stripes,
            serial_ops_per_txn,
            parted_min_txns,
            ..ApplyOptions::default()
        };
        if split {
            let tables = Arc::new(ReplicaTables::open(dir.path()).unwrap());
            apply_from(&tables, &entries, &options, chunk).finish().unwrap();
            let state = store_state(&*tables);
            for (&id, (_, records)) in &state {
                prop_assert_eq!(tables.record_count(id).unwrap(), records.len() as u64);
            }
            prop_assert_eq!(state, serial_state(&entries));
        } else {
            let tables = Arc::new(Recording {
                tables: ReplicaTables::open(dir.path()).unwrap(),
                applied: Default::default(),
            });
            apply_from(&tables, &entries, &options, chunk).finish().unwrap();
            prop_assert_eq!(store_state(&tables.tables), serial_state(&entries));
        }
    }

    #[test]
    fn replay_after_a_crash_applies_every_transaction_exactly_once(
        seed in any::<u64>(),
        checkpoint_at in 0usize..3000,
        crash_at in 0usize..3000,
    ) {
        let entries = workload(seed, 3000);
        let (checkpoint_at, crash_at) = (checkpoint_at.min(crash_at), checkpoint_at.max(crash_at));
        let options = ApplyOptions {
            workers: 2,
            stripes: 64,
            serial_ops_per_txn: usize::MAX,
            ..ApplyOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let tables = Arc::new(ReplicaTables::open(dir.path()).unwrap());
            let mut apply = apply_from(&tables, &entries[..checkpoint_at], &options, 100);
            apply.checkpoint().unwrap();
            drop(apply);
            // More applied after the checkpoint, then a crash: never
            // checkpointed, so it must be forgotten and replayed.
            let mut assembler = Assembler::new(&tables.applied_position());
            let mut apply = ParallelApply::new(tables.clone(), &options);
            let mut batch = TxnBatch::new();
            let resume = tables.applied_position().journal(0).resume_from as usize;
            for e in &entries[resume - 1..crash_at] {
                assembler.push(0, &decode(e).unwrap(), &mut batch).unwrap();
            }
            apply.submit(&batch).unwrap();
            apply.finish().unwrap();
        }
        let tables = Arc::new(Recording {
            tables: ReplicaTables::open(dir.path()).unwrap(),
            applied: Default::default(),
        });
        let position = tables.applied_position();
        prop_assert!(position.journal(0).resume_from as usize <= checkpoint_at + 1);
        let apply = apply_from(&tables, &entries, &options, 250);
        apply.finish().unwrap();
        prop_assert_eq!(store_state(&*tables), serial_state(&entries));
        // Exactly the transactions after the checkpoint, each once.
        let mut replayed = tables.applied.lock().clone();
        replayed.sort_unstable();
        let applied = position.journal(0).applied;
        let expected: Vec<u64> = all_commits(&entries).into_iter().filter(|&c| c > applied).collect();
        prop_assert_eq!(replayed, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn apply_into_sqlite_ends_in_the_serial_state_and_keeps_its_position(
        seed in any::<u64>(),
        split in 0usize..3000,
    ) {
        let entries = workload(seed, 3000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        {
            let store = Arc::new(SqliteStore::open(&path).unwrap());
            // No checkpoint: every SQLite transaction carries its position.
            apply_from(&store, &entries[..split], &ApplyOptions::default(), 100)
                .finish()
                .unwrap();
        }
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let mut apply = apply_from(&store, &entries, &ApplyOptions::default(), 100);
        apply.checkpoint().unwrap();
        drop(apply);
        prop_assert_eq!(store_state(&*store), serial_state(&entries));
        drop(store);
        prop_assert_eq!(
            store_state(&SqliteStore::open(&path).unwrap()),
            serial_state(&entries)
        );
    }
}

#[test]
fn an_empty_checkpoint_position_replays_from_the_start() {
    let entries = workload(7, 500);
    let dir = tempfile::tempdir().unwrap();
    let tables = Arc::new(ReplicaTables::open(dir.path()).unwrap());
    assert_eq!(tables.applied_position(), AppliedPosition::default());
    let mut apply = apply_from(&tables, &entries, &ApplyOptions::default(), 64);
    let position = apply.checkpoint().unwrap();
    assert_eq!(tables.applied_position(), position);
    assert!(position.journal(0).applied > 0);
    drop(apply);
    assert_eq!(store_state(&*tables), serial_state(&entries));
}

/// Commit boundaries hold for readers (DESIGN.md invariant 3) when a batch
/// is applied in parts: every transaction writes its number to two records
/// that lie in different parts, and a reader beside apply must never see
/// them differ when it reads both at once, nor `b` behind `a` when it reads
/// `a` first (as it would if one part's changes became visible before the
/// other's).
#[test]
fn a_reader_never_sees_part_of_a_transaction_applied_in_parts() {
    use engine::journal::entry::encode_to_vec;
    use engine::journal::NewEntry;

    let a = b"record-a".to_vec();
    let b = (0u32..)
        .map(|i| format!("record-b{i}").into_bytes())
        .find(|k| apply::record_hash(1, k) % 2 != apply::record_hash(1, &a) % 2)
        .unwrap();
    let mut entries = Vec::new();
    let mut push = |e: NewEntry<'_>| {
        let mut buf = Vec::new();
        let seq = entries.len() as u64 + 1;
        encode_to_vec(&e, seq, 1_000 + seq, &mut buf);
        entries.push(buf);
    };
    push(NewEntry::create_object(1, "PAIR"));
    for cycle in 1..=20_000u64 {
        let value = cycle.to_le_bytes();
        push(NewEntry::commit_start(cycle));
        push(NewEntry::put(1, &a, &value).in_cycle(cycle));
        push(NewEntry::put(1, &b, &value).in_cycle(cycle));
        push(NewEntry::commit(cycle));
    }
    let dir = tempfile::tempdir().unwrap();
    let tables = Arc::new(ReplicaTables::open(dir.path()).unwrap());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (reads, changed) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut reads, mut changed) = (0u64, 0u64);
            let number =
                |v: Option<Vec<u8>>| v.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let got = tables.get_many(&[(1, &a[..]), (1, &b[..])]).unwrap();
                assert_eq!(
                    got[0], got[1],
                    "a reader saw one record of a transaction without the other"
                );
                let first = number(tables.get(1, &a).unwrap());
                let then = number(tables.get(1, &b).unwrap());
                assert!(
                    then >= first,
                    "read a = {first}, then b = {then}: part of a transaction was visible"
                );
                reads += 1;
                changed += u64::from(first > 0);
            }
            (reads, changed)
        });
        let options = ApplyOptions {
            workers: 2,
            parted_min_txns: 1,
            ..ApplyOptions::default()
        };
        apply_from(&tables, &entries, &options, 400)
            .finish()
            .unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(
        changed > 0,
        "the reader never ran while records existed ({reads} reads)"
    );
    assert_eq!(
        tables.get(1, &a).unwrap(),
        Some(20_000u64.to_le_bytes().to_vec())
    );
}
