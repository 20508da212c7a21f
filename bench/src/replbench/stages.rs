//! The pipeline's stages as replbench sees them: the events each process
//! prints on its stdout (`E <stage> <lane> <position> <ns>`), the board
//! that collects them, and the lag of each entry from its append to each
//! stage, computed from the events afterwards.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use engine::trace::{StageClock, StageEvent};
use parking_lot::Mutex;

/// A point of the pipeline an entry passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Appended to the journal by the workload.
    Journal,
    /// Taken from the journal by the sender's scraper.
    Scraped,
    /// Wholly handed to the socket, in a frame.
    Sent,
    /// Durably staged on the backup.
    Staged,
    /// Applied to the replica.
    Applied,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Journal,
        Stage::Scraped,
        Stage::Sent,
        Stage::Staged,
        Stage::Applied,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Journal => "journal",
            Stage::Scraped => "scraped",
            Stage::Sent => "sent",
            Stage::Staged => "staged",
            Stage::Applied => "applied",
        }
    }

    fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Prints the events of `clocks` taken since the last call, one line each,
/// and a `D <stage> <count>` line when a clock dropped some: all in one
/// write (stdout writes a line at a time, and a system call per event, a
/// few thousand a second, each waking replbench's reader, cost the
/// measured processes CPU of their own).
pub fn print_events(out: &mut impl Write, clocks: &[(Stage, &StageClock)]) -> std::io::Result<()> {
    let mut lines = Vec::new();
    for (stage, clock) in clocks {
        let (events, dropped) = clock.take();
        for e in events {
            writeln!(
                lines,
                "E {} {} {} {}",
                stage.name(),
                e.lane,
                e.position,
                e.time_ns
            )?;
        }
        if dropped > 0 {
            writeln!(lines, "D {} {dropped}", stage.name())?;
        }
    }
    out.write_all(&lines)?;
    out.flush()
}

/// Every stage's events, per journal, as the processes report them.
#[derive(Debug)]
pub struct Board {
    events: Mutex<Vec<(Stage, u32, StageEvent)>>,
    /// Per journal and stage: the furthest position reported.
    reached: Vec<[AtomicU64; 5]>,
    dropped: AtomicU64,
    /// Processes that said they serve (`roles::READY_LINE`).
    ready: AtomicU64,
}

impl Board {
    pub fn new(journals: usize) -> Board {
        Board {
            events: Mutex::new(Vec::new()),
            reached: (0..journals)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            dropped: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        }
    }

    /// How many processes have said they serve.
    pub fn ready(&self) -> u64 {
        self.ready.load(Ordering::Relaxed)
    }

    /// Notes that `stage` of `journal` reached `position` at `time_ns`.
    pub fn note(&self, stage: Stage, journal: u32, position: u64, time_ns: u64) {
        self.reached[journal as usize][stage as usize].fetch_max(position, Ordering::Relaxed);
        self.events.lock().push((
            stage,
            journal,
            StageEvent {
                lane: journal,
                position,
                time_ns,
            },
        ));
    }

    /// The furthest position `stage` of `journal` has reached.
    pub fn reached(&self, stage: Stage, journal: u32) -> u64 {
        self.reached[journal as usize][stage as usize].load(Ordering::Relaxed)
    }

    /// The furthest positions `stage` has reached, summed over journals.
    pub fn reached_all(&self, stage: Stage) -> u64 {
        (0..self.reached.len())
            .map(|j| self.reached(stage, j as u32))
            .sum()
    }

    /// Whether every stage after the journal has passed `ends[j]` in each
    /// journal `j`. Apply can read a frame from staging before the
    /// receiver's sync makes it durable and reports it staged, so a run
    /// that stopped at apply's end could miss the staged stage's last event.
    pub fn passed(&self, ends: &[u64]) -> bool {
        ends.iter().enumerate().all(|(j, &end)| {
            Stage::ALL[1..]
                .iter()
                .all(|&stage| self.reached(stage, j as u32) >= end)
        })
    }

    /// Positions reached by the stages after the journal, summed: grows
    /// while anything moves.
    pub fn moved(&self) -> u64 {
        Stage::ALL[1..].iter().map(|&s| self.reached_all(s)).sum()
    }

    /// Events some process could not report (its clock overflowed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The events of `stage` for `journal`, in time order.
    pub fn events(&self, stage: Stage, journal: u32) -> Vec<StageEvent> {
        let mut out: Vec<StageEvent> = self
            .events
            .lock()
            .iter()
            .filter(|(s, j, _)| *s == stage && *j == journal)
            .map(|(_, _, e)| *e)
            .collect();
        out.sort_by_key(|e| (e.time_ns, e.position));
        out
    }

    /// Reads a process's event lines until it closes its stdout; `lane`
    /// maps the process's lanes to the group's journals. Lines that are not
    /// events are returned (they should not occur).
    pub fn follow(&self, input: impl BufRead, lane: impl Fn(u32) -> u32) -> Vec<String> {
        let mut other = Vec::new();
        for line in input.lines().map_while(Result::ok) {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            match fields.as_slice() {
                ["E", stage, l, position, time] => {
                    match (
                        Stage::parse(stage),
                        l.parse(),
                        position.parse(),
                        time.parse(),
                    ) {
                        (Some(stage), Ok(l), Ok(position), Ok(time)) => {
                            self.note(stage, lane(l), position, time)
                        }
                        _ => other.push(line),
                    }
                }
                [line] if *line == super::roles::READY_LINE => {
                    self.ready.fetch_add(1, Ordering::Relaxed);
                }
                ["D", _, n] => {
                    self.dropped
                        .fetch_add(n.parse().unwrap_or(0), Ordering::Relaxed);
                }
                _ => other.push(line),
            }
        }
        other
    }
}

/// Lag percentiles of one stage, in microseconds from the append.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Lag {
    pub stage: &'static str,
    pub entries: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Records in `histogram`, for every entry of `[from, ..)` appended
/// (`appended`: the journal's events, one per append call), the
/// microseconds until a stage first passed it (`passed`: the stage's events
/// for the same journal). Entries the stage never reached are left out.
pub fn record_lag(
    histogram: &mut hdrhistogram::Histogram<u64>,
    from: u64,
    appended: &[StageEvent],
    passed: &[StageEvent],
) -> anyhow::Result<()> {
    visit_lag(from, appended, passed, |_, micros, n| {
        histogram.record_n(micros, n)
    })?;
    Ok(())
}

/// Calls `f(append time, lag in microseconds (at least 1), entries)` for
/// every run of entries of `[from, ..)` that an append event and a stage
/// event bound alike (see `record_lag`).
pub fn visit_lag<E>(
    from: u64,
    appended: &[StageEvent],
    passed: &[StageEvent],
    mut f: impl FnMut(u64, u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut lower = from;
    let mut k = 0;
    for a in appended {
        let mut entry = lower.max(from);
        while entry < a.position {
            while k < passed.len() && passed[k].position <= entry {
                k += 1;
            }
            let Some(p) = passed.get(k) else { break };
            let upto = a.position.min(p.position);
            let micros = p.time_ns.saturating_sub(a.time_ns) / 1000;
            f(a.time_ns, micros.max(1), upto - entry)?;
            entry = upto;
        }
        lower = lower.max(a.position);
    }
    Ok(())
}

/// One stage's lag second by second of the run: the entries appended in
/// each second, and their p99 and maximum lag.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LagSeries {
    pub stage: &'static str,
    pub p99_us: Vec<u64>,
    pub max_us: Vec<u64>,
}

/// Histograms of lag by the second of its entries' append, from `origin_ns`.
#[derive(Debug, Default)]
pub struct BySecond {
    seconds: Vec<hdrhistogram::Histogram<u64>>,
}

impl BySecond {
    pub fn record(
        &mut self,
        origin_ns: u64,
        appended_ns: u64,
        micros: u64,
        n: u64,
    ) -> anyhow::Result<()> {
        let second = (appended_ns.saturating_sub(origin_ns) / 1_000_000_000) as usize;
        while self.seconds.len() <= second {
            self.seconds.push(hdrhistogram::Histogram::new(3)?);
        }
        self.seconds[second].record_n(micros, n)?;
        Ok(())
    }

    pub fn series(&self, stage: Stage) -> LagSeries {
        LagSeries {
            stage: stage.name(),
            p99_us: self
                .seconds
                .iter()
                .map(|h| h.value_at_quantile(0.99))
                .collect(),
            max_us: self.seconds.iter().map(|h| h.max()).collect(),
        }
    }
}

impl Lag {
    pub fn of(stage: Stage, histogram: &hdrhistogram::Histogram<u64>) -> Lag {
        Lag {
            stage: stage.name(),
            entries: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(position: u64, time_us: u64) -> StageEvent {
        StageEvent {
            lane: 0,
            position,
            time_ns: time_us * 1000,
        }
    }

    fn lag(
        stage: Stage,
        from: u64,
        appended: &[StageEvent],
        passed: &[StageEvent],
    ) -> anyhow::Result<Lag> {
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        record_lag(&mut histogram, from, appended, passed)?;
        Ok(Lag::of(stage, &histogram))
    }

    #[test]
    fn lag_is_kept_by_the_second_of_its_append() {
        let mut by = BySecond::default();
        let origin = 7_000_000_000;
        by.record(origin, origin + 500_000_000, 900, 20).unwrap();
        by.record(origin, origin + 600_000_000, 100, 80).unwrap();
        by.record(origin, origin + 2_100_000_000, 40_000, 3)
            .unwrap();
        let s = by.series(Stage::Applied);
        assert_eq!(s.stage, "applied");
        assert_eq!(s.max_us.len(), 3);
        assert_eq!(
            (s.max_us[0] / 10, s.max_us[1], s.max_us[2] / 100),
            (90, 0, 400)
        );
        assert_eq!(s.p99_us[0] / 10, 90, "{s:?}");
    }

    #[test]
    fn ready_lines_are_counted_and_not_taken_for_events() {
        let board = Board::new(1);
        let other = board.follow(&b"R\nR\nRR\n"[..], |lane| lane);
        assert_eq!(board.ready(), 2);
        assert_eq!(other, vec!["RR".to_owned()]);
    }

    #[test]
    fn each_entry_lags_until_the_first_event_past_it() {
        // Entries 1..11 appended in two calls: 1..6 at 0 us, 6..11 at 100 us.
        let appended = [ev(6, 0), ev(11, 100)];
        // The stage passes 1..4 at 50 us, 4..11 at 400 us.
        let passed = [ev(4, 50), ev(11, 400)];
        let l = lag(Stage::Applied, 1, &appended, &passed).unwrap();
        assert_eq!(l.entries, 10);
        // 3 entries at 50, 2 at 400, 5 at 300.
        assert_eq!(l.p50_us, 300);
        assert_eq!(l.max_us, 400);
        assert!(l.p90_us >= 399 && l.p90_us <= 401, "{l:?}");
    }

    #[test]
    fn entries_the_stage_never_reached_are_left_out() {
        let appended = [ev(11, 0)];
        let passed = [ev(5, 20)];
        let l = lag(Stage::Staged, 1, &appended, &passed).unwrap();
        assert_eq!(l.entries, 4);
        assert_eq!(l.max_us, 20);
    }

    #[test]
    fn a_run_has_passed_its_end_only_when_every_stage_of_every_journal_has() {
        let board = Board::new(2);
        let ends = [10, 20];
        for stage in [Stage::Scraped, Stage::Sent, Stage::Applied] {
            board.note(stage, 0, 10, 1);
            board.note(stage, 1, 20, 1);
        }
        board.note(Stage::Staged, 0, 10, 1);
        let moved = board.moved();
        assert!(!board.passed(&ends), "journal 1 applied but not staged");
        board.note(Stage::Staged, 1, 19, 2);
        assert!(!board.passed(&ends));
        assert!(board.moved() > moved);
        board.note(Stage::Staged, 1, 20, 3);
        assert!(board.passed(&ends));
    }

    #[test]
    fn the_board_reads_event_lines_and_maps_lanes() {
        let board = Board::new(2);
        let input = "E staged 0 10 1000\nE staged 0 20 2000\nD staged 3\nnoise\n";
        let other = board.follow(input.as_bytes(), |_| 1);
        assert_eq!(other, ["noise"]);
        assert_eq!(board.reached(Stage::Staged, 1), 20);
        assert_eq!(board.reached(Stage::Staged, 0), 0);
        assert_eq!(board.dropped(), 3);
        let events = board.events(Stage::Staged, 1);
        assert_eq!(events.len(), 2);
        assert_eq!((events[1].position, events[1].time_ns), (20, 2000));
    }
}
