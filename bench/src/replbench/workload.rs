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
    /// Bytes of the entries appended (padded as in the journal; the J-NR
    /// entries rotations add are not counted).
    pub bytes: u64,
    /// One event per append call: everything below `position` appended at
    /// `time_ns`.
    pub appended: Vec<StageEvent>,
    /// When the first change was appended (`monotonic_ns`).
    pub started_ns: u64,
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

/// How a record changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Put,
    Update,
    Delete,
}

/// One record change of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    pub object: u64,
    pub key: [u8; 16],
    pub kind: Kind,
}

/// The workload's transactions for one journal, the same for every writer
/// (the journal's and PostgreSQL's) given the same settings.
#[derive(Debug)]
pub struct Generator<'w> {
    w: &'w Workload,
    rng: Rng,
    /// The journal's record objects: (id, name).
    pub objects: Vec<(u64, String)>,
    /// Changes made so far.
    pub made: u64,
    started: Instant,
}

impl<'w> Generator<'w> {
    pub fn new(w: &'w Workload, lane: Lane) -> Generator<'w> {
        Generator {
            w,
            rng: Rng(w.seed ^ lane.index.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            objects: (0..w.objects)
                .map(|i| {
                    let name = format!("J{}/T{:03}", lane.index, i + 1);
                    (lane.record_object(i), name)
                })
                .collect(),
            made: 0,
            started: Instant::now(),
        }
    }

    /// Fills `changes` and `images` (one image per change, `image_bytes`
    /// each) with the next transaction; false when the workload is done
    /// (its count or duration reached, or `stop`). With an offered rate it
    /// first sleeps until the transaction is due.
    pub fn next_txn(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        changes: &mut Vec<Change>,
        images: &mut Vec<u8>,
    ) -> bool {
        let w = self.w;
        let limit = w.changes.unwrap_or(u64::MAX);
        loop {
            if self.made >= limit
                || stop.load(std::sync::atomic::Ordering::Relaxed)
                || w.duration.is_some_and(|d| self.started.elapsed() >= d)
            {
                return false;
            }
            let Some(rate) = w.rate else { break };
            // Paced by sleeping (a spinning writer would take a core from
            // the pipeline it measures); transactions due meanwhile go at once.
            let due = (self.started.elapsed().as_secs_f64() * rate as f64) as u64;
            if self.made < due {
                break;
            }
            let next = Duration::from_secs_f64((self.made + 1) as f64 / rate as f64);
            std::thread::sleep(
                (self.started + next)
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(200)),
            );
        }
        let n = w.txn_changes.max(1).min(limit - self.made);
        changes.clear();
        images.resize(n as usize * w.image_bytes, 0);
        for i in 0..n {
            // Ranges by multiplying, not dividing (decisions.md 107): the
            // 64-bit divisions for the key, the object and the kind were
            // where much of the draw's time went.
            let k = match w.keys {
                Keys::Uniform => below(self.rng.next(), w.key_space),
                Keys::Zipf => {
                    let u = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                    ((w.key_space as f64).powf(u) as u64).saturating_sub(1) % w.key_space
                }
            };
            let of_object = if w.objects.is_power_of_two() {
                k & (w.objects - 1)
            } else {
                k % w.objects
            };
            let object = self.objects[of_object as usize].0;
            let roll = below(self.rng.next(), 100) as u8;
            let kind = if roll < w.delete_percent {
                Kind::Delete
            } else if roll < w.delete_percent + w.update_percent {
                Kind::Update
            } else {
                Kind::Put
            };
            changes.push(Change {
                object,
                key: engine::workload::key(object, k),
                kind,
            });
            let at = i as usize * w.image_bytes;
            engine::workload::fill_image(
                w.seed,
                self.made + i,
                &mut images[at..at + w.image_bytes],
            );
        }
        self.made += n;
        true
    }
}

/// `x` (uniform over the 64-bit values) taken to `0..n`, uniform as `x % n`
/// is (both off by at most `n / 2^64`) but by a multiplication.
fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
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
    let mut generator = Generator::new(w, lane);
    let mut created = 0;
    for (id, name) in &generator.objects {
        let entry = NewEntry::create_object(*id, name);
        appender.append(&entry)?;
        created += entry.padded_bytes() as u64;
    }
    let mut out = Written {
        first: journal.next_sequence(),
        started_ns: monotonic_ns(),
        bytes: created,
        ..Written::default()
    };
    let event_lane = lane.index as u32;
    out.appended.push(StageEvent {
        lane: event_lane,
        position: out.first,
        time_ns: out.started_ns,
    });
    let mut changes = Vec::new();
    let mut images = Vec::new();
    let mut cycle = 0u64;
    let mut txns = 0u64;
    let mut scratch = Scratch { lane, steps: 0 };
    while generator.next_txn(stop, &mut changes, &mut images) {
        cycle += 1;
        let mut entries = Vec::with_capacity(changes.len() + 1);
        for (c, image) in changes.iter().zip(images.chunks_exact(w.image_bytes)) {
            let entry = match c.kind {
                Kind::Put => NewEntry::put(c.object, &c.key, image),
                Kind::Update => NewEntry::update(c.object, &c.key, image, None),
                Kind::Delete => NewEntry::delete(c.object, &c.key, None),
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
        out.bytes += entries.iter().map(|e| e.padded_bytes() as u64).sum::<u64>();
        txns += 1;
        out.appended.push(StageEvent {
            lane: event_lane,
            position: range.end,
            time_ns: monotonic_ns(),
        });
        if w.object_every > 0 && txns.is_multiple_of(w.object_every) {
            let (end, bytes) = scratch.step(&mut appender, w.image_bytes)?;
            out.bytes += bytes;
            out.object_ops += 1;
            out.appended.push(StageEvent {
                lane: event_lane,
                position: end,
                time_ns: monotonic_ns(),
            });
        }
        progress.store(range.end, Ordering::Relaxed);
    }
    out.changes = generator.made;
    journal.flush()?;
    out.end = journal.next_sequence();
    progress.store(out.end, Ordering::Relaxed);
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
    /// Appends the next step; returns the journal position after it and
    /// the bytes appended.
    fn step(
        &mut self,
        appender: &mut engine::journal::Appender,
        image_bytes: usize,
    ) -> anyhow::Result<(u64, u64)> {
        let id = self.lane.scratch_object(self.steps / 4);
        let library = self.lane.index;
        let image = engine::workload::image(id, self.steps, image_bytes);
        let mut bytes = 0;
        let mut append = |entry: NewEntry<'_>| {
            bytes += entry.padded_bytes() as u64;
            appender.append(&entry)
        };
        let last = match self.steps % 4 {
            0 => {
                let mut last = append(NewEntry::create_object(id, &format!("J{library}/S{id}")))?;
                for k in 0..8 {
                    let key = engine::workload::key(id, k);
                    last = append(NewEntry::put(id, &key, &image))?;
                }
                last
            }
            1 => append(NewEntry::rename_object(id, &format!("J{library}/R{id}")))?,
            2 => {
                append(NewEntry::clear_object(id))?;
                let key = engine::workload::key(id, 99);
                append(NewEntry::put(id, &key, &image))?
            }
            _ => append(NewEntry::drop_object(id))?,
        };
        self.steps += 1;
        Ok((last + 1, bytes))
    }
}

/// CPU time a process used, split as the kernel accounts it: in its own
/// code (user) and in the kernel on its behalf (system: system calls, page
/// faults, the copies into the page cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier` (zero where a counter went back).
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// This process's CPU time (every thread).
pub fn process_cpu() -> CpuTime {
    // SAFETY: an all-zero rusage is a valid value to be written over.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    CpuTime {
        user: time(usage.ru_utime),
        system: time(usage.ru_stime),
    }
}
