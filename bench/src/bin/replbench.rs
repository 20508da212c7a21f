//! `replbench`: a whole replication on this machine, measured end to end
//! (bench/src/replbench). Exit status: 0 the replica equals the source, 1
//! the sync-check found differences, 2 bad arguments, 3 the run failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::apply::Keys;
use bench::replbench::roles::{run_role, Role};
use bench::replbench::workload::Workload;
use bench::replbench::{Options, Outcome, Reporter};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KeysArg {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PeerArg {
    Postgres,
}

#[derive(Parser)]
#[command(
    name = "replbench",
    version,
    about = "Run a whole replication on this machine (writer, sender, receiver, apply over loopback) and measure it"
)]
struct Args {
    #[command(subcommand)]
    role: Option<RoleCommand>,
    /// Record changes to write (the run ends at this count or --duration).
    #[arg(long, default_value_t = 10_000_000)]
    changes: u64,
    /// Stop writing after this many seconds, even before --changes.
    #[arg(long)]
    duration: Option<f64>,
    /// Offered load in record changes per second (default: as fast as the
    /// journal takes them).
    #[arg(long)]
    rate: Option<u64>,
    #[arg(long, value_enum, default_value = "uniform")]
    keys: KeysArg,
    /// Distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    key_space: u64,
    /// Bytes per record image.
    #[arg(long, default_value_t = 100)]
    image_bytes: usize,
    /// Record changes per transaction; 0: outside commitment control.
    #[arg(long, default_value_t = 10)]
    txn: u64,
    /// Percent of changes that are updates.
    #[arg(long, default_value_t = 20)]
    updates: u8,
    /// Percent of changes that are deletes.
    #[arg(long, default_value_t = 10)]
    deletes: u8,
    /// Record objects each journal's keys are spread over.
    #[arg(long, default_value_t = 4)]
    objects: u64,
    /// One object operation (create, rename, clear, drop of a scratch
    /// object, in turn) every this many transactions; 0: none.
    #[arg(long, default_value_t = 10_000)]
    object_every: u64,
    /// Journals in the group: a writer thread, a sender and a receiver each
    /// (their objects in libraries J0/, J1/, ...); one apply merges them.
    #[arg(long, default_value_t = 1)]
    journals: u64,
    /// Apply workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Apply checkpoints every this many milliseconds (bounds replay after
    /// a crash; the product's default).
    #[arg(long, default_value_t = 3000)]
    checkpoint_ms: u64,
    /// Most a sender's small frame waits for earlier frames'
    /// acknowledgement, in microseconds (`[transport] linger_us`; the
    /// product's default); 0: never (every small frame goes alone: on 2
    /// cores far behind at high rates, decisions.md 98)
    #[arg(long, default_value_t = ship::config::DEFAULT_LINGER_US)]
    linger_us: u64,
    /// Run the pipeline threads of the sender, receiver and apply at this
    /// real-time (SCHED_RR) priority, 1-99 (`realtime_priority` in
    /// `[primary]` and `[backup]`; needs root or CAP_SYS_NICE, else DMK0007W
    /// in their logs); 0: normal scheduling, the product's default
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=99))]
    realtime_priority: u8,
    /// none | zstd | zstd:<level>
    #[arg(long, default_value = "none")]
    compression: String,
    /// auto | uring | plain
    #[arg(long, default_value = "auto")]
    io: String,
    /// Where the run's temporary directory goes.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the run's directory.
    #[arg(long)]
    keep: bool,
    /// Skip the sync-check at the end.
    #[arg(long)]
    no_check: bool,
    /// Write the whole workload first and sync it to disk, start the
    /// backup (receiver and apply) and wait until it serves (its first
    /// staging segment made ahead), then start the sender and time from its
    /// start to everything applied (implied by --peer, whose figure is
    /// taken the same way).
    #[arg(long)]
    catch_up: bool,
    /// Skip the raw-TCP baseline.
    #[arg(long)]
    no_baseline: bool,
    /// After the run, write this many GiB sequentially where the run was as
    /// one stream synced every 8 MiB (staging's pattern; timed per 256 MiB
    /// piece), then as four such streams at once, and print both against
    /// the run's staging and disk figures. A few GiB: a virtual disk may
    /// take a first burst far faster than what follows.
    #[arg(long, value_name = "GIB")]
    disk_baseline: Option<f64>,
    /// Start the replica's index empty and let apply grow it, as in a first
    /// load (default: sized at open for the workload's keys, as a replica in
    /// service opens it from its checkpoint: `[apply] expected_records`).
    #[arg(long)]
    grow_index: bool,
    /// Let apply make the replica's data files as it needs them, as in a
    /// first load (default: 1 GiB of them made at open, as a replica in
    /// service has them: `[apply] reserve_data`).
    #[arg(long)]
    grow_data: bool,
    /// Let staging make its first segments' files as it rotates, as a new
    /// backup does (default: four made at open, as a backup that has run a
    /// while keeps purged ones to reuse: `[backup] reserve_segments`).
    #[arg(long)]
    grow_staging: bool,
    /// Run the same workload through PostgreSQL's logical replication too
    /// (two instances made with initdb on loopback ports) and compare.
    #[arg(long, value_enum)]
    peer: Option<PeerArg>,
    /// Record changes per journal for the peer, at most --changes
    /// [default: --changes, the same workload]. Fewer give the first of
    /// the workload's changes: quicker (psql loads PostgreSQL at some 70 k
    /// changes/s before its timed replication), but a smaller table than
    /// ours, on which PostgreSQL runs faster (decisions.md 113).
    #[arg(long)]
    peer_changes: Option<u64>,
    /// Run the whole measurement this many times, one after another, each
    /// in a directory of its own, and end with the median of the runs
    /// (this host's figures drift from run to run: compare medians).
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Print the figures as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Internal: one process of the pipeline (started by replbench itself).
    #[command(hide = true)]
    Role {
        #[arg(value_enum)]
        role: Role,
        #[arg(long)]
        config: PathBuf,
    },
}

/// Progress on stderr: rewritten in place on a terminal, plain lines
/// otherwise.
struct Terminal {
    tty: bool,
    open_line: bool,
}

impl Reporter for Terminal {
    fn progress(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            self.open_line = true;
        } else {
            eprintln!("{line}");
        }
    }

    fn note(&mut self, line: &str) {
        if self.open_line {
            eprint!("\r\x1b[2K");
            self.open_line = false;
        }
        eprintln!("{line}");
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(RoleCommand::Role { role, config }) = &args.role {
        return run_role(*role, config);
    }
    if let Err(e) = validate(&args) {
        eprintln!("replbench: RBN0105E {e}");
        return ExitCode::from(2);
    }
    bench::replbench::interrupt::catch();
    let options = Options {
        workload: Workload {
            changes: Some(args.changes),
            duration: args.duration.map(Duration::from_secs_f64),
            rate: args.rate,
            keys: match args.keys {
                KeysArg::Uniform => Keys::Uniform,
                KeysArg::Zipf => Keys::Zipf,
            },
            key_space: args.key_space,
            image_bytes: args.image_bytes,
            txn_changes: args.txn,
            update_percent: args.updates,
            delete_percent: args.deletes,
            objects: args.objects,
            object_every: args.object_every,
            seed: args.seed,
        },
        journals: args.journals,
        workers: args.workers,
        checkpoint_ms: args.checkpoint_ms,
        linger_us: args.linger_us,
        realtime_priority: args.realtime_priority,
        compression: args.compression.clone(),
        io: args.io.clone(),
        dir: args.dir.clone(),
        keep: args.keep,
        check: !args.no_check,
        baseline: !args.no_baseline,
        catch_up: args.catch_up || args.peer.is_some(),
        grow_index: args.grow_index,
        grow_data: args.grow_data,
        grow_staging: args.grow_staging,
        postgres: args
            .peer
            .map(|PeerArg::Postgres| args.peer_changes.unwrap_or(args.changes).min(args.changes)),
        disk_baseline: args
            .disk_baseline
            .map(|gib| (gib * (1u64 << 30) as f64) as u64),
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("replbench: RBN0106E cannot find its own binary to start the pipeline: {e}");
            return ExitCode::from(3);
        }
    };
    let mut terminal = Terminal {
        tty: std::io::stderr().is_terminal(),
        open_line: false,
    };
    let mut outcomes = Vec::new();
    for run in 1..=args.runs {
        if args.runs > 1 {
            terminal.note(&format!("RBN0007I run {run} of {}", args.runs));
        }
        match bench::replbench::run(&exe, &options, &mut terminal) {
            Ok(outcome) => {
                terminal.note("");
                if !args.json {
                    print!("{}", summary(&outcome));
                }
                outcomes.push(outcome);
            }
            // Whatever failed once SIGINT or SIGTERM came (a psql or a
            // pipeline process the terminal's Ctrl-C stopped first) failed
            // for it.
            Err(_) if bench::replbench::interrupt::interrupted() => {
                terminal.note(&format!(
                    "replbench: {}",
                    bench::replbench::interrupt::Interrupted
                ));
                return ExitCode::from(130);
            }
            Err(e) => {
                terminal.note(&format!("replbench: {}", engine::report::describe(&e)));
                return ExitCode::from(3);
            }
        }
    }
    let medians = (outcomes.len() > 1).then(|| Medians::of(&outcomes));
    if args.json {
        let value = match (&medians, outcomes.as_slice()) {
            (None, [outcome]) => outcome.to_json(&options),
            _ => serde_json::json!({
                "runs": outcomes.iter().map(|o| o.to_json(&options)).collect::<Vec<_>>(),
                "median": medians,
                "equal": outcomes.iter().all(Outcome::is_equal),
            }),
        };
        println!("{value}");
    } else if let Some(m) = &medians {
        print!("{}", m.summary());
    }
    if outcomes.iter().all(Outcome::is_equal) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The middle of several runs' figures (`--runs`).
#[derive(Debug, serde::Serialize)]
struct Medians {
    runs: usize,
    changes_per_s: f64,
    entries_per_s: f64,
    /// Each run's changes/s, in run order.
    each_changes_per_s: Vec<f64>,
    /// Each run's share of the machine the host took (steal), in run order.
    each_steal_percent: Vec<Option<f64>>,
    times_postgres: Option<f64>,
}

impl Medians {
    fn of(outcomes: &[Outcome]) -> Medians {
        let mut changes: Vec<f64> = outcomes.iter().map(|o| o.changes_per_s).collect();
        let each_changes_per_s = changes.clone();
        let mut entries: Vec<f64> = outcomes
            .iter()
            .map(|o| o.entries as f64 / o.seconds)
            .collect();
        let mut times: Vec<f64> = outcomes.iter().filter_map(|o| o.times_postgres).collect();
        Medians {
            runs: outcomes.len(),
            changes_per_s: bench::median(&mut changes),
            entries_per_s: bench::median(&mut entries),
            each_changes_per_s,
            each_steal_percent: outcomes
                .iter()
                .map(|o| o.machine.as_ref().map(|m| m.steal_percent))
                .collect(),
            times_postgres: (!times.is_empty()).then(|| bench::median(&mut times)),
        }
    }

    fn summary(&self) -> String {
        let each: Vec<String> = self
            .each_changes_per_s
            .iter()
            .map(|c| format!("{:.2}", c / 1e6))
            .collect();
        let mut s = format!(
            "\nmedian of {} runs: {:.2} M changes/s applied ({:.2} M entries/s); each run: {} M changes/s\n",
            self.runs,
            self.changes_per_s / 1e6,
            self.entries_per_s / 1e6,
            each.join(", ")
        );
        if self.each_steal_percent.iter().all(Option::is_some) {
            let steal: Vec<String> = self
                .each_steal_percent
                .iter()
                .flatten()
                .map(|p| format!("{p:.0}"))
                .collect();
            s += &format!(
                "each run's steal (the host's share of the machine): {} %\n",
                steal.join(", ")
            );
        }
        if let Some(times) = self.times_postgres {
            s += &format!("median against PostgreSQL: {times:.1}x\n");
        }
        s
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if u16::from(args.updates) + u16::from(args.deletes) > 100 {
        return Err(format!(
            "--updates {} and --deletes {} add up to more than 100 percent",
            args.updates, args.deletes
        ));
    }
    if args.key_space == 0 || args.objects == 0 || args.image_bytes == 0 {
        return Err("--key-space, --objects and --image-bytes must be at least 1".into());
    }
    if args.changes == 0 {
        return Err("--changes must be at least 1".into());
    }
    if args.peer_changes == Some(0) {
        return Err("--peer-changes must be at least 1".into());
    }
    if args.peer.is_some() && args.duration.is_some() {
        return Err(
            "--peer runs the same --changes on both sides; --duration would stop ours and PostgreSQL's writers at different counts"
                .into(),
        );
    }
    if args.rate == Some(0) {
        return Err("--rate must be at least 1 change per second".into());
    }
    if args.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !(1..=16).contains(&args.journals) {
        return Err(format!(
            "--journals {} is not between 1 and 16",
            args.journals
        ));
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if !(1..=100).contains(&args.runs) {
        return Err(format!("--runs {} is not between 1 and 100", args.runs));
    }
    if args
        .disk_baseline
        .is_some_and(|g| !(g > 0.0 && g <= 1024.0))
    {
        return Err("--disk-baseline must be more than 0 and at most 1024 GiB".into());
    }
    Ok(())
}

/// The figures as a table for people.
fn summary(o: &Outcome) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} record changes ({} journal entries, {:.1} MB, {} object operations) applied in {:.2} s",
        o.changes,
        o.entries,
        o.journal_bytes as f64 / 1e6,
        o.object_ops,
        o.seconds
    );
    let _ = writeln!(
        s,
        "end to end: {:.2} M changes/s applied\n",
        o.changes_per_s / 1e6
    );
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>12} {:>7} | lag from append, us: {:>7} {:>7} {:>7} {:>8} {:>8}",
        "stage", "done at s", "M entries/s", "MB/s", "p50", "p90", "p99", "p99.9", "max"
    );
    for f in &o.stages {
        let lag = o.lag.iter().find(|l| l.stage == f.stage);
        let lag = match lag {
            Some(l) => format!(
                "{:>7} {:>7} {:>7} {:>8} {:>8}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<8} {:>9.2} {:>12.2} {:>7.0} | {:>20} {lag}",
            f.stage,
            f.seconds,
            f.entries_per_s / 1e6,
            f.mb_per_s,
            ""
        );
    }
    if o.lag_by_second.iter().any(|l| l.p99_us.len() > 1) {
        let _ = writeln!(s, "\nlag p99 by second of appending, ms:");
        for l in &o.lag_by_second {
            let ms: Vec<String> = l
                .p99_us
                .iter()
                .map(|us| format!("{:.1}", *us as f64 / 1000.0))
                .collect();
            let _ = writeln!(s, "{:<8} {}", l.stage, ms.join(" "));
        }
        if let Some(stalls) = o.stalls.as_ref().filter(|s| !s.stalls.is_empty()) {
            let seconds = o
                .lag_by_second
                .iter()
                .map(|l| l.p99_us.len())
                .max()
                .unwrap_or(0);
            let ms: Vec<String> = stalls
                .by_second(seconds)
                .iter()
                .map(|ms| format!("{ms:.1}"))
                .collect();
            let _ = writeln!(s, "{:<8} {} (longest CPU stall)", "stall", ms.join(" "));
        }
    }
    let cpu: Vec<String> = o
        .cpu
        .iter()
        .map(|c| {
            format!(
                "{} {:.2} s ({:.0}%, kernel {:.2} s)",
                c.process, c.seconds, c.percent, c.system_seconds
            )
        })
        .collect();
    let _ = writeln!(s, "\nCPU: {}", cpu.join(", "));
    if let Some(m) = &o.machine {
        let _ = writeln!(
            s,
            "machine over the run ({} CPUs, /proc/stat): user {:.0}%, system {:.0}%, iowait {:.0}%, idle {:.0}%, steal {:.0}% (the host's: figures from runs with different steal do not compare)",
            m.cpus,
            m.user_percent,
            m.system_percent,
            m.iowait_percent,
            m.idle_percent,
            m.steal_percent
        );
    }
    if let Some(stalls) = &o.stalls {
        let _ = writeln!(s, "{}", stalls.summary());
    }
    if o.dropped_events > 0 {
        let _ = writeln!(
            s,
            "RBN0110W {} stage events were dropped: lag figures are coarse",
            o.dropped_events
        );
    }
    if let (Some(raw), Some(percent)) = (o.raw_tcp_mb_per_s, o.percent_of_raw_tcp) {
        let _ = writeln!(
            s,
            "raw-TCP baseline (same bytes, one loopback connection): {raw:.0} MB/s; end to end is {percent:.1}% of it"
        );
    }
    if let Some(d) = &o.disk {
        let _ = writeln!(
            s,
            "disk ({}, every process's writes over the run): {:.0} MB written, {:.0} bytes per change, {:.0} MB/s",
            d.device,
            d.bytes_written as f64 / 1e6,
            d.bytes_per_change,
            d.mb_per_s
        );
    }
    if let Some(raw) = &o.raw_disk {
        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        let pieces: Vec<String> = raw
            .one
            .pieces_mb_per_s
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect();
        let later = raw.one.later_half_mb_per_s.unwrap_or(raw.one.mb_per_s);
        let staged = o
            .stages
            .iter()
            .find(|f| f.stage == "staged")
            .map_or(String::new(), |f| {
                format!(
                    "; staging took {:.0} MB/s ({:.0}% of its later half)",
                    f.mb_per_s,
                    100.0 * f.mb_per_s / later.max(1e-9)
                )
            });
        let _ = writeln!(
            s,
            "raw-disk baseline, one stream synced every 8 MiB ({:.1} GiB): {:.0} MB/s, later half {later:.0} MB/s; per 256 MiB piece: {}{staged}",
            gib(raw.one.bytes),
            raw.one.mb_per_s,
            pieces.join(" ")
        );
        let ours = o.disk.as_ref().map_or(String::new(), |d| {
            format!(
                "; this run's disk writes {:.0} MB/s ({:.0}% of it)",
                d.mb_per_s,
                100.0 * d.mb_per_s / raw.parallel.mb_per_s.max(1e-9)
            )
        });
        let _ = writeln!(
            s,
            "raw-disk baseline, {} such streams at once ({:.1} GiB): {:.0} MB/s{ours}",
            raw.parallel.streams,
            gib(raw.parallel.bytes),
            raw.parallel.mb_per_s
        );
    }
    if let Some(build) = o.source_build_seconds {
        let _ = writeln!(
            s,
            "\nsync-check (source tables built from the workload written again in {build:.1} s):"
        );
    }
    if let (Some(pg), Some(times)) = (&o.postgres, o.times_postgres) {
        let _ = writeln!(
            s,
            "\n{:<34} {:>12} {:>10} {:>14}",
            "same workload", "changes", "seconds", "M changes/s"
        );
        let _ = writeln!(
            s,
            "{:<34} {:>12} {:>10.2} {:>14.3}",
            "replbench (replica tables)",
            o.changes,
            o.seconds,
            o.changes_per_s / 1e6
        );
        let _ = writeln!(
            s,
            "{:<34} {:>12} {:>10.2} {:>14.3}",
            format!("PostgreSQL {} logical", pg.version),
            pg.changes,
            pg.seconds,
            pg.changes_per_s / 1e6
        );
        let _ = writeln!(
            s,
            "ratio: {times:.1}x PostgreSQL (its writers loaded the publisher in {:.1} s first; its subscriber {} the publisher: {} rows; {} row changes replicated, deletes of absent rows changing none)",
            pg.load_seconds,
            if pg.equal { "equals" } else { "DIFFERS FROM" },
            pg.rows,
            pg.row_changes
        );
        if pg.changes < o.changes {
            let _ = writeln!(
                s,
                "(PostgreSQL ran only the workload's first {} of {} changes, --peer-changes: a smaller table than ours, on which it runs faster)",
                pg.changes, o.changes
            );
        }
    }
    for (j, report) in o.checks.iter().enumerate() {
        if o.checks.len() > 1 {
            let _ = write!(s, "J{j}: ");
        }
        s.push_str(&ship::check_report::summary(report));
    }
    s
}
