//! `applybench`: apply throughput into replica tables (docs/PERFORMANCE.md).
//! Each figure is the median of `--runs` runs.

use std::sync::Arc;

use apply::ReplicaTables;
use bench::apply::{batches, Keys, Workload};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measure apply throughput into replica tables")]
struct Args {
    /// Entries per run.
    #[arg(long, default_value_t = 2_000_000)]
    entries: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory for the tables (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| keys | entries per transaction | workers | replica tables (M entries/s, median) | runs |");
    println!("|---|---|---|---|---|");
    for keys in [Keys::Uniform, Keys::Zipf] {
        for txn in [1, 10, 1000] {
            let workload = Workload {
                entries: args.entries,
                txn_entries: txn,
                key_space: args.keys,
                keys,
                image_bytes: 100,
            };
            let input = batches(&workload, 42);
            for workers in [1, 2] {
                let mut rates = Vec::new();
                for _ in 0..args.runs {
                    let dir = bench::tempdir_in(args.dir.as_deref())?;
                    let tables = Arc::new(ReplicaTables::open(dir.path())?);
                    let took = bench::apply::apply(tables, &input, workers)?;
                    rates.push(args.entries as f64 / took.as_secs_f64() / 1e6);
                }
                let all = rates
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!(
                    "| {keys:?} | {txn} | {workers} | {:.2} | {all} |",
                    bench::median(&mut rates)
                );
            }
        }
    }
    Ok(())
}
