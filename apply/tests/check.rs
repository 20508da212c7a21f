//! Sync-check: differences among many records are found exactly and
//! repaired; a check while a writer keeps changing the source reports no
//! false mismatch; the same records hash the same whatever their insertion
//! order and store.
//!
//! The replica follows the source's journal in this process (a thread
//! reading it with a cursor, assembling and applying in parallel, as
//! replapply does from staging), so probes reach it in order.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use apply::check::{
    bucket_bits, bucket_of, check, CheckOptions, CheckService, LocalPeer, MismatchKind,
    ObjectDigest, Peer, ProbeLog, Report, TcpPeer,
};
use apply::{
    follow_journal, ApplyOptions, JournaledStore, Op, OpKind, ReplicaTables, SourceOptions,
    SqliteStore, Store, TxnBatch, TxnMeta,
};
use engine::journal::JournalOptions;
use testkit::{seed, Rng};

const ORDERS: u64 = 1;

struct Pair {
    _dir: tempfile::TempDir,
    source: JournaledStore,
    replica: Arc<ReplicaTables>,
    service: CheckService,
    stop: Arc<AtomicBool>,
    follower: Option<JoinHandle<()>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(f) = self.follower.take() {
            f.join().unwrap();
        }
    }
}

/// A source store and a replica that follows its journal.
fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    let options = SourceOptions {
        journal: JournalOptions {
            segment_bytes: 8 << 20,
            ..JournalOptions::default()
        },
        checkpoint_every: None,
    };
    let source_tables = Box::new(ReplicaTables::open(dir.path().join("source")).unwrap());
    let (source, _) = JournaledStore::open(&journal_dir, options, source_tables).unwrap();
    let replica = Arc::new(ReplicaTables::open(dir.path().join("replica")).unwrap());
    let probes = Arc::new(ProbeLog::new());
    let service = CheckService::new(replica.clone(), probes.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (replica, stop) = (replica.clone(), stop.clone());
        std::thread::spawn(move || {
            let options = ApplyOptions {
                probes: Some(probes),
                ..ApplyOptions::default()
            };
            follow_journal(&journal_dir, replica, &options, &stop).unwrap();
        })
    };
    Pair {
        _dir: dir,
        source,
        replica,
        service,
        stop,
        follower: Some(follower),
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("order-{i:09}").into_bytes()
}

fn image(i: u64, version: u64) -> Vec<u8> {
    let mut v = format!("order {i} version {version} ").into_bytes();
    v.resize(100, b'.');
    v
}

/// Loads `records` records into ORDERS, in transactions of 10 000.
fn load(source: &JournaledStore, records: u64) {
    source.create_object(ORDERS, "ORDERS").unwrap();
    for start in (0..records).step_by(10_000) {
        let mut txn = source.begin().unwrap();
        for i in start..(start + 10_000).min(records) {
            txn.put(ORDERS, &key(i), &image(i, 0)).unwrap();
        }
        txn.commit().unwrap();
    }
}

fn local_check(pair: &Pair, repair: bool) -> Report {
    let mut peer = LocalPeer::new(&pair.service);
    let options = CheckOptions {
        repair,
        ..CheckOptions::default()
    };
    check(&pair.source, &mut peer, &options, &mut |_| {}).unwrap()
}

/// Changes the replica behind apply's back (as damage or a stray writer
/// would), once apply has caught up (a barrier probe).
fn damage(pair: &Pair, change: &[(OpKind, Vec<u8>, Vec<u8>)]) {
    let (sequence, _) = pair.source.probe(&[(0, b"")]).unwrap()[0];
    let mut peer = LocalPeer::new(&pair.service);
    peer.call(&apply::check::Request::Probes {
        journal: 0,
        timeout_ms: 60_000,
        sequences: vec![sequence],
    })
    .unwrap();
    let mut batch = TxnBatch::new();
    let meta = TxnMeta {
        journal: 0,
        commit_sequence: sequence,
        resume_from: sequence + 1,
        commit_time_ns: 0,
    };
    batch.push(
        meta,
        change.iter().map(|(kind, k, v)| Op {
            kind: *kind,
            object_id: ORDERS,
            sequence,
            key: k,
            value: v,
        }),
    );
    pair.replica.apply(&batch.get(0)).unwrap();
}

#[test]
fn one_missing_one_extra_one_changed_among_many_are_found_exactly_and_repaired() {
    let records = std::env::var("CHECK_TEST_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000u64);
    let seed = seed("check");
    let mut rng = Rng(seed);
    let pair = pair();
    load(&pair.source, records);

    let clean = local_check(&pair, false);
    assert!(clean.is_equal(), "{:?}", clean.mismatches);
    assert_eq!((clean.objects, clean.records), (1, records));

    let (missing, changed) = (rng.below(records), rng.below(records));
    let changed = if changed == missing {
        (changed + 1) % records
    } else {
        changed
    };
    let extra = key(records + 1 + rng.below(1000));
    damage(
        &pair,
        &[
            (OpKind::Delete, key(missing), Vec::new()),
            (OpKind::Put, key(changed), image(changed, 99)),
            (OpKind::Put, extra.clone(), image(7, 7)),
        ],
    );
    let found = local_check(&pair, true);
    let mut got: Vec<(MismatchKind, Vec<u8>)> = found
        .mismatches
        .iter()
        .map(|m| (m.kind, m.key.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (MismatchKind::MissingOnReplica, key(missing)),
            (MismatchKind::ExtraOnReplica, extra),
            (MismatchKind::ImageDiffers, key(changed)),
        ],
        "seed {seed}"
    );
    assert!(found
        .mismatches
        .iter()
        .all(|m| m.object == "ORDERS" && m.repair_sequence.is_some()));
    assert_eq!(found.repaired, 3);
    assert_eq!(found.in_flight, 0, "nothing was changing");

    // Repairs went through the journal; a second check, over TCP this time,
    // finds nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (service, stop) = (pair.service.clone(), stop.clone());
        std::thread::spawn(move || service.serve(listener, stop).unwrap())
    };
    let mut peer = TcpPeer::connect(&addr).unwrap();
    let again = check(
        &pair.source,
        &mut peer,
        &CheckOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(again.is_equal(), "after repair: {:?}", again.mismatches);
    assert_eq!(again.records, records);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn a_check_while_a_writer_changes_the_source_reports_no_false_mismatch() {
    let seed = seed("check-online");
    let pair = Arc::new(pair());
    load(&pair.source, 20_000);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pair, stop) = (pair.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                // Hot keys: a few thousand of the twenty thousand.
                let i = rng.below(3000);
                version += 1;
                match rng.below(10) {
                    0 => {
                        pair.source.delete(ORDERS, &key(i)).unwrap();
                    }
                    1..=3 => {
                        let mut txn = pair.source.begin().unwrap();
                        for j in 0..5 {
                            txn.put(ORDERS, &key((i + j * 7) % 20_000), &image(i, version))
                                .unwrap();
                        }
                        if rng.below(4) == 0 {
                            txn.rollback().unwrap();
                        } else {
                            txn.commit().unwrap();
                        }
                    }
                    _ => {
                        pair.source
                            .put(ORDERS, &key(i), &image(i, version))
                            .unwrap();
                    }
                }
            }
        })
    };
    let mut in_flight = 0;
    let mut checks = 0;
    while checks < 3 || (in_flight == 0 && checks < 30) {
        let report = local_check(&pair, false);
        assert!(
            report.is_equal(),
            "seed {seed}: false mismatches while the writer ran: {:?}",
            report.mismatches
        );
        in_flight += report.in_flight;
        checks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // The checks did meet changes in flight (else this test proves nothing).
    assert!(
        in_flight > 0,
        "seed {seed}: {checks} checks met no change in flight"
    );
    println!("seed {seed}: {checks} checks, {in_flight} records in flight, none reported");
    assert!(local_check(&pair, false).is_equal());
}

/// Fills `store` with `records` in the given order, in transactions of 1000.
fn fill(store: &dyn Store, order: &[u64]) {
    let records: Vec<(Vec<u8>, Vec<u8>)> = order.iter().map(|&i| (key(i), image(i, 0))).collect();
    put_all(store, &records);
}

/// Creates ORDERS in `store` and puts `records` (key, image) into it in
/// that order, in transactions of 1000.
fn put_all(store: &dyn Store, records: &[(Vec<u8>, Vec<u8>)]) {
    let mut batch = TxnBatch::new();
    let meta = |s| TxnMeta {
        journal: 0,
        commit_sequence: s,
        resume_from: s + 1,
        commit_time_ns: 0,
    };
    let create = [Op {
        kind: OpKind::Create,
        object_id: ORDERS,
        sequence: 1,
        key: b"ORDERS",
        value: &[],
    }];
    batch.push(meta(1), create);
    for (n, chunk) in records.chunks(1000).enumerate() {
        batch.push(
            meta(n as u64 + 2),
            chunk.iter().map(|(k, v)| Op {
                kind: OpKind::Put,
                object_id: ORDERS,
                sequence: 2,
                key: k,
                value: v,
            }),
        );
    }
    for txn in batch.iter() {
        store.apply(&txn).unwrap();
    }
}

#[test]
fn the_same_records_hash_the_same_in_any_insertion_order_and_store() {
    let seed = seed("check-order");
    let mut rng = Rng(seed);
    let records = 50_000u64;
    let forward: Vec<u64> = (0..records).collect();
    let mut shuffled = forward.clone();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    let a = ReplicaTables::open(path("a")).unwrap();
    let b = ReplicaTables::open(path("b")).unwrap();
    let c = SqliteStore::open(path("c.db")).unwrap();
    fill(&a, &forward);
    fill(&b, &shuffled);
    fill(&c, &shuffled);
    let bits = bucket_bits(records);
    let digest = |s: &dyn Store| ObjectDigest::compute(s, ORDERS, bits).unwrap();
    let (da, db, dc) = (digest(&a), digest(&b), digest(&c));
    assert_eq!(da.records, records);
    assert_eq!(da, db, "seed {seed}: insertion order changed the digest");
    assert_eq!(da, dc, "seed {seed}: SQLite and replica tables differ");
    // Some buckets alone: every store gives exactly their records.
    let only: Vec<u64> = (0..1u64 << bits).filter(|b| b % 7 == 3).collect();
    let visit = |s: &dyn Store, only: Option<&[u64]>| {
        let mut seen = Vec::new();
        s.visit_buckets(ORDERS, bits, only, &mut |hash, key, value| {
            seen.push((hash, key.to_vec(), value.to_vec()));
        })
        .unwrap();
        // Buckets come in any order: compare them in bucket order, each as
        // the store gave it.
        seen.sort_by_key(|r| bucket_of(r.0, bits));
        seen
    };
    let mut want = visit(&a, None);
    want.retain(|r| only.binary_search(&bucket_of(r.0, bits)).is_ok());
    assert!(!want.is_empty());
    for (name, store) in [("tables", &a as &dyn Store), ("sqlite", &c)] {
        let got = visit(store, Some(&only));
        assert!(
            got == want,
            "seed {seed}: {name} gave {} records of the chosen buckets, not {}",
            got.len(),
            want.len()
        );
    }
    // And one flipped byte of one image changes the root.
    let i = rng.below(records);
    let mut flipped = image(i, 0);
    flipped[rng.below(100) as usize] ^= 1;
    let mut batch = TxnBatch::new();
    batch.push(
        TxnMeta {
            journal: 0,
            commit_sequence: 999_999,
            resume_from: 1_000_000,
            commit_time_ns: 0,
        },
        [Op {
            kind: OpKind::Put,
            object_id: ORDERS,
            sequence: 999_999,
            key: &key(i),
            value: &flipped,
        }],
    );
    b.apply(&batch.get(0)).unwrap();
    assert_ne!(digest(&b).root(), da.root(), "seed {seed}");
}

/// Keys of 16 bytes with one `record_hash`: the hash folds 8-byte chunks in
/// as `h = ((h ^ chunk) * K).rotate_left(29)`, so a second chunk that
/// undoes the difference the first one made gives the same state.
fn keys_with_one_hash(object: u64, n: u64) -> Vec<Vec<u8>> {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = object.wrapping_mul(K) ^ 16;
    let after_first = |a: u64| ((start ^ a).wrapping_mul(K)).rotate_left(29);
    let (a0, b0) = (u64::from_le_bytes(*b"same-has"), 7);
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let a = a0 + i;
            let b = after_first(a0) ^ b0 ^ after_first(a);
            [a.to_le_bytes(), b.to_le_bytes()].concat()
        })
        .collect();
    let hash = apply::record_hash(object, &keys[0]);
    assert!(
        keys.iter().all(|k| apply::record_hash(object, k) == hash),
        "record_hash no longer folds keys as this test assumes; find colliding keys another way"
    );
    keys
}

#[test]
fn records_that_share_a_hash_are_hashed_in_key_order_in_every_store() {
    let same = keys_with_one_hash(ORDERS, 5);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = (0..3000).map(|i| (key(i), image(i, 0))).collect();
    records.extend(same.iter().map(|k| (k.clone(), image(7, 1))));
    let dir = tempfile::tempdir().unwrap();
    let a = ReplicaTables::open(dir.path().join("a")).unwrap();
    let b = ReplicaTables::open(dir.path().join("b")).unwrap();
    let c = SqliteStore::open(dir.path().join("c.db")).unwrap();
    put_all(&a, &records);
    records.reverse();
    put_all(&b, &records);
    put_all(&c, &records);
    let bits = bucket_bits(3005);
    let digest = |s: &dyn Store| ObjectDigest::compute(s, ORDERS, bits).unwrap();
    let (da, db, dc) = (digest(&a), digest(&b), digest(&c));
    assert_eq!(da.records, 3005);
    assert_eq!(
        da, db,
        "insertion order of records sharing a hash changed the digest"
    );
    assert_eq!(
        da, dc,
        "SQLite and replica tables order records sharing a hash apart"
    );
}

#[test]
fn a_check_compares_only_the_objects_its_selector_names() {
    let pair = pair();
    load(&pair.source, 1_000);
    pair.source.create_object(2, "OTHER/LIST").unwrap();
    pair.source.put(2, b"k", b"v").unwrap();
    damage(&pair, &[(OpKind::Put, key(7), image(7, 99))]);
    let mut peer = LocalPeer::new(&pair.service);
    let only_other = CheckOptions {
        objects: scraper::ObjectSelector::new(&["OTHER/*"], &[]).unwrap(),
        ..CheckOptions::default()
    };
    let report = check(&pair.source, &mut peer, &only_other, &mut |_| {}).unwrap();
    assert!(report.is_equal(), "{:?}", report.mismatches);
    assert_eq!((report.objects, report.records), (1, 1));
    let all_but_other = CheckOptions {
        objects: scraper::ObjectSelector::new(&["*"], &["OTHER/*"]).unwrap(),
        ..CheckOptions::default()
    };
    let report = check(&pair.source, &mut peer, &all_but_other, &mut |_| {}).unwrap();
    assert_eq!(report.objects, 1);
    assert_eq!(report.mismatches.len(), 1);
    assert_eq!(report.mismatches[0].key, key(7));
}

/// A bit flipped in a record on the replica's disk: the pass over the whole
/// object hashes the record as it is, the comparison finds its bucket, and
/// reading that bucket again (checksums checked) names the damage.
#[test]
fn a_record_damaged_on_the_replicas_disk_is_named_as_damage() {
    use std::os::unix::fs::FileExt;
    let pair = pair();
    load(&pair.source, 20_000);
    assert!(local_check(&pair, false).is_equal());
    let needle = image(1234, 0);
    let (path, at) = std::fs::read_dir(pair._dir.path().join("replica"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tbl"))
        .find_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let at = bytes.windows(needle.len()).position(|w| w == needle)?;
            Some((p, at))
        })
        .expect("record 1234 in a replica data file");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_at(b"#", (at + 50) as u64).unwrap();
    let mut peer = LocalPeer::new(&pair.service);
    let err = check(
        &pair.source,
        &mut peer,
        &CheckOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("HAD0211E"), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name), "{err}");
}
