//! Whether the machine's CPUs themselves stopped during the run.
//!
//! On a virtual machine the host can leave a vCPU unscheduled for tens of
//! milliseconds, and under nested virtualization the guest's steal counter
//! does not see it (decisions.md 108). Every thread on that CPU stops with
//! it, and so does a thread on another CPU that waits for it: a TLB
//! shootdown (`mremap`, `munmap`) spins until every CPU running the
//! process has answered. The pipeline's lag then shows a stall its code
//! did not make.
//!
//! The watch puts one probe thread on each CPU, pinned there at a
//! real-time priority above the pipeline's, that sleeps to an absolute
//! deadline every `PERIOD` and notes how late it woke. A wake-up
//! `STALL_MIN` or more late means that CPU ran neither its timer's
//! interrupt nor the probe for that long: the host did not run it, or
//! the kernel held it with preemption off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use engine::trace::monotonic_ns;
use parking_lot::Mutex;

/// How often each probe wakes: a stop of a CPU shows as a wake-up late
/// by its length less up to one period.
pub const PERIOD_NS: u64 = 2_000_000;
/// The lateness that counts as a stall: the lag target's (5 ms), far
/// above what a probe at the top priority waits otherwise (under 0.1 ms
/// in traced runs).
pub const STALL_MIN_NS: u64 = 5_000_000;

/// One probe's late wake-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStall {
    pub cpu: usize,
    /// When the probe should have woken (`monotonic_ns`).
    pub due_ns: u64,
    pub late_ns: u64,
}

/// Probes running on the machine's CPUs until `finish`.
#[derive(Debug)]
pub struct StallWatch {
    stop: Arc<AtomicBool>,
    stalls: Arc<Mutex<Vec<RawStall>>>,
    probes: Vec<(usize, JoinHandle<bool>)>,
}

impl StallWatch {
    /// Starts a probe on every CPU this process may run on, at real-time
    /// priority `priority` (`SCHED_FIFO`). `None` where the CPUs cannot be
    /// listed.
    pub fn start(priority: u8) -> Option<StallWatch> {
        let mut watch = StallWatch {
            stop: Arc::new(AtomicBool::new(false)),
            stalls: Arc::new(Mutex::new(Vec::new())),
            probes: Vec::new(),
        };
        for cpu in allowed_cpus()? {
            let (stop, stalls) = (watch.stop.clone(), watch.stalls.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("stall-probe-{cpu}"))
                .spawn(move || probe(cpu, priority, &stop, &stalls));
            match spawned {
                Ok(probe) => watch.probes.push((cpu, probe)),
                Err(_) => {
                    // Not watched at all rather than in part; the probes
                    // already started stop.
                    watch.finish();
                    return None;
                }
            }
        }
        Some(watch)
    }

    /// Stops the probes; the CPUs watched (those a probe could be pinned
    /// to at real-time priority) and their stalls, in time order.
    pub fn finish(self) -> (Vec<usize>, Vec<RawStall>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut watched = Vec::new();
        for (cpu, probe) in self.probes {
            if probe.join().unwrap_or(false) {
                watched.push(cpu);
            }
        }
        let mut stalls = std::mem::take(&mut *self.stalls.lock());
        stalls.sort_by_key(|s| s.due_ns);
        (watched, stalls)
    }
}

/// The probe on `cpu`; says whether it could watch (pinned there, at
/// real-time priority).
fn probe(cpu: usize, priority: u8, stop: &AtomicBool, stalls: &Mutex<Vec<RawStall>>) -> bool {
    if pin_to(cpu).is_err() || engine::sys::set_scheduler(libc::SCHED_FIFO, priority).is_err() {
        return false;
    }
    let mut due = monotonic_ns() + PERIOD_NS;
    while !stop.load(Ordering::Relaxed) {
        sleep_until(due);
        let now = monotonic_ns();
        let late = now.saturating_sub(due);
        if late >= STALL_MIN_NS {
            stalls.lock().push(RawStall {
                cpu,
                due_ns: due,
                late_ns: late,
            });
        }
        due = due.max(now) + PERIOD_NS;
    }
    true
}

fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call; no remainder is asked
    // for (an interrupted sleep just ends early, and the loop goes on).
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        );
    }
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays inside it
    // for any cpu below CPU_SETSIZE (allowed_cpus lists no other).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is valid for the kernel to fill in;
    // CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

/// The stalls of a run, as the report gives them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StallFigure {
    /// The CPUs a probe watched.
    pub cpus: Vec<usize>,
    pub period_ms: f64,
    pub stall_min_ms: f64,
    /// Every stall from the run's origin on, in time order.
    pub stalls: Vec<CpuStall>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CpuStall {
    pub cpu: usize,
    /// Seconds from the run's origin (the writers' start live, the
    /// senders' in catch-up) to when the probe was due.
    pub at_s: f64,
    pub ms: f64,
}

impl StallFigure {
    /// The watch's findings from `origin_ns` on; `None` when no CPU could
    /// be watched.
    pub fn of(watched: Vec<usize>, raw: &[RawStall], origin_ns: u64) -> Option<StallFigure> {
        if watched.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(StallFigure {
            cpus: watched,
            period_ms: ms(PERIOD_NS),
            stall_min_ms: ms(STALL_MIN_NS),
            stalls: raw
                .iter()
                .filter(|s| s.due_ns >= origin_ns)
                .map(|s| CpuStall {
                    cpu: s.cpu,
                    at_s: (s.due_ns - origin_ns) as f64 / 1e9,
                    ms: ms(s.late_ns),
                })
                .collect(),
        })
    }

    /// The longest stall.
    pub fn longest(&self) -> Option<&CpuStall> {
        self.stalls.iter().max_by(|a, b| a.ms.total_cmp(&b.ms))
    }

    /// RBN0010W when a CPU stalled: the run's figures include the stop.
    pub fn warning(&self) -> Option<String> {
        let longest = self.longest()?;
        let all: f64 = self.stalls.iter().map(|s| s.ms).sum();
        Some(format!(
            "RBN0010W CPU {} ran nothing for {:.0} ms at {:.2} s ({} stalls of {:.0} ms or more, {:.0} ms in all): the host did not run it or the kernel held it; the run's figures include the stop, which was not the pipeline's",
            longest.cpu,
            longest.ms,
            longest.at_s,
            self.stalls.len(),
            self.stall_min_ms,
            all
        ))
    }

    /// One line for the report: the stalls, longest first (at most five).
    pub fn summary(&self) -> String {
        let head = format!(
            "CPU stalls (a probe on each of CPUs {:?} above the pipeline's priority, every {:.0} ms, late {:.0} ms or more):",
            self.cpus, self.period_ms, self.stall_min_ms
        );
        if self.stalls.is_empty() {
            return format!("{head} none");
        }
        let mut longest: Vec<&CpuStall> = self.stalls.iter().collect();
        longest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let shown: Vec<String> = longest
            .iter()
            .take(5)
            .map(|s| format!("CPU {} {:.1} ms at {:.2} s", s.cpu, s.ms, s.at_s))
            .collect();
        let more = if longest.len() > 5 { ", ..." } else { "" };
        format!("{head} {}: {}{more}", self.stalls.len(), shown.join(", "))
    }

    /// The longest stall that began in each of the first `seconds` seconds
    /// (0 where none did), for the by-second table.
    pub fn by_second(&self, seconds: usize) -> Vec<f64> {
        let mut out = vec![0.0; seconds];
        for s in &self.stalls {
            if let Some(slot) = out.get_mut(s.at_s as usize) {
                *slot = f64::max(*slot, s.ms);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn stalls_are_timed_from_the_origin_and_those_before_it_left_out() {
        let raw = [
            RawStall {
                cpu: 1,
                due_ns: 500 * MS,
                late_ns: 30 * MS,
            },
            RawStall {
                cpu: 0,
                due_ns: 3_250 * MS,
                late_ns: 97 * MS,
            },
            RawStall {
                cpu: 1,
                due_ns: 3_251 * MS,
                late_ns: 96 * MS,
            },
        ];
        let f = StallFigure::of(vec![0, 1], &raw, 1_000 * MS).unwrap();
        assert_eq!(
            f.stalls,
            [
                CpuStall {
                    cpu: 0,
                    at_s: 2.25,
                    ms: 97.0
                },
                CpuStall {
                    cpu: 1,
                    at_s: 2.251,
                    ms: 96.0
                }
            ]
        );
        assert_eq!(f.longest().map(|s| s.cpu), Some(0));
        assert_eq!(f.by_second(4), [0.0, 0.0, 97.0, 0.0]);
        assert_eq!(
            f.summary(),
            "CPU stalls (a probe on each of CPUs [0, 1] above the pipeline's priority, every 2 ms, late 5 ms or more): 2: CPU 0 97.0 ms at 2.25 s, CPU 1 96.0 ms at 2.25 s"
        );
        let warning = f.warning().unwrap();
        assert!(
            warning.starts_with("RBN0010W CPU 0 ran nothing for 97 ms at 2.25 s (2 stalls of 5 ms or more, 193 ms in all)"),
            "{warning}"
        );
        let calm = StallFigure::of(vec![0, 1], &raw[..1], 1_000 * MS).unwrap();
        assert!(calm.warning().is_none());
        assert!(calm.summary().ends_with(" none"), "{}", calm.summary());
        assert!(StallFigure::of(Vec::new(), &raw, 0).is_none());
    }

    /// A thread at a higher real-time priority takes a CPU for 60 ms: the
    /// probe there cannot run and reports the stretch (needs the right to
    /// real-time scheduling: CI runs as root).
    #[test]
    fn a_cpu_taken_from_the_probe_for_60_ms_is_a_stall() {
        let Some(&cpu) = allowed_cpus().as_ref().and_then(|c| c.first()) else {
            eprintln!("skipped: the CPUs cannot be listed here");
            return;
        };
        let allowed =
            std::thread::spawn(|| engine::sys::set_scheduler(libc::SCHED_FIFO, 1).is_ok());
        if !allowed.join().unwrap() {
            eprintln!("skipped: real-time scheduling refused here");
            return;
        }
        let Some(watch) = StallWatch::start(1) else {
            eprintln!("skipped: the CPUs cannot be listed here");
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let hog = std::thread::spawn(move || {
            pin_to(cpu).unwrap();
            engine::sys::set_scheduler(libc::SCHED_FIFO, 2).unwrap();
            let until = monotonic_ns() + 60 * MS;
            while monotonic_ns() < until {
                std::hint::spin_loop();
            }
        });
        hog.join().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (watched, stalls) = watch.finish();
        assert!(watched.contains(&cpu), "{watched:?}");
        let taken: Vec<_> = stalls.iter().filter(|s| s.cpu == cpu).collect();
        assert!(
            taken.iter().any(|s| s.late_ns >= 40 * MS),
            "the probe on CPU {cpu} should have woken 40+ ms late: {stalls:?}"
        );
    }
}
