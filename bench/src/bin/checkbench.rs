//! `checkbench`: sync-check figures (docs/PERFORMANCE.md).
//!
//! 1. Hashing: one object of `--records` 100-byte records in replica tables,
//!    hashed into its bucket tree on one thread; in the same run, BLAKE3
//!    over the same bytes as one stream (the hash function's own ceiling).
//! 2. A full check of a source and a replica of `--records` records each,
//!    equal: the bytes exchanged between checker and replica.
//! 3. One byte of one image flipped on the replica: the check names it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apply::check::{
    bucket_bits, check, show_key, CheckOptions, CheckService, LocalPeer, ObjectDigest, ProbeLog,
    Report,
};
use apply::{
    follow_journal, ApplyOptions, JournaledStore, Op, OpKind, ReplicaTables, SourceOptions, Store,
    TxnBatch, TxnMeta,
};
use clap::Parser;
use engine::journal::JournalOptions;

#[derive(Parser)]
#[command(about = "Measure sync-check: hashing speed, bytes exchanged, a flipped byte found")]
struct Args {
    /// Records in the object checked.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory for the stores (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Run one part only (default: both).
    #[arg(long, value_enum)]
    only: Option<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Hashing one object into its bucket tree.
    Hashing,
    /// Full checks: bytes exchanged, a flipped byte found.
    Check,
}

const OBJECT: u64 = 1;
const IMAGE_BYTES: usize = 100;

fn image(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; IMAGE_BYTES];
    engine::workload::fill_image(OBJECT, i, &mut v);
    v
}

/// Puts records `0..records` into `store` directly, 1000 per transaction.
fn fill(store: &dyn Store, records: u64) -> anyhow::Result<()> {
    let meta = |s: u64| TxnMeta {
        journal: 0,
        commit_sequence: s,
        resume_from: s + 1,
        commit_time_ns: 0,
    };
    let mut batch = TxnBatch::new();
    batch.push(
        meta(1),
        [Op {
            kind: OpKind::Create,
            object_id: OBJECT,
            sequence: 1,
            key: b"BENCH",
            value: &[],
        }],
    );
    store.apply(&batch.get(0))?;
    for start in (0..records).step_by(1000) {
        batch.clear();
        let rows: Vec<([u8; 16], Vec<u8>)> = (start..(start + 1000).min(records))
            .map(|i| (engine::workload::key(OBJECT, i), image(i)))
            .collect();
        batch.push(
            meta(start + 2),
            rows.iter().map(|(k, v)| Op {
                kind: OpKind::Put,
                object_id: OBJECT,
                sequence: start + 2,
                key: k,
                value: v,
            }),
        );
        store.apply(&batch.get(0))?;
    }
    Ok(())
}

fn hashing(args: &Args) -> anyhow::Result<()> {
    let dir = bench::tempdir_in(args.dir.as_deref())?;
    let tables = ReplicaTables::open(dir.path())?;
    fill(&tables, args.records)?;
    let bits = bucket_bits(args.records);
    let mut ours = Vec::new();
    let mut ceiling = Vec::new();
    let mut bytes = 0;
    for _ in 0..args.runs {
        let started = Instant::now();
        let digest = ObjectDigest::compute(&tables, OBJECT, bits)?;
        let took = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            digest.records == args.records,
            "hashed {} records",
            digest.records
        );
        bytes = digest.bytes;
        ours.push(bytes as f64 / took / 1e9);
        // The same bytes as one stream, in 64 MiB pieces.
        let stream: Vec<u8> = (0..(64u64 << 20)).map(|i| (i * 31 % 251) as u8).collect();
        let started = Instant::now();
        let mut hasher = blake3::Hasher::new();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(stream.len() as u64) as usize;
            hasher.update(&stream[..n]);
            left -= n as u64;
        }
        std::hint::black_box(hasher.finalize());
        ceiling.push(bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    let (o, c) = (bench::median(&mut ours), bench::median(&mut ceiling));
    println!(
        "hashing: {} records ({:.2} GB of keys and images) into 2^{bits} buckets, one thread: {o:.2} GB/s; BLAKE3 over one stream of the same size: {c:.2} GB/s; ratio {:.0}% (median of {})",
        args.records,
        bytes as f64 / 1e9,
        o / c * 100.0,
        args.runs
    );
    Ok(())
}

fn full_check(args: &Args) -> anyhow::Result<()> {
    let dir = bench::tempdir_in(args.dir.as_deref())?;
    let journal_dir = dir.path().join("journal");
    let source_tables = Box::new(ReplicaTables::open(dir.path().join("source"))?);
    let options = SourceOptions {
        journal: JournalOptions::default(),
        checkpoint_every: None,
    };
    let (source, _) = JournaledStore::open(&journal_dir, options, source_tables)?;
    let replica = Arc::new(ReplicaTables::open(dir.path().join("replica"))?);
    let probes = Arc::new(ProbeLog::new());
    let service = CheckService::new(replica.clone(), probes.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (replica, stop, dir) = (replica.clone(), stop.clone(), journal_dir.clone());
        std::thread::spawn(move || {
            let options = ApplyOptions {
                probes: Some(probes),
                ..ApplyOptions::default()
            };
            follow_journal(&dir, replica, &options, &stop)
        })
    };
    let started = Instant::now();
    source.create_object(OBJECT, "BENCH")?;
    for start in (0..args.records).step_by(10_000) {
        let mut txn = source.begin()?;
        for i in start..(start + 10_000).min(args.records) {
            txn.put(OBJECT, &engine::workload::key(OBJECT, i), &image(i))?;
        }
        txn.commit()?;
    }
    println!(
        "loaded {} records through the source's journal in {:.1} s",
        args.records,
        started.elapsed().as_secs_f64()
    );
    let run = |label: &str| -> anyhow::Result<Report> {
        let mut peer = LocalPeer::new(&service);
        let options = CheckOptions {
            probe_timeout: Duration::from_secs(600),
            ..CheckOptions::default()
        };
        let report = check(&source, &mut peer, &options, &mut |_| {})?;
        println!(
            "{label}: {} records checked in {:.1} s ({:.2} M records/s), {} bytes exchanged, {} difference(s){}",
            report.records,
            report.duration.as_secs_f64(),
            report.records as f64 / report.duration.as_secs_f64() / 1e6,
            report.exchanged_bytes,
            report.mismatches.len(),
            report
                .mismatches
                .iter()
                .map(|m| format!(": object {} ({}) key {} {}", m.object_id, m.object, show_key(&m.key), m.kind.label()))
                .collect::<String>()
        );
        Ok(report)
    };
    let mut exchanged = Vec::new();
    for i in 0..args.runs {
        let report = run(&format!("equal tables, check {}", i + 1))?;
        anyhow::ensure!(report.is_equal(), "equal tables reported different");
        exchanged.push(report.exchanged_bytes as f64);
    }
    println!(
        "full check of two equal {}-record tables: {:.0} bytes exchanged (median of {}), limit 1 MiB = {} bytes",
        args.records,
        bench::median(&mut exchanged),
        args.runs,
        1 << 20
    );
    // One byte of one image flipped on the replica, behind apply's back.
    let victim = args.records / 3 + 7;
    let key = engine::workload::key(OBJECT, victim);
    let mut flipped = image(victim);
    flipped[IMAGE_BYTES / 2] ^= 0x01;
    let mut batch = TxnBatch::new();
    batch.push(
        TxnMeta {
            journal: 0,
            commit_sequence: u64::MAX / 2,
            resume_from: u64::MAX / 2 + 1,
            commit_time_ns: 0,
        },
        [Op {
            kind: OpKind::Put,
            object_id: OBJECT,
            sequence: 0,
            key: &key,
            value: &flipped,
        }],
    );
    replica.apply(&batch.get(0))?;
    let report = run("one flipped byte")?;
    anyhow::ensure!(
        report.mismatches.len() == 1 && report.mismatches[0].key == key,
        "the flipped record was not named alone"
    );
    println!(
        "one flipped byte in record {victim} (key {}) of {}: found and named",
        show_key(&key),
        args.records
    );
    stop.store(true, Ordering::Relaxed);
    follower.join().expect("follower")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.only != Some(Part::Check) {
        hashing(&args)?;
    }
    if args.only != Some(Part::Hashing) {
        full_check(&args)?;
    }
    Ok(())
}
