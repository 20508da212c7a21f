//! The assembler against a plain model of match and merge: random journals
//! with interleaved cycles, rollbacks, large transactions and object
//! operations, several journals into batches of their own, batches cleared
//! and handed on (`swap_committed`) at random points, also in the middle of
//! a transaction held in the batch itself (the direct transaction). Whatever
//! happens to the batch between entries, every transaction must come out
//! whole, once, in commit order, with the resume point the model gives it.

use std::collections::BTreeMap;

use apply::{AppliedPosition, Assembler, OpKind, TxnBatch};
use engine::journal::entry::encode_to_vec;
use engine::journal::{decode, Entry, EntryType, NewEntry};

mod common;
use common::{journal_workload, seed, Rng};

/// A change as the model and the assembler's output are compared.
type Change = (OpKind, u64, u64, Vec<u8>, Vec<u8>);

/// A committed transaction: journal, commit sequence, resume point, and its
/// changes, or the count of them when it was too large to hold.
#[derive(Debug, PartialEq, Eq)]
struct Committed {
    journal: u32,
    commit_sequence: u64,
    resume_from: u64,
    changes: Result<Vec<Change>, u64>,
}

fn change(op: apply::Op<'_>) -> Change {
    (
        op.kind,
        op.object_id,
        op.sequence,
        op.key.to_vec(),
        op.value.to_vec(),
    )
}

/// Match and merge as the module comment of `assemble.rs` states it, one
/// journal, nothing applied before.
#[derive(Default)]
struct Model {
    /// Open cycles: first sequence, changes, bytes of keys and values.
    open: BTreeMap<u64, (u64, Vec<Change>, usize)>,
}

impl Model {
    fn push(&mut self, journal: u32, entry: &Entry<'_>, spill: usize, out: &mut Vec<Committed>) {
        let sequence = entry.sequence();
        let cycle = entry.commit_cycle();
        let resume_from = |open: &BTreeMap<u64, (u64, Vec<Change>, usize)>| {
            open.values()
                .map(|t| t.0)
                .min()
                .unwrap_or(sequence + 1)
                .min(sequence + 1)
        };
        match entry.entry_type() {
            EntryType::NextSegment => {}
            EntryType::CommitStart => {
                self.open.entry(cycle).or_insert((sequence, Vec::new(), 0));
            }
            EntryType::Rollback => {
                self.open.remove(&cycle);
            }
            EntryType::Commit => {
                let txn = self.open.remove(&cycle);
                let changes = match txn {
                    None => Ok(Vec::new()),
                    Some((_, changes, bytes)) if bytes > spill => Err(changes.len() as u64),
                    Some((_, changes, _)) => Ok(changes),
                };
                out.push(Committed {
                    journal,
                    commit_sequence: sequence,
                    resume_from: resume_from(&self.open),
                    changes,
                });
            }
            _ => {
                let Some(op) = apply::Op::of_entry(entry) else {
                    return;
                };
                if cycle == 0 {
                    out.push(Committed {
                        journal,
                        commit_sequence: sequence,
                        resume_from: resume_from(&self.open),
                        changes: Ok(vec![change(op)]),
                    });
                } else {
                    let txn = self.open.entry(cycle).or_insert((sequence, Vec::new(), 0));
                    txn.2 += op.key.len() + op.value.len();
                    txn.1.push(change(op));
                }
            }
        }
    }
}

/// Takes the committed transactions out of `batch`, which holds their
/// changes and no others.
fn drain(batch: &TxnBatch, out: &mut Vec<Committed>) {
    assert_eq!(
        batch.op_count(),
        batch.iter().map(|t| t.len()).sum::<usize>(),
        "changes in the batch outside its transactions"
    );
    for txn in batch.iter() {
        let meta = txn.meta();
        out.push(Committed {
            journal: meta.journal,
            commit_sequence: meta.commit_sequence,
            resume_from: meta.resume_from,
            changes: match txn.large() {
                Some(large) => Err(large.ops),
                None => Ok(txn.ops().map(change).collect()),
            },
        });
    }
}

/// A journal written one transaction at a time, as replbench's writer
/// does: each is its C-SC, 1-12 changes (now and then 40-120 of them) and
/// a commit or (one in ten) a rollback, with changes outside commitment
/// control between some of them. Each journal's only open transaction is
/// the assembler's direct one.
fn one_at_a_time_workload(seed: u64, entries: usize, object_base: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let push = |out: &mut Vec<Vec<u8>>, e: NewEntry<'_>| {
        let mut buf = Vec::new();
        let seq = out.len() as u64 + 1;
        encode_to_vec(&e, seq, seq, &mut buf);
        out.push(buf);
    };
    push(&mut out, NewEntry::create_object(object_base + 1, "A"));
    let mut cycle = 0;
    while out.len() < entries {
        cycle += 1;
        push(&mut out, NewEntry::commit_start(cycle));
        let changes = match rng.below(20) {
            0 => 40 + rng.below(80),
            _ => 1 + rng.below(12),
        };
        for _ in 0..changes {
            let key = rng.below(64).to_be_bytes();
            let image = rng.next().to_le_bytes().repeat(1 + rng.below(4) as usize);
            let entry = match rng.below(5) {
                0 => NewEntry::delete(object_base + 1, &key, None),
                _ => NewEntry::put(object_base + 1, &key, &image),
            };
            push(&mut out, entry.in_cycle(cycle));
        }
        match rng.below(10) {
            0 => push(&mut out, NewEntry::rollback(cycle)),
            _ => push(&mut out, NewEntry::commit(cycle)),
        }
        if rng.below(4) == 0 {
            let key = rng.below(64).to_be_bytes();
            push(&mut out, NewEntry::put(object_base + 1, &key, b"single"));
        }
    }
    out
}

/// Assembles three random journals (entries taken from them in turn at
/// random) with the batches cleared, or handed on, at random points.
fn assemble_against_model(seed: u64, spill: usize) {
    let journals: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|j| journal_workload(seed ^ j, 3_000, j * 100, |s| s))
        .collect();
    assemble_journals_against_model(seed, spill, &journals);
}

fn assemble_journals_against_model(seed: u64, spill: usize, journals: &[Vec<Vec<u8>>]) {
    let mut rng = Rng(seed);
    let mut assembler = Assembler::new(&AppliedPosition::default());
    assembler.set_spill_bytes(spill);
    let mut models: Vec<Model> = journals.iter().map(|_| Model::default()).collect();
    let mut batches: Vec<TxnBatch> = journals.iter().map(|_| TxnBatch::new()).collect();
    let mut next = vec![0; journals.len()];
    let (mut got, mut expected) = (Vec::new(), Vec::new());
    while let Some(j) = (0..journals.len())
        .filter(|&j| next[j] < journals[j].len())
        .nth(rng.below(3) as usize)
        .or_else(|| (0..journals.len()).find(|&j| next[j] < journals[j].len()))
    {
        let entry = decode(&journals[j][next[j]]).unwrap();
        next[j] += 1;
        assembler.push(j as u32, &entry, &mut batches[j]).unwrap();
        models[j].push(j as u32, &entry, spill, &mut expected);
        match rng.below(40) {
            // Applied and emptied, as follow and replay do.
            0 => {
                drain(&batches[j], &mut got);
                batches[j].clear();
            }
            // Handed on and replaced, as the staging reader does.
            1 => {
                let mut handed = TxnBatch::new();
                batches[j].swap_committed(&mut handed);
                drain(&handed, &mut got);
            }
            _ => {}
        }
    }
    for batch in &batches {
        drain(batch, &mut got);
    }
    // Batches of different journals are drained at different times: compare
    // each journal's transactions in its commit order.
    fn of(all: &[Committed], journal: u32) -> Vec<&Committed> {
        all.iter().filter(|c| c.journal == journal).collect()
    }
    for j in 0..journals.len() as u32 {
        let (got, expected) = (of(&got, j), of(&expected, j));
        assert_eq!(
            got.len(),
            expected.len(),
            "journal {j}: transactions (seed {seed})"
        );
        for (got, expected) in got.into_iter().zip(expected) {
            assert_eq!(got, expected, "journal {j} (seed {seed})");
        }
    }
    assert!(
        expected
            .iter()
            .any(|c| c.changes.as_ref().is_ok_and(|c| c.len() > 1)),
        "the workload has multi-change transactions"
    );
}

#[test]
fn transactions_come_out_whole_whatever_happens_to_the_batch_between_entries() {
    let seed = seed("assemble");
    for round in 0..8 {
        assemble_against_model(seed.wrapping_add(round), usize::MAX);
    }
}

#[test]
fn transactions_written_one_at_a_time_come_out_whole_from_the_batch_they_were_held_in() {
    let seed = seed("assemble_one_at_a_time");
    for (round, spill) in [usize::MAX, 2048, usize::MAX, 1024].into_iter().enumerate() {
        let seed = seed.wrapping_add(round as u64);
        let journals: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|j| one_at_a_time_workload(seed ^ j, 3_000, j * 100))
            .collect();
        assemble_journals_against_model(seed, spill, &journals);
    }
}

#[test]
fn transactions_past_the_spill_limit_come_out_as_large_ones() {
    let seed = seed("assemble_spill");
    for round in 0..8 {
        assemble_against_model(seed.wrapping_add(round), 2048);
    }
}

/// The transaction held in the batch counts as open as the others do: in
/// the open counts and cycles, in the bytes held and in the resume point of
/// what commits meanwhile.
#[test]
fn the_transaction_held_in_the_batch_is_open_like_any_other() {
    let entries = [
        NewEntry::commit_start(5),
        NewEntry::put(1, b"k", b"abc").in_cycle(5),
        NewEntry::commit_start(6),
        NewEntry::put(1, b"kk", b"abcdef").in_cycle(6),
        NewEntry::put(1, b"z", b"outside"),
        NewEntry::commit(6),
        NewEntry::put(1, b"k2", b"x").in_cycle(5),
        NewEntry::commit(5),
    ];
    let encoded: Vec<Vec<u8>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut buf = Vec::new();
            encode_to_vec(e, i as u64 + 1, 1, &mut buf);
            buf
        })
        .collect();
    let mut assembler = Assembler::new(&AppliedPosition::default());
    let mut batch = TxnBatch::new();
    let push = |i: usize, assembler: &mut Assembler, batch: &mut TxnBatch| {
        assembler
            .push(0, &decode(&encoded[i]).unwrap(), batch)
            .unwrap();
    };
    push(0, &mut assembler, &mut batch);
    push(1, &mut assembler, &mut batch);
    assert_eq!(assembler.open_transactions(), 1);
    assert_eq!(assembler.open_cycles(0), vec![5]);
    assert_eq!(assembler.open_bytes(), 4);
    assert_eq!(
        batch.op_count(),
        0,
        "an open transaction is not in the count"
    );
    assert_eq!(batch.byte_len(), 0, "nor in the bytes");
    push(2, &mut assembler, &mut batch);
    push(3, &mut assembler, &mut batch);
    assert_eq!(assembler.open_cycles(0), vec![5, 6]);
    assert_eq!(assembler.open_bytes(), 4 + 8);
    // A change outside commitment control commits at once: behind it the
    // oldest open transaction (cycle 5, from sequence 1) is still needed.
    push(4, &mut assembler, &mut batch);
    push(5, &mut assembler, &mut batch);
    let resume: Vec<(u64, u64)> = batch
        .iter()
        .map(|t| (t.meta().commit_sequence, t.meta().resume_from))
        .collect();
    assert_eq!(resume, vec![(5, 1), (6, 1)]);
    assert_eq!(assembler.open_cycles(0), vec![5]);
    push(6, &mut assembler, &mut batch);
    push(7, &mut assembler, &mut batch);
    let last = batch.get(2);
    assert_eq!(
        (last.meta().commit_sequence, last.meta().resume_from),
        (8, 9)
    );
    let keys: Vec<&[u8]> = last.ops().map(|op| op.key).collect();
    assert_eq!(keys, vec![&b"k"[..], &b"k2"[..]]);
    assert_eq!(assembler.open_transactions(), 0);
    assert_eq!(assembler.open_bytes(), 0);
}
