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
//! - A journal's only open transaction is held in the output batch itself,
//!   after its committed transactions (the batch's open tail), so that its
//!   commit copies nothing: the direct transaction. Anything else pushed to
//!   that batch first moves it into an arena of its own, where it stays as
//!   any other open transaction. A journal writing one transaction at a time
//!   copies each change once; interleaved ones are held as before.

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

/// An open transaction whose changes are the output batch's open tail.
#[derive(Debug)]
struct DirectTxn {
    cycle: u64,
    first_sequence: u64,
    /// Changes held, and their keys' and images' bytes.
    ops: u64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct JournalAssembly {
    /// Transactions committed at or below this are applied already.
    applied: u64,
    last_sequence: u64,
    open: BTreeMap<u64, OpenTxn>,
    /// Held in the output batch (its open tail), not in `open`.
    direct: Option<DirectTxn>,
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
            .chain(self.direct.as_ref().map(|d| d.first_sequence))
            .min()
            .unwrap_or(sequence + 1)
            .min(sequence + 1)
    }

    /// Whether the direct transaction is that of `cycle`.
    fn is_direct(&self, cycle: u64) -> bool {
        self.direct.as_ref().is_some_and(|d| d.cycle == cycle)
    }

    /// Moves the direct transaction out of the batch `out` into an arena
    /// of its own.
    fn evict(&mut self, out: &mut TxnBatch) {
        let direct = self.direct.take().expect("a direct transaction");
        let mut changes = self.spare.pop().unwrap_or_default();
        out.take_open_tail(&mut changes);
        self.open.insert(
            direct.cycle,
            OpenTxn {
                first_sequence: direct.first_sequence,
                changes,
                ops: direct.ops,
                spilled: false,
            },
        );
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

    /// Opens the transaction of `cycle` at `sequence` unless it is open:
    /// as the direct one if it would be the journal's only one and `out`
    /// holds no other journal's.
    fn begin(&mut self, journal: u32, cycle: u64, sequence: u64, out: &mut TxnBatch) {
        if self.is_direct(cycle) || self.open.contains_key(&cycle) {
            return;
        }
        if self.direct.is_none() && self.open.is_empty() && out.open_tail_journal().is_none() {
            out.open_tail(journal);
            self.direct = Some(DirectTxn {
                cycle,
                first_sequence: sequence,
                ops: 0,
                bytes: 0,
            });
            return;
        }
        let changes = self.spare.pop().unwrap_or_default();
        self.open.insert(
            cycle,
            OpenTxn {
                first_sequence: sequence,
                changes,
                ops: 0,
                spilled: false,
            },
        );
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
        if state.direct.is_some() {
            assert_eq!(
                out.open_tail_journal(),
                Some(journal),
                "journal {journal}'s open transaction is no longer in its batch (a batch the assembler fills is handed on with swap_committed)"
            );
        }
        let before = out.len();
        let cycle = entry.commit_cycle();
        match entry.entry_type() {
            EntryType::NextSegment => {}
            EntryType::CommitStart => state.begin(journal, cycle, sequence, out),
            EntryType::Rollback => {
                if state.is_direct(cycle) {
                    state.direct = None;
                    out.drop_open_tail();
                } else if let Some(txn) = state.open.remove(&cycle) {
                    state.recycle(txn.changes);
                }
                self.rolled_back += 1;
            }
            EntryType::Commit if state.is_direct(cycle) => {
                state.direct = None;
                match state.committing(journal, entry) {
                    None => {
                        out.drop_open_tail();
                        self.skipped += 1;
                    }
                    Some(meta) => out.commit_open_tail(meta),
                }
            }
            EntryType::Commit => {
                let txn = state.open.remove(&cycle);
                let meta = state.committing(journal, entry);
                if meta.is_some() {
                    self.make_room(out);
                }
                let state = &mut self.journals[j];
                match (meta, &txn) {
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
                    self.hold(journal, cycle, op, out);
                } else {
                    match state.committing(journal, entry) {
                        None => self.skipped += 1,
                        Some(meta) => {
                            self.make_room(out);
                            out.push(meta, [op]);
                        }
                    }
                }
            }
        }
        self.committed += (out.len() - before) as u64;
        Ok(())
    }

    /// Moves the direct transaction `out` holds, if any, into an arena of
    /// its own, so that a transaction can be pushed.
    fn make_room(&mut self, out: &mut TxnBatch) {
        if let Some(holder) = out.open_tail_journal() {
            self.journals[holder as usize].evict(out);
        }
    }

    /// Holds a change of the open transaction of `cycle` (opened here if
    /// its C-SC was not seen), until the transaction passes the spill
    /// limit.
    fn hold(&mut self, journal: u32, cycle: u64, op: Op<'_>, out: &mut TxnBatch) {
        let spill_bytes = self.spill_bytes;
        let state = &mut self.journals[journal as usize];
        state.begin(journal, cycle, op.sequence, out);
        let first_sequence = match &mut state.direct {
            Some(direct) if direct.cycle == cycle => {
                direct.ops += 1;
                direct.bytes += op.key.len() + op.value.len();
                out.push_open(op);
                if direct.bytes <= spill_bytes {
                    return;
                }
                // Spilled: the changes are read back from staging at commit.
                let direct = state.direct.take().expect("matched above");
                out.drop_open_tail();
                state.open.insert(
                    cycle,
                    OpenTxn {
                        first_sequence: direct.first_sequence,
                        changes: Changes::default(),
                        ops: direct.ops,
                        spilled: true,
                    },
                );
                direct.first_sequence
            }
            _ => {
                let txn = state.open.get_mut(&cycle).expect("begun above");
                txn.ops += 1;
                if txn.spilled {
                    return;
                }
                txn.changes.push(op);
                if txn.changes.byte_len() <= spill_bytes {
                    return;
                }
                txn.spilled = true;
                // Free the arena, not just empty it.
                txn.changes = Changes::default();
                txn.first_sequence
            }
        };
        tracing::info!(
            "HAD0226I journal {journal}: transaction of commit cycle {cycle} (from sequence {first_sequence}) passed {spill_bytes} bytes; its changes will be read back from staging at commit"
        );
    }

    /// Transactions begun and not yet committed or rolled back.
    pub fn open_transactions(&self) -> usize {
        self.journals
            .iter()
            .map(|j| j.open.len() + usize::from(j.direct.is_some()))
            .sum()
    }

    /// Commit cycles of the open transactions of `journal`, in order.
    pub fn open_cycles(&self, journal: u32) -> Vec<u64> {
        let Some(state) = self.journals.get(journal as usize) else {
            return Vec::new();
        };
        let mut cycles: Vec<u64> = state.open.keys().copied().collect();
        cycles.extend(state.direct.as_ref().map(|d| d.cycle));
        cycles.sort_unstable();
        cycles
    }

    /// Bytes of keys and images held by open transactions.
    pub fn open_bytes(&self) -> usize {
        self.journals
            .iter()
            .map(|j| {
                j.open.values().map(|t| t.changes.byte_len()).sum::<usize>()
                    + j.direct.as_ref().map_or(0, |d| d.bytes)
            })
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
