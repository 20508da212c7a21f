//! The store trait: where records live, on the source and on the replica.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::check::{bucket_of, record_order};
use crate::position::AppliedPosition;
use crate::txn::{Changes, LargeTxn, OpKind, Txn, TxnBatch};

/// A checkpoint whose state is taken (`Store::begin_checkpoint`): `finish`
/// makes it durable, on whatever thread calls it, and says what that took.
pub struct PendingCheckpoint(Box<dyn FnOnce() -> Result<CheckpointTimes, StoreError> + Send>);

impl PendingCheckpoint {
    pub fn new(
        finish: impl FnOnce() -> Result<CheckpointTimes, StoreError> + Send + 'static,
    ) -> Self {
        PendingCheckpoint(Box::new(finish))
    }

    /// One already durable.
    pub fn done() -> Self {
        PendingCheckpoint::new(|| Ok(CheckpointTimes::default()))
    }

    pub fn finish(self) -> Result<CheckpointTimes, StoreError> {
        (self.0)()
    }
}

/// What the part of a checkpoint beside apply took, phase by phase
/// (`PendingCheckpoint::finish`), for progress messages (HAD0221I), as
/// PostgreSQL's `log_checkpoints` says what its checkpoints wrote and
/// synced. Zero where a store has no such phase (or finished nothing:
/// a later checkpoint was already durable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointTimes {
    /// The whole of `finish`.
    pub total: Duration,
    /// Moving what compaction left in the files it takes out.
    pub compaction: Duration,
    /// Taking the index (replica tables: the shards, one at a time).
    pub index: Duration,
    /// Syncing the data files written since the last checkpoint.
    pub data_sync: Duration,
    pub data_files_synced: u32,
    /// Writing the checkpoint file, then syncing it (and its directory).
    pub file_write: Duration,
    pub file_sync: Duration,
    pub file_bytes: u64,
    /// Replica tables: the index regions a delta listed, or `None` when the
    /// checkpoint wrote the whole index (decisions.md 75).
    pub delta_regions: Option<u64>,
}

impl std::fmt::Display for CheckpointTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let index = match self.delta_regions {
            Some(regions) => format!("index delta of {regions} regions"),
            None => "whole index".to_owned(),
        };
        write!(
            f,
            "{:.0} ms (compaction {:.0}, index {:.0}, {} data files synced in {:.0}, {:.1} MB checkpoint ({index}) written in {:.0} and synced in {:.0})",
            ms(self.total),
            ms(self.compaction),
            ms(self.index),
            self.data_files_synced,
            ms(self.data_sync),
            self.file_bytes as f64 / 1e6,
            ms(self.file_write),
            ms(self.file_sync)
        )
    }
}

impl std::fmt::Debug for PendingCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingCheckpoint")
    }
}

/// An object of a store: its id and current name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub object_id: u64,
    pub name: String,
}

/// What a store's data files hold, for progress reports (`Store::space`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSpace {
    /// Data files in use.
    pub data_files: usize,
    /// Data files kept for reuse: emptied by compaction, or made at open
    /// (`[apply] reserve_data`). Their space is taken on the disk.
    pub free_files: usize,
    /// Bytes written to them (records live and dead).
    pub written_bytes: u64,
    /// Bytes of the records the store's index points at.
    pub held_bytes: u64,
    /// Bytes of dead records compaction reclaimed since open.
    pub reclaimed_bytes: u64,
}

/// Why a store refused or failed a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("HAD0201E sequence {sequence}: {label} for object {object_id}, which the replica does not have")]
    UnknownObject {
        sequence: u64,
        label: &'static str,
        object_id: u64,
    },
    #[error(
        "HAD0202E sequence {sequence}: F-CR for object {object_id}, which the replica already has"
    )]
    ObjectExists { sequence: u64, object_id: u64 },
    #[error("HAD0210E {context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HAD0211E {} is damaged: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("HAD0212E {0}")]
    Database(String),
    #[error("HAD0213E reading large transaction {commit_sequence} back from staging: {detail}")]
    ReadBack {
        commit_sequence: u64,
        detail: String,
    },
    #[error("HAD0214E replica tables {}: an earlier write or sync failed ({cause}); nothing more is applied or checkpointed until they are reopened, which replays staging from the last checkpoint", dir.display())]
    Failed { dir: PathBuf, cause: String },
}

impl StoreError {
    /// Refusals of one transaction (the store is unchanged and can go on);
    /// every other error stops apply.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownObject { .. } | StoreError::ObjectExists { .. }
        )
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            context,
            path,
            source,
        }
    }
}

/// Checks a transaction's changes `(kind, object id, sequence, label)` against
/// object existence as the transaction itself changes it: a record change or
/// drop/clear/rename needs the object, a create needs it absent. `present`
/// answers for objects before the transaction.
pub fn check_objects(
    changes: impl Iterator<Item = (OpKind, u64, u64, &'static str)>,
    present: impl FnMut(u64) -> bool,
) -> Result<(), StoreError> {
    let mut check = ObjectCheck::new(present);
    for (kind, object_id, sequence, label) in changes {
        check.see(kind, object_id, sequence, label)?;
    }
    Ok(())
}

/// `check_objects` one change at a time, for changes that come as a stream
/// (a large transaction read back from staging).
#[derive(Debug)]
pub struct ObjectCheck<F> {
    exists: BTreeMap<u64, bool>,
    present: F,
}

impl<F: FnMut(u64) -> bool> ObjectCheck<F> {
    pub fn new(present: F) -> ObjectCheck<F> {
        ObjectCheck {
            exists: BTreeMap::new(),
            present,
        }
    }

    /// Takes the next change of the transaction.
    pub fn see(
        &mut self,
        kind: OpKind,
        object_id: u64,
        sequence: u64,
        label: &'static str,
    ) -> Result<(), StoreError> {
        if kind == OpKind::Probe {
            // Changes nothing; a probe of an object that does not exist
            // notes an absent record.
            return Ok(());
        }
        let exists = &mut self.exists;
        let present = &mut self.present;
        let here = *exists
            .entry(object_id)
            .or_insert_with(|| present(object_id));
        match kind {
            OpKind::Create if here => {
                return Err(StoreError::ObjectExists {
                    sequence,
                    object_id,
                })
            }
            OpKind::Create => {
                exists.insert(object_id, true);
            }
            _ if !here => {
                return Err(StoreError::UnknownObject {
                    sequence,
                    label,
                    object_id,
                })
            }
            OpKind::Drop => {
                exists.insert(object_id, false);
            }
            _ => {}
        }
        Ok(())
    }
}

/// One trait for the source's tables and the backup's replica.
///
/// Semantics are those of `SerialReplica`: puts store the after image, a
/// transaction whose change names an object the store lacks (or creates one it
/// has) is refused whole, object-level changes act on every record of their
/// object.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Applies one committed transaction all or nothing: a reader never sees
    /// part of it. Called from several threads at once, but only for
    /// transactions whose stripes (`stripe_of`) are disjoint; a transaction
    /// with object-level changes is never concurrent with any other.
    fn apply(&self, txn: &Txn<'_>) -> Result<(), StoreError>;

    /// Starts fetching into cache what applying `txn` will touch: called a
    /// few transactions ahead of `apply`, from any thread, holding nothing,
    /// so the misses of the transactions after the current one overlap with
    /// its work. A hint; the default does nothing.
    fn prefetch(&self, _txn: &Txn<'_>) {}

    /// Applies a transaction too large to hold in memory, all or nothing, as
    /// `apply` does: `txn` gives its changes again on each `for_each`, so a
    /// store checks them in one pass and applies them in another. Never
    /// concurrent with any other call that changes the store. The default
    /// gathers the changes in memory and calls `apply`: stores that can
    /// stream override it.
    fn apply_large(&self, txn: &mut dyn LargeTxn) -> Result<(), StoreError> {
        let mut changes = Changes::default();
        txn.for_each(&mut |op| {
            changes.push(op);
            Ok(())
        })?;
        self.apply(&Txn {
            changes: &changes,
            meta: txn.meta(),
            ops: 0..changes.len(),
            large: None,
        })
    }

    /// Makes everything applied so far durable together with `position`.
    /// Called only while no `apply` runs, when what is applied is exactly the
    /// transactions `position` covers. A store that keeps its position in the
    /// same transaction as the data (SQLite) only makes its commits durable.
    fn checkpoint(&self, position: &AppliedPosition) -> Result<(), StoreError>;

    /// Takes the state of a checkpoint at `position` (called as `checkpoint`
    /// is: nothing applying, everything up to `position` applied) and returns
    /// what makes it durable, which may run on another thread while apply
    /// goes on (and may take part of the state then: see `mixed_until`). The checkpoint counts only once its `finish` returns `Ok`;
    /// checkpoints are finished one at a time, in the order begun. The
    /// default checkpoints here and now.
    fn begin_checkpoint(
        &self,
        position: &AppliedPosition,
    ) -> Result<PendingCheckpoint, StoreError> {
        self.checkpoint(position)?;
        Ok(PendingCheckpoint::done())
    }

    /// The position stored with the data: apply resumes after it.
    fn applied_position(&self) -> AppliedPosition;

    /// The time apply's run means to leave between the beginnings of
    /// checkpoints, told before each begins: a store that makes them
    /// durable beside apply may spread its writes over part of it. The
    /// default ignores it.
    fn checkpoint_interval(&self, _every: Duration) {}

    /// After opening at a checkpoint whose parts were taken one after the
    /// other beside apply (replica tables, decisions.md 41): per journal of
    /// the group (by index), the last commit some part already held. Until
    /// apply has applied that far in every journal, replay leaves parts at
    /// different moments of the stream (each record as the source had it at
    /// some moment, not all at the same one), so a probe's outcome would not
    /// be the source's at the probe. Empty (the default): never so.
    fn mixed_until(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Upkeep done on apply's thread between batches (a store whose
    /// transactions apply on workers takes its locks: some may still run),
    /// short and bounded. The replica tables move a slice of the
    /// records compaction is taking out of mostly dead files (decisions.md
    /// 46). The default does nothing.
    fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the data files hold, for progress reports; `None` (the
    /// default): the store does not say.
    fn space(&self) -> Option<StoreSpace> {
        None
    }

    /// Objects, by ascending id.
    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Calls `visit` for every record of `object_id`, by ascending key (byte
    /// order), so two stores can be hashed in the same order.
    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError>;

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records of `object_id` (0 if it does not exist).
    fn record_count(&self, object_id: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        self.scan(object_id, &mut |_, _| n += 1)?;
        Ok(n)
    }

    /// Calls `visit(hash, key, value)` for every record of `object_id`,
    /// `hash` being its `record_hash`, bucket by bucket (`bucket_of(hash,
    /// bits)`; buckets in any order) and within a bucket by ascending
    /// (`record_order(hash)`, key): what sync-check hashes. With `only` (ascending
    /// buckets), the records of those buckets alone. The default
    /// reads the whole object into memory through `scan`; stores that can
    /// give buckets from their own layout override it.
    fn visit_buckets(
        &self,
        object_id: u64,
        bits: u32,
        only: Option<&[u64]>,
        visit: &mut BucketVisit<'_>,
    ) -> Result<(), StoreError> {
        visit_buckets_in_memory(self, object_id, bits, only, visit)
    }

    /// How many transactions this store can apply at once.
    fn max_parallel(&self) -> usize {
        usize::MAX
    }

    /// Locks the store against readers and other writers for applying
    /// record changes split into `parts` disjoint parts by record, each on
    /// its own thread at once (`PartedApply`); unlocked when the returned
    /// value is dropped, so readers see none or all of what was applied
    /// through it. `None` (the default): the store cannot split.
    fn lock_parts(&self, _parts: usize) -> Option<Box<dyn PartedApply + '_>> {
        None
    }
}

/// Record changes applied in parts on several threads at once
/// (`Store::lock_parts`): a record's part is fixed by its `record_hash`, so
/// each part sees its records' changes in commit order and parallel equals
/// serial.
pub trait PartedApply: Sync {
    /// Why the store refuses `txn` (record changes only), checked before
    /// any part applies it: a refused transaction is left out of every part.
    fn refusal(&self, txn: &Txn<'_>) -> Option<StoreError>;

    /// Applies, in order, the changes of the transactions `txns` of `batch`
    /// (record changes only, none refused) whose records fall in `part`.
    /// One call per part at a time.
    fn apply_part(&self, part: usize, batch: &TxnBatch, txns: &[u32]) -> Result<(), StoreError>;
}

/// Everything a store holds: by object id, the object's name and its records
/// in key order. What "the replica equals the source" compares.
pub type Contents = BTreeMap<u64, (String, BTreeMap<Vec<u8>, Vec<u8>>)>;

/// Reads the whole of `store` into memory, through `objects` and `scan`.
/// For tests and small tables; sync-check (a later issue) hashes instead.
pub fn contents(store: &dyn Store) -> Result<Contents, StoreError> {
    let mut out = Contents::new();
    for object in store.objects()? {
        let mut records = BTreeMap::new();
        store.scan(object.object_id, &mut |k, v| {
            records.insert(k.to_vec(), v.to_vec());
        })?;
        out.insert(object.object_id, (object.name, records));
    }
    Ok(out)
}

/// What `Store::visit_buckets` calls: record hash, key, value.
pub type BucketVisit<'a> = dyn FnMut(u64, &[u8], &[u8]) + 'a;

/// `Store::visit_buckets` through `scan`, with the whole object in memory.
pub(crate) fn visit_buckets_in_memory<S: Store + ?Sized>(
    store: &S,
    object_id: u64,
    bits: u32,
    only: Option<&[u64]>,
    visit: &mut BucketVisit<'_>,
) -> Result<(), StoreError> {
    let mut records = Vec::new();
    store.scan(object_id, &mut |k, v| {
        let hash = record_hash(object_id, k);
        if only.is_none_or(|o| o.binary_search(&bucket_of(hash, bits)).is_ok()) {
            records.push((hash, k.to_vec(), v.to_vec()));
        }
    })?;
    records.sort_by(|a, b| (record_order(a.0), &a.1).cmp(&(record_order(b.0), &b.1)));
    for (hash, k, v) in &records {
        visit(*hash, k, v);
    }
    Ok(())
}

/// A well-mixed 64-bit hash of a record's identity (object and key).
pub fn record_hash(object_id: u64, key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = object_id.wrapping_mul(K) ^ key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap()))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // murmur3's finalizer: every input bit reaches every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The stripe (of `stripes`) a record belongs to.
pub fn stripe_of(object_id: u64, key: &[u8], stripes: usize) -> usize {
    (record_hash(object_id, key) % stripes as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_spread_sequential_keys_evenly() {
        let mut counts = [0usize; 16];
        for i in 0u64..16_000 {
            counts[stripe_of(1, &i.to_be_bytes(), 16)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        assert_ne!(record_hash(1, b"a"), record_hash(2, b"a"));
        assert_ne!(record_hash(1, b"a"), record_hash(1, b"a\0"));
    }
}
