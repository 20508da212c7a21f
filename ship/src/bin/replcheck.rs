//! replcheck: sync-check of a source store against its replica (SCI
//! messages, docs/messages.md). Opens the source's journal and tables itself
//! (they must not be open in another process: an application that owns its
//! source store runs `apply::check::check` in-process instead) and talks to
//! the check service of replapply (`[apply] check_listen`).
//!
//! Exit status: 0 equal, 1 differences found, 2 bad arguments, 3 the check
//! could not finish.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use apply::check::{check, CheckOptions, Progress, Report, TcpPeer};
use apply::{JournaledStore, ReplicaTables, SourceOptions, SqliteStore, Store};
use clap::{Parser, ValueEnum};
use scraper::ObjectSelector;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StoreArg {
    Tables,
    Sqlite,
}

#[derive(Parser)]
#[command(
    name = "replcheck",
    version,
    about = "Prove that a replica equals its source (BLAKE3 Merkle sync-check), and repair it"
)]
struct Args {
    /// The source's journal directory.
    #[arg(long)]
    journal: PathBuf,
    /// The source's tables: a replica-tables directory, or with
    /// `--store sqlite` the SQLite file.
    #[arg(long)]
    tables: PathBuf,
    #[arg(long, value_enum, default_value = "tables")]
    store: StoreArg,
    /// The replica's check service (replapply's `[apply] check_listen`).
    #[arg(long)]
    replica: String,
    /// The index of the source's journal in the replica's group
    /// (`[apply] journals`).
    #[arg(long, default_value_t = 0)]
    journal_index: u32,
    /// Journal a correction for every record that differs.
    #[arg(long)]
    repair: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Check only the objects named so (`LIB/ORDERS`, or `LIB/ORD*`);
    /// repeatable. Default: every object.
    #[arg(long = "object", value_name = "PATTERN")]
    objects: Vec<String>,
    /// Leave out the objects named so; repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Seconds the replica may take to apply up to a probe.
    #[arg(long, default_value_t = 60)]
    probe_timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ship::init_logging();
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", ship::check_report::json(&report));
            } else {
                print!("{}", ship::check_report::summary(&report));
            }
            if report.is_equal() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("replcheck: {}", engine::report::describe(&e));
            ExitCode::from(3)
        }
    }
}

/// Every object unless `--object` names some.
fn selector(include: &[String], exclude: &[String]) -> anyhow::Result<ObjectSelector> {
    let include = if include.is_empty() {
        vec!["*".to_owned()]
    } else {
        include.to_vec()
    };
    Ok(ObjectSelector::new(&include, exclude)?)
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let tables: Box<dyn Store> = match args.store {
        StoreArg::Tables => Box::new(ReplicaTables::open(&args.tables)?),
        StoreArg::Sqlite => Box::new(SqliteStore::open(&args.tables)?),
    };
    let options = SourceOptions {
        checkpoint_every: None,
        ..SourceOptions::default()
    };
    let (source, _) = JournaledStore::open(&args.journal, options, tables)?;
    let mut peer = TcpPeer::connect(&args.replica)?;
    let options = CheckOptions {
        journal: args.journal_index,
        repair: args.repair,
        probe_timeout: Duration::from_secs(args.probe_timeout),
        objects: selector(&args.objects, &args.exclude)?,
    };
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |p: &Progress<'_>| {
        let line = p.to_string();
        let elapsed = started.elapsed().as_secs_f64();
        if terminal {
            eprint!("\r\x1b[2K[{elapsed:6.1} s] {line}");
        } else {
            eprintln!("[{elapsed:.1} s] {line}");
        }
    };
    let report = check(&source, &mut peer, &options, &mut progress)?;
    if terminal {
        eprintln!();
    }
    Ok(report)
}
