//! The apply process's loop: staged frames of each journal of the group ->
//! transactions (Assembler) -> merged commit order -> ParallelApply -> the
//! store, with periodic checkpoints. Reading, decoding and assembling run
//! on a thread of their own (`ReadLoop`, "staging-read") a batch or two
//! ahead of apply, which takes each batch whole.
//!
//! Durability: the store keeps the applied position with its data
//! (`Store::checkpoint`); after a crash, apply replays staging from the
//! position's `resume_from` and the Assembler drops what was applied before,
//! so every transaction is applied exactly once. Only after a checkpoint is
//! durable does the loop write `resume_from` to each journal's
//! `applied.pos` in its staging directory, which lets the receiver purge
//! segments below it: staging is never purged past what a restart needs.
//! A checkpoint pauses apply only while the store takes its state
//! (`Store::begin_checkpoint`); a thread of its own makes it durable while
//! apply goes on, and the loop advances `applied.pos` when that is done.
//! One checkpoint is in flight at a time.
//!
//! Large transactions: the Assembler holds at most `spill_bytes` of one open
//! transaction's changes. Past that it keeps only where the transaction
//! began, and at commit apply reads its entries back from staging (twice:
//! the store checks, then applies; `StagedTxn`) once everything before it is
//! applied. Memory stays bounded by `spill_bytes` per open transaction plus
//! one frame, whatever the transaction's size.
//!
//! Merging several journals: each journal is assembled on its own; their
//! committed transactions are then released in (commit timestamp, journal,
//! commit sequence) order. A transaction is released once every other
//! journal either has a later transaction waiting, has shown an entry at or
//! after its timestamp, or has staged nothing new for `merge_wait` (the
//! bound that keeps an idle journal from stopping the group).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::frame::{FrameDecoder, FrameError};
use engine::journal::{JournalError, PositionFile};
use engine::staging::{StagingError, StagingReader};
use engine::trace::StageClock;
use parking_lot::Mutex;

use crate::assemble::{AssembleError, Assembler};
use crate::parallel::{ApplyOptions, ParallelApply};
use crate::position::AppliedPosition;
use crate::store::{CheckpointTimes, Store, StoreError, StoreSpace};
use crate::txn::{LargeRef, LargeTxn, Op, TxnBatch, TxnMeta};

/// The file in a journal's staging directory that apply keeps its
/// `resume_from` in: the receiver purges segments wholly below it.
pub const APPLIED_FILE: &str = "applied.pos";

/// One journal of the group as staged on this node.
#[derive(Clone, Debug)]
pub struct StagedJournal {
    pub name: String,
    pub dir: PathBuf,
}

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub apply: ApplyOptions,
    /// Time between the starts of checkpoints (each drains apply, and the
    /// store's checkpoint is made durable beside it): bounds replay after a
    /// crash.
    pub checkpoint_every: Duration,
    /// Sleep when nothing new is staged and no doorbell wakes the reader
    /// (several journals, or a receiver that has not made it yet).
    pub idle_wait: Duration,
    /// Most time an idle journal holds back the others' transactions.
    pub merge_wait: Duration,
    /// Changes gathered before a batch is handed to the workers.
    pub batch_ops: usize,
    /// Time between progress messages (HAD0221I).
    pub progress_every: Duration,
    /// Keys and images one open transaction may hold in memory; a larger
    /// transaction is read back from staging at commit.
    pub spill_bytes: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            apply: ApplyOptions::default(),
            checkpoint_every: Duration::from_secs(3),
            idle_wait: Duration::from_millis(1),
            merge_wait: Duration::from_millis(20),
            batch_ops: 16 * 1024,
            progress_every: Duration::from_secs(10),
            spill_bytes: 64 << 20,
        }
    }
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error("HAD0220E journal {journal}: staged frame at position {position} in {dir}: {source}")]
    Frame {
        journal: String,
        dir: PathBuf,
        position: u64,
        source: FrameError,
    },
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("HAD0222E cannot record the applied position in {}: {source}", dir.display())]
    AppliedFile { dir: PathBuf, source: JournalError },
}

/// Counters the loop keeps, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStatus {
    /// Transactions assembled (committed in staging and not applied before);
    /// with several journals some may still wait for the merge.
    pub assembled_txns: AtomicU64,
    /// Changes applied by the workers.
    pub applied_ops: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Large transactions applied by reading them back from staging.
    pub large_txns: AtomicU64,
    /// The position of the last checkpoint (at start: the store's).
    pub checkpointed: Mutex<AppliedPosition>,
    /// What the last checkpoint took beside apply (none yet: `None`).
    pub last_checkpoint: Mutex<Option<CheckpointTimes>>,
    /// When submitted transactions were wholly applied, per journal
    /// (replbench); seen once per turn of the loop.
    pub applied_at: StageClock,
    /// Set once apply reads staging (its store open, its threads started).
    pub running: AtomicBool,
}

/// Feeds `RunStatus::applied_at`: what each submission will have applied
/// once the workers finish it.
#[derive(Default)]
struct AppliedClock {
    /// (changes submitted, per journal the position after its last commit).
    pending: VecDeque<(u64, Vec<u64>)>,
}

impl AppliedClock {
    fn submitted(&mut self, apply: &ParallelApply, clock: &StageClock) {
        if !clock.is_recording() {
            return;
        }
        let ends = apply
            .submitted_position()
            .journals()
            .iter()
            .map(|j| j.applied + 1)
            .collect();
        self.pending.push_back((apply.submitted_ops(), ends));
    }

    fn poll(&mut self, apply: &ParallelApply, clock: &StageClock) {
        let done = apply.applied_ops();
        let mut reached = None;
        while self.pending.front().is_some_and(|(ops, _)| *ops <= done) {
            reached = self.pending.pop_front();
        }
        if let Some((_, ends)) = reached {
            for (lane, end) in ends.into_iter().enumerate() {
                clock.reached(lane as u32, end);
            }
        }
    }
}

struct Feed {
    journal: u32,
    name: String,
    reader: StagingReader,
    decoder: FrameDecoder,
    /// The frame read last. The allocator's blocks are 16-byte aligned on
    /// the platforms this runs on, so the body (after a 48-byte header) is
    /// decoded in place; elsewhere `decode` copies it.
    frame: Vec<u8>,
    /// Entries below this were read before (replay starts at `resume_from`).
    next_sequence: u64,
    /// Committed transactions not yet released to apply.
    batch: TxnBatch,
    released: usize,
    /// Latest entry timestamp seen in this journal.
    seen_time_ns: u64,
    /// When the reader last found nothing new; `None` while it finds frames.
    idle_since: Option<Instant>,
}

impl Feed {
    fn pending(&self) -> usize {
        self.batch.len() - self.released
    }

    /// Reads staged frames into transactions until `batch_ops` changes wait
    /// or nothing more is staged. Returns whether anything was read.
    fn fill(&mut self, assembler: &mut Assembler, batch_ops: usize) -> Result<bool, RunError> {
        let mut read = false;
        while self.batch.op_count() < batch_ops {
            let Some(checked) = self.reader.next(&mut self.frame)? else {
                if !read && self.idle_since.is_none() {
                    self.idle_since = Some(Instant::now());
                }
                break;
            };
            read = true;
            self.idle_since = None;
            let position = checked.start_position;
            let decoded = self
                .decoder
                .decode_checked(&self.frame, checked)
                .map_err(|source| RunError::Frame {
                    journal: self.name.clone(),
                    dir: self.reader.dir().to_owned(),
                    position,
                    source,
                })?;
            for entry in decoded.entries() {
                if entry.sequence() < self.next_sequence {
                    continue;
                }
                self.next_sequence = entry.sequence() + 1;
                self.seen_time_ns = self.seen_time_ns.max(entry.timestamp_ns());
                assembler.push(self.journal, &entry, &mut self.batch)?;
            }
        }
        Ok(read)
    }

    fn idle_for(&self, wait: Duration) -> bool {
        self.idle_since.is_some_and(|t| t.elapsed() >= wait)
    }
}

/// The replica's data files, for HAD0221I.
fn describe_space(space: &StoreSpace) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    format!(
        "; {} data files ({} more free), {:.0} MB written, {:.0} MB held, {:.0} MB reclaimed since open",
        space.data_files,
        space.free_files,
        mb(space.written_bytes),
        mb(space.held_bytes),
        mb(space.reclaimed_bytes)
    )
}

/// Applies the group's staged journals to `store` until `stop` is set, then
/// checkpoints. `journals` are in the group's fixed order: journal `i` of
/// the applied position is `journals[i]`.
pub fn run(
    store: Arc<dyn Store>,
    journals: &[StagedJournal],
    options: &RunOptions,
    stop: &AtomicBool,
    status: &RunStatus,
) -> Result<AppliedPosition, RunError> {
    let position = store.applied_position();
    let mut feeds = Vec::new();
    let mut applied_files = Vec::new();
    for (i, j) in journals.iter().enumerate() {
        let from = position.journal(i as u32).resume_from;
        std::fs::create_dir_all(&j.dir).map_err(|source| StagingError::Io {
            context: "create staging directory",
            path: j.dir.clone(),
            source,
        })?;
        let file = PositionFile::open_path(j.dir.join(APPLIED_FILE)).map_err(|source| {
            RunError::AppliedFile {
                dir: j.dir.clone(),
                source,
            }
        })?;
        applied_files.push(AppliedFile {
            journal: i as u32,
            dir: j.dir.clone(),
            file,
        });
        feeds.push(Feed {
            journal: i as u32,
            name: j.name.clone(),
            reader: StagingReader::open(&j.dir, from)?,
            decoder: FrameDecoder::new().map_err(|source| RunError::Frame {
                journal: j.name.clone(),
                dir: j.dir.clone(),
                position: from,
                source,
            })?,
            frame: Vec::new(),
            next_sequence: from,
            batch: batch_with_room(options),
            released: 0,
            seen_time_ns: 0,
            idle_since: None,
        });
    }
    tracing::info!(
        "HAD0223I apply starts after {}",
        describe(&position, journals)
    );
    let mut assembler = Assembler::new(&position);
    assembler.set_spill_bytes(options.spill_bytes);
    let dirs: Vec<PathBuf> = journals.iter().map(|j| j.dir.clone()).collect();
    let mut apply = ParallelApply::new(store.clone(), &options.apply);
    let mut next_checkpoint = Instant::now() + options.checkpoint_every;
    let mut next_progress = Instant::now() + options.progress_every;
    let mut last = (Instant::now(), 0u64);
    *status.checkpointed.lock() = position.clone();
    let mut checkpointed = position;
    let mut in_flight: Option<InFlight> = None;
    let mut spacing = Spacing::default();
    let mut apart = options.checkpoint_every;
    let mut applied_clock = AppliedClock::default();
    let assembly = Assembly::default();
    let quit = AtomicBool::new(false);
    let (batches, ready) = crossbeam_channel::bounded(READ_AHEAD_BATCHES);
    let (spare, spares) = crossbeam_channel::unbounded();
    // Every batch a run passes around (the one being merged, those read
    // ahead, the one applied, the one the loop sends back) made at once.
    for _ in 0..READ_AHEAD_BATCHES + 3 {
        let _ = spare.send(batch_with_room(options));
    }

    std::thread::scope(|scope| -> Result<AppliedPosition, RunError> {
        let reading = ReadLoop {
            feeds,
            assembler,
            options,
            stop,
            quit: &quit,
            status,
            assembly: &assembly,
        };
        std::thread::Builder::new()
            .name("staging-read".into())
            .spawn_scoped(scope, move || {
                engine::sys::enter_realtime();
                reading.run(batches, spares)
            })
            .map_err(|e| StoreError::Database(format!("cannot start the staging reader: {e}")))?;
        status.running.store(true, Ordering::Relaxed);
        // The reader stops at the first of `stop`, an error of its own, or
        // `quit` (an error here).
        let looped = (|| -> Result<(), RunError> {
            loop {
                // Short while work or a checkpoint is in flight, so that
                // each is seen done soon after it is; long while idle,
                // so that an idle replica does not wake a thousand times a
                // second (a batch wakes it at once either way).
                let busy = in_flight.is_some() || apply.applied_ops() != apply.submitted_ops();
                let wait = match busy {
                    true => options.idle_wait.max(Duration::from_millis(1)),
                    false => next_checkpoint
                        .min(next_progress)
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), IDLE_LOOP_WAIT),
                };
                match ready.recv_timeout(wait) {
                    Ok(batch) => {
                        let mut batch = batch?;
                        submit(&mut apply, &batch, &dirs, status)?;
                        store.maintain()?;
                        applied_clock.submitted(&apply, &status.applied_at);
                        batch.clear();
                        let _ = spare.send(batch);
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
                }
                applied_clock.poll(&apply, &status.applied_at);
                status
                    .applied_ops
                    .store(apply.applied_ops(), Ordering::Relaxed);
                if in_flight.as_ref().is_some_and(|c| c.thread.is_finished()) {
                    let done = in_flight.take().expect("checked above");
                    let done_began = done.began;
                    checkpointed = done.wait(&mut applied_files, status)?;
                    let times = status.last_checkpoint.lock().unwrap_or_default();
                    let spaced = spacing.after(&times, options.checkpoint_every);
                    next_checkpoint = next_checkpoint.max(done_began + spaced.apart);
                    apart = spaced.apart;
                    if let Some(message) = spaced.change {
                        tracing::info!("{message}");
                    }
                }
                let now = Instant::now();
                if now >= next_checkpoint && in_flight.is_none() {
                    if *apply.submitted_position() != checkpointed {
                        store.checkpoint_interval(apart);
                        in_flight = Some(InFlight::begin(&mut apply)?);
                    }
                    next_checkpoint = now + options.checkpoint_every;
                }
                if now >= next_progress {
                    let ops = apply.applied_ops();
                    let rate = (ops - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                    tracing::info!(
                        "HAD0221I apply: {} transactions, {ops} changes applied ({rate:.0}/s), {} open ({} bytes), {} refused; checkpointed at {}{}{}",
                        status.assembled_txns.load(Ordering::Relaxed),
                        assembly.open_txns.load(Ordering::Relaxed),
                        assembly.open_bytes.load(Ordering::Relaxed),
                        apply.refused(),
                        describe(&checkpointed, journals),
                        // A store that finishes nothing beside apply says nothing.
                        status
                            .last_checkpoint
                            .lock()
                            .filter(|t| !t.total.is_zero())
                            .map_or(String::new(), |t| format!("; the last checkpoint took {t}")),
                        store.space().map_or(String::new(), |s| describe_space(&s))
                    );
                    last = (now, ops);
                    next_progress = now + options.progress_every;
                }
            }
        })();
        if looped.is_err() {
            quit.store(true, Ordering::Relaxed);
            drop(ready);
        }
        looped?;
        if let Some(c) = in_flight.take() {
            c.wait(&mut applied_files, status)?;
        }
        // The stop's checkpoint is waited for: nothing to spread it over.
        store.checkpoint_interval(Duration::ZERO);
        let position = InFlight::begin(&mut apply)?.wait(&mut applied_files, status)?;
        apply.finish()?;
        tracing::info!(
            "HAD0224I apply stopped at {}",
            describe(&position, journals)
        );
        Ok(position)
    })
}

/// Longest the loop waits for a batch when nothing is in flight.
const IDLE_LOOP_WAIT: Duration = Duration::from_millis(50);

/// Batches read ahead of apply: enough that apply need not wait for the
/// reader, few enough to bound memory (each holds up to `batch_ops`
/// changes).
const READ_AHEAD_BATCHES: usize = 2;

/// Key and value bytes a batch is made with room for, per change: a
/// 16-byte key and a value of 100 bytes, with some to spare. Batches of
/// larger changes grow as they fill.
const BATCH_BYTES_PER_OP: usize = 128;

/// A batch with room for `batch_ops` changes (decisions.md 82).
fn batch_with_room(options: &RunOptions) -> TxnBatch {
    TxnBatch::with_room(options.batch_ops, options.batch_ops * BATCH_BYTES_PER_OP)
}

/// What the staging reader tells the loop's progress messages.
#[derive(Debug, Default)]
struct Assembly {
    open_txns: AtomicU64,
    open_bytes: AtomicU64,
}

/// A journal's `applied.pos`, written by the loop after each durable
/// checkpoint.
struct AppliedFile {
    journal: u32,
    dir: PathBuf,
    file: PositionFile,
}

/// The staging reader: on a thread of its own, reads every journal's
/// staged frames, assembles their transactions and hands them to the loop
/// in merged commit order, a batch at a time, so reading and decoding run
/// beside apply. At most `READ_AHEAD_BATCHES` wait: a slow apply holds the
/// reader back.
struct ReadLoop<'a> {
    feeds: Vec<Feed>,
    assembler: Assembler,
    options: &'a RunOptions,
    stop: &'a AtomicBool,
    quit: &'a AtomicBool,
    status: &'a RunStatus,
    assembly: &'a Assembly,
}

impl ReadLoop<'_> {
    fn run(
        mut self,
        batches: crossbeam_channel::Sender<Result<TxnBatch, RunError>>,
        spares: crossbeam_channel::Receiver<TxnBatch>,
    ) {
        let mut merged = spares.try_recv().unwrap_or_default();
        while !self.stop.load(Ordering::Relaxed) && !self.quit.load(Ordering::Relaxed) {
            let mut progressed = false;
            for feed in &mut self.feeds {
                match feed.fill(&mut self.assembler, self.options.batch_ops) {
                    Ok(read) => progressed |= read,
                    Err(e) => {
                        let _ = batches.send(Err(e));
                        return;
                    }
                }
            }
            if let [feed] = self.feeds.as_mut_slice() {
                if !feed.batch.is_empty() {
                    feed.batch.swap_committed(&mut merged);
                }
            } else {
                release_merged(&mut self.feeds, &mut merged, self.options.merge_wait);
            }
            self.status
                .assembled_txns
                .store(self.assembler.committed(), Ordering::Relaxed);
            self.assembly
                .open_txns
                .store(self.assembler.open_transactions() as u64, Ordering::Relaxed);
            self.assembly
                .open_bytes
                .store(self.assembler.open_bytes() as u64, Ordering::Relaxed);
            if !merged.is_empty() {
                let next = spares.try_recv().unwrap_or_default();
                if batches
                    .send(Ok(std::mem::replace(&mut merged, next)))
                    .is_err()
                {
                    return;
                }
            } else if !progressed {
                if let Err(e) = self.wait_for_frames() {
                    let _ = batches.send(Err(e));
                    return;
                }
            }
        }
    }

    /// Nothing came in the last look. With one journal: says so to its
    /// receiver, looks once more, and sleeps until the receiver rings
    /// (`StagingReader::prepare_wait`, decisions.md 70). With several (no
    /// sleep waits for any of them) or before the receiver has made its
    /// doorbell: sleeps `idle_wait`.
    fn wait_for_frames(&mut self) -> Result<(), RunError> {
        let [feed] = self.feeds.as_mut_slice() else {
            std::thread::sleep(self.options.idle_wait);
            return Ok(());
        };
        let Some(seen) = feed.reader.prepare_wait() else {
            std::thread::sleep(self.options.idle_wait);
            return Ok(());
        };
        if !feed.fill(&mut self.assembler, self.options.batch_ops)? {
            feed.reader.wait(seen, RUNG_WAIT);
        }
        Ok(())
    }
}

/// Longest a reader sleeps on its receiver's doorbell: every append rings
/// it, so this bounds only a stop's wait (and a ring that never comes, from
/// a doorbell made over by hand).
const RUNG_WAIT: Duration = Duration::from_millis(50);

/// Moves transactions from the feeds to `merged` in (commit time, journal,
/// commit sequence) order, as far as the merge rule allows.
fn release_merged(feeds: &mut [Feed], merged: &mut TxnBatch, merge_wait: Duration) {
    loop {
        let next = feeds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.pending() > 0)
            .map(|(i, f)| {
                let meta = f.batch.get(f.released).meta();
                ((meta.commit_time_ns, meta.journal, meta.commit_sequence), i)
            })
            .min();
        let Some(((time, _, _), i)) = next else {
            break;
        };
        let held_back = feeds.iter().enumerate().any(|(k, f)| {
            k != i && f.pending() == 0 && f.seen_time_ns < time && !f.idle_for(merge_wait)
        });
        if held_back {
            break;
        }
        let feed = &mut feeds[i];
        let txn = feed.batch.get(feed.released);
        merged.push_txn(&txn);
        feed.released += 1;
        if feed.pending() == 0 {
            feed.batch.clear();
            feed.released = 0;
        }
    }
}

/// Hands `batch` to apply; large transactions are applied alone, read back
/// from their journal's staging directory (`dirs[journal]`).
fn submit(
    apply: &mut ParallelApply,
    batch: &TxnBatch,
    dirs: &[PathBuf],
    status: &RunStatus,
) -> Result<(), RunError> {
    let mut start = 0;
    for (i, txn) in batch.iter().enumerate() {
        let Some(large) = txn.large() else { continue };
        apply.submit_range(batch, start..i)?;
        let meta = txn.meta();
        tracing::info!(
            "HAD0227I journal {}: applying large transaction {} ({} changes) from staging",
            meta.journal,
            meta.commit_sequence,
            large.ops
        );
        let mut staged = StagedTxn {
            dir: &dirs[meta.journal as usize],
            meta,
            large,
            frame: Vec::new(),
            decoder: None,
        };
        apply.apply_large(&mut staged, large.ops)?;
        status.large_txns.fetch_add(1, Ordering::Relaxed);
        start = i + 1;
    }
    apply.submit_range(batch, start..batch.len())?;
    Ok(())
}

/// A large transaction's changes, read back from staging on each pass:
/// entries of its journal in its commit cycle, from its first sequence up
/// to its commit. Staging keeps them: the applied position's `resume_from`
/// (and so `applied.pos`) stays at or below the first sequence until the
/// transaction is applied.
struct StagedTxn<'d> {
    dir: &'d std::path::Path,
    meta: TxnMeta,
    large: LargeRef,
    frame: Vec<u8>,
    decoder: Option<FrameDecoder>,
}

impl LargeTxn for StagedTxn<'_> {
    fn meta(&self) -> TxnMeta {
        self.meta
    }

    fn for_each(
        &mut self,
        visit: &mut dyn FnMut(Op<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let StagedTxn {
            dir,
            meta,
            large,
            frame,
            decoder,
        } = self;
        let (first, commit) = (large.first_sequence, meta.commit_sequence);
        let failed = |detail: &dyn std::fmt::Display| StoreError::ReadBack {
            commit_sequence: commit,
            detail: format!("{}: {detail}", dir.display()),
        };
        let mut reader = StagingReader::open(dir, first).map_err(|e| failed(&e))?;
        let decoder = match decoder {
            Some(decoder) => decoder,
            None => decoder.insert(FrameDecoder::new().map_err(|e| failed(&e))?),
        };
        let mut seen = 0u64;
        loop {
            let Some(checked) = reader.next(frame).map_err(|e| failed(&e))? else {
                return Err(failed(&format!(
                    "staging ends before the commit at {commit}"
                )));
            };
            let decoded = decoder
                .decode_checked(frame, checked)
                .map_err(|e| failed(&e))?;
            for entry in decoded.entries() {
                let sequence = entry.sequence();
                if sequence < first || entry.commit_cycle() != large.cycle {
                    continue;
                }
                if sequence >= commit {
                    if seen != large.ops {
                        return Err(failed(&format!(
                            "found {seen} changes, the transaction had {}",
                            large.ops
                        )));
                    }
                    return Ok(());
                }
                let Some(op) = Op::of_entry(&entry) else {
                    continue;
                };
                seen += 1;
                visit(op)?;
            }
        }
    }
}

/// Checkpoints begin at least this many times the last one's index work
/// (all it did beside apply but sync the data files) apart: taking the
/// index has at most a third of the time, however large it is
/// (decisions.md 71).
pub const CHECKPOINT_SPACING: u32 = 3;

/// Whether checkpoints are spaced past `checkpoint_every`, for messages
/// when that changes.
#[derive(Debug, Default)]
struct Spacing {
    stretched: bool,
}

/// The least time between a checkpoint's beginning and the next one's,
/// and a message when checkpoints begin or stop being spaced past
/// `checkpoint_every`.
#[derive(Debug)]
struct Spaced {
    apart: Duration,
    change: Option<String>,
}

impl Spacing {
    /// The least time from the beginning of a checkpoint that took `times`
    /// to the next one's: `every`, or its index work times
    /// `CHECKPOINT_SPACING` if longer. The data files' sync is left out: it
    /// syncs what apply wrote since the last one, which spacing them
    /// apart does not make less (each syncs more, in a longer stall).
    fn after(&mut self, times: &CheckpointTimes, every: Duration) -> Spaced {
        let index_work = times.total.saturating_sub(times.data_sync);
        let spaced = index_work * CHECKPOINT_SPACING;
        // Hysteresis, so an index near the bound does not say so each time
        // it crosses it.
        let stretched = match self.stretched {
            false => spaced > every * 3 / 2,
            true => spaced > every,
        };
        let change = match (self.stretched, stretched) {
            (false, true) => Some(format!(
                "HAD0228I checkpoints are spaced past checkpoint_ms ({} ms): the last one took {} ms of index work, so the next begins {} ms after it began (the index work takes at most a third of the time); replay after a crash may be that much longer",
                every.as_millis(),
                index_work.as_millis(),
                spaced.as_millis()
            )),
            (true, false) => Some(format!(
                "HAD0228I checkpoints are {} ms apart again (checkpoint_ms): the last one took {} ms of index work",
                every.as_millis(),
                index_work.as_millis()
            )),
            _ => None,
        };
        self.stretched = stretched;
        Spaced {
            apart: spaced.max(every),
            change,
        }
    }
}

/// A checkpoint being made durable on a thread of its own.
struct InFlight {
    position: AppliedPosition,
    began: Instant,
    thread: std::thread::JoinHandle<Result<CheckpointTimes, StoreError>>,
}

impl InFlight {
    /// Drains apply and takes the store's checkpoint state; the rest runs
    /// beside apply.
    fn begin(apply: &mut ParallelApply) -> Result<InFlight, RunError> {
        let began = Instant::now();
        let (position, pending) = apply.begin_checkpoint()?;
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || pending.finish())
            .map_err(|e| StoreError::Database(format!("cannot start a checkpoint thread: {e}")))?;
        Ok(InFlight {
            position,
            began,
            thread,
        })
    }

    /// Waits until the checkpoint is durable, then lets the receivers purge
    /// what a restart no longer needs.
    fn wait(
        self,
        files: &mut [AppliedFile],
        status: &RunStatus,
    ) -> Result<AppliedPosition, RunError> {
        let times = self.thread.join().unwrap_or_else(|_| {
            Err(StoreError::Database(
                "the checkpoint thread panicked".into(),
            ))
        })?;
        *status.last_checkpoint.lock() = Some(times);
        advance_applied(self.position, files, status)
    }
}

/// Records a durable checkpoint's position in each journal's `applied.pos`.
fn advance_applied(
    position: AppliedPosition,
    files: &mut [AppliedFile],
    status: &RunStatus,
) -> Result<AppliedPosition, RunError> {
    for applied in files {
        let resume_from = position.journal(applied.journal).resume_from;
        applied
            .file
            .store(resume_from)
            .map_err(|source| RunError::AppliedFile {
                dir: applied.dir.clone(),
                source,
            })?;
    }
    status.checkpoints.fetch_add(1, Ordering::Relaxed);
    *status.checkpointed.lock() = position.clone();
    Ok(position)
}

/// "main: applied 1200, resume from 1180; J2: ..." for messages.
fn describe(position: &AppliedPosition, journals: &[StagedJournal]) -> String {
    journals
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let p = position.journal(i as u32);
            format!(
                "{}: applied {}, resume from {}",
                j.name, p.applied, p.resume_from
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn took(total_ms: u64, data_sync_ms: u64) -> CheckpointTimes {
        CheckpointTimes {
            total: Duration::from_millis(total_ms),
            data_sync: Duration::from_millis(data_sync_ms),
            ..CheckpointTimes::default()
        }
    }

    /// Checkpoints are the index work (all but the data files' sync) three
    /// times apart when that is longer than the interval; a message says
    /// when they begin to be spaced past the interval (by half of it) and
    /// when they are back within it, not at every crossing.
    #[test]
    fn spacing_follows_the_index_work_and_says_when_it_changes() {
        let every = Duration::from_secs(1);
        let mut spacing = Spacing::default();
        let spaced = spacing.after(&took(500, 400), every);
        assert_eq!(spaced.apart, every);
        assert!(spaced.change.is_none());
        // 1.2 s apart: not past half again the interval.
        let spaced = spacing.after(&took(400, 0), every);
        assert_eq!(spaced.apart, Duration::from_millis(1200));
        assert!(spaced.change.is_none());
        let spaced = spacing.after(&took(2500, 500), every);
        assert_eq!(spaced.apart, Duration::from_secs(6));
        let change = spaced.change.expect("spaced past the interval");
        assert!(
            change.starts_with("HAD0228I checkpoints are spaced"),
            "{change}"
        );
        // Still past the interval, though by less than half: no message.
        assert!(spacing.after(&took(400, 0), every).change.is_none());
        let change = spacing.after(&took(300, 0), every).change;
        assert!(change.expect("back").contains("apart again"));
        assert!(spacing.after(&took(0, 0), every).change.is_none());
    }
}
