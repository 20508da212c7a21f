//! `repljrn`: the operator's journal tool. Dump a journal, verify it end to end,
//! or write a deterministic load into it (used by crash tests: every line
//! `ACK <seq> <tag> <thread> <index>` is printed only after that entry is durable).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use engine::journal::{Durability, Journal, JournalCursor, JournalOptions, NewEntry, Step};
use engine::workload;

#[derive(Parser)]
#[command(version, about = "Inspect, verify or load a replication journal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    None,
    Fsync,
    Group,
}

#[derive(Subcommand)]
enum Command {
    /// Print every entry from a sequence on, one line each.
    Dump {
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Read the whole journal, checking every checksum and sequence number.
    Verify { dir: PathBuf },
    /// Append a deterministic load: object 1, keys (tag, thread*2^32 + index).
    Load {
        dir: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        #[arg(long, default_value_t = 1)]
        threads: u64,
        #[arg(long, default_value_t = 100)]
        image_bytes: usize,
        #[arg(long, value_enum, default_value_t = DurabilityArg::Group)]
        durability: DurabilityArg,
        /// Distinguishes runs that write into the same journal.
        #[arg(long, default_value_t = 0)]
        tag: u64,
        #[arg(long, default_value_t = engine::limits::SEGMENT_BYTES_DEFAULT)]
        segment_bytes: usize,
        /// Print an ACK line for every durable entry.
        #[arg(long)]
        print_acks: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber_init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("repljrn: {}", engine::report::describe(&err));
            ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() {
    // Library messages (recovery warnings, purges) go to stderr with their IDs.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dump { dir, from } => dump(&dir, from),
        Command::Verify { dir } => verify(&dir),
        Command::Load {
            dir,
            entries,
            threads,
            image_bytes,
            durability,
            tag,
            segment_bytes,
            print_acks,
        } => {
            let durability = match durability {
                DurabilityArg::None => Durability::None,
                DurabilityArg::Fsync => Durability::Fsync,
                DurabilityArg::Group => Durability::GroupCommit {
                    max_delay: Duration::from_micros(200),
                },
            };
            let options = JournalOptions {
                durability,
                segment_bytes,
                ..JournalOptions::default()
            };
            load(
                &dir,
                options,
                entries,
                threads,
                image_bytes,
                tag,
                print_acks,
            )
        }
    }
}

fn walk(
    dir: &PathBuf,
    from: u64,
    mut each: impl FnMut(&engine::journal::Entry<'_>),
) -> anyhow::Result<u64> {
    let mut cursor = JournalCursor::open(dir, from)
        .with_context(|| format!("open journal {}", dir.display()))?;
    let mut count = 0;
    loop {
        match cursor.step().context("read journal")? {
            Step::Entry(at) => {
                each(&cursor.entry(at).expect("entry just validated"));
                count += 1;
            }
            Step::EndOfSegment => cursor.next_segment().context("open next segment")?,
            Step::Idle => return Ok(count),
        }
    }
}

fn dump(dir: &PathBuf, from: u64) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    walk(dir, from, |e| {
        let _ = writeln!(
            out,
            "{:>12} {} cycle={} object={} key={} after={}B before={}",
            e.sequence(),
            e.entry_type().label(),
            e.commit_cycle(),
            e.object_id(),
            e.key()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            e.after().len(),
            e.before()
                .map_or("-".to_owned(), |b| format!("{}B", b.len())),
        );
    })?;
    Ok(())
}

fn verify(dir: &PathBuf) -> anyhow::Result<()> {
    let mut by_type = std::collections::BTreeMap::<&'static str, u64>::new();
    let mut last = 0;
    let count = walk(dir, 1, |e| {
        *by_type.entry(e.entry_type().label()).or_default() += 1;
        last = e.sequence();
    })?;
    println!(
        "journal {} is valid: {count} entries, last sequence {last}",
        dir.display()
    );
    for (label, n) in by_type {
        println!("  {label} {n}");
    }
    Ok(())
}

fn load(
    dir: &PathBuf,
    options: JournalOptions,
    entries: u64,
    threads: u64,
    image_bytes: usize,
    tag: u64,
    print_acks: bool,
) -> anyhow::Result<()> {
    let journal =
        Journal::open(dir, options).with_context(|| format!("open journal {}", dir.display()))?;
    if journal.catalog().name(1).is_none() {
        journal
            .append(&NewEntry::create_object(1, "LOAD/T"))
            .context("create object")?;
    }
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (journal, stdout) = (&journal, &stdout);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut w = journal.appender();
                    let mut after = vec![0u8; image_bytes];
                    for i in (t..entries).step_by(threads as usize) {
                        let key = workload::key(tag, i);
                        workload::fill_image(tag, i, &mut after);
                        let seq = w.append(&NewEntry::put(1, &key, &after))?;
                        if print_acks {
                            let mut out = stdout.lock().unwrap();
                            writeln!(out, "ACK {seq} {tag} {t} {i}")?;
                            out.flush()?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("load thread panicked")?;
        }
        Ok(())
    })?;
    journal.flush()?;
    Ok(())
}
