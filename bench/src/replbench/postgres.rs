//! `replbench --peer postgres`: the same workload through PostgreSQL's
//! built-in logical replication, for the side-by-side figure.
//!
//! Two PostgreSQL instances are created with initdb in the run's directory
//! and started on loopback ports (as the `postgres` user, or `nobody`, when
//! replbench runs as root: PostgreSQL refuses to run as root); a
//! publication on one, a subscription on the other, created disabled so
//! its slot keeps the WAL. The workload's transactions are written into the
//! publisher through psql (one per journal, in parallel); then the
//! subscription is enabled and timed until the subscriber has applied a
//! marker row written last, with the publisher checkpointed and the
//! filesystem synced first. PostgreSQL's figure is therefore its
//! replication alone, unhindered by its writers, as ours is (`--peer`
//! implies `--catch-up`: our backlog is written and synced before the
//! senders start). Both instances are stopped afterwards.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::workload::{Generator, Kind, Lane, Workload};
use super::Reporter;

/// How long the subscriber may take to apply everything.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(3600);

/// What the PostgreSQL run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PgFigure {
    pub version: String,
    /// Record changes written into the publisher.
    pub changes: u64,
    pub load_seconds: f64,
    /// From enabling the subscription to the marker row applied.
    pub seconds: f64,
    pub changes_per_s: f64,
    /// Rows on each side at the end, and whether their contents match.
    pub rows: u64,
    /// Rows the publisher's statements inserted, updated and deleted
    /// (`pg_stat_user_tables`): what its replication carried. A delete of
    /// an absent row changes none, so this can be below `changes`.
    pub row_changes: u64,
    pub equal: bool,
    /// The server settings given (beyond initdb's defaults).
    pub settings: String,
}

/// PostgreSQL's programs, found on PATH or in Debian's place.
#[derive(Debug)]
struct Programs {
    bin: PathBuf,
}

impl Programs {
    fn find() -> anyhow::Result<Programs> {
        let path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        Programs::find_in(&path, Path::new("/usr/lib/postgresql"))
    }

    /// Looks in the directories `path`, then in `debian`'s version folders.
    fn find_in(path: &[PathBuf], debian: &Path) -> anyhow::Result<Programs> {
        let on_path = path
            .iter()
            .map(|d| d.join("initdb"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_owned));
        let debian = || {
            let mut versions: Vec<PathBuf> = std::fs::read_dir(debian)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|bin| bin.join("initdb").is_file())
                .collect();
            versions.sort_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            });
            versions.pop()
        };
        let bin = on_path
            .filter(|b| b.join("pg_ctl").is_file() && b.join("postgres").is_file())
            .or_else(debian)
            .context(
                "RBN0120E PostgreSQL is not installed (no initdb, pg_ctl and postgres on PATH or in \
                 /usr/lib/postgresql/*/bin). Install the Debian package `postgresql` \
                 (`apt-get install postgresql`) and run again",
            )?;
        Ok(Programs { bin })
    }

    fn path(&self, program: &str) -> PathBuf {
        let own = self.bin.join(program);
        if own.is_file() {
            own
        } else {
            PathBuf::from(program)
        }
    }
}

/// The user the servers run as: ourselves, or when we are root a
/// non-root account (PostgreSQL refuses root).
#[derive(Clone, Copy, Debug)]
struct RunAs {
    ids: Option<(u32, u32)>,
}

impl RunAs {
    fn choose() -> anyhow::Result<RunAs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs { ids: None });
        }
        for name in [c"postgres", c"nobody"] {
            // SAFETY: getpwnam returns null or a pointer to static storage,
            // read at once.
            let entry = unsafe { libc::getpwnam(name.as_ptr()) };
            if !entry.is_null() {
                // SAFETY: non-null, as checked.
                let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
                return Ok(RunAs {
                    ids: Some((uid, gid)),
                });
            }
        }
        anyhow::bail!(
            "RBN0121E replbench runs as root and PostgreSQL refuses root, but neither a `postgres` nor a `nobody` account exists to run it as"
        )
    }

    fn command(self, program: PathBuf) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Gives `path` (and everything in it) to the servers' user.
    fn own(self, path: &Path) -> anyhow::Result<()> {
        let Some((uid, gid)) = self.ids else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                self.own(&entry?.path())?;
            }
        }
        Ok(())
    }
}

/// One running instance; stopped when dropped.
#[derive(Debug)]
struct Instance {
    name: &'static str,
    data: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
    psql: PathBuf,
    run_as: RunAs,
    running: bool,
}

impl Instance {
    fn start(
        programs: &Programs,
        run_as: RunAs,
        root: &Path,
        name: &'static str,
        settings: &str,
    ) -> anyhow::Result<Instance> {
        let data = root.join(name);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        run_quiet(
            run_as
                .command(programs.path("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "bench", "-A", "trust", "-E", "UTF8", "--no-sync"]),
            "initdb",
        )?;
        let mut instance = Instance {
            name,
            data,
            port,
            pg_ctl: programs.path("pg_ctl"),
            psql: programs.path("psql"),
            run_as,
            running: false,
        };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 {settings}",
            root.display()
        );
        run_quiet(
            run_as
                .command(instance.pg_ctl.clone())
                .arg("-D")
                .arg(&instance.data)
                .arg("-l")
                .arg(root.join(format!("{name}.log")))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        )?;
        instance.running = true;
        Ok(instance)
    }

    /// psql against this instance, with its output as text.
    fn psql(&self) -> Command {
        let mut c = Command::new(&self.psql);
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            "-U",
            "bench",
            "-d",
            "postgres",
        ]);
        c
    }

    /// Runs `sql`; returns its output, trimmed.
    fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .psql()
            .args(["-c", sql])
            .output()
            .with_context(|| format!("running {}", self.psql.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "RBN0122E PostgreSQL ({}) refused `{sql}`: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        run_quiet(
            self.run_as
                .command(self.pg_ctl.clone())
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "fast", "stop"]),
            "pg_ctl stop",
        )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run_quiet(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("RBN0123E cannot run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "RBN0123E {what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// How often the load into the publisher says how far it is: at psql's
/// pace, the workload of a default run takes minutes.
const LOAD_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The progress line of the load: `written` changes handed to psql of
/// `total`, after `elapsed`.
fn load_progress(written: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = written as f64 / secs.max(1e-9);
    let left = match total.checked_sub(written) {
        Some(left) if rate > 0.0 && total > 0 => {
            format!(", about {:.0} s left", left as f64 / rate)
        }
        _ => String::new(),
    };
    format!(
        "PostgreSQL: {:.2} of {:.2} M changes written into the publisher in {secs:.0} s ({:.1} k changes/s{left})",
        written as f64 / 1e6,
        total as f64 / 1e6,
        rate / 1e3,
    )
}

/// Settings of the publisher: logical decoding, and commits that do not
/// wait for their WAL flush (our journal does not fsync in replbench
/// either); a WAL size that keeps checkpoints out of a short run.
const PUBLISHER_SETTINGS: &str = "-c wal_level=logical -c synchronous_commit=off -c max_wal_size=8GB -c max_wal_senders=8 -c max_replication_slots=8";
/// The subscriber: the same WAL size (its apply commits asynchronously by
/// default: a subscription's synchronous_commit is off).
const SUBSCRIBER_SETTINGS: &str = "-c max_wal_size=8GB";

/// Most buffer cache an instance is given: the whole workload's table and
/// index with room to spare. initdb's 128 MB held less than half of what
/// a full-size run touches (its subscriber's shutdown checkpoint alone
/// wrote 276 MB), and that run was 18% slower (decisions.md 113).
const SHARED_BUFFERS_MAX_MB: u64 = 4 << 10;

/// Each instance's `shared_buffers`: `SHARED_BUFFERS_MAX_MB`, or a sixth of
/// the machine's memory where that is less (two instances and our own
/// pipeline share it), but never below initdb's 128 MB.
fn shared_buffers_mb(memory_bytes: u64) -> u64 {
    ((memory_bytes / 6) >> 20).clamp(128, SHARED_BUFFERS_MAX_MB)
}

/// The machine's memory (`sysconf`), if it says.
fn machine_memory() -> Option<u64> {
    // SAFETY: sysconf reads system values; no memory is passed.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// `base` with the buffer cache for this machine.
fn with_buffers(base: &str) -> String {
    let mb = shared_buffers_mb(machine_memory().unwrap_or(0));
    format!("{base} -c shared_buffers={mb}MB")
}

const SCHEMA: &str = "CREATE TABLE bench (o bigint, k bytea, v bytea, PRIMARY KEY (o, k)); \
                      CREATE TABLE bench_marker (id int PRIMARY KEY, note text);";

/// Runs the workload through PostgreSQL logical replication in `root`.
pub fn run(
    root: &Path,
    workload: &Workload,
    journals: u64,
    say: &mut dyn Reporter,
) -> anyhow::Result<PgFigure> {
    let programs = Programs::find()?;
    let run_as = RunAs::choose()?;
    std::fs::create_dir_all(root)?;
    run_as.own(root)?;
    if run_as.ids.is_some() {
        // The run's directory is private to us; the servers' user must be
        // able to pass through it to their own.
        if let Some(parent) = root.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    say.progress("PostgreSQL: initdb and start of the publisher and the subscriber");
    let (publisher_settings, subscriber_settings) = (
        with_buffers(PUBLISHER_SETTINGS),
        with_buffers(SUBSCRIBER_SETTINGS),
    );
    let mut publisher = Instance::start(&programs, run_as, root, "publisher", &publisher_settings)?;
    let mut subscriber =
        Instance::start(&programs, run_as, root, "subscriber", &subscriber_settings)?;
    let version = publisher.query("SHOW server_version")?;
    let version = version.split_whitespace().next().unwrap_or("?").to_owned();
    publisher.query(SCHEMA)?;
    subscriber.query(SCHEMA)?;
    publisher.query("CREATE PUBLICATION bench FOR TABLE bench, bench_marker")?;
    subscriber.query(&format!(
        "CREATE SUBSCRIPTION bench CONNECTION 'host=127.0.0.1 port={} user=bench dbname=postgres' \
         PUBLICATION bench WITH (enabled = false, copy_data = false)",
        publisher.port
    ))?;

    say.progress(&format!(
        "PostgreSQL {version}: writing the workload into the publisher"
    ));
    let started = Instant::now();
    // psql stops taking the workload at SIGINT or SIGTERM.
    let stop = super::interrupt::flag();
    let written = AtomicU64::new(0);
    let changes = std::thread::scope(|scope| -> anyhow::Result<u64> {
        let writers: Vec<_> = (0..journals)
            .map(|j| {
                let (publisher, written) = (&publisher, &written);
                scope.spawn(move || {
                    write(
                        publisher,
                        workload,
                        Lane {
                            index: j,
                            of: journals,
                        },
                        stop,
                        written,
                    )
                })
            })
            .collect();
        let mut shown = Instant::now();
        while !writers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if shown.elapsed() >= LOAD_PROGRESS_EVERY {
                shown = Instant::now();
                say.progress(&load_progress(
                    written.load(Ordering::Relaxed),
                    workload.changes.unwrap_or(0) * journals,
                    started.elapsed(),
                ));
            }
        }
        let mut total = 0;
        for w in writers {
            total += w.join().expect("a PostgreSQL writer panicked")?;
        }
        Ok(total)
    })?;
    super::interrupt::check()?;
    let load_seconds = started.elapsed().as_secs_f64();
    publisher.query("INSERT INTO bench_marker VALUES (1, 'written')")?;
    // The backlog on disk before the window, as ours is (decisions.md 67):
    // the publisher's dirty buffers written by a checkpoint, then the
    // filesystem synced.
    publisher.query("CHECKPOINT")?;
    super::disk::sync_filesystem(root)
        .with_context(|| format!("RBN0125E cannot sync the filesystem of {}", root.display()))?;

    say.progress(
        "PostgreSQL: subscription enabled, waiting for the subscriber to apply everything",
    );
    let mut watch = Watch::open(&subscriber)?;
    let started = Instant::now();
    subscriber.query("ALTER SUBSCRIPTION bench ENABLE")?;
    while watch.scalar("SELECT count(*) FROM bench_marker")? == "0" {
        super::interrupt::check()?;
        anyhow::ensure!(
            started.elapsed() < CATCH_UP_LIMIT,
            "RBN0124E the PostgreSQL subscriber did not catch up within {CATCH_UP_LIMIT:?}; logs in {}",
            root.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(watch);

    let digest = "SELECT count(*) || ' ' || coalesce(sum(('x' || substr(md5(o::text || encode(k, 'hex') || encode(v, 'hex')), 1, 15))::bit(60)::bigint), 0) FROM bench";
    let ours = publisher.query(digest)?;
    let theirs = subscriber.query(digest)?;
    let rows = ours
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Read after the catch-up: a writer's counts reach the statistics as
    // its backend exits, which psql does not wait for.
    let row_changes = publisher
        .query(
            "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 'bench'",
        )?
        .parse()
        .context("RBN0122E the publisher's row changes (pg_stat_user_tables) are not a number")?;
    subscriber.stop()?;
    publisher.stop()?;
    Ok(PgFigure {
        version,
        changes,
        load_seconds,
        seconds,
        changes_per_s: changes as f64 / seconds.max(1e-9),
        rows,
        row_changes,
        equal: ours == theirs,
        settings: format!("publisher: {publisher_settings}; subscriber: {subscriber_settings}"),
    })
}

/// One psql session kept open for polling (starting psql per poll would
/// cost more CPU than the poll).
struct Watch {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Watch {
    fn open(instance: &Instance) -> anyhow::Result<Watch> {
        let mut child = instance
            .psql()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().expect("piped");
        let output = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Watch {
            child,
            input,
            output,
        })
    }

    fn scalar(&mut self, sql: &str) -> anyhow::Result<String> {
        writeln!(self.input, "{sql};")?;
        self.input.flush()?;
        let mut line = String::new();
        anyhow::ensure!(
            self.output.read_line(&mut line)? > 0,
            "RBN0122E psql closed while polling the subscriber"
        );
        Ok(line.trim().to_owned())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes lane `lane`'s transactions into the publisher through psql:
/// per transaction one upsert for its puts, one update and one delete, in
/// BEGIN/COMMIT (or each change on its own outside transactions). Returns
/// the changes written.
fn write(
    publisher: &Instance,
    workload: &Workload,
    lane: Lane,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> anyhow::Result<u64> {
    let mut child = publisher
        .psql()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting psql")?;
    let mut sql = BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped"));
    let mut generator = Generator::new(workload, lane);
    let (mut changes, mut images) = (Vec::new(), Vec::new());
    let mut statement = String::new();
    let mut grouped = 0;
    let result = (|| -> anyhow::Result<()> {
        while generator.next_txn(stop, &mut changes, &mut images) {
            let rows: Vec<(u64, String, String)> = changes
                .iter()
                .zip(images.chunks_exact(workload.image_bytes))
                .map(|(c, image)| (c.object, hex(&c.key), hex(image)))
                .collect();
            if workload.txn_changes == 0 {
                // Each change a statement of its own, committed alone.
                statement.clear();
                for i in 0..changes.len() {
                    txn_statements(&changes[i..=i], &rows[i..=i], &mut statement);
                }
                sql.write_all(statement.as_bytes())?;
            } else {
                statement.push_str("BEGIN;\n");
                txn_statements(&changes, &rows, &mut statement);
                statement.push_str("COMMIT;\n");
                grouped += 1;
                if grouped == TXNS_PER_REQUEST {
                    send_request(&mut sql, &mut statement)?;
                    grouped = 0;
                }
            }
            written.fetch_add(changes.len() as u64, Ordering::Relaxed);
        }
        send_request(&mut sql, &mut statement)?;
        sql.flush()?;
        Ok(())
    })();
    drop(sql);
    let out = child.wait_with_output()?;
    result.context("RBN0122E psql stopped taking the workload")?;
    anyhow::ensure!(
        out.status.success(),
        "RBN0122E psql writing the workload failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(generator.made)
}

/// Transactions psql sends the publisher in one request. psql sends each
/// statement on its own and waits for its answer, four round trips a
/// transaction: the load took 25-27 k changes/s. Statements joined by
/// psql's `\;` go as one request, a simple-query string in which each
/// `BEGIN` ... `COMMIT` is still a transaction of its own, as its WAL and
/// its replication show (decisions.md 113).
const TXNS_PER_REQUEST: usize = 64;

/// Writes `statements` (whole statements, each ending in `;` and a
/// newline) as one request of psql's: every statement's end but the
/// last escaped as `\;`. Empties `statements`.
fn send_request(sql: &mut impl Write, statements: &mut String) -> std::io::Result<()> {
    if statements.is_empty() {
        return Ok(());
    }
    let request = joined_request(statements);
    statements.clear();
    sql.write_all(request.as_bytes())
}

/// `statements` as one psql request (see `send_request`). The statements'
/// text has no `;` and newline inside it: values are hex.
fn joined_request(statements: &str) -> String {
    let body = statements
        .strip_suffix(";\n")
        .expect("statements end in a semicolon and a newline");
    format!("{};\n", body.replace(";\n", "\\;\n"))
}

/// A transaction's changes as at most two statements, with the effect our
/// apply gives them in journal order: per key its last change counts; an
/// update, which apply makes as a put (an absent record is written),
/// becomes part of the one upsert with the puts, and the deletes one
/// `DELETE`. (An `UPDATE` would change nothing where the row is absent:
/// a quarter of a short run's changes replicated nothing, decisions.md 102.)
fn txn_statements(
    changes: &[super::workload::Change],
    rows: &[(u64, String, String)],
    out: &mut String,
) {
    // Each key's last change, in the order of the keys' first appearance.
    let mut at: std::collections::HashMap<(u64, &str), usize> = Default::default();
    let mut last: Vec<(Kind, &(u64, String, String))> = Vec::new();
    for (c, row) in changes.iter().zip(rows) {
        match at.entry((row.0, row.1.as_str())) {
            std::collections::hash_map::Entry::Occupied(e) => last[*e.get()] = (c.kind, row),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(last.len());
                last.push((c.kind, row));
            }
        }
    }
    let values = |deletes: bool| -> String {
        last.iter()
            .filter(|(kind, _)| (*kind == Kind::Delete) == deletes)
            .map(|(_, (o, k, v))| match deletes {
                false => format!("({o}, '\\x{k}'::bytea, '\\x{v}'::bytea)"),
                true => format!("({o}, '\\x{k}'::bytea)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sets = values(false);
    if !sets.is_empty() {
        out.push_str(&format!(
            "INSERT INTO bench VALUES {sets} ON CONFLICT (o, k) DO UPDATE SET v = EXCLUDED.v;\n"
        ));
    }
    let deletes = values(true);
    if !deletes.is_empty() {
        out.push_str(&format!("DELETE FROM bench WHERE (o, k) IN ({deletes});\n"));
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_go_to_psql_as_one_request_each_commit_its_own() {
        let statements = "BEGIN;\nINSERT INTO bench VALUES (1, '\\x01'::bytea, '\\x02'::bytea);\nCOMMIT;\nBEGIN;\nDELETE FROM bench WHERE (o, k) IN ((1, '\\x01'::bytea));\nCOMMIT;\n";
        assert_eq!(
            joined_request(statements),
            "BEGIN\\;\nINSERT INTO bench VALUES (1, '\\x01'::bytea, '\\x02'::bytea)\\;\nCOMMIT\\;\nBEGIN\\;\nDELETE FROM bench WHERE (o, k) IN ((1, '\\x01'::bytea))\\;\nCOMMIT;\n"
        );
        let mut sent = Vec::new();
        let mut pending = statements.to_owned();
        send_request(&mut sent, &mut pending).unwrap();
        assert!(pending.is_empty());
        assert_eq!(sent, joined_request(statements).into_bytes());
        // Nothing gathered: nothing sent.
        send_request(&mut sent, &mut pending).unwrap();
        assert_eq!(sent.len(), joined_request(statements).len());
    }

    #[test]
    fn each_instance_gets_a_sixth_of_the_memory_for_buffers_up_to_4_gib() {
        assert_eq!(shared_buffers_mb(24 << 30), 4096);
        assert_eq!(shared_buffers_mb(64 << 30), 4096);
        assert_eq!(shared_buffers_mb(12 << 30), 2048);
        // A small or unknown machine keeps initdb's default.
        assert_eq!(shared_buffers_mb(512 << 20), 128);
        assert_eq!(shared_buffers_mb(0), 128);
        assert!(with_buffers("-c max_wal_size=8GB")
            .starts_with("-c max_wal_size=8GB -c shared_buffers="));
    }

    #[test]
    fn the_loads_progress_says_how_far_how_fast_and_how_long_is_left() {
        let line = load_progress(500_000, 2_000_000, Duration::from_secs(20));
        assert_eq!(
            line,
            "PostgreSQL: 0.50 of 2.00 M changes written into the publisher in 20 s (25.0 k changes/s, about 60 s left)"
        );
        // Nothing written yet: no rate to reckon the rest by.
        assert!(!load_progress(0, 2_000_000, Duration::from_secs(2)).contains("left"));
    }

    #[test]
    fn without_postgresql_the_error_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let e = Programs::find_in(&[empty.path().to_owned()], &empty.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("RBN0120E"), "{e}");
        assert!(e.contains("apt-get install postgresql"), "{e}");
    }

    #[test]
    fn the_newest_debian_version_is_found() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9", "15", "13"] {
            let bin = root.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
        }
        let found = Programs::find_in(&[], root.path()).unwrap();
        assert_eq!(found.bin, root.path().join("15/bin"));
    }

    #[test]
    fn a_transaction_becomes_one_upsert_and_one_delete_with_each_keys_last_change() {
        use super::super::workload::Change;
        let change = |kind, k: u8| Change {
            object: 1,
            key: [k; 16],
            kind,
        };
        let changes = [
            change(Kind::Put, 1),
            change(Kind::Delete, 2),
            change(Kind::Put, 1),
            change(Kind::Update, 3),
            change(Kind::Put, 4),
            change(Kind::Delete, 4),
            change(Kind::Delete, 5),
            change(Kind::Update, 5),
        ];
        let rows: Vec<(u64, String, String)> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.object, hex(&c.key), format!("{i:02x}")))
            .collect();
        let key = |k: u8| format!("'\\x{}'::bytea", hex(&[k; 16]));
        let mut sql = String::new();
        txn_statements(&changes, &rows, &mut sql);
        let lines: Vec<&str> = sql.lines().collect();
        assert_eq!(lines.len(), 2, "{sql}");
        let (upsert, delete) = (lines[0], lines[1]);
        assert!(
            upsert.starts_with("INSERT") && upsert.contains("ON CONFLICT"),
            "{sql}"
        );
        // Key 1's last image, an update's image (key 3: written where
        // absent, as apply does), and key 5's update after its delete.
        for (k, image) in [(1, "02"), (3, "03"), (5, "07")] {
            assert!(
                upsert.contains(&format!("{}, '\\x{image}'::bytea)", key(k))),
                "key {k} image {image}: {sql}"
            );
        }
        assert!(
            !upsert.contains("'\\x00'::bytea"),
            "key 1's first image: {sql}"
        );
        assert!(
            !upsert.contains(&key(2)) && !upsert.contains(&key(4)),
            "{sql}"
        );
        assert!(delete.starts_with("DELETE"), "{sql}");
        for k in [2, 4] {
            assert!(delete.contains(&key(k)), "key {k} deleted last: {sql}");
        }
        assert!(
            !delete.contains(&key(1)) && !delete.contains(&key(5)),
            "{sql}"
        );
        assert_eq!(hex(&[0x0f, 0xa0, 0x00]), "0fa000");
    }
}
