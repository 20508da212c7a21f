//! `journalbench`: the journal and scraper figures of docs/PERFORMANCE.md.
//! Each figure is the median of `--runs` runs, with its baseline from the
//! same run.

use std::time::Duration;

use clap::Parser;
use engine::journal::Durability;

#[derive(Parser)]
#[command(about = "Measure journal append, scrape and append-to-scrape latency")]
struct Args {
    /// Records per append run.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Journal size for the scrape run, in MiB.
    #[arg(long, default_value_t = 1024)]
    scrape_mib: u64,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Samples for the latency run.
    #[arg(long, default_value_t = 20_000)]
    latency_samples: u64,
    /// Offered rate for the latency run (entries/s).
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Run only the figures whose name contains this text.
    #[arg(long, default_value = "")]
    only: String,
    /// Directory for the journals (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn tempdir(args: &Args) -> anyhow::Result<tempfile::TempDir> {
    bench::tempdir_in(args.dir.as_deref())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("| figure | median | runs |");
    println!("|---|---|---|");
    let group = Durability::GroupCommit {
        max_delay: Duration::from_micros(200),
    };
    for (name, durability, threads) in [
        ("append, 1 thread, durability none", Durability::None, 1),
        ("append, 2 threads, durability none", Durability::None, 2),
        ("append, 1 thread, group commit", group, 1),
        ("append, 2 threads, group commit", group, 2),
    ] {
        if !name.contains(&args.only) {
            continue;
        }
        let mut rates = Vec::new();
        let mut gbs = Vec::new();
        // One warm-up run, shown but not counted: the first run in a process
        // is consistently the slowest (first touch of memory in this VM).
        let mut warmup = None;
        for run in 0..=args.runs {
            settle()?;
            let dir = tempdir(&args)?;
            let figure = bench::append(dir.path(), durability, threads, args.entries, &|_| {})?;
            if run == 0 {
                warmup = Some(figure.entries_per_sec() / 1e6);
                continue;
            }
            rates.push(figure.entries_per_sec() / 1e6);
            gbs.push(figure.bytes_per_sec() / 1e9);
        }
        let all = rates
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let all = format!("{all} (warm-up {:.2})", warmup.unwrap_or_default());
        println!(
            "| {name} | {:.2} M entries/s ({:.2} GB/s) | {all} |",
            bench::median(&mut rates),
            bench::median(&mut gbs)
        );
    }
    let scrape_name = format!("scrape {} MiB in page cache", args.scrape_mib);
    if scrape_name.contains(&args.only) {
        scrape(&args, &scrape_name)?;
    }
    let latency_name = format!("append-to-scrape latency at {}/s", args.latency_rate);
    if latency_name.contains(&args.only) {
        latency(&args, &latency_name)?;
    }
    Ok(())
}

fn scrape(args: &Args, name: &str) -> anyhow::Result<()> {
    let entries = args.scrape_mib * 1024 * 1024 / 176;
    let (mut gbs, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        // A fresh journal per run: how its pages land in memory moves the
        // figure by up to a third between journals, and the median should
        // cover that, not one lucky or unlucky layout.
        let dir = tempdir(args)?;
        bench::append(dir.path(), Durability::None, 1, entries, &|_| {})?;
        settle()?;
        let figure = bench::scrape(dir.path(), &|_| {})?;
        gbs.push(figure.bytes_per_sec() / 1e9);
        rates.push(figure.entries_per_sec() / 1e6);
        ratios.push(figure.bytes_per_sec() / figure.memcpy_bytes_per_sec());
    }
    let all = gbs
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "| {name} | {:.2} GB/s, {:.1} M entries/s, {:.0}% of memcpy | {all} |",
        bench::median(&mut gbs),
        bench::median(&mut rates),
        100.0 * bench::median(&mut ratios)
    );
    Ok(())
}

/// Lets the page cache write back what earlier runs dirtied, so kernel
/// writeback of one run does not compete with the next ("an idle machine").
fn settle() -> anyhow::Result<()> {
    std::process::Command::new("sync").status()?;
    Ok(())
}

fn latency(args: &Args, name: &str) -> anyhow::Result<()> {
    settle()?;
    let (mut p50, mut p99, mut p999) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let dir = tempdir(args)?;
        let figure = bench::latency(dir.path(), args.latency_samples, args.latency_rate)?;
        p50.push(figure.p50_us);
        p99.push(figure.p99_us);
        p999.push(figure.p999_us);
    }
    let all = p99
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "| {name} | p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us | p99: {all} |",
        bench::median(&mut p50),
        bench::median(&mut p99),
        bench::median(&mut p999)
    );
    Ok(())
}
