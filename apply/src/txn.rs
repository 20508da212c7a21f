//! Committed transactions as apply sees them: a batch arena of changes.
//!
//! A `TxnBatch` holds many transactions in two flat vectors (bytes and ops),
//! so assembling and handing over a transaction costs no allocation per entry
//! or per transaction; a batch is allocated once and reused.

use std::ops::Range;

use engine::journal::{Entry, EntryType};

use crate::store::{record_hash, StoreError};

/// What one change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Insert or replace the record `key` with `value` (R-PT, R-UP after image).
    Put,
    /// Remove the record `key` (R-DL).
    Delete,
    /// Create the empty object; `key` is its name (F-CR).
    Create,
    /// Drop the object with its records (F-DO).
    Drop,
    /// Remove every record of the object (F-CL).
    Clear,
    /// Rename the object; `key` is the new name (F-RN).
    Rename,
    /// Change nothing: note the record `key` as it is here in the apply
    /// stream, or with object 0 and no key wait for everything before
    /// (S-CK, sync-check; `check::ProbeLog`).
    Probe,
}

impl OpKind {
    /// The change an entry makes, or `None` for entries that change no data
    /// (commit control, next segment).
    pub fn of(entry_type: EntryType) -> Option<OpKind> {
        Some(match entry_type {
            EntryType::RecordPut | EntryType::RecordUpdate => OpKind::Put,
            EntryType::RecordDelete => OpKind::Delete,
            EntryType::ObjectCreate => OpKind::Create,
            EntryType::ObjectDrop => OpKind::Drop,
            EntryType::ObjectClear => OpKind::Clear,
            EntryType::ObjectRename => OpKind::Rename,
            EntryType::CheckProbe => OpKind::Probe,
            _ => return None,
        })
    }

    /// Object-level changes touch every record of their object.
    pub fn is_object_level(self) -> bool {
        !matches!(self, OpKind::Put | OpKind::Delete | OpKind::Probe)
    }

    /// The journal label of the entry type this change came from.
    pub fn label(self) -> &'static str {
        match self {
            OpKind::Put => "R-PT",
            OpKind::Delete => "R-DL",
            OpKind::Create => "F-CR",
            OpKind::Drop => "F-DO",
            OpKind::Clear => "F-CL",
            OpKind::Rename => "F-RN",
            OpKind::Probe => "S-CK",
        }
    }
}

/// How many change slots ahead `Txn::ops_by_hash` starts loading.
const SLOTS_AHEAD: usize = 16;

/// One change; its key and value live in the owning arena's bytes.
#[derive(Clone, Copy, Debug)]
struct OpSlot {
    kind: OpKind,
    object_id: u64,
    sequence: u64,
    key: (u32, u32),
    value: (u32, u32),
    /// `record_hash(object_id, key)`, taken once when the change is added
    /// (on the staging reader's thread), not by every part that looks.
    hash: u64,
}

/// A change as a store applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op<'a> {
    pub kind: OpKind,
    pub object_id: u64,
    /// Sequence of the journal entry the change came from (for messages).
    pub sequence: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> Op<'a> {
    /// A probe that waits for everything before it (object 0, no key).
    pub fn is_barrier(&self) -> bool {
        self.kind == OpKind::Probe && self.object_id == 0 && self.key.is_empty()
    }

    /// Whether the change must be ordered against every other: object-level
    /// changes and barriers.
    pub fn is_object_level(&self) -> bool {
        self.kind.is_object_level() || self.is_barrier()
    }

    /// The change a journal entry makes, or `None` for entries that change
    /// no data (commit control, next segment).
    #[inline(always)]
    pub fn of_entry(entry: &Entry<'a>) -> Option<Op<'a>> {
        let kind = OpKind::of(entry.entry_type())?;
        Some(Op {
            kind,
            object_id: entry.object_id(),
            sequence: entry.sequence(),
            key: entry.key(),
            value: if kind == OpKind::Put {
                entry.after()
            } else {
                &[]
            },
        })
    }
}

/// Where a transaction came from and where replay resumes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    /// Index of the journal in the group.
    pub journal: u32,
    /// Sequence of the commit entry (or of the entry itself outside
    /// commitment control): the journal's applied position once it is applied.
    pub commit_sequence: u64,
    /// First sequence of this journal still needed after this transaction:
    /// the first entry of the oldest transaction still open, else
    /// `commit_sequence + 1`.
    pub resume_from: u64,
    /// Timestamp of the commit entry (ns since the Unix epoch): the key by
    /// which transactions of several journals are merged.
    pub commit_time_ns: u64,
}

/// Changes in arena form, shared by open transactions and batches.
#[derive(Clone, Debug, Default)]
pub(crate) struct Changes {
    bytes: Vec<u8>,
    ops: Vec<OpSlot>,
}

impl Changes {
    fn push_bytes(&mut self, data: &[u8]) -> (u32, u32) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        (start as u32, self.bytes.len() as u32)
    }

    /// Inlined: an `Op` handed through memory to a call was read back
    /// before its stores had reached the cache (decisions.md 99).
    #[inline(always)]
    pub(crate) fn push(&mut self, op: Op<'_>) {
        let key = self.push_bytes(op.key);
        let value = self.push_bytes(op.value);
        self.ops.push(OpSlot {
            kind: op.kind,
            object_id: op.object_id,
            sequence: op.sequence,
            key,
            value,
            hash: record_hash(op.object_id, op.key),
        });
    }

    /// Appends every change of `from`, hashes and all, in one copy of its
    /// bytes.
    pub(crate) fn append(&mut self, from: &Changes) {
        self.append_from(from, Mark::default());
    }

    /// Appends the changes of `from` from `mark` on, as `append`.
    fn append_from(&mut self, from: &Changes, mark: Mark) {
        let base = self.bytes.len() as u32;
        let rebase = |(start, end): (u32, u32)| (start - mark.byte + base, end - mark.byte + base);
        self.bytes
            .extend_from_slice(&from.bytes[mark.byte as usize..]);
        self.ops
            .extend(from.ops[mark.op..].iter().map(|slot| OpSlot {
                key: rebase(slot.key),
                value: rebase(slot.value),
                ..*slot
            }));
    }

    /// Where the next change will go.
    fn mark(&self) -> Mark {
        Mark {
            op: self.ops.len(),
            byte: self.bytes.len() as u32,
        }
    }

    /// Drops the changes from `mark` on.
    fn truncate(&mut self, mark: Mark) {
        self.ops.truncate(mark.op);
        self.bytes.truncate(mark.byte as usize);
    }

    /// Moves the changes from `mark` on to the front, dropping those before.
    fn keep_from(&mut self, mark: Mark) {
        if mark == Mark::default() {
            return;
        }
        let shift = mark.byte;
        self.bytes.copy_within(shift as usize.., 0);
        self.bytes.truncate(self.bytes.len() - shift as usize);
        self.ops.copy_within(mark.op.., 0);
        self.ops.truncate(self.ops.len() - mark.op);
        for slot in &mut self.ops {
            slot.key = (slot.key.0 - shift, slot.key.1 - shift);
            slot.value = (slot.value.0 - shift, slot.value.1 - shift);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.ops.clear();
    }

    pub(crate) fn op(&self, i: usize) -> Op<'_> {
        let slot = &self.ops[i];
        Op {
            kind: slot.kind,
            object_id: slot.object_id,
            sequence: slot.sequence,
            key: &self.bytes[slot.key.0 as usize..slot.key.1 as usize],
            value: &self.bytes[slot.value.0 as usize..slot.value.1 as usize],
        }
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = Op<'_>> + '_ {
        (0..self.ops.len()).map(move |i| self.op(i))
    }
}

/// A point in a `Changes`: its changes before it and the bytes they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mark {
    op: usize,
    byte: u32,
}

/// The open transaction a batch holds the changes of (after those of every
/// committed transaction, in no transaction yet): the assembler's direct
/// transaction of `journal`, whose changes go straight into the batch so
/// that its commit copies nothing (`Assembler`).
#[derive(Clone, Copy, Debug)]
struct OpenTail {
    journal: u32,
    from: Mark,
}

#[derive(Clone, Debug)]
struct TxnSlot {
    meta: TxnMeta,
    ops: Range<usize>,
    large: Option<LargeRef>,
}

/// A committed transaction too large to hold in memory: the assembler
/// dropped its changes once they passed the spill limit, and apply reads
/// them again from staging (`LargeTxn`) when the transaction's turn comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LargeRef {
    /// The transaction's commit cycle: its entries are this journal's
    /// entries of that cycle from `first_sequence` up to the commit.
    pub cycle: u64,
    /// Sequence of its first entry (C-SC, or its first change).
    pub first_sequence: u64,
    /// Changes in the transaction.
    pub ops: u64,
}

/// The changes of a large transaction, read again (from staging) each time
/// `for_each` is called, so a store can check them in one pass and apply
/// them in a second without holding them all.
pub trait LargeTxn {
    fn meta(&self) -> TxnMeta;

    /// Calls `visit` with every change of the transaction, in journal order;
    /// stops at the first error `visit` returns.
    fn for_each(
        &mut self,
        visit: &mut dyn FnMut(Op<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

/// Committed transactions, in commit order, in one arena.
///
/// A batch the `Assembler` fills may also hold the changes of one open
/// transaction after them (its open tail), which is not a transaction of
/// the batch until it commits. `clear` keeps the open tail, and a batch
/// with one is handed on with `swap_committed`, which leaves the tail
/// behind: a batch the assembler fills must not be dropped or replaced
/// while it holds one (the assembler panics at the next change of that
/// transaction).
#[derive(Clone, Debug, Default)]
pub struct TxnBatch {
    changes: Changes,
    txns: Vec<TxnSlot>,
    open: Option<OpenTail>,
}

impl TxnBatch {
    pub fn new() -> TxnBatch {
        TxnBatch::default()
    }

    /// An empty batch with room for `ops` changes and `bytes` of their
    /// keys and values, its memory written once so that its pages are
    /// there: a batch that grows into fresh memory faults it in a page at
    /// a time, on the staging reader's thread, in the first batches a run
    /// reads (decisions.md 82).
    pub fn with_room(ops: usize, bytes: usize) -> TxnBatch {
        let mut batch = TxnBatch::default();
        let changes = &mut batch.changes;
        changes.bytes.resize(bytes, 0);
        changes.bytes.clear();
        let blank = OpSlot {
            kind: OpKind::Probe,
            object_id: 0,
            sequence: 0,
            key: (0, 0),
            value: (0, 0),
            hash: 0,
        };
        changes.ops.resize(ops, blank);
        changes.ops.clear();
        batch
    }

    /// Appends a transaction made of `ops`.
    pub fn push<'o>(&mut self, meta: TxnMeta, ops: impl IntoIterator<Item = Op<'o>>) {
        self.assert_no_open_tail();
        let start = self.changes.len();
        for op in ops {
            self.changes.push(op);
        }
        self.txns.push(TxnSlot {
            meta,
            ops: start..self.changes.len(),
            large: None,
        });
    }

    /// Appends a transaction made of the changes an open transaction
    /// gathered (their hashes kept, their bytes copied at once).
    pub(crate) fn push_changes(&mut self, meta: TxnMeta, changes: &Changes) {
        self.assert_no_open_tail();
        let start = self.changes.len();
        self.changes.append(changes);
        self.txns.push(TxnSlot {
            meta,
            ops: start..self.changes.len(),
            large: None,
        });
    }

    /// Appends a large transaction: no changes here, only where to read
    /// them back.
    pub fn push_large(&mut self, meta: TxnMeta, large: LargeRef) {
        self.assert_no_open_tail();
        let at = self.changes.len();
        self.txns.push(TxnSlot {
            meta,
            ops: at..at,
            large: Some(large),
        });
    }

    /// Appends a copy of `txn` (large or not).
    pub fn push_txn(&mut self, txn: &Txn<'_>) {
        match txn.large {
            Some(large) => self.push_large(txn.meta, large),
            None => self.push(txn.meta, txn.ops()),
        }
    }

    fn assert_no_open_tail(&self) {
        assert!(
            self.open.is_none(),
            "a transaction pushed behind an open one (the assembler takes the open tail out first)"
        );
    }

    /// Starts an open tail for `journal`'s direct transaction.
    pub(crate) fn open_tail(&mut self, journal: u32) {
        assert!(self.open.is_none(), "a batch holds one open tail at most");
        self.open = Some(OpenTail {
            journal,
            from: self.changes.mark(),
        });
    }

    /// The journal whose open transaction the batch holds, if any.
    pub(crate) fn open_tail_journal(&self) -> Option<u32> {
        self.open.map(|t| t.journal)
    }

    /// Adds a change to the open tail.
    #[inline(always)]
    pub(crate) fn push_open(&mut self, op: Op<'_>) {
        debug_assert!(self.open.is_some());
        self.changes.push(op);
    }

    /// The open tail commits: it becomes the batch's last transaction.
    pub(crate) fn commit_open_tail(&mut self, meta: TxnMeta) {
        let tail = self.open.take().expect("an open tail to commit");
        self.txns.push(TxnSlot {
            meta,
            ops: tail.from.op..self.changes.len(),
            large: None,
        });
    }

    /// Drops the open tail's changes (rolled back, replayed or spilled).
    pub(crate) fn drop_open_tail(&mut self) {
        let tail = self.open.take().expect("an open tail to drop");
        self.changes.truncate(tail.from);
    }

    /// Moves the open tail's changes to the end of `into`.
    pub(crate) fn take_open_tail(&mut self, into: &mut Changes) {
        let tail = self.open.take().expect("an open tail to take");
        into.append_from(&self.changes, tail.from);
        self.changes.truncate(tail.from);
    }

    /// Committed transactions in the batch.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }

    /// Changes in the batch, over all its transactions (an open tail's are
    /// not counted).
    pub fn op_count(&self) -> usize {
        self.open.map_or(self.changes.len(), |t| t.from.op)
    }

    /// Bytes of keys and values of the batch's transactions (an open
    /// tail's are not counted).
    pub fn byte_len(&self) -> usize {
        self.open
            .map_or(self.changes.byte_len(), |t| t.from.byte as usize)
    }

    /// Drops the committed transactions; an open tail stays.
    pub fn clear(&mut self) {
        self.txns.clear();
        match &mut self.open {
            Some(tail) => {
                self.changes.keep_from(tail.from);
                tail.from = Mark::default();
            }
            None => self.changes.clear(),
        }
    }

    /// Hands the committed transactions to `empty` (a batch with nothing
    /// in it, whose room this one takes over) and keeps only the open
    /// tail, copied: `mem::swap` for a batch the assembler fills.
    pub fn swap_committed(&mut self, empty: &mut TxnBatch) {
        assert!(
            empty.txns.is_empty()
                && empty.changes.byte_len() == 0
                && empty.changes.len() == 0
                && empty.open.is_none(),
            "swap_committed takes an empty batch"
        );
        std::mem::swap(self, empty);
        if let Some(journal) = empty.open_tail_journal() {
            // The tail starts this (empty) batch.
            self.open_tail(journal);
            empty.take_open_tail(&mut self.changes);
        }
    }

    pub fn get(&self, i: usize) -> Txn<'_> {
        Txn {
            changes: &self.changes,
            meta: self.txns[i].meta,
            ops: self.txns[i].ops.clone(),
            large: self.txns[i].large,
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Txn<'_>> + '_ {
        (0..self.txns.len()).map(move |i| self.get(i))
    }
}

/// One committed transaction of a batch.
#[derive(Clone, Debug)]
pub struct Txn<'a> {
    pub(crate) changes: &'a Changes,
    pub(crate) meta: TxnMeta,
    pub(crate) ops: Range<usize>,
    pub(crate) large: Option<LargeRef>,
}

impl<'a> Txn<'a> {
    pub fn meta(&self) -> TxnMeta {
        self.meta
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn ops(&self) -> impl ExactSizeIterator<Item = Op<'a>> + 'a {
        let changes = self.changes;
        self.ops.clone().map(move |i| changes.op(i))
    }

    /// Each change's kind, object and journal sequence, read without
    /// making its key and value (the passes over a batch that look at no
    /// more: `needs_alone`, `PartedApply::refusal`).
    pub fn kinds(&self) -> impl ExactSizeIterator<Item = (OpKind, u64, u64)> + 'a {
        self.changes.ops[self.ops.clone()]
            .iter()
            .map(|slot| (slot.kind, slot.object_id, slot.sequence))
    }

    /// The changes whose `record_hash` `keep` accepts, each with its hash
    /// (taken when the change was added: a part of a parted apply skips
    /// the others' changes without reading their keys).
    pub fn ops_by_hash(
        &self,
        keep: impl Fn(u64) -> bool + 'a,
    ) -> impl Iterator<Item = (Op<'a>, u64)> + 'a {
        let changes = self.changes;
        self.ops.clone().filter_map(move |i| {
            // The slots were written on the staging reader's core, and each
            // part's first look at one waited for its line: the line some
            // changes on is asked for now (past this transaction's end
            // too, where the batch's next ones are).
            if let Some(ahead) = changes.ops.get(i + SLOTS_AHEAD) {
                crate::index::prefetch_line((ahead as *const OpSlot).cast());
            }
            let hash = changes.ops[i].hash;
            keep(hash).then(|| (changes.op(i), hash))
        })
    }

    /// Set for a large transaction, whose changes are not in memory
    /// (`ops()` is empty): apply reads them back with a `LargeTxn`.
    pub fn large(&self) -> Option<LargeRef> {
        self.large
    }

    /// True if any change is object-level (create, drop, clear, rename) or
    /// a barrier.
    pub fn has_object_ops(&self) -> bool {
        self.ops().any(|op| op.is_object_level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch made with room is empty and takes that many changes and
    /// bytes without moving its arenas.
    #[test]
    fn a_batch_made_with_room_fills_without_moving() {
        let mut batch = TxnBatch::with_room(100, 100 * 24);
        assert!(batch.is_empty());
        let (ops, bytes) = (batch.changes.ops.as_ptr(), batch.changes.bytes.as_ptr());
        let meta = TxnMeta {
            journal: 0,
            commit_sequence: 1,
            resume_from: 2,
            commit_time_ns: 0,
        };
        let keys: Vec<[u8; 8]> = (0..100u64).map(u64::to_le_bytes).collect();
        batch.push(
            meta,
            keys.iter().map(|k| Op {
                kind: OpKind::Put,
                object_id: 1,
                sequence: 1,
                key: k,
                value: &[7; 16],
            }),
        );
        assert_eq!(batch.op_count(), 100);
        assert_eq!(batch.changes.ops.as_ptr(), ops);
        assert_eq!(batch.changes.bytes.as_ptr(), bytes);
    }

    #[test]
    fn a_batch_gives_back_each_transaction_and_its_changes() {
        let mut batch = TxnBatch::new();
        let meta = |s| TxnMeta {
            journal: 0,
            commit_sequence: s,
            resume_from: s + 1,
            commit_time_ns: 0,
        };
        let put = |k: &'static [u8], v: &'static [u8]| Op {
            kind: OpKind::Put,
            object_id: 7,
            sequence: 1,
            key: k,
            value: v,
        };
        batch.push(meta(3), [put(b"a", b"1"), put(b"bb", b"22")]);
        batch.push(meta(5), []);
        batch.push(meta(9), [put(b"c", b"")]);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.op_count(), 3);
        let txns: Vec<_> = batch.iter().collect();
        assert_eq!(txns[0].meta().commit_sequence, 3);
        let ops: Vec<_> = txns[0].ops().collect();
        assert_eq!(ops, vec![put(b"a", b"1"), put(b"bb", b"22")]);
        let kinds: Vec<_> = txns[0].kinds().collect();
        assert_eq!(kinds, vec![(OpKind::Put, 7, 1), (OpKind::Put, 7, 1)]);
        assert_eq!(txns[2].kinds().len(), 1);
        assert!(txns[1].is_empty());
        assert_eq!(txns[2].ops().next().unwrap().key, b"c");
        assert!(!txns[2].has_object_ops());
        batch.clear();
        assert!(batch.is_empty());
    }

    #[test]
    fn changes_chosen_by_hash_are_those_whose_record_hash_is_accepted() {
        let mut batch = TxnBatch::new();
        let keys: Vec<[u8; 8]> = (0..200u64).map(|i| i.to_le_bytes()).collect();
        let ops: Vec<Op<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Op {
                kind: if i % 3 == 0 {
                    OpKind::Delete
                } else {
                    OpKind::Put
                },
                object_id: 1 + i as u64 % 4,
                sequence: i as u64,
                key: k,
                value: b"v",
            })
            .collect();
        let meta = TxnMeta {
            journal: 0,
            commit_sequence: 500,
            resume_from: 501,
            commit_time_ns: 0,
        };
        batch.push(meta, ops.iter().copied());
        let txn = batch.get(0);
        let kinds: Vec<_> = txn.kinds().collect();
        let expected: Vec<_> = ops
            .iter()
            .map(|op| (op.kind, op.object_id, op.sequence))
            .collect();
        assert_eq!(kinds, expected);
        let mut seen = 0;
        for part in 0..3u64 {
            let chosen: Vec<_> = txn.ops_by_hash(move |h| h % 3 == part).collect();
            let expected: Vec<_> = ops
                .iter()
                .filter(|op| record_hash(op.object_id, op.key) % 3 == part)
                .map(|op| (*op, record_hash(op.object_id, op.key)))
                .collect();
            assert_eq!(chosen, expected, "part {part}");
            seen += chosen.len();
        }
        assert_eq!(seen, ops.len());
    }

    #[test]
    fn gathered_changes_keep_their_bytes_and_hashes_in_a_batch_behind_others() {
        let op = |i: u8, key: &'static [u8], value: &'static [u8]| Op {
            kind: OpKind::Put,
            object_id: u64::from(i),
            sequence: u64::from(i),
            key,
            value,
        };
        let meta = |s| TxnMeta {
            journal: 0,
            commit_sequence: s,
            resume_from: s + 1,
            commit_time_ns: 0,
        };
        let gathered = [
            op(1, b"k1", b"first"),
            op(2, b"key2", b""),
            op(3, b"", b"v3"),
        ];
        let mut open = Changes::default();
        for o in gathered {
            open.push(o);
        }
        let mut batch = TxnBatch::new();
        batch.push(meta(1), [op(9, b"before", b"bytes ahead")]);
        batch.push_changes(meta(4), &open);
        let txn = batch.get(1);
        assert_eq!(txn.ops().collect::<Vec<_>>(), gathered);
        let hashed: Vec<u64> = txn.ops_by_hash(|_| true).map(|(_, h)| h).collect();
        let expected: Vec<u64> = gathered
            .iter()
            .map(|o| record_hash(o.object_id, o.key))
            .collect();
        assert_eq!(hashed, expected);
        assert_eq!(batch.get(0).ops().next().unwrap().value, b"bytes ahead");
    }
}
