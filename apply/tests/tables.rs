//! Replica tables: apply semantics, checkpoints, reopening, damage.

use apply::{
    AppliedPosition, CheckpointTimes, LargeTxn, Op, OpKind, ReplicaTables, SqliteStore, Store,
    StoreError, Txn, TxnBatch, TxnMeta, DATA_FILE_BYTES,
};

fn op<'a>(kind: OpKind, object_id: u64, key: &'a [u8], value: &'a [u8]) -> Op<'a> {
    Op {
        kind,
        object_id,
        sequence: 1,
        key,
        value,
    }
}

fn meta(sequence: u64) -> TxnMeta {
    TxnMeta {
        journal: 0,
        commit_sequence: sequence,
        resume_from: sequence + 1,
        commit_time_ns: 0,
    }
}

/// Applies each transaction of `batch`, in order.
fn apply_all(store: &dyn Store, batch: &TxnBatch) -> Vec<Result<(), StoreError>> {
    batch.iter().map(|t| store.apply(&t)).collect()
}

/// A transaction handed to `apply_large`, as if read back from staging;
/// counts the passes the store makes over it.
struct Streamed<'t> {
    txn: Txn<'t>,
    passes: usize,
}

impl LargeTxn for Streamed<'_> {
    fn meta(&self) -> TxnMeta {
        self.txn.meta()
    }

    fn for_each(
        &mut self,
        visit: &mut dyn FnMut(Op<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.passes += 1;
        self.txn.ops().try_for_each(visit)
    }
}

/// `apply_all` through `apply_large`.
fn apply_all_streamed(store: &dyn Store, batch: &TxnBatch) -> Vec<Result<(), StoreError>> {
    batch
        .iter()
        .map(|txn| {
            let mut streamed = Streamed { txn, passes: 0 };
            let result = store.apply_large(&mut streamed);
            assert!(streamed.passes <= 2, "{} passes", streamed.passes);
            result
        })
        .collect()
}

#[test]
fn large_transactions_streamed_follow_the_same_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let tables = ReplicaTables::open(dir.path().join("tables")).unwrap();
    follows_serial_semantics(&tables, apply_all_streamed);
    let sqlite = SqliteStore::open(dir.path().join("replica.db")).unwrap();
    follows_serial_semantics(&sqlite, apply_all_streamed);
    assert_eq!(sqlite.applied_position().journal(0).applied, 10);
}

fn records(store: &dyn Store, object_id: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    store
        .scan(object_id, &mut |k, v| out.push((k.to_vec(), v.to_vec())))
        .unwrap();
    out
}

#[test]
fn puts_deletes_and_object_operations_follow_serial_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let tables = ReplicaTables::open(dir.path()).unwrap();
    follows_serial_semantics(&tables, apply_all);
    assert!(tables.dead_bytes() > 0);
}

#[test]
fn the_sqlite_store_follows_the_same_semantics_and_reads_with_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let store = SqliteStore::open(&path).unwrap();
    follows_serial_semantics(&store, apply_all);
    // Refused transactions moved the position too.
    assert_eq!(store.applied_position().journal(0).applied, 10);
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.applied_position().journal(0).applied, 10);
    assert_eq!(records(&store, 1), vec![]);

    // Anyone can read the replica with SQL.
    let sql = rusqlite::Connection::open(&path).unwrap();
    let objects: Vec<(i64, String, String)> = sql
        .prepare("SELECT object_id, name, table_name FROM repl_objects")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(objects, [(1, "T".to_owned(), "obj_1".to_owned())]);
    let applied: i64 = sql
        .query_row(
            "SELECT applied FROM repl_applied WHERE journal = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(applied, 10);
}

/// The shared semantics test: the same transactions, the same outcome on
/// every store.
fn follows_serial_semantics(
    tables: &dyn Store,
    apply_all: fn(&dyn Store, &TxnBatch) -> Vec<Result<(), StoreError>>,
) {
    let mut batch = TxnBatch::new();
    batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
    batch.push(
        meta(2),
        [
            op(OpKind::Put, 1, b"b", b"2"),
            op(OpKind::Put, 1, b"a", b"1"),
            op(OpKind::Put, 1, b"a", b"1x"),
        ],
    );
    batch.push(meta(3), [op(OpKind::Delete, 1, b"b", b"")]);
    // Refused whole: the second change names an object that does not exist.
    batch.push(
        meta(4),
        [
            op(OpKind::Put, 1, b"c", b"3"),
            op(OpKind::Put, 9, b"c", b"3"),
        ],
    );
    batch.push(meta(5), [op(OpKind::Create, 1, b"again", b"")]);
    batch.push(
        meta(6),
        [
            op(OpKind::Create, 2, b"U", b""),
            op(OpKind::Put, 2, b"k", b"v"),
        ],
    );
    batch.push(meta(7), [op(OpKind::Rename, 2, b"U2", b"")]);
    let results = apply_all(tables, &batch);
    assert!(results[..3].iter().all(Result::is_ok));
    assert!(matches!(
        results[3],
        Err(StoreError::UnknownObject { object_id: 9, .. })
    ));
    assert!(matches!(
        results[4],
        Err(StoreError::ObjectExists { object_id: 1, .. })
    ));
    assert!(results[5].is_ok() && results[6].is_ok());
    assert_eq!(records(tables, 1), vec![(b"a".to_vec(), b"1x".to_vec())]);
    assert_eq!(tables.get(2, b"k").unwrap(), Some(b"v".to_vec()));
    let names: Vec<_> = tables
        .objects()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["T", "U2"]);

    batch.clear();
    batch.push(meta(8), [op(OpKind::Clear, 1, b"", b"")]);
    batch.push(meta(9), [op(OpKind::Drop, 2, b"", b"")]);
    batch.push(meta(10), [op(OpKind::Put, 2, b"k", b"v")]);
    let results = apply_all(tables, &batch);
    assert!(results[0].is_ok() && results[1].is_ok());
    assert!(results[2].as_ref().unwrap_err().is_refusal());
    assert!(records(tables, 1).is_empty());
    assert_eq!(tables.get(2, b"k").unwrap(), None);
}

#[test]
fn reopening_returns_the_last_checkpoint_exactly_and_drops_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![7u8; 100];
    let mut position = AppliedPosition::new(1);
    {
        let tables = ReplicaTables::open(dir.path()).unwrap();
        let mut batch = TxnBatch::new();
        batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
        // Enough to span more than one data file.
        let keys: Vec<[u8; 8]> = (0..(DATA_FILE_BYTES / 100 + 5000) as u64)
            .map(u64::to_be_bytes)
            .collect();
        for (i, k) in keys.iter().enumerate() {
            batch.push(meta(2 + i as u64), [op(OpKind::Put, 1, k, &value)]);
        }
        for t in batch.iter() {
            tables.apply(&t).unwrap();
            position.advance(&t.meta());
        }
        tables.checkpoint(&position).unwrap();
        // Applied after the checkpoint: gone after a crash.
        batch.clear();
        batch.push(meta(1 << 30), [op(OpKind::Put, 1, b"late", b"x")]);
        batch.push(meta((1 << 30) + 1), [op(OpKind::Delete, 1, &keys[0], b"")]);
        apply_all(&tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
        assert_eq!(tables.get(1, b"late").unwrap(), Some(b"x".to_vec()));
        // Dropped without a checkpoint: a crash as far as the files know.
    }
    let tables = ReplicaTables::open(dir.path()).unwrap();
    assert_eq!(tables.applied_position(), position);
    assert_eq!(tables.len(), DATA_FILE_BYTES / 100 + 5000);
    assert_eq!(tables.get(1, b"late").unwrap(), None);
    assert_eq!(
        tables.get(1, &0u64.to_be_bytes()).unwrap(),
        Some(value.clone())
    );
    let mut n = 0;
    let mut last: Option<Vec<u8>> = None;
    tables
        .scan(1, &mut |k, v| {
            assert!(last.as_deref() < Some(k), "scan must ascend");
            assert_eq!(v, &value[..]);
            last = Some(k.to_vec());
            n += 1;
        })
        .unwrap();
    assert_eq!(n, tables.len());
}

#[test]
fn a_checkpoint_says_what_it_synced_and_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let tables = ReplicaTables::open(dir.path()).unwrap();
    let mut batch = TxnBatch::new();
    batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
    let value = vec![7u8; 100];
    for i in 0..1000u64 {
        batch.push(meta(2 + i), [op(OpKind::Put, 1, &i.to_be_bytes(), &value)]);
    }
    let mut at = AppliedPosition::new(1);
    for t in batch.iter() {
        tables.apply(&t).unwrap();
        at.advance(&t.meta());
    }
    let older = tables.begin_checkpoint(&at).unwrap();
    let newer = tables.begin_checkpoint(&at).unwrap();
    let times = newer.finish().unwrap();
    // The checkpoint and its index file (the first: the whole index).
    let files = ["checkpoint", "index-0000000000000001"]
        .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len());
    assert_eq!(times.file_bytes, files[0] + files[1], "{times:?}");
    assert_eq!(times.delta_regions, None, "{times:?}");
    // Each shard writes a file of its own (its lane); 1000 keys touch all.
    assert!(times.data_files_synced >= 1, "{times:?}");
    let phases =
        times.compaction + times.index + times.data_sync + times.file_write + times.file_sync;
    assert!(phases <= times.total && !times.total.is_zero(), "{times:?}");
    let said = times.to_string();
    let synced = format!("{} data files synced", times.data_files_synced);
    assert!(
        said.contains(&synced) && said.contains("MB checkpoint (whole index) written"),
        "{said}"
    );
    // Begun first, finished after a later one: it writes nothing, and says so.
    assert_eq!(older.finish().unwrap(), CheckpointTimes::default());
    // Nothing written since: a delta of no regions, the whole index kept.
    let again = tables.begin_checkpoint(&at).unwrap().finish().unwrap();
    assert_eq!(again.delta_regions, Some(0), "{again:?}");
    assert!(again.file_bytes < files[1] / 4, "{again:?} after {times:?}");
    assert!(dir.path().join("index-0000000000000001").exists());
    let said = again.to_string();
    assert!(
        said.contains("(index delta of 0 regions) written"),
        "{said}"
    );
}

#[test]
fn a_checkpoint_finished_after_later_changes_replays_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let value = vec![3u8; 100];
    let keys: Vec<[u8; 8]> = (0..(DATA_FILE_BYTES / 100) as u64)
        .map(u64::to_be_bytes)
        .collect();
    let mut early = AppliedPosition::new(1);
    let late;
    {
        let tables = ReplicaTables::open(dir.path()).unwrap();
        let mut batch = TxnBatch::new();
        batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
        for (i, k) in keys.iter().enumerate() {
            batch.push(meta(2 + i as u64), [op(OpKind::Put, 1, k, &value)]);
        }
        for t in batch.iter() {
            tables.apply(&t).unwrap();
            early.advance(&t.meta());
        }
        let first = tables.begin_checkpoint(&early).unwrap();
        // Apply goes on while the first is not durable yet: new keys, a
        // delete and an overwrite, into the same and a new data file.
        batch.clear();
        let base = 1 << 30;
        batch.push(meta(base), [op(OpKind::Delete, 1, &keys[0], b"")]);
        batch.push(meta(base + 1), [op(OpKind::Put, 1, &keys[1], b"new")]);
        for (i, k) in keys.iter().enumerate().take(20_000) {
            let key = [b"later-".as_slice(), k].concat();
            batch.push(
                meta(base + 2 + i as u64),
                [op(OpKind::Put, 1, &key, &value)],
            );
        }
        let mut at = early.clone();
        for t in batch.iter() {
            tables.apply(&t).unwrap();
            at.advance(&t.meta());
        }
        late = at;
        assert_eq!(tables.applied_position(), AppliedPosition::default());
        first.finish().unwrap();
        assert_eq!(tables.applied_position(), early);
        // Begun second, finished first: the older one then writes nothing
        // over it.
        let third = tables.begin_checkpoint(&late).unwrap();
        let fourth = tables.begin_checkpoint(&late).unwrap();
        fourth.finish().unwrap();
        third.finish().unwrap();
        assert_eq!(tables.applied_position(), late);
        // Applied after: gone after a crash.
        batch.clear();
        batch.push(meta(base << 1), [op(OpKind::Put, 1, b"gone", b"x")]);
        apply_all(&tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
    }
    let tables = ReplicaTables::open(dir.path()).unwrap();
    assert_eq!(tables.applied_position(), late);
    assert_eq!(tables.len(), keys.len() - 1 + 20_000);
    assert_eq!(tables.get(1, &keys[0]).unwrap(), None);
    assert_eq!(tables.get(1, &keys[1]).unwrap(), Some(b"new".to_vec()));
    assert_eq!(tables.get(1, b"gone").unwrap(), None);
    drop(tables);

    // And the first checkpoint alone (a crash before the second): its
    // position, with the later changes already in the shards it took after
    // them (it takes them one at a time beside apply); replaying from the
    // position passes over those and reaches the stream's state.
    let dir = tempfile::tempdir().unwrap();
    {
        let tables = ReplicaTables::open(dir.path()).unwrap();
        let mut batch = TxnBatch::new();
        batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
        batch.push(meta(2), [op(OpKind::Put, 1, b"a", b"1")]);
        apply_all(&tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
        let mut at = AppliedPosition::new(1);
        batch.iter().for_each(|t| at.advance(&t.meta()));
        let pending = tables.begin_checkpoint(&at).unwrap();
        batch.clear();
        batch.push(meta(3), [op(OpKind::Put, 1, b"a", b"2")]);
        batch.push(meta(4), [op(OpKind::Put, 1, b"b", b"1")]);
        apply_all(&tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
        pending.finish().unwrap();
    }
    let tables = ReplicaTables::open(dir.path()).unwrap();
    let mut at = AppliedPosition::new(1);
    at.advance(&meta(2));
    assert_eq!(tables.applied_position(), at);
    assert_eq!(tables.mixed_until(), vec![4]);
    let mut replay = TxnBatch::new();
    replay.push(meta(3), [op(OpKind::Put, 1, b"a", b"2")]);
    replay.push(meta(4), [op(OpKind::Put, 1, b"b", b"1")]);
    apply_all(&tables, &replay)
        .into_iter()
        .for_each(|r| r.unwrap());
    assert_eq!(tables.get(1, b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(tables.get(1, b"b").unwrap(), Some(b"1".to_vec()));
    assert_eq!(tables.len(), 2);
    // Passed over, not made again: nothing replaced.
    assert_eq!(tables.dead_bytes(), 0);
    // Past the shards' stamps, changes apply as usual.
    replay.clear();
    replay.push(meta(5), [op(OpKind::Put, 1, b"a", b"3")]);
    apply_all(&tables, &replay)
        .into_iter()
        .for_each(|r| r.unwrap());
    assert_eq!(tables.get(1, b"a").unwrap(), Some(b"3".to_vec()));
    assert!(tables.dead_bytes() > 0);
}

#[test]
fn a_damaged_checkpoint_or_record_is_reported_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let clean = {
        let tables = ReplicaTables::open(dir.path()).unwrap();
        let mut batch = TxnBatch::new();
        batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
        batch.push(meta(2), [op(OpKind::Put, 1, b"k", b"value")]);
        apply_all(&tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
        tables.checkpoint(&AppliedPosition::new(1)).unwrap();
        apply::check::ObjectDigest::compute(&tables, 1, 8).unwrap()
    };
    // A flipped bit in the record: the read names the file.
    let data = dir.path().join("data-00000001.tbl");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[22] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let tables = ReplicaTables::open(dir.path()).unwrap();
    let err = tables.get(1, b"k").unwrap_err();
    assert!(err.to_string().starts_with("HAD0211E"), "{err}");
    assert!(err.to_string().contains("data-00000001.tbl"), "{err}");
    // Hashing the whole object for a sync-check hashes what is there (the
    // comparison with the source finds the difference); reading the
    // record's bucket again, as the check then does, names the damage.
    let digest = apply::check::ObjectDigest::compute(&tables, 1, 8).unwrap();
    assert_ne!(digest.root(), clean.root());
    let bucket = apply::check::bucket_of(apply::record_hash(1, b"k"), 8);
    let err = tables
        .visit_buckets(1, 8, Some(&[bucket]), &mut |_, _, _| {})
        .unwrap_err();
    assert!(err.to_string().starts_with("HAD0211E"), "{err}");
    assert!(err.to_string().contains("data-00000001.tbl"), "{err}");
    assert!(
        err.to_string()
            .contains("checksum mismatch in the record at offset 0"),
        "{err}"
    );
    drop(tables);
    // A flipped bit in the checkpoint: open refuses.
    let cp = dir.path().join("checkpoint");
    let mut bytes = std::fs::read(&cp).unwrap();
    let clean_checkpoint = bytes.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&cp, &bytes).unwrap();
    let err = ReplicaTables::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    std::fs::write(&cp, &clean_checkpoint).unwrap();
    // The index file it lists, damaged: open refuses, naming it.
    let index = dir.path().join("index-0000000000000001");
    let clean_index = std::fs::read(&index).unwrap();
    let mut bytes = clean_index.clone();
    bytes[30] ^= 0x10;
    std::fs::write(&index, &bytes).unwrap();
    let err = ReplicaTables::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("index-0000000000000001")
            && err.to_string().contains("checksum mismatch"),
        "{err}"
    );
    // Gone: open refuses, naming it.
    std::fs::remove_file(&index).unwrap();
    let err = ReplicaTables::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("cannot read index file")
            && err.to_string().contains("index-0000000000000001"),
        "{err}"
    );
    // Whole under its own checksum, but not the one the checkpoint lists.
    let mut bytes = clean_index.clone();
    bytes[30] ^= 0x10;
    let crc = crc32c::crc32c(&bytes[20..]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&index, &bytes).unwrap();
    let err = ReplicaTables::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not the one it lists"), "{err}");
    // A record's entry naming a data file the checkpoint does not list,
    // under matching checksums: open refuses, naming it. (The checkpoint's
    // last bytes are its one index file's checksum. A compact entry:
    // object 1, key length 1, the key, then the data file's number, one
    // byte here. A record shorter than its header and key, which the
    // fuzzer once reached, cannot be written in this format.)
    let mut bytes = clean_index;
    let entry = [1u8, 1, b'k'];
    let at = bytes
        .windows(entry.len())
        .position(|w| w == entry)
        .expect("the record's entry")
        + entry.len();
    assert!(bytes[at] < 0x7f, "a one-byte file number");
    bytes[at] = 0x7f;
    let crc = crc32c::crc32c(&bytes[20..]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&index, &bytes).unwrap();
    let mut root = clean_checkpoint;
    let last = root.len() - 4;
    root[last..].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&root[20..]);
    root[16..20].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&cp, &root).unwrap();
    let err = ReplicaTables::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("points outside the listed data files")
            && err.to_string().contains("index-0000000000000001"),
        "{err}"
    );
}

#[test]
fn a_reader_sees_a_transaction_all_at_once() {
    // Each transaction writes the same value to keys spread over many shards;
    // a concurrent reader of all of them must never see two values.
    let dir = tempfile::tempdir().unwrap();
    let tables = std::sync::Arc::new(ReplicaTables::open(dir.path()).unwrap());
    let keys: Vec<[u8; 8]> = (0..32u64).map(u64::to_be_bytes).collect();
    let mut setup = TxnBatch::new();
    setup.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
    setup.push(
        meta(2),
        keys.iter().map(|k| op(OpKind::Put, 1, k, &[0u8; 8])),
    );
    apply_all(&*tables, &setup)
        .into_iter()
        .for_each(|r| r.unwrap());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (tables, done, keys) = (tables.clone(), done.clone(), keys.clone());
        std::thread::spawn(move || {
            let wanted: Vec<(u64, &[u8])> = keys.iter().map(|k| (1, &k[..])).collect();
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let values = tables.get_many(&wanted).unwrap();
                let first = values[0].clone();
                assert!(
                    values.iter().all(|v| *v == first),
                    "a reader saw part of a transaction: {values:?}"
                );
                reads += 1;
            }
            reads
        })
    };
    for round in 1..=2000u64 {
        let value = round.to_le_bytes();
        let mut batch = TxnBatch::new();
        batch.push(
            meta(2 + round),
            keys.iter().map(|k| op(OpKind::Put, 1, k, &value)),
        );
        apply_all(&*tables, &batch)
            .into_iter()
            .for_each(|r| r.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[test]
fn keys_of_every_length_survive_checkpoints_that_reuse_their_buffer() {
    let dir = tempfile::tempdir().unwrap();
    // Lengths around the index's inline key size (35) and well past it.
    let keys: Vec<Vec<u8>> = (0..=80u8)
        .flat_map(|len| (0..3u8).map(move |i| vec![i.wrapping_add(len); len as usize]))
        .filter(|k| !k.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let value = |k: &[u8], round: u8| [k, &[round; 7][..]].concat();
    let mut position = AppliedPosition::new(1);
    let mut seq = 1;
    for round in 0..3u8 {
        let tables = ReplicaTables::open(dir.path()).unwrap();
        if round > 0 {
            for k in &keys {
                assert_eq!(
                    tables.get(1, k).unwrap(),
                    Some(value(k, round - 1)),
                    "key of {} bytes after reopening",
                    k.len()
                );
            }
        }
        let mut batch = TxnBatch::new();
        if round == 0 {
            batch.push(meta(seq), [op(OpKind::Create, 1, b"T", b"")]);
            seq += 1;
        }
        for k in &keys {
            batch.push(meta(seq), [op(OpKind::Put, 1, k, &value(k, round))]);
            seq += 1;
        }
        for t in batch.iter() {
            tables.apply(&t).unwrap();
            position.advance(&t.meta());
        }
        // Two checkpoints in one opening: the second reuses the first's buffer.
        tables.checkpoint(&position).unwrap();
        tables.checkpoint(&position).unwrap();
    }
    let tables = ReplicaTables::open(dir.path()).unwrap();
    assert_eq!(tables.len(), keys.len());
    for k in &keys {
        assert_eq!(tables.get(1, k).unwrap(), Some(value(k, 2)));
    }
}

/// A full disk fails the write of a transaction's records after its index
/// changes are made in memory. The tables then refuse to apply or
/// checkpoint (HAD0214E), even once there is room again: a checkpoint
/// would list the failed transaction's half, pointing at records never
/// written. Reopened, they are the last checkpoint exactly, and take the
/// rest from there. A checkpoint that finds the disk full fails the same
/// way and leaves the one before it.
#[test]
fn a_full_disk_stops_the_tables_until_reopened_and_loses_nothing_checkpointed() {
    let Some(fs) = testkit::SmallFs::mount(80 << 20) else {
        return;
    };
    let dir = fs.path().join("replica");
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 40 << 20]).unwrap();
    let value = vec![9u8; 4096];
    let put = |tables: &ReplicaTables, i: u64, position: &mut AppliedPosition| {
        let mut batch = TxnBatch::new();
        let key = i.to_be_bytes();
        batch.push(meta(2 + i), [op(OpKind::Put, 1, &key, &value)]);
        let txn = batch.iter().next().unwrap();
        tables.apply(&txn)?;
        position.advance(&txn.meta());
        Ok::<(), StoreError>(())
    };
    let full = |err: &StoreError, context: &str| {
        assert!(
            matches!(err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
                && err.to_string().contains(context),
            "{err}"
        );
    };
    let refused = |err: StoreError| {
        let text = err.to_string();
        assert!(
            text.starts_with("HAD0214E") && text.contains("No space left"),
            "{text}"
        );
    };

    let tables = ReplicaTables::open(&dir).unwrap();
    let mut position = AppliedPosition::new(1);
    let mut batch = TxnBatch::new();
    batch.push(meta(1), [op(OpKind::Create, 1, b"T", b"")]);
    tables.apply(&batch.iter().next().unwrap()).unwrap();
    position.advance(&meta(1));
    for i in 0..100 {
        put(&tables, i, &mut position).unwrap();
    }
    tables.checkpoint(&position).unwrap();
    let checkpointed = position.clone();
    // Nothing else writes: the disk fills in a transaction's records.
    let err = (100..100_000u64)
        .find_map(|i| put(&tables, i, &mut position).err())
        .expect("the disk filled up");
    full(&err, "write data file");

    // Room again; still nothing applied or checkpointed.
    std::fs::remove_file(&ballast).unwrap();
    refused(put(&tables, 1 << 40, &mut position).unwrap_err());
    refused(tables.checkpoint(&position).unwrap_err());
    drop(tables);

    let tables = ReplicaTables::open(&dir).unwrap();
    let mut position = checkpointed;
    assert_eq!(tables.applied_position(), position);
    assert_eq!(tables.len(), 100);
    for i in 100..1100 {
        put(&tables, i, &mut position).unwrap();
    }
    tables.checkpoint(&position).unwrap();
    let checkpointed = position.clone();
    for i in 1100..1200 {
        put(&tables, i, &mut position).unwrap();
    }
    // The disk filled to the last page: the next checkpoint cannot be
    // written, and the tables refuse from then on.
    let mut ballast = std::fs::File::create(&ballast).unwrap();
    while std::io::Write::write_all(&mut ballast, &[1u8; 64 << 10]).is_ok() {}
    full(&tables.checkpoint(&position).unwrap_err(), "checkpoint");
    refused(put(&tables, 1200, &mut position).unwrap_err());
    drop(tables);
    drop(ballast);
    std::fs::remove_file(fs.path().join("ballast")).unwrap();

    let tables = ReplicaTables::open(&dir).unwrap();
    assert_eq!(tables.applied_position(), checkpointed);
    assert_eq!(tables.len(), 1100);
    for i in [0u64, 100, 1099] {
        assert_eq!(
            tables.get(1, &i.to_be_bytes()).unwrap(),
            Some(value.clone())
        );
    }
}
