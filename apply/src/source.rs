//! The journaled store: the source side's tables.
//!
//! An application writes through a `JournaledStore`: every change goes to the
//! journal first and then to the tables (any `Store`), so the tables always
//! equal the journal's committed transactions applied in commit order, which
//! is exactly what the backup's replica converges to. Sync-check compares the
//! two.
//!
//! - Changes of a transaction are journaled as they are made (C-SC, then the
//!   records in the transaction's commit cycle) and kept in memory; `commit`
//!   checks them against the objects the tables have, then, under one commit
//!   lock, appends C-CM and applies the transaction to the tables. Commit
//!   order in the journal is therefore apply order in the tables. A
//!   transaction the tables would refuse is rolled back (C-RB) instead, so
//!   the journal never carries a refused transaction. Durability is waited
//!   for after the lock is released, so concurrent commits can share fsyncs.
//! - Changes outside commitment control are checked, journaled and applied
//!   one by one under the same lock.
//! - Like the replica, the tables have no log of their own: `checkpoint`
//!   makes them durable with the applied position, and opening replays the
//!   journal from the checkpoint's `resume_from`. Transactions left open by a
//!   process that died are rolled back at open (C-RB), as a database rolls
//!   back uncommitted work at restart; the backup sees the rollback too.
//! - The journal keeps every segment the tables still need: after each
//!   checkpoint the store records `resume_from` as a hold
//!   (`held-source-store.pos`), which `Journal::purge_acknowledged` honours.
//! - Commit cycles are numbered from the journal's next sequence at open;
//!   every transaction's C-SC takes a sequence at or above its cycle, so
//!   cycles never repeat across restarts.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::journal::{
    Appender, HoldRecord, Journal, JournalCursor, JournalError, JournalOptions, NewEntry,
    ReadError, Step,
};
use parking_lot::Mutex;

use crate::assemble::{AssembleError, Assembler};
use crate::check::{record_digest, ProbeOutcome};
use crate::position::{AppliedPosition, JournalPosition};
use crate::store::{check_objects, Store, StoreError};
use crate::txn::{Changes, Op, OpKind, Txn, TxnBatch, TxnMeta};

/// Name of the hold the journaled store records in its journal directory.
pub const SOURCE_HOLD: &str = "source-store";
/// Replay applies committed transactions in batches of about this many changes.
const REPLAY_BATCH_OPS: usize = 16 * 1024;

/// Why the journaled store failed a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// The tables refused or failed; a refusal leaves nothing behind (the
    /// transaction is rolled back in the journal).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("HAD0230E journaled store {dir}: the tables failed earlier ({cause}); reopen the store to replay the journal")]
    Failed { dir: String, cause: String },
}

/// How a journaled store is opened.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub journal: JournalOptions,
    /// Commits checkpoint the tables when the last checkpoint is older than
    /// this (`None`: only explicit `checkpoint` calls). A checkpoint bounds
    /// replay at the next open and lets the journal be purged behind it.
    pub checkpoint_every: Option<Duration>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            journal: JournalOptions::default(),
            checkpoint_every: Some(Duration::from_secs(10)),
        }
    }
}

/// What opening found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Committed transactions replayed from the journal into the tables.
    pub replayed: u64,
    /// Transactions left open by the previous process, rolled back now.
    pub rolled_back: Vec<u64>,
}

#[derive(Debug)]
struct SourceState {
    appender: Appender,
    position: AppliedPosition,
    /// Reused for changes outside commitment control.
    single: Changes,
    /// Open transactions: commit cycle -> sequence of its C-SC.
    open: std::collections::BTreeMap<u64, u64>,
    next_cycle: u64,
    /// Objects the tables have once everything committed is applied.
    objects: BTreeSet<u64>,
    hold: HoldRecord,
    last_checkpoint: Instant,
    failed: Option<String>,
}

impl SourceState {
    fn check(&self, dir: &Path) -> Result<(), SourceError> {
        match &self.failed {
            Some(cause) => Err(SourceError::Failed {
                dir: dir.display().to_string(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Refuses changes the tables would refuse (objects as they stand once
    /// everything committed is applied).
    fn check_objects(&self, changes: &Changes) -> Result<(), SourceError> {
        check_objects(
            changes
                .iter()
                .map(|op| (op.kind, op.object_id, op.sequence, op.kind.label())),
            |id| self.objects.contains(&id),
        )?;
        Ok(())
    }

    /// The first sequence still needed once `commit` (if any) is applied.
    fn resume_from(&self, after: u64) -> u64 {
        self.open.values().copied().fold(after + 1, u64::min)
    }
}

/// The source's tables behind its journal. See the module docs.
#[derive(Debug)]
pub struct JournaledStore {
    journal: Journal,
    store: Box<dyn Store>,
    checkpoint_every: Option<Duration>,
    state: Mutex<SourceState>,
}

impl JournaledStore {
    /// Opens the journal in `journal_dir` and the tables `store`, replays
    /// the journal into the tables from their checkpoint and rolls back the
    /// transactions a previous process left open.
    pub fn open(
        journal_dir: &Path,
        options: SourceOptions,
        store: Box<dyn Store>,
    ) -> Result<(JournaledStore, OpenReport), SourceError> {
        let journal = Journal::open(journal_dir, options.journal)?;
        let mut position = store.applied_position();
        let mut report = OpenReport::default();
        let mut assembler = Assembler::new(&position);
        let mut cursor = JournalCursor::open(journal_dir, position.journal(0).resume_from)?;
        let mut batch = TxnBatch::new();
        loop {
            match cursor.step()? {
                Step::Entry(at) => {
                    let entry = cursor.entry(at).expect("the cursor validated it");
                    assembler.push(0, &entry, &mut batch)?;
                    if batch.op_count() >= REPLAY_BATCH_OPS {
                        report.replayed += replay(store.as_ref(), &batch, &mut position)?;
                        batch.clear();
                    }
                }
                Step::EndOfSegment => cursor.next_segment()?,
                Step::Idle => break,
            }
        }
        report.replayed += replay(store.as_ref(), &batch, &mut position)?;
        drop(cursor);

        let mut appender = journal.appender();
        let mut last = 0;
        for cycle in assembler.open_cycles(0) {
            last = appender.append_deferred(&NewEntry::rollback(cycle))?;
            report.rolled_back.push(cycle);
        }
        journal.wait_durable(last)?;
        if !report.rolled_back.is_empty() {
            tracing::warn!(
                "HAD0231W journaled store {}: rolled back {} transaction(s) left open by the previous process (commit cycles {:?})",
                journal_dir.display(),
                report.rolled_back.len(),
                report.rolled_back
            );
        }
        let objects = store.objects()?.iter().map(|o| o.object_id).collect();
        let hold = HoldRecord::open_hold(journal_dir, SOURCE_HOLD)?;
        tracing::info!(
            "HAD0232I journaled store {} opened: {} transaction(s) replayed; applied {}, resume from {}",
            journal_dir.display(),
            report.replayed,
            position.journal(0).applied,
            position.journal(0).resume_from
        );
        let state = SourceState {
            next_cycle: journal.next_sequence(),
            appender,
            position,
            single: Changes::default(),
            open: Default::default(),
            objects,
            hold,
            last_checkpoint: Instant::now(),
            failed: None,
        };
        Ok((
            JournaledStore {
                journal,
                store,
                checkpoint_every: options.checkpoint_every,
                state: Mutex::new(state),
            },
            report,
        ))
    }

    /// The tables, for reading (and for sync-check's scan).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> &Path {
        self.journal.dir()
    }

    /// The tables' position: the last applied commit and where replay would
    /// start.
    pub fn position(&self) -> JournalPosition {
        self.state.lock().position.journal(0)
    }

    /// Begins a transaction under commitment control (journals its C-SC).
    pub fn begin(&self) -> Result<SourceTxn<'_>, SourceError> {
        let mut appender = self.journal.appender();
        let mut state = self.state.lock();
        state.check(self.journal.dir())?;
        let cycle = state.next_cycle;
        state.next_cycle += 1;
        let first = appender.append_deferred(&NewEntry::commit_start(cycle))?;
        state.open.insert(cycle, first);
        Ok(SourceTxn {
            source: self,
            appender,
            cycle,
            changes: Changes::default(),
            finished: false,
        })
    }

    /// Inserts or replaces one record outside commitment control.
    pub fn put(&self, object_id: u64, key: &[u8], value: &[u8]) -> Result<u64, SourceError> {
        self.single(NewEntry::put(object_id, key, value))
    }

    /// Deletes one record outside commitment control (a no-op if absent).
    pub fn delete(&self, object_id: u64, key: &[u8]) -> Result<u64, SourceError> {
        self.single(NewEntry::delete(object_id, key, None))
    }

    /// Creates an empty object.
    pub fn create_object(&self, object_id: u64, name: &str) -> Result<u64, SourceError> {
        self.single(NewEntry::create_object(object_id, name))
    }

    /// Drops an object with its records.
    pub fn drop_object(&self, object_id: u64) -> Result<u64, SourceError> {
        self.single(NewEntry::drop_object(object_id))
    }

    /// Removes every record of an object.
    pub fn clear_object(&self, object_id: u64) -> Result<u64, SourceError> {
        self.single(NewEntry::clear_object(object_id))
    }

    pub fn rename_object(&self, object_id: u64, new_name: &str) -> Result<u64, SourceError> {
        self.single(NewEntry::rename_object(object_id, new_name))
    }

    /// Makes the tables durable with their position now, and lets the
    /// journal be purged up to it.
    pub fn checkpoint(&self) -> Result<(), SourceError> {
        let mut state = self.state.lock();
        self.checkpoint_locked(&mut state)
    }

    fn checkpoint_locked(&self, state: &mut SourceState) -> Result<(), SourceError> {
        state.check(self.journal.dir())?;
        self.store.checkpoint(&state.position)?;
        state.hold.store(state.position.journal(0).resume_from)?;
        state.last_checkpoint = Instant::now();
        Ok(())
    }

    /// One change outside commitment control: checked, journaled and applied
    /// under the commit lock; durable on return.
    /// Journals a sync-check probe (S-CK) of each record `(object, key)`,
    /// together, with no commit in between, and returns each probe's
    /// sequence with what the tables hold for the record there: the replica
    /// notes what it holds at the same point of its apply stream
    /// (decisions.md 24). `(0, b"")` is a barrier (`ProbeOutcome::Reached`).
    pub fn probe(&self, records: &[(u64, &[u8])]) -> Result<Vec<(u64, ProbeOutcome)>, SourceError> {
        let mut state = self.state.lock();
        state.check(self.journal.dir())?;
        let mut out = Vec::with_capacity(records.len());
        for &(object_id, key) in records {
            let outcome = if object_id == 0 && key.is_empty() {
                ProbeOutcome::Reached
            } else {
                match self.store.get(object_id, key)? {
                    Some(value) => ProbeOutcome::Present(record_digest(key, &value)),
                    None => ProbeOutcome::Absent,
                }
            };
            let sequence = self.single_locked(&mut state, NewEntry::check_probe(object_id, key))?;
            out.push((sequence, outcome));
        }
        drop(state);
        if let Some(&(last, _)) = out.last() {
            self.journal.wait_durable(last)?;
        }
        Ok(out)
    }

    /// Sync-check repair: journals the record `key` of `object_id` as the
    /// tables hold it now, an R-PT of its image or an R-DL if it is absent,
    /// read and journaled under the commit lock so no commit comes between.
    /// Returns the entry's sequence and whether it was a put.
    pub fn repair(&self, object_id: u64, key: &[u8]) -> Result<(u64, bool), SourceError> {
        let mut state = self.state.lock();
        state.check(self.journal.dir())?;
        let value = self.store.get(object_id, key)?;
        let entry = match &value {
            Some(v) => NewEntry::put(object_id, key, v),
            None => NewEntry::delete(object_id, key, None),
        };
        let sequence = self.single_locked(&mut state, entry)?;
        drop(state);
        self.journal.wait_durable(sequence)?;
        Ok((sequence, value.is_some()))
    }

    fn single(&self, entry: NewEntry<'_>) -> Result<u64, SourceError> {
        let mut state = self.state.lock();
        state.check(self.journal.dir())?;
        let sequence = self.single_locked(&mut state, entry)?;
        drop(state);
        self.journal.wait_durable(sequence)?;
        Ok(sequence)
    }

    /// Journals and applies one change outside commitment control; the
    /// caller holds the lock and waits for durability after releasing it.
    fn single_locked(
        &self,
        state: &mut SourceState,
        entry: NewEntry<'_>,
    ) -> Result<u64, SourceError> {
        let mut changes = std::mem::take(&mut state.single);
        changes.clear();
        changes.push(change(&entry, 0));
        let result = state.check_objects(&changes).and_then(|()| {
            let sequence = state.appender.append_deferred(&entry)?;
            self.apply_locked(state, &changes, sequence)?;
            Ok(sequence)
        });
        state.single = changes;
        result
    }

    /// Applies a journaled commit to the tables; the caller holds the lock.
    fn apply_locked(
        &self,
        state: &mut SourceState,
        changes: &Changes,
        commit_sequence: u64,
    ) -> Result<(), SourceError> {
        let meta = TxnMeta {
            journal: 0,
            commit_sequence,
            resume_from: state.resume_from(commit_sequence),
            commit_time_ns: 0,
        };
        let txn = Txn {
            changes,
            meta,
            ops: 0..changes.len(),
            large: None,
        };
        if let Err(e) = self.store.apply(&txn) {
            // Checked above, so even a refusal means the tables and this
            // store's view of them disagree: stop until reopened.
            state.failed = Some(e.to_string());
            return Err(e.into());
        }
        for op in txn.ops() {
            match op.kind {
                OpKind::Create => {
                    state.objects.insert(op.object_id);
                }
                OpKind::Drop => {
                    state.objects.remove(&op.object_id);
                }
                _ => {}
            }
        }
        state.position.advance(&meta);
        if self
            .checkpoint_every
            .is_some_and(|every| state.last_checkpoint.elapsed() >= every)
        {
            self.checkpoint_locked(state)?;
        }
        Ok(())
    }
}

/// The change a record or object entry makes, taken from `sequence`.
fn change<'e>(entry: &NewEntry<'e>, sequence: u64) -> Op<'e> {
    let kind = OpKind::of(entry.entry_type).expect("a change entry");
    Op {
        kind,
        object_id: entry.object_id,
        sequence,
        key: entry.key,
        value: if kind == OpKind::Put {
            entry.after
        } else {
            &[]
        },
    }
}

/// Applies replayed transactions; returns how many were applied.
fn replay(
    store: &dyn Store,
    batch: &TxnBatch,
    position: &mut AppliedPosition,
) -> Result<u64, SourceError> {
    for txn in batch.iter() {
        match store.apply(&txn) {
            Ok(()) => {}
            // The live store never journals a refused transaction, but a
            // journal written by other means may hold one: the replica
            // refuses it too, so skipping it keeps the two equal.
            Err(e) if e.is_refusal() => tracing::error!("{e}; transaction refused in replay"),
            Err(e) => return Err(e.into()),
        }
        position.advance(&txn.meta());
    }
    Ok(batch.len() as u64)
}

/// A transaction under commitment control. Dropping it without `commit`
/// rolls it back.
#[derive(Debug)]
pub struct SourceTxn<'s> {
    source: &'s JournaledStore,
    appender: Appender,
    cycle: u64,
    changes: Changes,
    finished: bool,
}

impl SourceTxn<'_> {
    /// The transaction's commit cycle in the journal.
    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    pub fn put(&mut self, object_id: u64, key: &[u8], value: &[u8]) -> Result<u64, SourceError> {
        self.record(NewEntry::put(object_id, key, value))
    }

    pub fn delete(&mut self, object_id: u64, key: &[u8]) -> Result<u64, SourceError> {
        self.record(NewEntry::delete(object_id, key, None))
    }

    pub fn create_object(&mut self, object_id: u64, name: &str) -> Result<u64, SourceError> {
        self.record(NewEntry::create_object(object_id, name))
    }

    pub fn drop_object(&mut self, object_id: u64) -> Result<u64, SourceError> {
        self.record(NewEntry::drop_object(object_id))
    }

    pub fn clear_object(&mut self, object_id: u64) -> Result<u64, SourceError> {
        self.record(NewEntry::clear_object(object_id))
    }

    pub fn rename_object(&mut self, object_id: u64, new_name: &str) -> Result<u64, SourceError> {
        self.record(NewEntry::rename_object(object_id, new_name))
    }

    fn record(&mut self, entry: NewEntry<'_>) -> Result<u64, SourceError> {
        let sequence = self.appender.append_deferred(&entry.in_cycle(self.cycle))?;
        self.changes.push(change(&entry, sequence));
        Ok(sequence)
    }

    /// Commits: checks the changes against the tables' objects, journals
    /// C-CM and applies the transaction, all or nothing; returns the commit's
    /// sequence once it is durable. A transaction the tables would refuse is
    /// rolled back instead and its refusal returned.
    pub fn commit(mut self) -> Result<u64, SourceError> {
        self.finished = true;
        let source = self.source;
        let mut state = source.state.lock();
        state.open.remove(&self.cycle);
        state.check(source.journal.dir())?;
        if let Err(refusal) = state.check_objects(&self.changes) {
            let sequence = self
                .appender
                .append_deferred(&NewEntry::rollback(self.cycle))?;
            drop(state);
            source.journal.wait_durable(sequence)?;
            return Err(refusal);
        }
        let sequence = self
            .appender
            .append_deferred(&NewEntry::commit(self.cycle))?;
        source.apply_locked(&mut state, &self.changes, sequence)?;
        drop(state);
        source.journal.wait_durable(sequence)?;
        Ok(sequence)
    }

    /// Discards the transaction: journals C-RB; the tables never see it.
    pub fn rollback(mut self) -> Result<(), SourceError> {
        self.finish_rollback()
    }

    fn finish_rollback(&mut self) -> Result<(), SourceError> {
        self.finished = true;
        let sequence = self
            .appender
            .append_deferred(&NewEntry::rollback(self.cycle))?;
        self.source.state.lock().open.remove(&self.cycle);
        self.source.journal.wait_durable(sequence)?;
        Ok(())
    }
}

impl Drop for SourceTxn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.finish_rollback() {
                tracing::error!(
                    "HAD0233E transaction (commit cycle {}) dropped without commit could not be rolled back: {e}",
                    self.cycle
                );
            }
        }
    }
}
