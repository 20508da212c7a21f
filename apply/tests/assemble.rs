//! The assembler against a plain model of match and merge: random journals
//! with interleaved cycles, rollbacks, large transactions and object
//! operations, several journals into batches of their own, batches cleared
//! and swapped at random points. Whatever happens to the batch between
//! entries, every transaction must come out whole, once, in commit order,
//! with the resume point the model gives it.

use std::collections::BTreeMap;

use apply::{AppliedPosition, Assembler, OpKind, TxnBatch};
use engine::journal::{decode, Entry, EntryType};

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

/// Assembles three random journals (entries taken from them in turn at
/// random) with the batches cleared, or swapped for new ones, at random
/// points.
fn assemble_against_model(seed: u64, spill: usize) {
    let mut rng = Rng(seed);
    let journals: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|j| journal_workload(seed ^ j, 3_000, j * 100, |s| s))
        .collect();
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
                drain(&batches[j], &mut got);
                batches[j] = TxnBatch::new();
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
fn transactions_past_the_spill_limit_come_out_as_large_ones() {
    let seed = seed("assemble_spill");
    for round in 0..8 {
        assemble_against_model(seed.wrapping_add(round), 2048);
    }
}
