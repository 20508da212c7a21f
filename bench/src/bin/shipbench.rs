//! `shipbench`: the shipping figures of docs/PERFORMANCE.md. A journal of
//! 100-byte entries is shipped to a fresh staging store over loopback
//! (durably staged: written and fdatasync'ed), uncompressed and with zstd
//! level 1; in the same run, raw TCP moves the same entry bytes. Runs are
//! interleaved (raw, none, zstd, raw, ...) so host drift hits all alike;
//! each figure is the median of `--runs`.

use std::time::Duration;

use bench::median;
use bench::ship;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measure journal-to-staged shipping throughput and latency over loopback")]
struct Args {
    /// Entries in the shipped journal (100 bytes each).
    #[arg(long, default_value_t = 5_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Socket driver: auto, uring or plain.
    #[arg(long, default_value = "auto")]
    io: String,
    /// Offered load for the latency run (entries/s).
    #[arg(long, default_value_t = 1_000_000)]
    latency_rate: u64,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Seconds the latency run's load runs before it is measured (both
    /// sides then purge and reuse their segments, as in steady state).
    #[arg(long, default_value_t = 3)]
    latency_warmup_secs: u64,
    /// Run only the figures whose name contains this text (throughput, latency).
    #[arg(long, default_value = "")]
    only: String,
    /// Directory for the journal (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Directory for the staging store (default: beside the journal). On
    /// one machine standing in for two nodes, putting the journal on tmpfs
    /// keeps the primary's write-back off the backup's disk.
    #[arg(long)]
    staging_dir: Option<std::path::PathBuf>,
}

fn staging(
    args: &Args,
    root: &std::path::Path,
) -> anyhow::Result<(Option<tempfile::TempDir>, std::path::PathBuf)> {
    Ok(match &args.staging_dir {
        Some(dir) => {
            let t = tempfile::tempdir_in(dir)?;
            let p = t.path().join("staging");
            (Some(t), p)
        }
        None => (None, root.join("staging")),
    })
}

fn tempdir(args: &Args) -> anyhow::Result<tempfile::TempDir> {
    bench::tempdir_in(args.dir.as_deref())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if "throughput".contains(&args.only) {
        throughput(&args)?;
    }
    if "latency".contains(&args.only) {
        latency(&args)?;
    }
    Ok(())
}

fn throughput(args: &Args) -> anyhow::Result<()> {
    let root = tempdir(args)?;
    eprintln!("filling a journal with {} entries...", args.entries);
    let end = ship::fill_journal(&root.path().join("journal"), args.entries)?;
    let (_keep, staging) = staging(args, root.path())?;
    let (mut raw, mut none, mut zstd) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = (0, 0, 0);
    for run in 0..=args.runs {
        let r = ship::raw_tcp(root.path())?;
        let n = ship::ship(root.path(), &staging, end, "none", &args.io)?;
        let z = ship::ship(root.path(), &staging, end, "zstd:1", &args.io)?;
        let entries = n.entries as f64;
        let line = format!(
            "raw {:.2} M/s, none {:.2} M/s ({:.0}%), zstd:1 {:.2} M/s (staged {:.0}% of the journal's bytes)",
            entries / r / 1e6,
            n.entries_per_sec() / 1e6,
            100.0 * r / n.secs,
            z.entries_per_sec() / 1e6,
            100.0 * z.staged_bytes as f64 / z.journal_bytes as f64
        );
        // The first run warms page cache, allocator and CPU clocks: shown, not counted.
        if run == 0 {
            eprintln!("warm-up: {line}");
            continue;
        }
        eprintln!("run {run}: {line}");
        raw.push(entries / r);
        none.push(n.entries_per_sec());
        zstd.push(z.entries_per_sec());
        bytes = (n.journal_bytes, n.staged_bytes, z.staged_bytes);
    }
    let (raw, none, zstd) = (median(&mut raw), median(&mut none), median(&mut zstd));
    println!(
        "| figure ({} entries of 100 bytes, io {}) | median of {} |",
        args.entries, args.io, args.runs
    );
    println!("|---|---|");
    println!(
        "| raw TCP baseline (same bytes, plain write/read) | {:.2} M entries/s ({:.0} MB/s) |",
        raw / 1e6,
        raw * bytes.0 as f64 / args.entries as f64 / 1e6
    );
    println!(
        "| journal → staged, uncompressed | {:.2} M entries/s ({:.0}% of raw) |",
        none / 1e6,
        100.0 * none / raw
    );
    println!(
        "| journal → staged, zstd level 1 | {:.2} M entries/s ({:.0}% of raw; staged {} of {} journal bytes) |",
        zstd / 1e6,
        100.0 * zstd / raw,
        bytes.2,
        bytes.0
    );
    Ok(())
}

fn latency(args: &Args) -> anyhow::Result<()> {
    let root = tempdir(args)?;
    let (_keep, staging) = staging(args, root.path())?;
    let figure = ship::latency(
        root.path(),
        &staging,
        args.latency_rate,
        Duration::from_secs(args.latency_warmup_secs),
        Duration::from_secs(args.latency_secs),
    )?;
    for (stage, h) in [
        ("scraped", &figure.scraped),
        ("sent", &figure.sent),
        ("staged", &figure.staged),
    ] {
        println!(
            "| append → {stage} latency at {} entries/s offered, {} s after {} s | p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs |",
            args.latency_rate,
            args.latency_secs,
            args.latency_warmup_secs,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    Ok(())
}
