//! `largetxn`: one very large transaction (default 1 M entries of 100-byte
//! images) staged and applied into replica tables by `apply::run`, once per
//! spill limit, each in its own process. Prints the peak anonymous memory
//! (heap) apply used and the time, so the spill limit's effect reads as a
//! ratio against "no limit" measured in the same run (docs/PERFORMANCE.md).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apply::{ReplicaTables, RunOptions, RunStatus, StagedJournal};
use clap::Parser;
use engine::frame::{Codec, FrameEncoder};
use engine::journal::entry::encode_to_vec;
use engine::journal::{decode, NewEntry};
use engine::staging::{Staging, StagingOptions};

#[derive(Parser)]
#[command(about = "Apply one very large transaction from staging; peak memory per spill limit")]
struct Args {
    /// Changes in the transaction.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 100)]
    image_bytes: usize,
    /// Distinct keys the changes cycle over (default: every change a new
    /// key, so the index grows by one entry per change).
    #[arg(long)]
    keys: Option<u64>,
    /// Spill limits to compare, in MiB; 0 = no limit (held in memory).
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 64, 8])]
    spill_mib: Vec<u64>,
    /// Directory for staging and the replica (default: the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Internal: measure one spill limit in this process.
    #[arg(long, hide = true)]
    child: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spill) = args.child {
        return child(&args, spill);
    }
    println!(
        "largetxn: one transaction of {} changes ({}-byte images) over {} keys, applied from staging into replica tables",
        args.entries,
        args.image_bytes,
        args.keys.unwrap_or(args.entries)
    );
    let mut baseline = None;
    for &spill in &args.spill_mib {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--child", &spill.to_string()])
            .args(["--entries", &args.entries.to_string()])
            .args(["--image-bytes", &args.image_bytes.to_string()]);
        if let Some(keys) = args.keys {
            cmd.args(["--keys", &keys.to_string()]);
        }
        if let Some(dir) = &args.dir {
            cmd.arg("--dir").arg(dir);
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let mut fields = text.split_whitespace();
        let peak_mib: f64 = fields.next().context("peak")?.parse()?;
        let secs: f64 = fields.next().context("time")?.parse()?;
        let read_back: u64 = fields.next().context("large")?.parse()?;
        let base = *baseline.get_or_insert(peak_mib);
        let limit = match spill {
            0 => "no limit".to_owned(),
            n => format!("{n} MiB"),
        };
        println!(
            "  spill {limit:>9}: peak heap {peak_mib:7.1} MiB ({:.2}x the first row), {secs:.2} s ({:.2} M changes/s), read back from staging: {}",
            peak_mib / base,
            args.entries as f64 / secs / 1e6,
            if read_back > 0 { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// Current anonymous resident memory (heap and stacks, not mapped files).
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn child(args: &Args, spill_mib: u64) -> anyhow::Result<()> {
    let root = bench::tempdir_in(args.dir.as_deref())?;
    let staging_dir = root.path().join("staging");
    let commit = stage(&staging_dir, args)?;

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start_kib = rss_anon_kib();
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let store = Arc::new(ReplicaTables::open(root.path().join("replica"))?);
    let options = RunOptions {
        spill_bytes: match spill_mib {
            0 => usize::MAX,
            n => (n as usize) << 20,
        },
        ..RunOptions::default()
    };
    let journals = [StagedJournal {
        name: "J1".into(),
        dir: staging_dir,
    }];
    let stop = AtomicBool::new(false);
    let status = RunStatus::default();
    let started = Instant::now();
    let took = std::thread::scope(|s| -> anyhow::Result<Duration> {
        let runner = s.spawn(|| apply::run(store.clone(), &journals, &options, &stop, &status));
        while status.applied_ops.load(Ordering::Relaxed) < args.entries + 1 && !runner.is_finished()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let position = runner.join().expect("apply thread")?;
        anyhow::ensure!(
            position.journal(0).applied == commit,
            "applied {} of {commit}",
            position.journal(0).applied
        );
        Ok(took)
    })?;
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let grown = peak.load(Ordering::Relaxed).saturating_sub(start_kib);
    println!(
        "{:.1} {:.3} {}",
        grown as f64 / 1024.0,
        took.as_secs_f64(),
        status.large_txns.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Stages F-CR, then C-SC, `entries` puts and C-CM in one commit cycle, in
/// frames of 1000 entries; returns the commit's sequence.
fn stage(dir: &std::path::Path, args: &Args) -> anyhow::Result<u64> {
    let (mut staging, _) = Staging::open(dir, StagingOptions::default())?;
    let mut encoder = FrameEncoder::new(Codec::None)?;
    let mut image = vec![0u8; args.image_bytes];
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let mut frame = Vec::new();
    let mut sequence = 0u64;
    let total = args.entries + 3;
    while sequence < total {
        encoded.clear();
        let first = sequence + 1;
        while encoded.len() < 1000 && sequence < total {
            sequence += 1;
            let i = sequence - 3;
            let key = engine::workload::key(1, i % args.keys.unwrap_or(u64::MAX));
            engine::workload::fill_image(1, i, &mut image);
            let entry = match sequence {
                1 => NewEntry::create_object(1, "LARGE"),
                2 => NewEntry::commit_start(1),
                s if s == total => NewEntry::commit(1),
                _ => NewEntry::put(1, &key, &image).in_cycle(1),
            };
            let mut buf = Vec::new();
            encode_to_vec(&entry, sequence, sequence, &mut buf);
            encoded.push(buf);
        }
        encoder.encode(
            1,
            first,
            sequence + 1,
            encoded.iter().map(|e| decode(e).expect("just encoded")),
            &mut frame,
        )?;
        staging.append(&frame)?;
    }
    staging.sync()?;
    Ok(total)
}
