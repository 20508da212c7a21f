//! `journal-demo`: the README's first command. Writes a journal of a few
//! million entries into a temporary directory, scrapes it back, and prints
//! entries/s for both, with progress bars on a terminal.

use std::time::Duration;

use clap::Parser;
use engine::journal::Durability;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(about = "Write a journal of a few million entries and scrape it back")]
struct Args {
    /// Records to append (each 16-byte key + 100-byte image, in commit cycles of 1000).
    #[arg(long, default_value_t = 5_000_000)]
    entries: u64,
    /// Appending threads.
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// Group-commit each cycle (fsync) instead of leaving write-back to the OS.
    #[arg(long)]
    group_commit: bool,
    /// Journal directory (default: a temporary directory removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>9} [{bar:40}] {pos}/{len} entries ({per_sec}, {eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let durability = if args.group_commit {
        Durability::GroupCommit {
            max_delay: Duration::from_micros(200),
        }
    } else {
        Durability::None
    };
    println!(
        "journal-demo: appending {} entries to {} ({durability:?})",
        args.entries,
        dir.display()
    );
    let appending = bar(args.entries, "append");
    let appended = bench::append(&dir, durability, args.threads, args.entries, &|n| {
        appending.set_position(n)
    })?;
    appending.finish();
    println!(
        "appended {} entries in {:.2?}: {:.2} M entries/s, {:.2} GB/s",
        appended.entries,
        appended.elapsed,
        appended.entries_per_sec() / 1e6,
        appended.bytes_per_sec() / 1e9
    );
    let scraping = bar(args.entries, "scrape");
    let scraped = bench::scrape(&dir, &|n| scraping.set_position(n))?;
    scraping.finish();
    println!(
        "scraped {} entries (commits included) in {:.2?}: {:.2} M entries/s, {:.2} GB/s ({:.0}% of memcpy of the same bytes, {:.2} GB/s)",
        scraped.entries,
        scraped.elapsed,
        scraped.entries_per_sec() / 1e6,
        scraped.bytes_per_sec() / 1e9,
        100.0 * scraped.bytes_per_sec() / scraped.memcpy_bytes_per_sec(),
        scraped.memcpy_bytes_per_sec() / 1e9
    );
    Ok(())
}
