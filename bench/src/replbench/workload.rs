//! The workload replbench writes through the journal: record changes over a
//! key space (uniform or Zipf), a mix of puts, updates and deletes, in
//! transactions of a set size (or outside commitment control), with object
//! operations now and then, at full speed or at an offered rate.

use std::time::{Duration, Instant};

use engine::journal::{Journal, NewEntry};
use engine::trace::{monotonic_ns, StageEvent};

use testkit::Rng;

use crate::apply::Keys;

/// First object id of the scratch objects the object operations cycle.
pub const SCRATCH_OBJECTS: u64 = 1_000_000;

/// What the writer does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Stop after this many record changes ...
    pub changes: Option<u64>,
    /// ... or after this long (whichever comes first).
    pub duration: Option<Duration>,
    /// Record changes per second; `None`: as fast as the journal takes them.
    pub rate: Option<u64>,
    pub keys: Keys,
    pub key_space: u64,
    pub image_bytes: usize,
    /// Record changes per transaction; 0: outside commitment control.
    pub txn_changes: u64,
    /// Percent of changes that are updates (R-UP) and deletes (R-DL); the
    /// rest are puts (R-PT).
    pub update_percent: u8,
    pub delete_percent: u8,
    /// Record objects each journal's keys are spread over.
    pub objects: u64,
    /// One object operation every this many transactions (0: none): a
    /// scratch object is created and filled, renamed, cleared and dropped
    /// in turn.
    pub object_every: u64,
    pub seed: u64,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct Written {
    /// The journal's next sequence before the first change.
    pub first: u64,
    /// The journal's next sequence after the last entry.
    pub end: u64,
    pub changes: u64,
    pub object_ops: u64,
    /// One event per append call: everything below `position` appended at
    /// `time_ns`.
    pub appended: Vec<StageEvent>,
    /// When the first change was appended (`monotonic_ns`).
    pub started_ns: u64,
    /// The writer thread's CPU time.
    pub cpu: Duration,
}

/// Which of the group's journals a writer writes, and so which objects:
/// journal `index` of `of` owns the object ids `1 + index + of * i` and
/// names them in its own library `J<index>/`, so each journal's source
/// can be checked on its own (`library_pattern`).
#[derive(Clone, Copy, Debug)]
pub struct Lane {
    pub index: u64,
    pub of: u64,
}

impl Lane {
    /// The object selector pattern of this journal's objects.
    pub fn library_pattern(self) -> String {
        format!("J{}/*", self.index)
    }

    fn record_object(self, i: u64) -> u64 {
        1 + self.index + self.of * i
    }

    fn scratch_object(self, i: u64) -> u64 {
        SCRATCH_OBJECTS + self.index + self.of * i
    }
}

/// Creates the journal's record objects, then writes `w` into `journal`
/// until done or `stop`; `progress` is updated with the journal position as
/// it goes.
pub fn write(
    journal: &Journal,
    lane: Lane,
    w: &Workload,
    stop: &std::sync::atomic::AtomicBool,
    progress: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<Written> {
    use std::sync::atomic::Ordering;
    let mut appender = journal.appender();
    let objects: Vec<u64> = (0..w.objects).map(|i| lane.record_object(i)).collect();
    for (i, &id) in objects.iter().enumerate() {
        let name = format!("J{}/T{:03}", lane.index, i + 1);
        appender.append(&NewEntry::create_object(id, &name))?;
    }
    let cpu_before = thread_cpu();
    let mut out = Written {
        first: journal.next_sequence(),
        started_ns: monotonic_ns(),
        ..Written::default()
    };
    let event_lane = lane.index as u32;
    out.appended.push(StageEvent {
        lane: event_lane,
        position: out.first,
        time_ns: out.started_ns,
    });
    let started = Instant::now();
    let mut rng = Rng(w.seed ^ lane.index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let per_txn = w.txn_changes.max(1);
    let mut keys: Vec<(u64, [u8; 16])> = Vec::with_capacity(per_txn as usize);
    let mut kinds: Vec<u8> = Vec::with_capacity(per_txn as usize);
    let mut images = vec![0u8; per_txn as usize * w.image_bytes];
    let mut cycle = 0u64;
    let mut txns = 0u64;
    let mut scratch = Scratch { lane, steps: 0 };
    let limit = w.changes.unwrap_or(u64::MAX);
    while out.changes < limit && !stop.load(Ordering::Relaxed) {
        if w.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(rate) = w.rate {
            // Paced in 1 ms ticks, sleeping (a spinning writer would take a
            // core from the pipeline it measures).
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            if out.changes >= due {
                let next = Duration::from_secs_f64((out.changes + 1) as f64 / rate as f64);
                std::thread::sleep(
                    (started + next)
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(200)),
                );
                continue;
            }
        }
        let n = per_txn.min(limit - out.changes);
        keys.clear();
        kinds.clear();
        for i in 0..n {
            let k = match w.keys {
                Keys::Uniform => rng.next() % w.key_space,
                Keys::Zipf => {
                    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                    ((w.key_space as f64).powf(u) as u64).saturating_sub(1) % w.key_space
                }
            };
            let object = objects[(k % w.objects) as usize];
            keys.push((object, engine::workload::key(object, k)));
            let roll = (rng.next() % 100) as u8;
            kinds.push(if roll < w.delete_percent {
                2
            } else if roll < w.delete_percent + w.update_percent {
                1
            } else {
                0
            });
            let at = i as usize * w.image_bytes;
            engine::workload::fill_image(
                w.seed,
                out.changes + i,
                &mut images[at..at + w.image_bytes],
            );
        }
        cycle += 1;
        let mut entries = Vec::with_capacity(keys.len() + 1);
        for (i, (&(object, ref key), &kind)) in keys.iter().zip(&kinds).enumerate() {
            let image = &images[i * w.image_bytes..(i + 1) * w.image_bytes];
            let entry = match kind {
                0 => NewEntry::put(object, key, image),
                1 => NewEntry::update(object, key, image, None),
                _ => NewEntry::delete(object, key, None),
            };
            entries.push(if w.txn_changes > 0 {
                entry.in_cycle(cycle)
            } else {
                entry
            });
        }
        if w.txn_changes > 0 {
            entries.push(NewEntry::commit(cycle));
        }
        let range = appender.append_batch(&entries)?;
        out.changes += n;
        txns += 1;
        out.appended.push(StageEvent {
            lane: event_lane,
            position: range.end,
            time_ns: monotonic_ns(),
        });
        if w.object_every > 0 && txns % w.object_every == 0 {
            let end = scratch.step(&mut appender, w.image_bytes)?;
            out.object_ops += 1;
            out.appended.push(StageEvent {
                lane: event_lane,
                position: end,
                time_ns: monotonic_ns(),
            });
        }
        progress.store(range.end, Ordering::Relaxed);
    }
    journal.flush()?;
    out.end = journal.next_sequence();
    progress.store(out.end, Ordering::Relaxed);
    out.cpu = thread_cpu().saturating_sub(cpu_before);
    Ok(out)
}

/// The scratch objects' life cycle, one step per call, outside commitment
/// control: create (and fill with a few records), rename, clear (and put one
/// record back), drop.
struct Scratch {
    lane: Lane,
    steps: u64,
}

impl Scratch {
    /// Appends the next step; returns the journal position after it.
    fn step(
        &mut self,
        appender: &mut engine::journal::Appender,
        image_bytes: usize,
    ) -> anyhow::Result<u64> {
        let id = self.lane.scratch_object(self.steps / 4);
        let library = self.lane.index;
        let image = engine::workload::image(id, self.steps, image_bytes);
        let last = match self.steps % 4 {
            0 => {
                let mut last =
                    appender.append(&NewEntry::create_object(id, &format!("J{library}/S{id}")))?;
                for k in 0..8 {
                    let key = engine::workload::key(id, k);
                    last = appender.append(&NewEntry::put(id, &key, &image))?;
                }
                last
            }
            1 => appender.append(&NewEntry::rename_object(id, &format!("J{library}/R{id}")))?,
            2 => {
                appender.append(&NewEntry::clear_object(id))?;
                let key = engine::workload::key(id, 99);
                appender.append(&NewEntry::put(id, &key, &image))?
            }
            _ => appender.append(&NewEntry::drop_object(id))?,
        };
        self.steps += 1;
        Ok(last + 1)
    }
}

/// This thread's CPU time (user + system).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
