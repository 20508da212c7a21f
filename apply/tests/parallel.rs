//! Parallel equals serial (DESIGN.md invariant 5) and exactly-once replay:
//! random workloads with hot keys, large transactions, rollbacks, interleaved
//! cycles and object operations, applied by `ParallelApply` into replica
//! tables, must end in exactly the state `SerialReplica` reaches in commit
//! order. proptest prints the failing seed and settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use apply::{
    AppliedPosition, ApplyOptions, Assembler, ObjectInfo, ParallelApply, ReplicaTables,
    SerialReplica, Store, StoreError, Txn, TxnBatch,
};
use engine::journal::entry::encode_to_vec;
use engine::journal::{decode, NewEntry};
use proptest::prelude::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random journal: encoded entries with sequences 1.., in journal order.
fn workload(seed: u64, entries: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut open: Vec<u64> = Vec::new();
    let mut next_cycle = 1;
    let names = ["A", "B", "C", "D"];
    let push = |out: &mut Vec<Vec<u8>>, e: NewEntry<'_>| {
        let mut buf = Vec::new();
        let seq = out.len() as u64 + 1;
        encode_to_vec(&e, seq, 1_000 + seq, &mut buf);
        out.push(buf);
    };
    push(&mut out, NewEntry::create_object(1, "A"));
    push(&mut out, NewEntry::create_object(2, "B"));
    while out.len() < entries {
        // Most changes go to open cycles when there are some.
        let cycle = if !open.is_empty() && rng.below(4) != 0 {
            open[rng.below(open.len() as u64) as usize]
        } else {
            0
        };
        let object = 1 + rng.below(3);
        // Hot keys: small numbers far more often than large ones.
        let spread = 1 + rng.below(64);
        let key = rng.below(spread).to_be_bytes();
        let image = rng.next().to_le_bytes().repeat(1 + rng.below(4) as usize);
        match rng.below(100) {
            0..=54 => push(
                &mut out,
                NewEntry::put(object, &key, &image).in_cycle(cycle),
            ),
            55..=64 => push(
                &mut out,
                NewEntry::delete(object, &key, None).in_cycle(cycle),
            ),
            65..=74 if open.len() < 4 => {
                push(&mut out, NewEntry::commit_start(next_cycle));
                open.push(next_cycle);
                next_cycle += 1;
            }
            75..=84 if !open.is_empty() => {
                let c = open.swap_remove(rng.below(open.len() as u64) as usize);
                push(&mut out, NewEntry::commit(c));
            }
            85..=89 if !open.is_empty() => {
                let c = open.swap_remove(rng.below(open.len() as u64) as usize);
                push(&mut out, NewEntry::rollback(c));
            }
            90 => {
                // A large transaction.
                let c = next_cycle;
                next_cycle += 1;
                push(&mut out, NewEntry::commit_start(c));
                for k in 0..300 + rng.below(700) {
                    let key = (k % 200).to_be_bytes();
                    push(&mut out, NewEntry::put(object, &key, &image).in_cycle(c));
                }
                push(&mut out, NewEntry::commit(c));
            }
            91..=92 => push(
                &mut out,
                NewEntry::create_object(object + rng.below(2), names[rng.below(4) as usize])
                    .in_cycle(cycle),
            ),
            93 => push(&mut out, NewEntry::drop_object(object).in_cycle(cycle)),
            94..=95 => push(&mut out, NewEntry::clear_object(object).in_cycle(cycle)),
            96 => push(
                &mut out,
                NewEntry::rename_object(object, names[rng.below(4) as usize]).in_cycle(cycle),
            ),
            _ => push(
                &mut out,
                NewEntry::put(object, &key, &image).in_cycle(cycle),
            ),
        }
    }
    out
}

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

type State = BTreeMap<u64, (String, BTreeMap<Vec<u8>, Vec<u8>>)>;

fn serial_state(entries: &[Vec<u8>]) -> State {
    let mut replica = SerialReplica::new();
    for e in entries {
        // Refused transactions are part of the semantics: ignore the error.
        let _ = replica.apply(&decode(e).unwrap());
    }
    replica
        .objects()
        .iter()
        .map(|(id, o)| (*id, (o.name.clone(), o.records.clone())))
        .collect()
}

fn store_state(store: &dyn Store) -> State {
    store
        .objects()
        .unwrap()
        .into_iter()
        .map(|o| {
            let mut records = BTreeMap::new();
            store
                .scan(o.object_id, &mut |k, v| {
                    records.insert(k.to_vec(), v.to_vec());
                })
                .unwrap();
            (o.object_id, (o.name, records))
        })
        .collect()
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
    ) {
        let entries = workload(seed, 3000);
        let dir = tempfile::tempdir().unwrap();
        let tables = Arc::new(ReplicaTables::open(dir.path()).unwrap());
        let apply = apply_from(&tables, &entries, &ApplyOptions { workers, stripes }, chunk);
        apply.finish().unwrap();
        prop_assert_eq!(store_state(&*tables), serial_state(&entries));
    }

    #[test]
    fn replay_after_a_crash_applies_every_transaction_exactly_once(
        seed in any::<u64>(),
        checkpoint_at in 0usize..3000,
        crash_at in 0usize..3000,
    ) {
        let entries = workload(seed, 3000);
        let (checkpoint_at, crash_at) = (checkpoint_at.min(crash_at), checkpoint_at.max(crash_at));
        let options = ApplyOptions { workers: 2, stripes: 64 };
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
