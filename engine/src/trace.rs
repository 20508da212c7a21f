//! Stage clocks: when each stage of the pipeline reached which position, for
//! replbench's per-stage throughput and lag figures (docs/PERFORMANCE.md).
//!
//! A stage notes its position each time it moves a batch on (a scraped
//! batch, a frame on the socket, a staging sync, applied transactions), never
//! per entry, so recording costs one uncontended lock per batch. Timestamps
//! are `CLOCK_MONOTONIC`, which every process on the machine shares, so the
//! events of the sender, receiver and apply processes line up with the
//! writer's. A clock is off unless made with `StageClock::recording`: the
//! daemons keep nothing unless replbench asks.

use std::collections::VecDeque;

use parking_lot::Mutex;

/// Events a clock keeps before the oldest undrained ones are dropped (a
/// reader that stopped draining must not grow a daemon without limit).
pub const MAX_EVENTS: usize = 1 << 20;

/// One step of a stage: everything of journal `lane` below `position` had
/// passed the stage at `time_ns` (`monotonic_ns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageEvent {
    pub lane: u32,
    pub position: u64,
    pub time_ns: u64,
}

/// Positions reached by one stage, and when.
#[derive(Debug, Default)]
pub struct StageClock {
    inner: Option<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The last position noted per lane (only advances are kept).
    last: Vec<u64>,
    events: VecDeque<StageEvent>,
    dropped: u64,
}

impl StageClock {
    /// A clock that keeps events until they are taken.
    pub fn recording() -> StageClock {
        StageClock {
            inner: Some(Mutex::new(Inner::default())),
        }
    }

    pub fn is_recording(&self) -> bool {
        self.inner.is_some()
    }

    /// Notes that the stage has passed everything of `lane` below
    /// `position`, now. A position at or below the last one noted is ignored.
    pub fn reached(&self, lane: u32, position: u64) {
        let Some(inner) = &self.inner else { return };
        let time_ns = monotonic_ns();
        let mut inner = inner.lock();
        let lane_index = lane as usize;
        if inner.last.len() <= lane_index {
            inner.last.resize(lane_index + 1, 0);
        }
        if position <= inner.last[lane_index] {
            return;
        }
        inner.last[lane_index] = position;
        if inner.events.len() >= MAX_EVENTS {
            inner.events.pop_front();
            inner.dropped += 1;
        }
        inner.events.push_back(StageEvent {
            lane,
            position,
            time_ns,
        });
    }

    /// Takes the events noted since the last call, oldest first, and how many
    /// were dropped because nobody took them in time.
    pub fn take(&self) -> (Vec<StageEvent>, u64) {
        let Some(inner) = &self.inner else {
            return (Vec::new(), 0);
        };
        let mut inner = inner.lock();
        let dropped = std::mem::take(&mut inner.dropped);
        (std::mem::take(&mut inner.events).into(), dropped)
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process of the
/// machine (unlike `Instant`, whose value cannot leave the process).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_that_is_off_keeps_nothing() {
        let clock = StageClock::default();
        clock.reached(0, 10);
        assert!(!clock.is_recording());
        assert_eq!(clock.take(), (Vec::new(), 0));
    }

    #[test]
    fn only_advances_are_kept_per_lane_and_taking_drains() {
        let clock = StageClock::recording();
        clock.reached(0, 10);
        clock.reached(0, 10);
        clock.reached(1, 5);
        clock.reached(0, 7);
        clock.reached(0, 12);
        let (events, dropped) = clock.take();
        let seen: Vec<(u32, u64)> = events.iter().map(|e| (e.lane, e.position)).collect();
        assert_eq!(seen, [(0, 10), (1, 5), (0, 12)]);
        assert_eq!(dropped, 0);
        assert!(events.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        assert!(clock.take().0.is_empty());
        clock.reached(1, 6);
        assert_eq!(clock.take().0.len(), 1);
    }

    #[test]
    fn an_undrained_clock_drops_its_oldest_events() {
        let clock = StageClock::recording();
        for p in 1..=(MAX_EVENTS as u64 + 3) {
            clock.reached(0, p);
        }
        let (events, dropped) = clock.take();
        assert_eq!(dropped, 3);
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!(events[0].position, 4);
    }
}
