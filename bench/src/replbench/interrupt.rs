//! Stopping a run on SIGINT (Ctrl-C) or SIGTERM (`timeout`, a service
//! manager). replbench's `main` catches both (`catch`); the run checks at
//! each of its waits (`check`, and every `Process::check_running`), stops
//! its writers, and unwinds: its pipeline processes are stopped, its
//! PostgreSQL servers too, and its directory removed (kept with `--keep`),
//! as at the end of a run. Uncaught, the signal ended replbench at once and
//! left its directory (gigabytes of journal) and apply's process behind.
//!
//! On Ctrl-C the terminal signals the pipeline's processes too: they stop
//! as a SIGTERM stops them, and their exits are the interruption's, not
//! failures (`Process::check_running`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The flag `ship::stop_on_signals` sets, once `catch` ran.
static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();
/// Never set: the flag of a process that did not `catch` (tests, embedders).
static NEVER: AtomicBool = AtomicBool::new(false);

/// Catches SIGINT and SIGTERM for the rest of the process's life.
pub fn catch() {
    FLAG.get_or_init(ship::stop_on_signals);
}

/// Set once SIGINT or SIGTERM came (never, unless `catch` ran): for loops
/// that take a stop flag, such as the workload's writers.
pub fn flag() -> &'static AtomicBool {
    FLAG.get().copied().unwrap_or(&NEVER)
}

/// Whether SIGINT or SIGTERM came.
pub fn interrupted() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Fails with `Interrupted` once SIGINT or SIGTERM came.
pub fn check() -> Result<(), Interrupted> {
    if interrupted() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// The run stopped because SIGINT or SIGTERM came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "RBN0009W interrupted (SIGINT or SIGTERM): the run stopped before its figures; its processes were stopped",
        )
    }
}

impl std::error::Error for Interrupted {}
