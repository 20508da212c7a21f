//! How the machine's CPUs spent the timed window, from `/proc/stat`.
//!
//! The per-process CPU figures say what each part cost; these say what
//! else the machine was doing meanwhile. On a virtual machine the host may
//! give a vCPU's time to others (`steal`): a run that found 30% of the
//! machine stolen is not comparable with one that found 3%, and the
//! figure is what tells them apart. `system` is the kernel's share
//! (interrupt handling included), `iowait` idle time with a disk request
//! outstanding.

use std::io;
use std::time::Instant;

/// Cumulative CPU time of all CPUs, in clock ticks, by kind: the first
/// line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub steal: u64,
}

impl CpuTicks {
    /// Parses `/proc/stat`'s text: the `cpu` line's user, nice, system,
    /// idle, iowait, irq, softirq and steal fields (nice counted as user,
    /// irq and softirq as system; guest time is already inside user).
    pub fn parse(stat: &str) -> Option<CpuTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(CpuTicks {
            user: user + nice,
            system: system + irq + softirq,
            idle,
            iowait,
            steal,
        })
    }

    fn read() -> io::Result<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        CpuTicks::parse(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/stat has no cpu line with eight fields",
            )
        })
    }

    fn total(&self) -> u64 {
        self.user + self.system + self.idle + self.iowait + self.steal
    }

    fn since(&self, earlier: &CpuTicks) -> CpuTicks {
        CpuTicks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            iowait: self.iowait.saturating_sub(earlier.iowait),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The machine's time over a window, as percentages of all its CPUs'
/// time (they add up to 100).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineFigure {
    pub cpus: usize,
    pub seconds: f64,
    pub user_percent: f64,
    pub system_percent: f64,
    pub iowait_percent: f64,
    pub idle_percent: f64,
    /// Time the host gave the machine's vCPUs to others.
    pub steal_percent: f64,
}

impl MachineFigure {
    fn of(ticks: &CpuTicks, cpus: usize, seconds: f64) -> MachineFigure {
        let total = ticks.total().max(1) as f64;
        let percent = |t: u64| 100.0 * t as f64 / total;
        MachineFigure {
            cpus,
            seconds,
            user_percent: percent(ticks.user),
            system_percent: percent(ticks.system),
            iowait_percent: percent(ticks.iowait),
            idle_percent: percent(ticks.idle),
            steal_percent: percent(ticks.steal),
        }
    }
}

/// Counts the machine's CPU time from `start` on.
#[derive(Debug)]
pub struct MachineWindow {
    ticks: CpuTicks,
    started: Instant,
}

impl MachineWindow {
    /// `None` where `/proc/stat` cannot be read or parsed.
    pub fn start() -> Option<MachineWindow> {
        Some(MachineWindow {
            ticks: CpuTicks::read().ok()?,
            started: Instant::now(),
        })
    }

    pub fn finish(&self) -> io::Result<MachineFigure> {
        let ticks = CpuTicks::read()?.since(&self.ticks);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(MachineFigure::of(
            &ticks,
            cpus,
            self.started.elapsed().as_secs_f64(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_is_read_by_kind() {
        let stat = "cpu  100 5 40 800 20 3 2 30 0 0\ncpu0 50 2 20 400 10 1 1 15 0 0\nintr 1\n";
        assert_eq!(
            CpuTicks::parse(stat),
            Some(CpuTicks {
                user: 105,
                system: 45,
                idle: 800,
                iowait: 20,
                steal: 30
            })
        );
        assert_eq!(CpuTicks::parse("cpu0 1 2 3\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3 4\n"), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn a_window_is_shared_out_in_percentages_of_the_machine() {
        let before = CpuTicks {
            user: 100,
            system: 100,
            idle: 100,
            iowait: 100,
            steal: 100,
        };
        let after = CpuTicks {
            user: 150,
            system: 120,
            idle: 110,
            iowait: 100,
            steal: 120,
        };
        let m = MachineFigure::of(&after.since(&before), 2, 0.5);
        assert_eq!(m.user_percent, 50.0);
        assert_eq!(m.system_percent, 20.0);
        assert_eq!(m.idle_percent, 10.0);
        assert_eq!(m.iowait_percent, 0.0);
        assert_eq!(m.steal_percent, 20.0);
    }

    #[test]
    fn this_machines_window_adds_up_to_all_of_it() {
        let Some(window) = MachineWindow::start() else {
            eprintln!("skipped: /proc/stat unreadable here");
            return;
        };
        let spin = Instant::now();
        while spin.elapsed().as_millis() < 50 {
            std::hint::black_box(spin.elapsed());
        }
        let m = window.finish().unwrap();
        let sum =
            m.user_percent + m.system_percent + m.iowait_percent + m.idle_percent + m.steal_percent;
        assert!((sum - 100.0).abs() < 1e-6 || sum == 0.0, "{m:?}");
        assert!(m.cpus >= 1 && m.seconds >= 0.05, "{m:?}");
    }
}
