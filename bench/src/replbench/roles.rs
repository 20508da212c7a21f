//! The pipeline's processes. replbench starts the sender, the receiver and
//! apply as child processes of its own binary (`replbench role <role>
//! --config <file>`): the same code as replsend, replrecv and replapply
//! (`ship::sender::run`, `ship::receiver::run`, `ship::apply::run`), with
//! their stage clocks on, printing the clocks' events on stdout every few
//! milliseconds for the parent's board. Their logs go to a file each.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::trace::StageClock;
use ship::config::Config;

use super::stages::{print_events, Board, Stage};
use super::workload::CpuTime;

/// How often a role prints its events.
const REPORT_EVERY: Duration = Duration::from_millis(10);

/// What a role prints once it serves: the sender once its session is open
/// (so the receiver took it), apply once it reads staging, the receiver
/// once it listens and its first staging segment made ahead is ready (as a
/// receiver in service: decisions.md 67).
pub const READY_LINE: &str = "R";

/// A process of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Send,
    Receive,
    Apply,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Receive => "receive",
            Role::Apply => "apply",
        }
    }
}

/// The body of `replbench role`: runs `role` from `config` until SIGTERM,
/// printing its stage events. Exit status 0, 1 (it failed: logged) or 2
/// (bad configuration).
pub fn run_role(role: Role, config: &Path) -> ExitCode {
    ship::init_logging();
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let stop = ship::stop_on_signals();
    let sender = ship::sender::SenderStatus {
        scraped_at: StageClock::recording(),
        sent_at: StageClock::recording(),
        ..Default::default()
    };
    let receiver = Arc::new(ship::receiver::ReceiverStatus {
        staged_at: StageClock::recording(),
        ..Default::default()
    });
    let applier = apply::RunStatus {
        applied_at: StageClock::recording(),
        ..Default::default()
    };
    let clocks: Vec<(Stage, &StageClock)> = match role {
        Role::Send => vec![
            (Stage::Scraped, &sender.scraped_at),
            (Stage::Sent, &sender.sent_at),
        ],
        Role::Receive => vec![(Stage::Staged, &receiver.staged_at)],
        Role::Apply => vec![(Stage::Applied, &applier.applied_at)],
    };
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| match role {
            Role::Send => ship::sender::run(&config, stop, &sender),
            Role::Receive => ship::receiver::run(&config, stop, &receiver),
            Role::Apply => ship::apply::run(&config, stop, &applier),
        });
        let mut out = std::io::stdout().lock();
        let serving = || match role {
            Role::Send => sender.sessions.load(Ordering::Relaxed) > 0,
            Role::Receive => {
                receiver.listening.load(Ordering::Relaxed)
                    && receiver.settled.load(Ordering::Relaxed)
            }
            Role::Apply => applier.running.load(Ordering::Relaxed),
        };
        let mut told_ready = false;
        while !worker.is_finished() {
            std::thread::sleep(REPORT_EVERY);
            // The parent gone (stdout closed) is no reason to stop early:
            // SIGTERM is.
            let _ = print_events(&mut out, &clocks);
            if !told_ready && serving() {
                told_ready = writeln!(out, "{READY_LINE}")
                    .and_then(|()| out.flush())
                    .is_ok();
            }
        }
        let _ = print_events(&mut out, &clocks);
        worker.join().expect("the role's thread panicked")
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", engine::report::describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// A pipeline process replbench started.
#[derive(Debug)]
pub struct Process {
    pub role: Role,
    pub journal: u32,
    pub child: std::process::Child,
    pub log: PathBuf,
    follower: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Process {
    /// Starts `exe role <role> --config <config>` with its log in `logs`;
    /// its events go to `board` as journal `journal`'s.
    pub fn start(
        exe: &Path,
        role: Role,
        journal: u32,
        config: &Path,
        logs: &Path,
        board: &Arc<Board>,
    ) -> anyhow::Result<Process> {
        let log = logs.join(format!("{}-{journal}.log", role.name()));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(exe);
        // SIGTERM when replbench dies, even by SIGKILL, which it cannot
        // catch (`interrupt`): a pipeline process left running would apply
        // into a directory nobody removes. The kernel sends it when the
        // thread that started the process ends: the thread that called
        // `run`, which outlives the run. A parent gone before the prctl
        // is caught by its pid.
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls
        // (prctl, getppid), and nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        let mut child = command
            .arg("role")
            .arg(role.name())
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} role {}", exe.display(), role.name()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let board = Arc::clone(board);
        let follower = std::thread::Builder::new()
            .name(format!("events-{}", role.name()))
            .spawn(move || {
                // Sender and receiver serve one journal (their lane 0);
                // apply's lanes are the group's journals already.
                board.follow(BufReader::new(stdout), |lane| match role {
                    Role::Apply => lane,
                    Role::Send | Role::Receive => journal,
                })
            })?;
        Ok(Process {
            role,
            journal,
            child,
            log,
            follower: Some(follower),
        })
    }

    /// Fails with the log's last lines if the process has exited, and
    /// with `Interrupted` once SIGINT or SIGTERM came (Ctrl-C signals the
    /// processes too, and their exits are not failures then).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        super::interrupt::check()?;
        match self.child.try_wait()? {
            Some(status) => Err(self.exited(status)),
            None => Ok(()),
        }
    }

    fn exited(&self, status: std::process::ExitStatus) -> anyhow::Error {
        anyhow::anyhow!(
            "RBN0101E the {} process of journal {} exited with {status}; its log {} ends with:\n{}",
            self.role.name(),
            self.journal,
            self.log.display(),
            log_tail(&self.log, 15)
        )
    }

    /// CPU time the process has used so far.
    pub fn cpu(&self) -> anyhow::Result<CpuTime> {
        process_cpu(self.child.id())
    }

    /// Asks the process to stop (SIGTERM) and waits up to `patience` for it
    /// (then kills it); fails if it did not exit cleanly.
    pub fn stop(&mut self, patience: Duration) -> anyhow::Result<()> {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + patience;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                anyhow::bail!(
                    "RBN0102E the {} process of journal {} did not stop within {patience:?}; killed. Its log: {}",
                    self.role.name(),
                    self.journal,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(follower) = self.follower.take() {
            for line in follower.join().expect("event follower panicked") {
                tracing::warn!("RBN0103W {} printed: {line}", self.role.name());
            }
        }
        if !status.success() {
            return Err(self.exited(status));
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// CPU time of process `pid` from /proc (user and system, in clock ticks).
fn process_cpu(pid: u32) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: fields count from the
    // last ')'. After it: state (3) ... utime (14), stime (15).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |i: usize| -> anyhow::Result<Duration> {
        let ticks: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} unreadable", i + 3))?;
        Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
    };
    Ok(CpuTime {
        user: time(11)?,
        system: time(12)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_cpu_time_reads_from_proc() {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let cpu = process_cpu(std::process::id()).unwrap();
        // The loop runs in user space: most of its time is the user's.
        assert!(cpu.user >= Duration::from_millis(50), "{cpu:?}");
    }
}
