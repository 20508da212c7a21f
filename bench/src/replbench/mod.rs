//! replbench: a whole replication on this machine, measured. A workload
//! writes through the journal (this process); the sender, the receiver and
//! apply run as separate processes over loopback (`roles`), in a temporary
//! directory; each stage reports when it passed which position (`stages`),
//! from which the run's throughput and lag per stage are computed. The
//! journals purge what the backups acknowledged, as in production; at the
//! end each journal's workload is written again into a journal that keeps
//! everything, the source's tables are built from it and sync-checked
//! against the replica, and a raw-TCP baseline moves the same bytes. The
//! writes the disk holding the run took are counted (`disk`); a raw-disk
//! baseline, on request, shows what one synced stream and several get.

pub mod disk;
pub mod interrupt;
pub mod machine;
pub mod postgres;
pub mod roles;
pub mod stages;
pub mod stalls;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apply::check::{check, CheckOptions, Progress, Report, TcpPeer};
use apply::{JournaledStore, ReplicaTables, SourceOptions};
use engine::journal::{Durability, Journal, JournalOptions, NewEntry};
use engine::staging::StagingOptions;
use engine::trace::monotonic_ns;

use roles::{Process, Role};
use scraper::ObjectSelector;
use stages::{Board, Lag, Stage};
use workload::{Lane, Workload, Written};

/// How long the pipeline may go without applying anything once the writer
/// is done before replbench gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// Most the pipeline's processes may take to start serving.
const SERVING_LIMIT: Duration = Duration::from_secs(60);
/// The raw-TCP baseline sends at most this much of the journal.
const RAW_BYTES_MAX: usize = 1 << 30;

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: Workload,
    /// Journals in the group, each with its own writer thread, sender and
    /// receiver; one apply merges them.
    pub journals: u64,
    /// Apply workers.
    pub workers: usize,
    /// `[apply] checkpoint_ms`.
    pub checkpoint_ms: u64,
    /// `[transport] linger_us`.
    pub linger_us: u64,
    /// `[primary]` and `[backup] realtime_priority` (0: normal scheduling).
    pub realtime_priority: u8,
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
    /// Write the whole workload first, then start the backup, and once it
    /// serves start the senders and time from their start (PostgreSQL's
    /// figure is taken so).
    pub catch_up: bool,
    /// Leave `[apply] expected_records` unset: apply grows the index from
    /// empty.
    pub grow_index: bool,
    /// Leave `[apply] reserve_data` unset: apply makes its data files as
    /// it needs them.
    pub grow_data: bool,
    /// Leave `[backup] reserve_segments` unset: staging makes its first
    /// segments' files as it rotates.
    pub grow_staging: bool,
    /// Run the workload through PostgreSQL logical replication too, with
    /// this many changes (per journal).
    pub postgres: Option<u64>,
    /// Measure the raw-disk baseline with this many bytes (whole pieces of
    /// `disk::PIECE_BYTES`).
    pub disk_baseline: Option<u64>,
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

/// A process's CPU time over the measured run (the writers': over their
/// writing, which in catch-up mode comes before the run).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuFigure {
    pub process: String,
    /// User and system time together.
    pub seconds: f64,
    /// Of that, in the kernel on the process's behalf (system calls, page
    /// faults, copies into and out of the page cache).
    pub system_seconds: f64,
    /// Of one core over the run's wall time.
    pub percent: f64,
}

impl CpuFigure {
    fn new(process: String, time: workload::CpuTime) -> CpuFigure {
        CpuFigure {
            process,
            seconds: time.total().as_secs_f64(),
            system_seconds: time.system.as_secs_f64(),
            percent: 0.0,
        }
    }
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
    /// With `--rate`: the changes/s offered (the rate times the journals).
    pub offered_changes_per_s: Option<f64>,
    /// The changes/s the writers held, first append to last.
    pub written_changes_per_s: f64,
    pub stages: Vec<StageFigure>,
    pub lag: Vec<Lag>,
    /// Per stage, the p99 and maximum lag of the entries appended in each
    /// second of the run (where a stall was).
    pub lag_by_second: Vec<stages::LagSeries>,
    pub cpu: Vec<CpuFigure>,
    /// Stage events some process could not report (figures may be coarse).
    pub dropped_events: u64,
    /// Seconds to build the sources' tables from their journals.
    pub source_build_seconds: Option<f64>,
    /// One sync-check per journal (its own objects).
    #[serde(skip)]
    pub checks: Vec<Report>,
    /// The raw-TCP baseline: (bytes, MB/s), and our journal MB/s end to end
    /// as a percentage of it.
    pub raw_tcp_mb_per_s: Option<f64>,
    pub percent_of_raw_tcp: Option<f64>,
    /// What the device holding the run's directory was written over the
    /// timed window (none when it is not a block device).
    pub disk: Option<disk::DiskFigure>,
    /// How the machine's CPUs spent the timed window (steal: the host's
    /// share), from `/proc/stat`.
    pub machine: Option<machine::MachineFigure>,
    /// Stretches in which a CPU ran nothing, not even a probe pinned there
    /// above the pipeline's priority (`stalls`): the host's or the
    /// kernel's, not the pipeline's.
    pub stalls: Option<stalls::StallFigure>,
    /// The raw-disk baseline, when asked for.
    pub raw_disk: Option<disk::RawDisk>,
    /// The same workload through PostgreSQL logical replication, and our
    /// changes/s as a multiple of its.
    pub postgres: Option<postgres::PgFigure>,
    pub times_postgres: Option<f64>,
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
            "checkpoint_ms": options.checkpoint_ms,
            "linger_us": options.linger_us,
            "realtime_priority": options.realtime_priority,
            "catch_up": options.catch_up,
            "grow_index": options.grow_index,
            "grow_data": options.grow_data,
            "grow_staging": options.grow_staging,
            "peer_changes": options.postgres,
            "compression": options.compression,
            "io": options.io,
        });
        value["settings"]["journals"] = options.journals.into();
        value["checks"] = self.checks.iter().map(ship::check_report::json).collect();
        value["equal"] = self.is_equal().into();
        value
    }

    /// No sync-check found a difference (true when none ran).
    pub fn is_equal(&self) -> bool {
        self.checks.iter().all(Report::is_equal)
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
    let journals = options.journals.max(1);
    let configs = (0..journals)
        .map(|j| write_config(&dir, options, j))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    // As in production, each journal purges what its backup acknowledged
    // and reuses the files (decisions.md 35); the sync-check's source and
    // the raw baseline use the workload written again (`rewrite`).
    let journal_options = JournalOptions {
        durability: Durability::None,
        ..JournalOptions::default()
    };
    let opened = (0..journals)
        .map(|j| {
            let path = journal_dir(&dir, j);
            Journal::open(&path, journal_options.clone())
                .with_context(|| format!("opening the journal {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let board = Arc::new(Board::new(journals as usize));
    // The backup node: a receiver per journal and apply.
    let start_backup = || -> anyhow::Result<Vec<Process>> {
        let mut processes = Vec::new();
        for (j, config) in configs.iter().enumerate() {
            let j = j as u32;
            processes.push(Process::start(
                exe,
                Role::Receive,
                j,
                config,
                &logs,
                &board,
            )?);
        }
        processes.push(Process::start(
            exe,
            Role::Apply,
            0,
            &configs[0],
            &logs,
            &board,
        )?);
        Ok(processes)
    };
    let start_senders = |processes: &mut Vec<Process>| -> anyhow::Result<()> {
        for (j, config) in configs.iter().enumerate() {
            let j = j as u32;
            processes.push(Process::start(exe, Role::Send, j, config, &logs, &board)?);
        }
        Ok(())
    };
    let mut processes = if options.catch_up {
        Vec::new()
    } else {
        let mut processes = start_backup()?;
        start_senders(&mut processes)?;
        // Entries written before the sender's session is open would wait
        // for it, and their lag would be the processes' start-up.
        let ms = await_serving(&board, &mut processes)?;
        say.note(&format!(
            "RBN0006I the pipeline serves after {ms} ms; the writers start now"
        ));
        processes
    };
    // Each process's CPU time when the timed window starts: its start-up
    // (the replica opened, the index sized) is not the run's.
    let mut cpu_at_start = cpu_times(&processes)?;

    let written_to: Vec<AtomicU64> = (0..journals).map(|_| AtomicU64::new(0)).collect();
    let stop_writers = AtomicBool::new(false);
    // The writer's figure is this whole process: the writer threads, the
    // journals' spare-segment threads (zero-filling: decisions.md 30) and
    // this thread's polling.
    let cpu_before = workload::process_cpu();
    // Live, the timed window starts with the writers; in catch-up mode with
    // the pipeline (started again below).
    let mut disk_window = disk::DiskWindow::start(&dir);
    let mut machine_window = machine::MachineWindow::start();
    // Above the pipeline's threads, so a late probe means a stopped CPU.
    let stall_watch =
        stalls::StallWatch::start(options.realtime_priority.saturating_add(1).min(99));
    let started = Instant::now();
    let written = std::thread::scope(|scope| -> anyhow::Result<Vec<Written>> {
        let writers: Vec<_> = opened
            .iter()
            .enumerate()
            .map(|(j, journal)| {
                let (progress, stop) = (&written_to[j], &stop_writers);
                let lane = Lane {
                    index: j as u64,
                    of: journals,
                };
                std::thread::Builder::new()
                    .name(format!("writer-{j}"))
                    .spawn_scoped(scope, move || {
                        workload::write(journal, lane, &options.workload, stop, progress)
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut last = (Instant::now(), 0);
        while !writers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if last.0.elapsed() >= Duration::from_secs(1) {
                let applied = board.reached_all(Stage::Applied);
                let rate = applied.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64();
                say.progress(&progress_line(started, &board, &written_to, rate));
                last = (Instant::now(), applied);
            }
            for p in &mut processes {
                if let Err(e) = p.check_running() {
                    stop_writers.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        writers
            .into_iter()
            .map(|w| w.join().expect("a writer panicked"))
            .collect()
    })?;

    let mut pipeline_started_ns = None;
    if options.catch_up {
        // The backup is in service before the backlog is shipped, as a
        // replica is (its index sized, its staging open), and as
        // PostgreSQL's subscriber is before its subscription is enabled:
        // the window starts with the senders (decisions.md 25), the
        // backlog on disk first (decisions.md 67).
        let synced = disk::sync_filesystem(&dir)
            .with_context(|| format!("RBN0125E cannot sync the filesystem of {}", dir.display()))?;
        processes = start_backup()?;
        let ms = await_serving(&board, &mut processes)?;
        say.note(&format!(
            "RBN0005I catch-up: the workload is written and on disk (synced in {} ms) and the backup serves (after {ms} ms); the senders start now",
            synced.as_millis()
        ));
        disk_window = disk::DiskWindow::start(&dir);
        machine_window = machine::MachineWindow::start();
        cpu_at_start = cpu_times(&processes)?;
        pipeline_started_ns = Some(monotonic_ns());
        start_senders(&mut processes)?;
    }

    // Everything written must reach the replica, and every stage must say
    // it passed the end (`Board::passed`).
    let ends: Vec<u64> = written.iter().map(|w| w.end).collect();
    let mut last = (Instant::now(), board.moved());
    let mut shown = Instant::now();
    while !board.passed(&ends) {
        std::thread::sleep(Duration::from_millis(20));
        let applied = board.reached_all(Stage::Applied);
        let now_moved = board.moved();
        if now_moved > last.1 {
            last = (Instant::now(), now_moved);
        } else if last.0.elapsed() > STALL_LIMIT {
            anyhow::bail!(
                "RBN0104E no stage moved for {STALL_LIMIT:?} (applied {applied} of {} entries); logs in {}",
                written.iter().map(|w| w.end - 1).sum::<u64>(),
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
    let writer_cpu = workload::process_cpu().since(cpu_before);
    let disk_written = disk_window.map(|w| w.finish(written.iter().map(|w| w.changes).sum()));
    let machine_time = machine_window.map(|w| w.finish());
    let cpu_stalls = stall_watch.map(|w| w.finish());
    let mut cpu = vec![CpuFigure::new("writer".into(), writer_cpu)];
    for (i, p) in processes.iter().enumerate() {
        // Processes started in the window (catch-up's senders) count from 0.
        let before = cpu_at_start.get(i).copied().unwrap_or_default();
        let process = if journals > 1 && p.role != Role::Apply {
            format!("{}-J{}", p.role.name(), p.journal)
        } else {
            p.role.name().into()
        };
        cpu.push(CpuFigure::new(process, p.cpu()?.since(before)));
    }
    say.note(&progress_line(started, &board, &written_to, 0.0));
    drop(opened);

    let journal_bytes = written.iter().map(|w| w.bytes).sum();
    let mut outcome = figures(&written, &board, journal_bytes, cpu, pipeline_started_ns)?;
    outcome.directory = dir.display().to_string();
    outcome.offered_changes_per_s = options
        .workload
        .rate
        .map(|rate| rate as f64 * journals as f64);
    outcome.disk = disk_written
        .transpose()
        .context("reading the disk's statistics")?;
    outcome.machine = machine_time.transpose().context("reading /proc/stat")?;
    if let Some((watched, raw)) = cpu_stalls {
        let origin = pipeline_started_ns
            .unwrap_or_else(|| written.iter().map(|w| w.started_ns).min().unwrap_or(0));
        outcome.stalls = stalls::StallFigure::of(watched, &raw, origin);
    }
    say.note(&format!(
        "RBN0002I {} changes ({} entries) applied in {:.2} s: {:.2} M changes/s",
        outcome.changes,
        outcome.entries,
        outcome.seconds,
        outcome.changes_per_s / 1e6
    ));
    if let Some(note) =
        behind_the_offered_rate(outcome.offered_changes_per_s, outcome.written_changes_per_s)
    {
        say.note(&note);
    }
    if let Some(note) = outcome.stalls.as_ref().and_then(|s| s.warning()) {
        say.note(&note);
    }

    let mut rewritten = Vec::new();
    if options.check || options.baseline {
        for (j, written) in written.iter().enumerate() {
            rewritten.push(rewrite(
                &dir,
                j as u64,
                journals,
                &options.workload,
                written,
                say,
            )?);
        }
    }
    if options.check {
        let started = Instant::now();
        for j in 0..journals {
            interrupt::check()?;
            let report = sync_check(&dir, &rewritten[j as usize], j, journals, say)?;
            outcome.checks.push(report);
        }
        let checking: f64 = outcome
            .checks
            .iter()
            .map(|r| r.duration.as_secs_f64())
            .sum();
        outcome.source_build_seconds = Some(started.elapsed().as_secs_f64() - checking);
    }
    let mut failures = Vec::new();
    for p in &mut processes {
        if let Err(e) = p.stop(Duration::from_secs(30)) {
            failures.push(engine::report::describe(&e));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    if options.baseline {
        say.progress("raw-TCP baseline: the journal's bytes over one loopback connection");
        let (bytes, secs) = crate::ship::raw_tcp_journal(&rewritten[0], RAW_BYTES_MAX)?;
        let raw = bytes as f64 / secs / 1e6;
        outcome.raw_tcp_mb_per_s = Some(raw);
        let ours = outcome.journal_bytes as f64 / outcome.seconds / 1e6;
        outcome.percent_of_raw_tcp = Some(100.0 * ours / raw);
    }
    if let Some(bytes) = options.disk_baseline {
        say.progress(&format!(
            "raw-disk baseline: {} MiB written as one synced stream, then as {} at once, in {}",
            bytes.div_ceil(disk::PIECE_BYTES) * (disk::PIECE_BYTES >> 20),
            disk::PARALLEL_STREAMS,
            dir.display()
        ));
        outcome.raw_disk = Some(disk::raw_write(&dir, bytes).context("raw-disk baseline")?);
    }
    if let Some(changes) = options.postgres {
        let workload = Workload {
            changes: Some(changes),
            // PostgreSQL's logical replication carries no DDL.
            object_every: 0,
            ..options.workload.clone()
        };
        let figure = postgres::run(&dir.join("postgres"), &workload, journals, say)?;
        outcome.times_postgres = Some(outcome.changes_per_s / figure.changes_per_s.max(1e-9));
        say.note(&format!(
            "RBN0004I PostgreSQL {}: {} changes replicated in {:.2} s: {:.3} M changes/s",
            figure.version,
            figure.changes,
            figure.seconds,
            figure.changes_per_s / 1e6
        ));
        outcome.postgres = Some(figure);
    }
    Ok(outcome)
}

/// Journal `j`'s directory.
fn journal_dir(dir: &Path, j: u64) -> PathBuf {
    dir.join("journals").join(format!("J{j}"))
}

/// What `[apply] expected_records` says: every journal's key space (the
/// scratch objects' few records aside), or 0 with `--grow-index`.
fn expected_records(options: &Options) -> u64 {
    if options.grow_index {
        0
    } else {
        options.workload.key_space * options.journals.max(1)
    }
}

/// What `[apply] reserve_data` says: the data files a replica in service
/// has for this workload's churn (at 1.4 M changes/s the default
/// workload's files levelled near 1 GB: records written in the second or
/// two before compaction empties their files and a durable checkpoint
/// frees them; decisions.md 61), or 0 with `--grow-data`.
fn reserve_data(options: &Options) -> &'static str {
    match options.grow_data {
        true => "0",
        false => "1GiB",
    }
}

/// What `[backup] reserve_segments` says: the purged segments' files a
/// backup that has run a while keeps for reuse (at the lag target's rate
/// a new store's first rotations zero-filled three new 256 MiB files in
/// its first seconds; decisions.md 83), as many as the workload would
/// fill beyond the first segment, at most all it keeps; 0 with
/// `--grow-staging`.
fn reserve_segments(options: &Options) -> usize {
    if options.grow_staging {
        return 0;
    }
    let w = &options.workload;
    let changes = match (w.changes, w.rate, w.duration) {
        (Some(changes), _, _) => changes,
        (None, Some(rate), Some(duration)) => (rate as f64 * duration.as_secs_f64()) as u64,
        _ => u64::MAX,
    };
    // Record entries alone (not their commits): a lower bound.
    let entry = NewEntry::put(1, &[0; 16], &vec![0; w.image_bytes]).padded_bytes() as u64;
    let segments = changes.saturating_mul(entry) / StagingOptions::default().segment_bytes;
    (segments as usize).min(engine::staging::KEPT_FILES)
}

/// The configuration of journal `j`'s pair, written into `dir`: its own
/// journal, receiver port and staging; one [apply] section for the group
/// (apply runs from journal 0's file).
fn write_config(dir: &Path, options: &Options, j: u64) -> anyhow::Result<PathBuf> {
    let port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (data, check) = (port()?, port()?);
    let rt = options.realtime_priority;
    let journals: Vec<String> = (0..options.journals.max(1))
        .map(|j| format!("\"J{j}\""))
        .collect();
    let text = format!(
        "# Written by replbench.\ngroup = \"BENCH\"\n\n\
         [primary]\nnode = \"primary\"\njournal = \"journals/J{j}\"\njournal_name = \"J{j}\"\nrealtime_priority = {rt}\n\n\
         [backup]\nnode = \"backup\"\nlisten = \"127.0.0.1:{data}\"\nstaging = \"staging\"\nreserve_segments = {}\nrealtime_priority = {rt}\n\n\
         [transport]\nio = \"{}\"\ncompression = \"{}\"\nlinger_us = {}\n\n\
         [apply]\nreplica = \"replica\"\nworkers = {}\ncheckpoint_ms = {}\nexpected_records = {}\nreserve_data = \"{}\"\ncheck_listen = \"127.0.0.1:{check}\"\njournals = [{}]\n",
        reserve_segments(options),
        options.io,
        options.compression,
        options.linger_us,
        options.workers,
        options.checkpoint_ms,
        expected_records(options),
        reserve_data(options),
        journals.join(", ")
    );
    let path = dir.join(format!("pair-J{j}.toml"));
    std::fs::write(&path, text)?;
    // Refuse a bad --compression or --io here, with the configuration's
    // message, rather than in the child processes.
    ship::config::Config::load(&path)?;
    Ok(path)
}

fn progress_line(started: Instant, board: &Board, written: &[AtomicU64], rate: f64) -> String {
    let m = |p: u64| p as f64 / 1e6;
    let written: u64 = written.iter().map(|w| w.load(Ordering::Relaxed)).sum();
    let mut line = format!(
        "[{:6.1} s] written {:.2} M | scraped {:.2} M | sent {:.2} M | staged {:.2} M | applied {:.2} M",
        started.elapsed().as_secs_f64(),
        m(written),
        m(board.reached_all(Stage::Scraped)),
        m(board.reached_all(Stage::Sent)),
        m(board.reached_all(Stage::Staged)),
        m(board.reached_all(Stage::Applied)),
    );
    if rate > 0.0 {
        line.push_str(&format!(" ({:.2} M/s)", rate / 1e6));
    }
    line
}

/// Each process's CPU time so far, in the order given.
fn cpu_times(processes: &[Process]) -> anyhow::Result<Vec<workload::CpuTime>> {
    processes.iter().map(Process::cpu).collect()
}

/// Waits until every process says it serves (a sender's session open, a
/// receiver listening with its first segment made ahead, apply reading
/// staging); returns how long that
/// took, in milliseconds.
fn await_serving(board: &Board, processes: &mut [Process]) -> anyhow::Result<u128> {
    let started = Instant::now();
    while board.ready() < processes.len() as u64 {
        for p in processes.iter_mut() {
            p.check_running()?;
        }
        if started.elapsed() > SERVING_LIMIT {
            anyhow::bail!(
                "RBN0108E the pipeline did not come up within {SERVING_LIMIT:?} ({} of {} processes serving); logs in {}",
                board.ready(),
                processes.len(),
                processes[0].log.parent().map_or_else(String::new, |d| d.display().to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(started.elapsed().as_millis())
}

/// Writers that held less than this share of the offered rate fell behind.
const HELD_SHARE_MIN: f64 = 0.98;

/// RBN0008W when the writers held less of the offered rate than
/// `HELD_SHARE_MIN`: the pacer sends the changes that came due meanwhile
/// at once, so the lag figures are of a lower rate with bursts in it.
fn behind_the_offered_rate(offered: Option<f64>, held: f64) -> Option<String> {
    let offered = offered?;
    (held < offered * HELD_SHARE_MIN).then(|| {
        format!(
            "RBN0008W the writers held {:.3} M changes/s of the {:.3} M offered ({:.0}%): the lag figures are of that rate, with the changes that came due while they were behind sent in bursts; a lower --rate measures a rate they hold",
            held / 1e6,
            offered / 1e6,
            100.0 * held / offered
        )
    })
}

/// Throughput and lag per stage, from the writers' and the processes'
/// events. A stage is done when it has passed the end of every journal;
/// its time counts from the first append, or in catch-up mode from the
/// pipeline's start (`pipeline_started_ns`), and then there is no lag to
/// speak of (entries waited for the pipeline to start).
fn figures(
    written: &[Written],
    board: &Board,
    journal_bytes: u64,
    mut cpu: Vec<CpuFigure>,
    pipeline_started_ns: Option<u64>,
) -> anyhow::Result<Outcome> {
    let entries: u64 = written.iter().map(|w| w.end - w.first).sum();
    let changes: u64 = written.iter().map(|w| w.changes).sum();
    let writing_ns = written.iter().map(|w| w.started_ns).min().unwrap_or(0);
    let mut stages = Vec::new();
    let mut lag = Vec::new();
    let mut lag_by_second = Vec::new();
    for stage in Stage::ALL {
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut by_second = stages::BySecond::default();
        let mut done_ns = 0;
        for (j, w) in written.iter().enumerate() {
            let events = if stage == Stage::Journal {
                w.appended.clone()
            } else {
                board.events(stage, j as u32)
            };
            let done = events
                .iter()
                .find(|e| e.position >= w.end)
                .with_context(|| {
                    format!(
                        "the {} stage never passed {} in journal {j}",
                        stage.name(),
                        w.end
                    )
                })?;
            done_ns = done_ns.max(done.time_ns);
            if stage != Stage::Journal {
                stages::visit_lag(w.first, &w.appended, &events, |at, micros, n| {
                    histogram.record_n(micros, n)?;
                    by_second.record(writing_ns, at, micros, n)
                })?;
            }
        }
        let origin = match pipeline_started_ns {
            Some(ns) if stage != Stage::Journal => ns,
            _ => writing_ns,
        };
        let secs = done_ns.saturating_sub(origin) as f64 / 1e9;
        stages.push(StageFigure {
            stage: stage.name(),
            seconds: secs,
            entries_per_s: entries as f64 / secs.max(1e-9),
            mb_per_s: journal_bytes as f64 / secs.max(1e-9) / 1e6,
        });
        if stage != Stage::Journal && pipeline_started_ns.is_none() {
            lag.push(Lag::of(stage, &histogram));
            lag_by_second.push(by_second.series(stage));
        }
    }
    let seconds = stages.last().map_or(0.0, |s| s.seconds);
    // In catch-up mode the writers ran before the pipeline: their share is
    // of their own time.
    let writing = stages.first().map_or(seconds, |s| s.seconds);
    for c in &mut cpu {
        let wall = match pipeline_started_ns {
            Some(_) if c.process == "writer" => writing,
            _ => seconds,
        };
        c.percent = 100.0 * c.seconds / wall.max(1e-9);
    }
    Ok(Outcome {
        directory: String::new(),
        changes,
        entries,
        object_ops: written.iter().map(|w| w.object_ops).sum(),
        journal_bytes,
        seconds,
        changes_per_s: changes as f64 / seconds.max(1e-9),
        offered_changes_per_s: None,
        written_changes_per_s: changes as f64 / writing.max(1e-9),
        stages,
        lag,
        lag_by_second,
        cpu,
        dropped_events: board.dropped(),
        source_build_seconds: None,
        checks: Vec::new(),
        raw_tcp_mb_per_s: None,
        percent_of_raw_tcp: None,
        disk: None,
        machine: None,
        stalls: None,
        raw_disk: None,
        postgres: None,
        times_postgres: None,
    })
}

/// Writes journal `j`'s workload again, entry for entry as the run wrote it
/// (the same seed, the same count of changes), into a journal of its own
/// that keeps everything: the run's journal purged what its backup
/// acknowledged, as in production. The sync-check builds the source's
/// tables from it; the raw baseline sends its bytes. Refused (RBN0107E)
/// unless it ends at the run's position.
fn rewrite(
    dir: &Path,
    j: u64,
    journals: u64,
    workload: &Workload,
    written: &Written,
    say: &mut dyn Reporter,
) -> anyhow::Result<PathBuf> {
    say.progress(&format!(
        "writing journal J{j}'s workload again for the sync-check's source"
    ));
    let path = dir.join("rewritten").join(format!("J{j}"));
    let journal = Journal::open(
        &path,
        JournalOptions {
            durability: Durability::None,
            purge_acknowledged: false,
            ..JournalOptions::default()
        },
    )?;
    let again = Workload {
        changes: Some(written.changes),
        duration: None,
        rate: None,
        ..workload.clone()
    };
    let lane = Lane {
        index: j,
        of: journals,
    };
    let progress = AtomicU64::new(0);
    let rewritten = workload::write(&journal, lane, &again, interrupt::flag(), &progress)?;
    // Stopped short by SIGINT or SIGTERM, not a different workload.
    interrupt::check()?;
    anyhow::ensure!(
        (rewritten.first, rewritten.end, rewritten.bytes) == (written.first, written.end, written.bytes),
        "RBN0107E journal J{j}'s workload written again spans {}..{} ({} bytes), the run's {}..{} ({} bytes): the sync-check would compare against another source",
        rewritten.first,
        rewritten.end,
        rewritten.bytes,
        written.first,
        written.end,
        written.bytes
    );
    Ok(path)
}

/// Builds journal `j`'s source tables from `rewritten` (its workload
/// written again: a journaled store replays it into empty tables and
/// checkpoints), then opens them on the run's journal, which they are at
/// the end of (the check journals its probes there, for the pipeline to
/// carry), and sync-checks its objects against the replica through apply's
/// check service.
fn sync_check(
    dir: &Path,
    rewritten: &Path,
    j: u64,
    journals: u64,
    say: &mut dyn Reporter,
) -> anyhow::Result<Report> {
    say.progress(&format!(
        "building journal J{j}'s source tables from its workload"
    ));
    let started = Instant::now();
    let tables_dir = dir.join("sources").join(format!("J{j}"));
    let options = || SourceOptions {
        journal: JournalOptions {
            durability: Durability::None,
            purge_acknowledged: false,
            ..JournalOptions::default()
        },
        checkpoint_every: None,
    };
    let (built, _) = JournaledStore::open(
        rewritten,
        options(),
        Box::new(ReplicaTables::open(&tables_dir)?),
    )?;
    built.checkpoint()?;
    drop(built);
    let (source, _) = JournaledStore::open(
        &journal_dir(dir, j),
        options(),
        Box::new(ReplicaTables::open(&tables_dir)?),
    )?;
    say.note(&format!(
        "RBN0003I journal J{j}: source tables built from its workload in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let config = ship::config::Config::load(&dir.join("pair-J0.toml"))?;
    let address = config
        .apply
        .check_listen
        .context("the configuration serves no sync-check")?;
    let mut peer = TcpPeer::connect(&address.to_string())?;
    let lane = Lane {
        index: j,
        of: journals,
    };
    let options = CheckOptions {
        journal: j as u32,
        objects: ObjectSelector::new(&[lane.library_pattern()], &[])?,
        ..CheckOptions::default()
    };
    let mut progress = |p: &Progress<'_>| say.progress(&format!("sync-check J{j}: {p}"));
    Ok(check(&source, &mut peer, &options, &mut progress)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_are_behind_the_offered_rate_only_below_the_share_they_must_hold() {
        assert_eq!(behind_the_offered_rate(None, 10.0), None);
        assert_eq!(behind_the_offered_rate(Some(1e6), 1e6), None);
        assert_eq!(behind_the_offered_rate(Some(1e6), 0.98e6), None);
        let note = behind_the_offered_rate(Some(1.5e6), 1.2e6).unwrap();
        assert!(
            note.starts_with(
                "RBN0008W the writers held 1.200 M changes/s of the 1.500 M offered (80%)"
            ),
            "{note}"
        );
    }
}
