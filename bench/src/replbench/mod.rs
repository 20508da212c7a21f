//! replbench: a whole replication on this machine, measured. A workload
//! writes through the journal (this process); the sender, the receiver and
//! apply run as separate processes over loopback (`roles`), in a temporary
//! directory; each stage reports when it passed which position (`stages`),
//! from which the run's throughput and lag per stage are computed. At the
//! end the source's tables are built from the journal and sync-checked
//! against the replica, and a raw-TCP baseline moves the same bytes.

pub mod roles;
pub mod stages;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apply::check::{check, CheckOptions, Progress, Report, TcpPeer};
use apply::{JournaledStore, ReplicaTables, SourceOptions};
use engine::journal::{Durability, Journal, JournalOptions};
use engine::trace::monotonic_ns;

use roles::{Process, Role};
use stages::{Board, Lag, Stage};
use workload::{Workload, Written};

/// How long the pipeline may go without applying anything once the writer
/// is done before replbench gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// The raw-TCP baseline sends at most this much of the journal.
const RAW_BYTES_MAX: usize = 1 << 30;

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: Workload,
    /// Apply workers.
    pub workers: usize,
    /// `[transport] compression` and `io`.
    pub compression: String,
    pub io: String,
    /// Where the run's temporary directory goes (default: the system's).
    pub dir: Option<PathBuf>,
    /// Keep the run's directory (its path is printed).
    pub keep: bool,
    /// Sync-check source against replica at the end.
    pub check: bool,
    /// Measure the raw-TCP baseline.
    pub baseline: bool,
}

/// One stage's figures: when it had passed everything, from the first
/// append.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageFigure {
    pub stage: &'static str,
    pub seconds: f64,
    pub entries_per_s: f64,
    pub mb_per_s: f64,
}

/// A process's CPU time over the measured run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuFigure {
    pub process: String,
    pub seconds: f64,
    /// Of one core over the run's wall time.
    pub percent: f64,
}

/// Everything a run measured.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub directory: String,
    /// Record changes written (and applied).
    pub changes: u64,
    /// Journal entries shipped: the changes, commits and object operations.
    pub entries: u64,
    pub object_ops: u64,
    pub journal_bytes: u64,
    /// First append to everything applied.
    pub seconds: f64,
    pub changes_per_s: f64,
    pub stages: Vec<StageFigure>,
    pub lag: Vec<Lag>,
    pub cpu: Vec<CpuFigure>,
    /// Stage events some process could not report (figures may be coarse).
    pub dropped_events: u64,
    /// Seconds to build the source's tables from the journal.
    pub source_build_seconds: Option<f64>,
    #[serde(skip)]
    pub check: Option<Report>,
    /// The raw-TCP baseline: (bytes, MB/s), and our journal MB/s end to end
    /// as a percentage of it.
    pub raw_tcp_mb_per_s: Option<f64>,
    pub percent_of_raw_tcp: Option<f64>,
}

impl Outcome {
    pub fn to_json(&self, options: &Options) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("plain data serializes");
        let w = &options.workload;
        value["settings"] = serde_json::json!({
            "keys": format!("{:?}", w.keys).to_lowercase(),
            "key_space": w.key_space,
            "image_bytes": w.image_bytes,
            "txn_changes": w.txn_changes,
            "update_percent": w.update_percent,
            "delete_percent": w.delete_percent,
            "objects": w.objects,
            "object_every": w.object_every,
            "rate": w.rate,
            "workers": options.workers,
            "compression": options.compression,
            "io": options.io,
        });
        value["check"] = match &self.check {
            Some(r) => ship::check_report::json(r),
            None => serde_json::Value::Null,
        };
        value
    }
}

/// What a run tells its user while it goes.
pub trait Reporter {
    /// A progress line (replaces the previous one on a terminal).
    fn progress(&mut self, line: &str);
    /// A line that stays.
    fn note(&mut self, line: &str);
}

/// Runs the whole replication; `exe` is the replbench binary (its `role`
/// subcommand runs the pipeline's processes).
pub fn run(exe: &Path, options: &Options, say: &mut dyn Reporter) -> anyhow::Result<Outcome> {
    let root = crate::tempdir_in(options.dir.as_deref())?;
    let dir = if options.keep {
        root.keep()
    } else {
        root.path().to_owned()
    };
    say.note(&format!("RBN0001I replbench in {}", dir.display()));
    let config = write_config(&dir, options)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let journal_dir = dir.join("journal");
    let journal_options = JournalOptions {
        durability: Durability::None,
        ..JournalOptions::default()
    };
    let journal = Journal::open(&journal_dir, journal_options.clone())
        .with_context(|| format!("opening the journal {}", journal_dir.display()))?;

    let board = Arc::new(Board::new(1));
    let mut processes = vec![
        Process::start(exe, Role::Receive, 0, &config, &logs, &board)?,
        Process::start(exe, Role::Apply, 0, &config, &logs, &board)?,
        Process::start(exe, Role::Send, 0, &config, &logs, &board)?,
    ];

    let written_to = AtomicU64::new(0);
    let stop_writer = AtomicBool::new(false);
    let started = Instant::now();
    let written = std::thread::scope(|scope| -> anyhow::Result<Written> {
        let writer = scope.spawn(|| {
            let result = workload::write(&journal, &options.workload, &stop_writer, &written_to);
            stop_writer.store(true, Ordering::Relaxed);
            result
        });
        let mut last = (Instant::now(), 0);
        while !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if last.0.elapsed() >= Duration::from_secs(1) {
                let applied = board.reached(Stage::Applied, 0);
                let rate = (applied.saturating_sub(last.1)) as f64 / last.0.elapsed().as_secs_f64();
                say.progress(&progress_line(started, &board, &written_to, rate));
                last = (Instant::now(), applied);
            }
            for p in &mut processes {
                if let Err(e) = p.check_running() {
                    stop_writer.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        writer.join().expect("the writer panicked")
    })?;

    // Everything written must reach the replica.
    let mut last = (Instant::now(), board.reached(Stage::Applied, 0));
    let mut shown = Instant::now();
    while board.reached(Stage::Applied, 0) < written.end {
        std::thread::sleep(Duration::from_millis(20));
        let applied = board.reached(Stage::Applied, 0);
        if applied > last.1 {
            last = (Instant::now(), applied);
        } else if last.0.elapsed() > STALL_LIMIT {
            anyhow::bail!(
                "RBN0104E nothing applied for {STALL_LIMIT:?}: applied up to {applied} of {}; logs in {}",
                written.end,
                logs.display()
            );
        }
        for p in &mut processes {
            p.check_running()?;
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            say.progress(&progress_line(started, &board, &written_to, 0.0));
            shown = Instant::now();
        }
    }
    let finished_ns = monotonic_ns();
    let mut cpu = vec![CpuFigure {
        process: "writer".into(),
        seconds: written.cpu.as_secs_f64(),
        percent: 0.0,
    }];
    for p in &processes {
        cpu.push(CpuFigure {
            process: p.role.name().into(),
            seconds: p.cpu()?.as_secs_f64(),
            percent: 0.0,
        });
    }
    say.note(&progress_line(started, &board, &written_to, 0.0));
    drop(journal);

    let journal_bytes = crate::ship::published_bytes(&journal_dir)?;
    let mut outcome = figures(&written, &board, finished_ns, journal_bytes, cpu)?;
    outcome.directory = dir.display().to_string();
    say.note(&format!(
        "RBN0002I {} changes ({} entries) applied in {:.2} s: {:.2} M changes/s",
        outcome.changes,
        outcome.entries,
        outcome.seconds,
        outcome.changes_per_s / 1e6
    ));

    if options.check {
        let (report, build) = sync_check(&dir, &journal_options, say)?;
        outcome.source_build_seconds = Some(build.as_secs_f64());
        outcome.check = Some(report);
    }
    let mut failures = Vec::new();
    for p in &mut processes {
        if let Err(e) = p.stop(Duration::from_secs(30)) {
            failures.push(format!("{e:#}"));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    if options.baseline {
        say.progress("raw-TCP baseline: the journal's bytes over one loopback connection");
        let (bytes, secs) = crate::ship::raw_tcp_journal(&journal_dir, RAW_BYTES_MAX)?;
        let raw = bytes as f64 / secs / 1e6;
        outcome.raw_tcp_mb_per_s = Some(raw);
        let ours = outcome.journal_bytes as f64 / outcome.seconds / 1e6;
        outcome.percent_of_raw_tcp = Some(100.0 * ours / raw);
    }
    Ok(outcome)
}

/// The pair's configuration (one journal), written into `dir`.
fn write_config(dir: &Path, options: &Options) -> anyhow::Result<PathBuf> {
    let port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (data, check) = (port()?, port()?);
    let text = format!(
        "# Written by replbench.\ngroup = \"BENCH\"\n\n\
         [primary]\nnode = \"primary\"\njournal = \"journal\"\njournal_name = \"J0\"\n\n\
         [backup]\nnode = \"backup\"\nlisten = \"127.0.0.1:{data}\"\nstaging = \"staging\"\n\n\
         [transport]\nio = \"{}\"\ncompression = \"{}\"\nframe_entries = 16384\nframe_bytes = \"4MiB\"\nwindow = \"64MiB\"\n\n\
         [apply]\nreplica = \"replica\"\nworkers = {}\ncheck_listen = \"127.0.0.1:{check}\"\n",
        options.io, options.compression, options.workers
    );
    let path = dir.join("pair.toml");
    std::fs::write(&path, text)?;
    // Refuse a bad --compression or --io here, with the configuration's
    // message, rather than in three child processes.
    ship::config::Config::load(&path)?;
    Ok(path)
}

fn progress_line(started: Instant, board: &Board, written: &AtomicU64, rate: f64) -> String {
    let m = |p: u64| p as f64 / 1e6;
    let mut line = format!(
        "[{:6.1} s] written {:.2} M | scraped {:.2} M | sent {:.2} M | staged {:.2} M | applied {:.2} M",
        started.elapsed().as_secs_f64(),
        m(written.load(Ordering::Relaxed)),
        m(board.reached(Stage::Scraped, 0)),
        m(board.reached(Stage::Sent, 0)),
        m(board.reached(Stage::Staged, 0)),
        m(board.reached(Stage::Applied, 0)),
    );
    if rate > 0.0 {
        line.push_str(&format!(" ({:.2} M/s)", rate / 1e6));
    }
    line
}

/// Throughput and lag per stage, from the writer's and the processes' events.
fn figures(
    written: &Written,
    board: &Board,
    finished_ns: u64,
    journal_bytes: u64,
    mut cpu: Vec<CpuFigure>,
) -> anyhow::Result<Outcome> {
    let entries = written.end - written.first;
    let seconds = (finished_ns - written.started_ns) as f64 / 1e9;
    let mut stages = Vec::new();
    let mut lag = Vec::new();
    for stage in Stage::ALL {
        let events = if stage == Stage::Journal {
            written.appended.clone()
        } else {
            board.events(stage, 0)
        };
        let done = events
            .iter()
            .find(|e| e.position >= written.end)
            .with_context(|| format!("the {} stage never passed {}", stage.name(), written.end))?;
        let secs = (done.time_ns.saturating_sub(written.started_ns)) as f64 / 1e9;
        stages.push(StageFigure {
            stage: stage.name(),
            seconds: secs,
            entries_per_s: entries as f64 / secs.max(1e-9),
            mb_per_s: journal_bytes as f64 / secs.max(1e-9) / 1e6,
        });
        if stage != Stage::Journal {
            lag.push(stages::lag(
                stage,
                written.first,
                &written.appended,
                &events,
            )?);
        }
    }
    for c in &mut cpu {
        c.percent = 100.0 * c.seconds / seconds.max(1e-9);
    }
    Ok(Outcome {
        directory: String::new(),
        changes: written.changes,
        entries,
        object_ops: written.object_ops,
        journal_bytes,
        seconds,
        changes_per_s: written.changes as f64 / seconds.max(1e-9),
        stages,
        lag,
        cpu,
        dropped_events: board.dropped(),
        source_build_seconds: None,
        check: None,
        raw_tcp_mb_per_s: None,
        percent_of_raw_tcp: None,
    })
}

/// Builds the source's tables from the journal (a journaled store replays
/// it into empty tables) and sync-checks them against the replica through
/// apply's check service.
fn sync_check(
    dir: &Path,
    journal_options: &JournalOptions,
    say: &mut dyn Reporter,
) -> anyhow::Result<(Report, Duration)> {
    say.progress("building the source's tables from the journal");
    let started = Instant::now();
    let tables = ReplicaTables::open(dir.join("source"))?;
    let (source, _) = JournaledStore::open(
        &dir.join("journal"),
        SourceOptions {
            journal: journal_options.clone(),
            checkpoint_every: None,
        },
        Box::new(tables),
    )?;
    let build = started.elapsed();
    say.note(&format!(
        "RBN0003I source tables built from the journal in {:.1} s",
        build.as_secs_f64()
    ));
    let config = ship::config::Config::load(&dir.join("pair.toml"))?;
    let address = config
        .apply
        .check_listen
        .context("the configuration serves no sync-check")?;
    let mut peer = TcpPeer::connect(&address.to_string())?;
    let mut progress = |p: &Progress<'_>| {
        say.progress(&match p {
            Progress::Hashing {
                object,
                records,
                index,
                of,
            } => format!(
                "sync-check: hashing object {object} ({}/{of}); {records} records so far",
                index + 1
            ),
            Progress::Confirming { object, candidates } => {
                format!("sync-check: object {object}: confirming {candidates} record(s)")
            }
        })
    };
    let report = check(&source, &mut peer, &CheckOptions::default(), &mut progress)?;
    Ok((report, build))
}
