//! Probe outcomes: what the replica held at each S-CK probe of the apply
//! stream, kept until the sync-check that journaled the probe takes them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::digest::Hash;

/// Outcomes kept before the oldest are dropped (a check that never comes
/// back for its probes must not grow the log without limit).
const KEPT_OUTCOMES: usize = 1 << 20;

/// What the replica held at a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The record, as `record_digest` of its key and value.
    Present(Hash),
    Absent,
    /// A barrier: everything before it is applied.
    Reached,
}

/// Outcomes by (journal index, probe sequence); apply writes them, the
/// sync-check service takes them.
#[derive(Debug, Default)]
pub struct ProbeLog {
    outcomes: Mutex<BTreeMap<(u32, u64), ProbeOutcome>>,
    arrived: Condvar,
    /// Set once the log overflowed (warned about once).
    overflowed: std::sync::atomic::AtomicBool,
}

impl ProbeLog {
    pub fn new() -> ProbeLog {
        ProbeLog::default()
    }

    /// Notes the outcome of the probe at `sequence` of `journal`.
    pub fn record(&self, journal: u32, sequence: u64, outcome: ProbeOutcome) {
        let mut outcomes = self.outcomes.lock();
        outcomes.insert((journal, sequence), outcome);
        if outcomes.len() > KEPT_OUTCOMES {
            let dropped = outcomes.pop_first();
            if !self
                .overflowed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "SCI0110W probe outcomes not taken by any sync-check: dropping the oldest ({dropped:?} first); {KEPT_OUTCOMES} kept (said once)"
                );
            }
        }
        self.arrived.notify_all();
    }

    /// Takes the outcomes of the probes `sequences` of `journal`, waiting
    /// up to `timeout` for apply to reach them; `Err` names the first probe
    /// still not applied then.
    pub fn take(
        &self,
        journal: u32,
        sequences: &[u64],
        timeout: Duration,
    ) -> Result<Vec<ProbeOutcome>, u64> {
        let deadline = Instant::now() + timeout;
        let mut outcomes = self.outcomes.lock();
        loop {
            match sequences
                .iter()
                .find(|&&s| !outcomes.contains_key(&(journal, s)))
            {
                None => break,
                Some(&missing) => {
                    if self.arrived.wait_until(&mut outcomes, deadline).timed_out() {
                        return Err(missing);
                    }
                }
            }
        }
        Ok(sequences
            .iter()
            .map(|&s| outcomes.remove(&(journal, s)).expect("checked above"))
            .collect())
    }
}
