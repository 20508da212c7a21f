//! Lock-striped parallel apply.
//!
//! A store that splits (`Store::lock_parts`: the replica tables) is applied
//! in parts (decisions.md 27): a batch is cut into runs of record-change
//! transactions; for each run the store locks every shard, and part `p`
//! (the records whose hash is `p` modulo the parts) is applied by its own
//! thread, the caller being part 0. A record is always in the same part, so
//! each part sees its records' changes in commit order, and nothing of the
//! run is visible before all of it is. Transactions with object-level
//! changes or probes apply one at a time between runs.
//!
//! Other stores take stripe tickets. Every record belongs to one of S
//! stripes (`stripe_of`: hash of object and key); a transaction's stripe set
//! is the stripes of its records, or all S for a transaction with
//! object-level changes (a drop is never overtaken by a put, nor a put by a
//! drop). Each stripe is a ticket lock: the dispatcher
//! hands tickets out in commit order, and a worker applies a transaction only
//! when every stripe it needs is serving that transaction's ticket, then moves
//! each of those stripes on by one. So transactions whose stripes overlap
//! apply in commit order, and disjoint ones apply in parallel.
//!
//! No deadlock: queues are FIFO in commit order, so the oldest unfinished
//! transaction has all its predecessors finished and sits at the head of its
//! worker's queue. The dispatcher never blocks while it holds transactions it
//! has not sent: when too much is in flight it first sends everything, then
//! waits.
//!
//! Workers are placed by the transaction's first stripe, so transactions on
//! the same keys tend to run on the same worker and not wait for each other.
//! Worker 0 is the caller itself: `submit` hands the other workers their
//! shares, then applies its own share of the batch before it returns (on a
//! 2-core machine, W threads instead of W+1, and no copy or hand-off for
//! that share). With one worker, `submit` just applies in commit order.
//!
//! The stored position is always a low watermark: `checkpoint` waits until
//! everything dispatched is applied (a short pause in a steady stream), then
//! stores the dispatched position, which is then exactly what is applied.
//! `begin_checkpoint` pauses only to take the checkpoint's state; making it
//! durable can then run beside apply.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::check::{record_digest, ProbeLog, ProbeOutcome};
use crate::position::AppliedPosition;
use crate::store::{stripe_of, PendingCheckpoint, Store, StoreError};
use crate::txn::{LargeTxn, OpKind, Txn, TxnBatch};

/// How many workers and stripes.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub workers: usize,
    pub stripes: usize,
    /// For a store that cannot split a batch into parts by record
    /// (`Store::lock_parts`): a batch whose transactions average more
    /// changes than this is applied by the caller alone, the others by
    /// workers taking stripe tickets (`usize::MAX`: never alone; measured
    /// default, decisions.md 22). A store that splits always applies in
    /// parts (decisions.md 27).
    pub serial_ops_per_txn: usize,
    /// Fewest transactions in a run such a batch applies split into parts
    /// (`Store::lock_parts`, one part per worker); shorter runs are applied
    /// by the caller alone, as starting the other threads would cost more
    /// than they save.
    pub parted_min_txns: usize,
    /// Where the outcomes of sync-check probes (S-CK) go: the log a check
    /// service answers from. `None` (no service): probes are passed over,
    /// so outcomes nobody will take do not pile up.
    pub probes: Option<Arc<ProbeLog>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            workers: 2,
            stripes: 1024,
            serial_ops_per_txn: 2,
            parted_min_txns: 64,
            probes: None,
        }
    }
}

/// Transactions handed to a worker at once.
const WORK_TXNS: usize = 256;
/// Changes dispatched and not yet applied before the dispatcher waits.
const IN_FLIGHT_OPS: u64 = 1 << 20;

/// A worker's share: transactions and, per transaction, its stripe tickets.
#[derive(Debug, Default)]
struct Work {
    txns: TxnBatch,
    tickets: Vec<(u32, u64)>,
    ranges: Vec<(u32, u32)>,
}

impl Work {
    fn clear(&mut self) {
        self.txns.clear();
        self.tickets.clear();
        self.ranges.clear();
    }
}

#[derive(Debug)]
struct Shared {
    /// Per stripe, the ticket it serves now, at `ticket_slot(stripe)`.
    serving: Box<[AtomicU64]>,
    /// Stripes per group of `serving` (see `ticket_slot`).
    group: usize,
    finished_txns: AtomicU64,
    finished_ops: AtomicU64,
    refused: AtomicU64,
    /// Set at the first error that is not a refusal; workers stop applying
    /// (they still move tickets on, so nobody waits forever).
    failed: AtomicBool,
    failure: Mutex<Option<StoreError>>,
    probes: Option<Arc<ProbeLog>>,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    progress: Condvar,
}

impl Shared {
    /// Where stripe `s` serves: stripes with the same remainder modulo 8
    /// sit together, so the 8 counters of one cache line all belong to
    /// stripes placed on the same worker (for 1, 2, 4 or 8 workers) and
    /// workers do not bounce lines they do not share.
    fn ticket(&self, s: u32) -> &AtomicU64 {
        let s = s as usize;
        &self.serving[(s % 8) * self.group + s / 8]
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.progress.notify_all();
        }
    }

    /// Waits until `ready()`: a short spin, then sleeping on `progress`.
    fn wait_until(&self, ready: impl Fn() -> bool) {
        for _ in 0..256 {
            if ready() {
                return;
            }
            std::hint::spin_loop();
        }
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let mut guard = self.lock.lock();
            let done = ready();
            if !done {
                self.progress.wait_for(&mut guard, Duration::from_millis(2));
            }
            drop(guard);
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            if done || ready() {
                return;
            }
        }
    }
}

/// Applies committed transactions with several workers.
#[derive(Debug)]
pub struct ParallelApply {
    store: Arc<dyn Store>,
    stripes: usize,
    workers: usize,
    serial_ops_per_txn: usize,
    parted_min_txns: usize,
    /// Parts a batch splits into, if the store splits: a power of two, at
    /// most `workers`.
    parts: usize,
    splits: bool,
    shared: Arc<Shared>,
    /// The caller's share of the batch being submitted: (transaction index,
    /// its tickets in `own_tickets`).
    own: Vec<(u32, u32, u32)>,
    own_tickets: Vec<(u32, u64)>,
    senders: Vec<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
    spare: Receiver<Work>,
    pending: Vec<Work>,
    next_ticket: Vec<u64>,
    scratch: Vec<u32>,
    position: AppliedPosition,
    dispatched_txns: u64,
    dispatched_ops: u64,
    /// `Store::mixed_until` until apply gets there; then empty.
    mixed_until: Vec<u64>,
    /// Threads for parts 1.. of a run, for a store that splits.
    part_threads: Option<PartThreads>,
}

/// A part of a run, as `PartThreads` hands it out.
type PartFn<'a> = dyn Fn(usize) -> Result<(), StoreError> + Sync + 'a;
type PartOutcome = std::thread::Result<Result<(), StoreError>>;

/// `&PartFn` with its lifetime erased, to cross to a part thread.
struct PartJob(&'static PartFn<'static>);

/// One value passed from one thread to another: a mutex and a condition
/// variable, so that a waiter sleeps at once instead of spinning and
/// yielding its CPU first as a channel's receiver does (on two CPUs
/// shared by a whole pipeline each yield is a context switch;
/// decisions.md 86).
struct Slot<T> {
    value: Mutex<Option<T>>,
    filled: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Slot<T> {
        Slot {
            value: Mutex::new(None),
            filled: Condvar::new(),
        }
    }

    /// Leaves `value` for `take`; the slot is empty (each value put is
    /// taken before the next is put).
    fn put(&self, value: T) {
        let mut slot = self.value.lock();
        debug_assert!(slot.is_none(), "a slot's value was put twice");
        *slot = Some(value);
        drop(slot);
        self.filled.notify_one();
    }

    /// Waits for a value and takes it.
    fn take(&self) -> T {
        let mut slot = self.value.lock();
        loop {
            if let Some(value) = slot.take() {
                return value;
            }
            self.filled.wait(&mut slot);
        }
    }
}

/// What a part thread is given: a part to apply, or the end.
enum PartWork {
    Run(PartJob),
    Stop,
}

/// A part thread's two slots: its work, and its answer.
struct PartLine {
    work: Slot<PartWork>,
    done: Slot<PartOutcome>,
}

/// The threads that apply parts 1.. of a run while the caller applies part
/// 0, started once with apply: a thread started per run cost its start,
/// the mapping and unmapping of its stack and the TLB shootdowns that sends
/// (decisions.md 27, 43).
struct PartThreads {
    lines: Vec<Arc<PartLine>>,
    threads: Vec<JoinHandle<()>>,
}

impl PartThreads {
    fn start(parts: usize) -> PartThreads {
        let mut lines = Vec::new();
        let mut threads = Vec::new();
        for p in 1..parts {
            let line = Arc::new(PartLine {
                work: Slot::new(),
                done: Slot::new(),
            });
            let own = line.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("apply-part-{p}"))
                    .spawn(move || {
                        engine::sys::enter_realtime();
                        while let PartWork::Run(PartJob(part)) = own.work.take() {
                            let outcome =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(p)));
                            own.done.put(outcome);
                        }
                    })
                    .expect("spawn apply part thread"),
            );
            lines.push(line);
        }
        PartThreads { lines, threads }
    }

    /// Applies part 0 here and every other part on its thread; returns
    /// once all are done (a panic in any is raised here, after all are).
    fn run(&self, part: &PartFn<'_>) -> Result<(), StoreError> {
        // SAFETY: only the lifetime is erased. Every job put is answered on
        // its line's `done` once its thread is finished with it (a panic is
        // caught and answered too), and this function neither returns nor
        // unwinds before it has taken every answer, so `part` outlives each
        // use.
        let job = unsafe { std::mem::transmute::<&PartFn<'_>, &'static PartFn<'static>>(part) };
        for line in &self.lines {
            line.work.put(PartWork::Run(PartJob(job)));
        }
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| part(0)));
        let mut outcomes = vec![own];
        outcomes.extend(self.lines.iter().map(|line| line.done.take()));
        let mut result = Ok(());
        for outcome in outcomes {
            match outcome {
                Ok(r) => result = result.and(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    }
}

impl std::fmt::Debug for PartThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartThreads")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Drop for PartThreads {
    fn drop(&mut self) {
        for line in &self.lines {
            line.work.put(PartWork::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl ParallelApply {
    /// Starts the workers; apply continues after the store's position.
    /// A store that cannot apply in parallel gets one worker.
    pub fn new(store: Arc<dyn Store>, options: &ApplyOptions) -> ParallelApply {
        let workers = options.workers.clamp(1, store.max_parallel().max(1));
        let stripes = options.stripes.max(1);
        // Parts divide the store's shards: a power of two. Asking once
        // tells whether the store splits (nothing is applying yet).
        let parts = 1 << workers.ilog2();
        let splits = store.lock_parts(parts).is_some();
        let shared = Arc::new(Shared {
            serving: (0..stripes.div_ceil(8) * 8)
                .map(|_| AtomicU64::new(0))
                .collect(),
            group: stripes.div_ceil(8),
            finished_txns: AtomicU64::new(0),
            finished_ops: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            probes: options.probes.clone(),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            progress: Condvar::new(),
        });
        let (spare_tx, spare) = crossbeam_channel::unbounded();
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        // Workers taking tickets, for a store that does not split (one that
        // does has its part threads, `PartThreads`).
        let ticket_workers = if splits { 1 } else { workers };
        for w in 1..ticket_workers {
            let (tx, rx) = crossbeam_channel::unbounded::<Work>();
            let (store, shared, spare_tx) = (store.clone(), shared.clone(), spare_tx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("apply-{w}"))
                    .spawn(move || {
                        engine::sys::enter_realtime();
                        worker(&*store, &shared, rx, spare_tx)
                    })
                    .expect("spawn apply worker"),
            );
            senders.push(tx);
        }
        let mixed_until = store.mixed_until();
        ParallelApply {
            position: store.applied_position(),
            store,
            stripes,
            workers,
            serial_ops_per_txn: options.serial_ops_per_txn,
            parted_min_txns: options.parted_min_txns.max(1),
            parts,
            splits,
            shared,
            own: Vec::new(),
            own_tickets: Vec::new(),
            senders,
            threads,
            spare,
            pending: (1..ticket_workers).map(|_| Work::default()).collect(),
            next_ticket: vec![0; stripes],
            scratch: Vec::new(),
            dispatched_txns: 0,
            dispatched_ops: 0,
            mixed_until,
            part_threads: (splits && parts > 1).then(|| PartThreads::start(parts)),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The position once everything submitted is applied.
    pub fn submitted_position(&self) -> &AppliedPosition {
        &self.position
    }

    /// Transactions the store refused (logged with their message ID).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Changes applied so far (including those of refused transactions).
    pub fn applied_ops(&self) -> u64 {
        self.shared.finished_ops.load(Ordering::Relaxed)
    }

    /// Changes submitted so far: once `applied_ops` reaches this, everything
    /// submitted is applied.
    pub fn submitted_ops(&self) -> u64 {
        self.dispatched_ops
    }

    /// Hands every transaction of `batch` (in commit order) to the workers.
    /// The batch holds no large transactions (`apply_large` takes those).
    pub fn submit(&mut self, batch: &TxnBatch) -> Result<(), StoreError> {
        self.submit_range(batch, 0..batch.len())
    }

    /// `submit` for the transactions `range` of `batch`.
    pub fn submit_range(
        &mut self,
        batch: &TxnBatch,
        range: Range<usize>,
    ) -> Result<(), StoreError> {
        if self.splits {
            // Split by record, each part on its own thread, no ticket
            // taken per transaction (decisions.md 27).
            return self.run_parted(batch, range);
        }
        if self.workers == 1 {
            return self.run_serial(batch, range);
        }
        let ops: usize = range.clone().map(|i| batch.get(i).len()).sum();
        if ops > self.serial_ops_per_txn.saturating_mul(range.len()) {
            // Transactions of several changes each spread over many stripes
            // (and shards) and would mostly wait for each other's tickets
            // while their locks bounce between cores: the caller applies the
            // batch alone once the workers are idle (decisions.md 22).
            self.drain()?;
            return self.run_serial(batch, range);
        }
        for i in range {
            let txn = batch.get(i);
            self.check_failed()?;
            if self.dispatched_ops - self.shared.finished_ops.load(Ordering::Relaxed)
                > IN_FLIGHT_OPS
            {
                // Everything out (our own share applied) before waiting.
                self.flush();
                self.run_own(batch);
                let target = self.dispatched_ops - IN_FLIGHT_OPS / 2;
                let shared = self.shared.clone();
                shared.wait_until(|| {
                    shared.finished_ops.load(Ordering::SeqCst) >= target
                        || shared.failed.load(Ordering::SeqCst)
                });
            }
            self.dispatch(i, &txn);
        }
        self.flush();
        self.run_own(batch);
        self.check_failed()
    }

    /// Whether the store holds one moment of the stream once `txn` is
    /// applied (`Store::mixed_until`), so that a probe of it can be noted;
    /// forgets the mark once it does. Only `run_serial` applies probes of a
    /// store that can be mixed (one that splits).
    fn consistent_after(&mut self, txn: &Txn<'_>) -> bool {
        if self.mixed_until.is_empty() {
            return true;
        }
        let mut after = self.position.clone();
        after.advance(&txn.meta());
        let reached = self
            .mixed_until
            .iter()
            .enumerate()
            .all(|(j, &commit)| after.journal(j as u32).applied >= commit);
        if reached {
            self.mixed_until = Vec::new();
        } else if txn.ops().any(|op| op.kind == OpKind::Probe) {
            tracing::info!(
                "HAD0229I probe at {} of journal {} not noted: replay since the last checkpoint has not yet passed everything the checkpoint held",
                txn.meta().commit_sequence,
                txn.meta().journal
            );
        }
        reached
    }

    /// Applies `range` of `batch` on this thread in commit order, without
    /// tickets: only while no worker has anything to apply.
    fn run_serial(&mut self, batch: &TxnBatch, range: Range<usize>) -> Result<(), StoreError> {
        let (mut txns, mut ops) = (0, 0);
        let (start, end) = (range.start, range.end);
        for i in range {
            prefetch_ahead(&*self.store, i - start, |n| {
                (start + n < end).then(|| batch.get(start + n))
            });
            let txn = batch.get(i);
            assert!(
                txn.large().is_none(),
                "large transactions go through apply_large"
            );
            if self.shared.failed.load(Ordering::Relaxed) {
                break;
            }
            let note_probes = self.consistent_after(&txn);
            run_one(&*self.store, &self.shared, &txn, &[], note_probes);
            self.position.advance(&txn.meta());
            (txns, ops) = (txns + 1, ops + txn.len());
        }
        self.dispatched_txns += txns as u64;
        self.dispatched_ops += ops as u64;
        finished(&self.shared, txns, ops);
        self.check_failed()
    }

    /// Applies `range` of `batch` split by record (`Store::lock_parts`):
    /// runs of record-change transactions in parts, each run visible at
    /// once when it ends; transactions with object-level changes or probes
    /// one at a time between the runs.
    fn run_parted(&mut self, batch: &TxnBatch, range: Range<usize>) -> Result<(), StoreError> {
        let mut start = range.start;
        while start < range.end {
            let mut end = start;
            while end < range.end && !needs_alone(&batch.get(end)) {
                end += 1;
            }
            if end > start {
                self.apply_parts(batch, start..end)?;
            } else {
                end += 1;
                self.run_serial(batch, start..end)?;
            }
            start = end;
        }
        self.check_failed()
    }

    /// Applies the record-change transactions `range` of `batch` in parts:
    /// on this thread and `parts - 1` others at once, or one part after
    /// the other on this thread for a run shorter than `parted_min_txns`.
    fn apply_parts(&mut self, batch: &TxnBatch, range: Range<usize>) -> Result<(), StoreError> {
        let (store, parts) = (self.store.clone(), self.parts);
        let spread = parts > 1 && range.len() >= self.parted_min_txns;
        let Some(locked) = store.lock_parts(parts) else {
            return self.run_serial(batch, range);
        };
        let (mut txns, mut ops) = (0, 0);
        self.scratch.clear();
        for i in range {
            let txn = batch.get(i);
            match locked.refusal(&txn) {
                Some(e) => settle(&self.shared, Err(e)),
                None => self.scratch.push(i as u32),
            }
            self.position.advance(&txn.meta());
            (txns, ops) = (txns + 1, ops + txn.len());
        }
        let (parted, chosen) = (&*locked, &self.scratch[..]);
        let part = |p: usize| parted.apply_part(p, batch, chosen);
        let applied = match &self.part_threads {
            Some(threads) if spread => threads.run(&part),
            _ => (0..parts).try_for_each(part),
        };
        if let Err(e) = applied {
            settle(&self.shared, Err(e));
        }
        // Unlocked: everything of the run becomes visible at once.
        drop(locked);
        self.dispatched_txns += txns as u64;
        self.dispatched_ops += ops as u64;
        finished(&self.shared, txns, ops);
        self.check_failed()
    }

    /// Applies the caller's share of `batch`, in commit order.
    fn run_own(&mut self, batch: &TxnBatch) {
        let mut ops = 0;
        let own = &self.own;
        for (n, &(i, start, end)) in own.iter().enumerate() {
            prefetch_ahead(&*self.store, n, |m| {
                own.get(m).map(|o| batch.get(o.0 as usize))
            });
            let tickets = &self.own_tickets[start as usize..end as usize];
            let txn = batch.get(i as usize);
            ops += txn.len();
            run_one(&*self.store, &self.shared, &txn, tickets, true);
        }
        finished(&self.shared, self.own.len(), ops);
        self.own.clear();
        self.own_tickets.clear();
    }

    /// Applies a large transaction alone, on this thread, once everything
    /// submitted before it is applied (it may touch any stripe, and the
    /// store streams it with everything locked).
    pub fn apply_large(&mut self, txn: &mut dyn LargeTxn, ops: u64) -> Result<(), StoreError> {
        self.drain()?;
        let meta = txn.meta();
        settle(&self.shared, self.store.apply_large(txn));
        self.position.advance(&meta);
        self.dispatched_txns += 1;
        self.dispatched_ops += ops;
        finished(&self.shared, 1, ops as usize);
        self.check_failed()
    }

    fn dispatch(&mut self, index: usize, txn: &Txn<'_>) {
        assert!(
            txn.large().is_none(),
            "large transactions go through apply_large"
        );
        self.scratch.clear();
        if txn.has_object_ops() {
            self.scratch.extend(0..self.stripes as u32);
        } else {
            self.scratch.extend(
                txn.ops()
                    .map(|op| stripe_of(op.object_id, op.key, self.stripes) as u32),
            );
        }
        let first = self.scratch.first().copied().unwrap_or(0);
        self.scratch.sort_unstable();
        self.scratch.dedup();
        let w = first as usize % self.workers;
        let tickets = if w == 0 {
            &mut self.own_tickets
        } else {
            &mut self.pending[w - 1].tickets
        };
        let start = tickets.len() as u32;
        for &s in &self.scratch {
            let ticket = &mut self.next_ticket[s as usize];
            tickets.push((s, *ticket));
            *ticket += 1;
        }
        let end = tickets.len() as u32;
        self.position.advance(&txn.meta());
        self.dispatched_txns += 1;
        self.dispatched_ops += txn.len() as u64;
        if w == 0 {
            self.own.push((index as u32, start, end));
            return;
        }
        let work = &mut self.pending[w - 1];
        work.ranges.push((start, end));
        work.txns.push(txn.meta(), txn.ops());
        if work.txns.len() >= WORK_TXNS {
            // Everything earlier goes out first, so no queued transaction
            // waits on one still held here.
            self.flush();
        }
    }

    fn flush(&mut self) {
        for (w, work) in self.pending.iter_mut().enumerate() {
            if work.txns.is_empty() {
                continue;
            }
            let fresh = self.spare.try_recv().unwrap_or_default();
            let full = std::mem::replace(work, fresh);
            // A worker only goes away when we drop its sender.
            let _ = self.senders[w].send(full);
        }
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        if self.shared.failed.load(Ordering::SeqCst) {
            if let Some(e) = self.shared.failure.lock().take() {
                return Err(e);
            }
            return Err(StoreError::Database(
                "apply stopped after an earlier failure".into(),
            ));
        }
        Ok(())
    }

    /// Waits until everything submitted is applied; returns that position.
    pub fn drain(&mut self) -> Result<AppliedPosition, StoreError> {
        self.flush();
        let target = self.dispatched_txns;
        let shared = self.shared.clone();
        shared.wait_until(|| shared.finished_txns.load(Ordering::SeqCst) >= target);
        self.check_failed()?;
        Ok(self.position.clone())
    }

    /// Drains, then stores the position with the data.
    pub fn checkpoint(&mut self) -> Result<AppliedPosition, StoreError> {
        let position = self.drain()?;
        self.store.checkpoint(&position)?;
        Ok(position)
    }

    /// Drains, then takes a checkpoint's state; apply may go on while the
    /// returned checkpoint is finished (`Store::begin_checkpoint`).
    pub fn begin_checkpoint(&mut self) -> Result<(AppliedPosition, PendingCheckpoint), StoreError> {
        let position = self.drain()?;
        let pending = self.store.begin_checkpoint(&position)?;
        Ok((position, pending))
    }

    /// Drains and stops the workers (without a checkpoint).
    pub fn finish(mut self) -> Result<AppliedPosition, StoreError> {
        let result = self.drain();
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ParallelApply {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(store: &dyn Store, shared: &Shared, rx: Receiver<Work>, spare: Sender<Work>) {
    for mut work in rx {
        for (i, txn) in work.txns.iter().enumerate() {
            let txns = &work.txns;
            prefetch_ahead(store, i, |m| (m < txns.len()).then(|| txns.get(m)));
            let (start, end) = work.ranges[i];
            run_one(
                store,
                shared,
                &txn,
                &work.tickets[start as usize..end as usize],
                true,
            );
        }
        finished(shared, work.txns.len(), work.txns.op_count());
        work.clear();
        let _ = spare.send(work);
    }
}

/// Whether a transaction is applied by itself between parted runs: it has
/// object-level changes (which act on every shard) or probes (whose outcome
/// is noted as it is applied).
fn needs_alone(txn: &Txn<'_>) -> bool {
    txn.kinds()
        .any(|(kind, ..)| kind.is_object_level() || kind == OpKind::Probe)
}

/// Transactions a worker has the store prefetch ahead of the one it
/// applies: enough to overlap their misses with its work, few enough that
/// what they fetch is still in cache when it gets there.
const PREFETCH_TXNS: usize = 4;

/// Before the `n`th of a run of transactions (`txn(m)`: the `m`th, if
/// any) is applied, has the store prefetch the one `PREFETCH_TXNS` ahead;
/// before the first, the first `PREFETCH_TXNS` too.
fn prefetch_ahead<'a>(store: &dyn Store, n: usize, txn: impl Fn(usize) -> Option<Txn<'a>>) {
    let from = if n == 0 { 0 } else { n + PREFETCH_TXNS };
    for m in from..=n + PREFETCH_TXNS {
        if let Some(t) = txn(m) {
            store.prefetch(&t);
        }
    }
}

/// Takes the outcome of one transaction's apply: a refusal is logged and
/// counted; any other error stops apply.
fn settle(shared: &Shared, result: Result<(), StoreError>) {
    match result {
        Ok(()) => {}
        Err(e) if e.is_refusal() => {
            tracing::error!("{e}; transaction refused, apply continues");
            shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!("{e}; apply stops");
            shared.failure.lock().get_or_insert(e);
            shared.failed.store(true, Ordering::SeqCst);
        }
    }
}

/// Applies one transaction once its stripes serve its tickets, then moves
/// them on. A refusal is logged and counted; any other error stops apply
/// (tickets still move on, so nobody waits forever). The caller counts it
/// finished (`finished`).
fn run_one(store: &dyn Store, shared: &Shared, txn: &Txn<'_>, tickets: &[(u32, u64)], note: bool) {
    shared.wait_until(|| {
        tickets
            .iter()
            .all(|&(s, t)| shared.ticket(s).load(Ordering::SeqCst) == t)
    });
    if !shared.failed.load(Ordering::SeqCst) {
        settle(shared, store.apply(txn));
        // A probe is outside commitment control (the journal refuses one in
        // a cycle), so it is a transaction of its own: one look suffices.
        if let Some(probes) = shared.probes.as_ref().filter(|_| note) {
            if txn.len() == 1 && txn.ops().all(|op| op.kind == OpKind::Probe) {
                settle(shared, note_probes(store, probes, txn));
            }
        }
    }
    for &(s, t) in tickets {
        shared.ticket(s).store(t + 1, Ordering::SeqCst);
    }
    shared.notify();
}

/// Notes what the store holds at each probe of `txn` (which holds the
/// probed record's stripe, or every stripe for a barrier, so no change to
/// it is under way).
fn note_probes(store: &dyn Store, probes: &ProbeLog, txn: &Txn<'_>) -> Result<(), StoreError> {
    let journal = txn.meta().journal;
    for op in txn.ops().filter(|op| op.kind == OpKind::Probe) {
        let outcome = if op.is_barrier() {
            ProbeOutcome::Reached
        } else {
            match store.get(op.object_id, op.key)? {
                Some(value) => ProbeOutcome::Present(record_digest(op.key, &value)),
                None => ProbeOutcome::Absent,
            }
        };
        probes.record(journal, op.sequence, outcome);
    }
    Ok(())
}

/// Counts transactions and changes a worker has finished: once per share,
/// not per transaction, so workers do not bounce the counters' line.
fn finished(shared: &Shared, txns: usize, ops: usize) {
    shared.finished_ops.fetch_add(ops as u64, Ordering::SeqCst);
    shared
        .finished_txns
        .fetch_add(txns as u64, Ordering::SeqCst);
    shared.notify();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in any part, the caller's or a thread's, is raised by `run`
    /// only once every part is finished (the parts borrow the caller's
    /// data), and the threads serve the next run after it.
    #[test]
    fn part_threads_finish_every_part_before_a_panic_leaves_run() {
        let threads = PartThreads::start(2);
        for panicking in [0, 1] {
            let finished = AtomicBool::new(false);
            let part = |p: usize| -> Result<(), StoreError> {
                if p == panicking {
                    panic!("part {p} fails");
                }
                std::thread::sleep(Duration::from_millis(50));
                finished.store(true, Ordering::SeqCst);
                Ok(())
            };
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| threads.run(&part)));
            assert!(outcome.is_err(), "part {panicking}'s panic is raised");
            assert!(
                finished.load(Ordering::SeqCst),
                "the other part finished first"
            );
        }
        let ran = AtomicUsize::new(0);
        let part = |p: usize| -> Result<(), StoreError> {
            ran.fetch_add(1 << p, Ordering::SeqCst);
            match p {
                1 => Err(StoreError::Database("part 1".into())),
                _ => Ok(()),
            }
        };
        assert!(threads.run(&part).is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 0b11);
    }

    /// A slot's taker sleeps until a value is put, and values passed back
    /// and forth between two threads arrive each once, in order.
    #[test]
    fn a_slot_hands_each_value_over_once_in_order() {
        let there = Arc::new(Slot::<u32>::new());
        let back = Arc::new(Slot::<u32>::new());
        let (t, b) = (there.clone(), back.clone());
        let echo = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let first = t.take();
            let waited = start.elapsed();
            b.put(first + 1);
            for _ in 0..999 {
                let v = t.take();
                b.put(v + 1);
            }
            waited
        });
        std::thread::sleep(Duration::from_millis(50));
        let mut v = 0;
        for _ in 0..1000 {
            there.put(v);
            v = back.take();
        }
        assert_eq!(v, 1000, "each value went there and back once");
        let waited = echo.join().unwrap();
        assert!(
            waited >= Duration::from_millis(40),
            "the first take returned after {waited:?}, before anything was put"
        );
    }

    /// Dropping the part threads ends and joins every one of them.
    #[test]
    fn dropped_part_threads_end() {
        let threads = PartThreads::start(4);
        let lines: Vec<_> = threads.lines.iter().map(Arc::downgrade).collect();
        assert!(threads.run(&|_| Ok(())).is_ok());
        drop(threads);
        assert!(
            lines.iter().all(|l| l.upgrade().is_none()),
            "a part thread still holds its line"
        );
    }
}
