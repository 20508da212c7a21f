//! Match and merge, the "match" half: entries of the group's journals, taken
//! in merged order, become committed transactions in commit order.
//!
//! - An entry outside commitment control (cycle 0) is its own transaction.
//! - Entries of cycle `c` of journal `j` are held until that journal's C-CM
//!   `c` and then form one transaction; C-RB `c` drops them.
//! - An open transaction whose changes pass the spill limit keeps only its
//!   first sequence and a count: its changes are dropped from memory, and
//!   at its commit it becomes a large transaction (`LargeRef`) that apply
//!   reads back from staging. Replay needs nothing more: `resume_from` never
//!   passes an open transaction's first entry.
//! - A transaction already applied (its commit at or below the journal's
//!   applied position) is dropped, so replay from `resume_from` applies every
//!   transaction exactly once.

use std::collections::BTreeMap;

use engine::journal::{Entry, EntryType};

use crate::position::AppliedPosition;
use crate::txn::{Changes, LargeRef, Op, TxnBatch, TxnMeta};

/// Why an entry could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssembleError {
    #[error("HAD0203E journal {journal}: sequence {sequence} arrived after {last}: entries must be applied in journal order")]
    OutOfOrder {
        journal: u32,
        sequence: u64,
        last: u64,
    },
}

#[derive(Debug)]
struct OpenTxn {
    first_sequence: u64,
    changes: Changes,
    /// Changes seen, held or not.
    ops: u64,
    /// Past the spill limit: `changes` is no longer kept.
    spilled: bool,
}

#[derive(Debug, Default)]
struct JournalAssembly {
    /// Transactions committed at or below this are applied already.
    applied: u64,
    last_sequence: u64,
    open: BTreeMap<u64, OpenTxn>,
    /// Emptied arenas of finished transactions, reused for new ones.
    spare: Vec<Changes>,
}

impl JournalAssembly {
    /// First sequence still needed after `sequence`: the oldest open
    /// transaction's first entry, else the next one.
    fn resume_from(&self, sequence: u64) -> u64 {
        self.open
            .values()
            .map(|t| t.first_sequence)
            .min()
            .unwrap_or(sequence + 1)
            .min(sequence + 1)
    }

    /// The transaction committing at `sequence`, or `None` if it was applied
    /// before (replay).
    fn committing(&self, journal: u32, entry: &Entry<'_>) -> Option<TxnMeta> {
        let sequence = entry.sequence();
        (sequence > self.applied).then(|| TxnMeta {
            journal,
            commit_sequence: sequence,
            resume_from: self.resume_from(sequence),
            commit_time_ns: entry.timestamp_ns(),
        })
    }

    fn open(&mut self, cycle: u64, sequence: u64) -> &mut OpenTxn {
        let spare = &mut self.spare;
        self.open.entry(cycle).or_insert_with(|| OpenTxn {
            first_sequence: sequence,
            changes: spare.pop().unwrap_or_default(),
            ops: 0,
            spilled: false,
        })
    }

    fn recycle(&mut self, mut changes: Changes) {
        changes.clear();
        if self.spare.len() < 8 {
            self.spare.push(changes);
        }
    }
}

/// Assembles committed transactions from the entries of a group's journals.
#[derive(Debug)]
pub struct Assembler {
    journals: Vec<JournalAssembly>,
    /// Bytes of keys and images an open transaction may hold.
    spill_bytes: usize,
    committed: u64,
    rolled_back: u64,
    skipped: u64,
}

impl Assembler {
    /// Starts after `position`: transactions it covers are dropped when they
    /// are met again.
    pub fn new(position: &AppliedPosition) -> Assembler {
        let journals = position
            .journals()
            .iter()
            .map(|p| JournalAssembly {
                applied: p.applied,
                last_sequence: p.resume_from.saturating_sub(1),
                ..JournalAssembly::default()
            })
            .collect();
        Assembler {
            journals,
            spill_bytes: usize::MAX,
            committed: 0,
            rolled_back: 0,
            skipped: 0,
        }
    }

    /// Open transactions holding more than `bytes` of keys and images stop
    /// holding them and commit as large transactions (default: never).
    pub fn set_spill_bytes(&mut self, bytes: usize) {
        self.spill_bytes = bytes;
    }

    /// Takes the next entry of journal `journal` in the group's merged order;
    /// a transaction it completes is appended to `out`.
    pub fn push(
        &mut self,
        journal: u32,
        entry: &Entry<'_>,
        out: &mut TxnBatch,
    ) -> Result<(), AssembleError> {
        let j = journal as usize;
        if j >= self.journals.len() {
            self.journals.resize_with(j + 1, JournalAssembly::default);
        }
        let state = &mut self.journals[j];
        let sequence = entry.sequence();
        if sequence <= state.last_sequence {
            return Err(AssembleError::OutOfOrder {
                journal,
                sequence,
                last: state.last_sequence,
            });
        }
        state.last_sequence = sequence;
        let before = out.len();
        let cycle = entry.commit_cycle();
        let entry_type = entry.entry_type();
        match entry_type {
            EntryType::NextSegment => {}
            EntryType::CommitStart => {
                state.open(cycle, sequence);
            }
            EntryType::Rollback => {
                if let Some(txn) = state.open.remove(&cycle) {
                    state.recycle(txn.changes);
                }
                self.rolled_back += 1;
            }
            EntryType::Commit => {
                let txn = state.open.remove(&cycle);
                match (state.committing(journal, entry), &txn) {
                    (None, _) => self.skipped += 1,
                    (Some(meta), Some(txn)) if txn.spilled => out.push_large(
                        meta,
                        LargeRef {
                            cycle,
                            first_sequence: txn.first_sequence,
                            ops: txn.ops,
                        },
                    ),
                    (Some(meta), Some(txn)) => out.push_changes(meta, &txn.changes),
                    (Some(meta), None) => out.push(meta, []),
                }
                if let Some(txn) = txn {
                    state.recycle(txn.changes);
                }
            }
            _ => {
                let Some(op) = Op::of_entry(entry) else {
                    return Ok(());
                };
                if cycle != 0 {
                    let spill_bytes = self.spill_bytes;
                    let txn = state.open(cycle, sequence);
                    txn.ops += 1;
                    if !txn.spilled {
                        txn.changes.push(op);
                        if txn.changes.byte_len() > spill_bytes {
                            txn.spilled = true;
                            // Free the arena, not just empty it.
                            txn.changes = Changes::default();
                            tracing::info!(
                                "HAD0226I journal {journal}: transaction of commit cycle {cycle} (from sequence {}) passed {spill_bytes} bytes; its changes will be read back from staging at commit",
                                txn.first_sequence
                            );
                        }
                    }
                } else {
                    match state.committing(journal, entry) {
                        None => self.skipped += 1,
                        Some(meta) => out.push(meta, [op]),
                    }
                }
            }
        }
        self.committed += (out.len() - before) as u64;
        Ok(())
    }

    /// Transactions begun and not yet committed or rolled back.
    pub fn open_transactions(&self) -> usize {
        self.journals.iter().map(|j| j.open.len()).sum()
    }

    /// Commit cycles of the open transactions of `journal`.
    pub fn open_cycles(&self, journal: u32) -> Vec<u64> {
        self.journals
            .get(journal as usize)
            .map(|j| j.open.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Bytes of keys and images held by open transactions.
    pub fn open_bytes(&self) -> usize {
        self.journals
            .iter()
            .flat_map(|j| j.open.values())
            .map(|t| t.changes.byte_len())
            .sum()
    }

    /// Transactions emitted so far.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn rolled_back(&self) -> u64 {
        self.rolled_back
    }

    /// Transactions met again during replay and dropped as already applied.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}
