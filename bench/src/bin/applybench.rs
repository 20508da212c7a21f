//! `applybench`: apply throughput into replica tables with 1 and 2 workers,
//! and in the same run the same workload into a general-purpose embedded
//! store (redb) and the SQLite store, with the ratios (docs/PERFORMANCE.md).
//! Each figure is the median of `--runs` runs.

use std::path::Path;
use std::sync::Arc;

use apply::{ReplicaTables, SqliteStore, Store};
use bench::apply::{batches, Keys, Workload};
use bench::redb_store::RedbStore;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measure apply throughput into replica tables against redb and SQLite")]
struct Args {
    /// Entries per run into replica tables.
    #[arg(long, default_value_t = 2_000_000)]
    entries: u64,
    /// Entries per run into the baselines (slower: fewer keeps the run short;
    /// their tables stay smaller, which favours them).
    #[arg(long, default_value_t = 200_000)]
    baseline_entries: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory for the stores (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Skip the redb and SQLite baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Only these transaction sizes (entries per transaction).
    #[arg(long, value_delimiter = ',', default_values_t = [1u64, 10, 1000])]
    txn: Vec<u64>,
    /// Only uniform keys (skip the Zipf rows).
    #[arg(long)]
    uniform_only: bool,
    /// Skip the restart-time measurement.
    #[arg(long)]
    no_restart: bool,
}

/// Median M entries/s of `runs` runs, and every run's figure.
fn measure(
    args: &Args,
    workload: &Workload,
    workers: usize,
    open: &dyn Fn(&Path) -> anyhow::Result<Arc<dyn Store>>,
) -> anyhow::Result<(f64, String)> {
    let input = batches(workload, 42);
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let dir = bench::tempdir_in(args.dir.as_deref())?;
        let store = open(dir.path())?;
        let took = bench::apply::apply(store, &input, workers)?;
        rates.push(workload.entries as f64 / took.as_secs_f64() / 1e6);
    }
    let all = rates
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((bench::median(&mut rates), all))
}

/// Restart time: a replica of `--keys` records is checkpointed, then opened
/// again (what replapply does after a crash, before replaying staging from
/// the checkpoint's position).
fn restart(args: &Args) -> anyhow::Result<()> {
    let workload = Workload {
        entries: args.keys,
        txn_entries: 1000,
        key_space: args.keys,
        keys: Keys::Uniform,
        image_bytes: 100,
    };
    let input = batches(&workload, 7);
    let dir = bench::tempdir_in(args.dir.as_deref())?;
    let tables = Arc::new(ReplicaTables::open(dir.path())?);
    bench::apply::apply(tables.clone(), &input, 1)?;
    let started = std::time::Instant::now();
    tables.checkpoint(&tables.applied_position())?;
    let checkpoint = started.elapsed();
    let records = tables.len();
    let index_bytes = tables.index_bytes();
    drop(tables);
    let mut opens = Vec::new();
    for _ in 0..args.runs {
        let started = std::time::Instant::now();
        let tables = ReplicaTables::open(dir.path())?;
        opens.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            tables.len() == records,
            "reopened with a different record count"
        );
    }
    println!(
        "restart: replica tables with {records} records (index {:.0} bytes a record): checkpoint {:.0} ms, open (load the checkpoint) {:.0} ms median of {}; replay then covers at most two checkpoint intervals of staging (one may be in flight)\n",
        index_bytes as f64 / records.max(1) as f64,
        checkpoint.as_secs_f64() * 1e3,
        bench::median(&mut opens),
        args.runs
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.no_restart {
        restart(&args)?;
    }
    println!(
        "| keys | entries per txn | tables, 1 worker | tables, 2 workers | redb | SQLite | tables(2) / redb | tables(2) / SQLite | runs (tables 2 / redb / SQLite) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let tables =
        |dir: &Path| -> anyhow::Result<Arc<dyn Store>> { Ok(Arc::new(ReplicaTables::open(dir)?)) };
    let redb = |dir: &Path| -> anyhow::Result<Arc<dyn Store>> {
        Ok(Arc::new(RedbStore::create(&dir.join("replica.redb"))?))
    };
    let sqlite = |dir: &Path| -> anyhow::Result<Arc<dyn Store>> {
        Ok(Arc::new(SqliteStore::open(dir.join("replica.db"))?))
    };
    let dists: &[Keys] = if args.uniform_only {
        &[Keys::Uniform]
    } else {
        &[Keys::Uniform, Keys::Zipf]
    };
    for &keys in dists {
        for &txn in &args.txn {
            let workload = Workload {
                entries: args.entries,
                txn_entries: txn,
                key_space: args.keys,
                keys,
                image_bytes: 100,
            };
            let (one, _) = measure(&args, &workload, 1, &tables)?;
            let (two, two_all) = measure(&args, &workload, 2, &tables)?;
            if args.no_baselines {
                println!("| {keys:?} | {txn} | {one:.2} | {two:.2} | - | - | - | - | {two_all} |");
                continue;
            }
            let small = Workload {
                entries: args.baseline_entries,
                ..workload
            };
            let (r, r_all) = measure(&args, &small, 1, &redb)?;
            let (s, s_all) = measure(&args, &small, 1, &sqlite)?;
            println!(
                "| {keys:?} | {txn} | {one:.2} | {two:.2} | {r:.3} | {s:.3} | {:.0}x | {:.0}x | {two_all} / {r_all} / {s_all} |",
                two / r,
                two / s
            );
        }
    }
    Ok(())
}
