//! The wall clock behind a trait, so tests can pin timestamps.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of entry timestamps (nanoseconds since the Unix epoch).
pub trait Clock: Send + Sync + Debug {
    fn now_unix_ns(&self) -> u64;
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec (vDSO, no syscall); this is
        // on the append hot path, where SystemTime's checks cost ~2%.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
            return SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}
