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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}
