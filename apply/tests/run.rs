//! The apply loop over real staging stores: frames staged while it runs,
//! stops and restarts at random points, several journals merged in commit
//! time order; the replica must end equal to the serial reference and the
//! applied position must reach staging's `applied.pos`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apply::{
    AppliedPosition, Assembler, JournalPosition, PendingCheckpoint, ReplicaTables, RunOptions,
    RunStatus, StagedJournal, Store, StoreError, TxnBatch, APPLIED_FILE,
};
use engine::frame::{Codec, FrameEncoder};
use engine::journal::entry::encode_to_vec;
use engine::journal::{decode, read_position_file, NewEntry};
use engine::staging::{Staging, StagingOptions};

mod common;
use common::{journal_workload, seed, serial_state, store_state, Rng, State};

/// Stages `entries[from..to]` (sequences from 1) as frames of up to
/// `per_frame` entries, with `codec`.
fn stage(staging: &mut Staging, entries: &[Vec<u8>], from: usize, to: usize, per_frame: usize) {
    let mut encoder = FrameEncoder::new(Codec::Zstd { level: 1 }).unwrap();
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let end = (at + per_frame).min(to);
        out.clear();
        encoder
            .encode(
                1,
                at as u64 + 1,
                end as u64 + 1,
                entries[at..end].iter().map(|e| decode(e).unwrap()),
                &mut out,
            )
            .unwrap();
        staging.append(&out).unwrap();
        at = end;
    }
    staging.sync().unwrap();
}

/// One journal, "main", staged under `root`: the group apply reads, and
/// the staging store that writes it.
fn main_journal(root: &std::path::Path) -> ([StagedJournal; 1], Staging) {
    let dir = root.join("staging");
    let (staging, _) = Staging::open(&dir, StagingOptions::default()).unwrap();
    (
        [StagedJournal {
            name: "main".into(),
            dir,
        }],
        staging,
    )
}

/// This journal's position once everything in it is applied.
fn final_position(entries: &[Vec<u8>]) -> JournalPosition {
    let mut assembler = Assembler::new(&AppliedPosition::default());
    let mut batch = TxnBatch::new();
    for e in entries {
        assembler.push(0, &decode(e).unwrap(), &mut batch).unwrap();
    }
    batch.iter().last().map_or(JournalPosition::default(), |t| {
        let meta = t.meta();
        JournalPosition {
            applied: meta.commit_sequence,
            resume_from: meta.resume_from,
        }
    })
}

fn options() -> RunOptions {
    RunOptions {
        checkpoint_every: Duration::from_millis(5),
        batch_ops: 300,
        // Long enough that a slow test machine does not make a journal
        // look idle while it is still being staged.
        merge_wait: Duration::from_secs(1),
        // The workload's large transactions (300-1000 changes) pass this
        // and are read back from staging at commit.
        spill_bytes: 2048,
        ..RunOptions::default()
    }
}

/// Runs apply over `journals` until its checkpoint reaches `target` or
/// `stop_after` passes, then stops it. Returns the store and how many large
/// transactions were read back from staging.
fn run_until(
    replica: &std::path::Path,
    journals: &[StagedJournal],
    target: Option<&[JournalPosition]>,
    stop_after: Duration,
) -> (Arc<ReplicaTables>, u64) {
    let store = Arc::new(ReplicaTables::open(replica).unwrap());
    let stop = AtomicBool::new(false);
    let status = RunStatus::default();
    std::thread::scope(|s| {
        let runner = s.spawn(|| apply::run(store.clone(), journals, &options(), &stop, &status));
        let started = Instant::now();
        while target.is_none_or(|t| status.checkpointed.lock().journals() != t)
            && started.elapsed() < stop_after
            && !runner.is_finished()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap().unwrap();
    });
    (store, status.large_txns.load(Ordering::Relaxed))
}

/// Runs apply until it ends by itself (an error), or stops it after 30 s.
fn run_to_its_end(
    store: Arc<dyn Store>,
    journals: &[StagedJournal],
    status: &RunStatus,
) -> Result<AppliedPosition, apply::RunError> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let runner = s.spawn(|| apply::run(store, journals, &options(), &stop, status));
        let started = Instant::now();
        while !runner.is_finished() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap()
    })
}

#[test]
fn staged_transactions_apply_exactly_once_across_stops_and_restarts() {
    let seed = seed("staged_transactions_apply_exactly_once_across_stops_and_restarts");
    let mut rng = Rng(seed);
    let entries = journal_workload(seed, 6000, 0, |s| 1_000 + s);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let replica = root.path().join("replica");
    let journals = [StagedJournal {
        name: "main".into(),
        dir: dir.clone(),
    }];
    let (mut staging, _) = Staging::open(
        &dir,
        StagingOptions {
            segment_bytes: 64 << 10,
            ..StagingOptions::default()
        },
    )
    .unwrap();
    let target = [final_position(&entries)];
    let mut staged = 0;
    let mut large = 0;
    // Stage a piece, apply for a random while, stop; again, until all is in.
    while staged < entries.len() {
        let to = (staged + 1 + rng.below(1500) as usize).min(entries.len());
        stage(
            &mut staging,
            &entries,
            staged,
            to,
            1 + rng.below(400) as usize,
        );
        staged = to;
        let stop_after = Duration::from_millis(rng.below(30));
        large += run_until(&replica, &journals, None, stop_after).1;
        // The receiver purges below the applied position: apply must
        // still find everything a restart needs.
        let applied = read_position_file(&dir.join(APPLIED_FILE)).unwrap();
        staging.purge_through(applied).unwrap();
    }
    let (store, last) = run_until(&replica, &journals, Some(&target), Duration::from_secs(60));
    assert!(large + last > 0, "no transaction was large enough to spill");
    assert_eq!(store.applied_position().journals(), target);
    assert_eq!(
        read_position_file(&dir.join(APPLIED_FILE)),
        Some(target[0].resume_from)
    );
    assert_eq!(store_state(&*store), serial_state(&entries));
}

/// Appends cycle-0 puts of `keys` keys of object 100 to `entries`, the
/// `i`th at timestamp `time(sequence)`, image "journal:i".
fn shared_puts(entries: &mut Vec<Vec<u8>>, journal: u8, puts: u64, time: impl Fn(u64) -> u64) {
    for i in 0..puts {
        let seq = entries.len() as u64 + 1;
        let key = (i % 20).to_be_bytes();
        let image = [vec![journal], i.to_le_bytes().to_vec()].concat();
        let mut buf = Vec::new();
        encode_to_vec(&NewEntry::put(100, &key, &image), seq, time(seq), &mut buf);
        entries.push(buf);
    }
}

#[test]
fn several_journals_merge_in_commit_time_order() {
    let seed = seed("several_journals_merge_in_commit_time_order");
    let root = tempfile::tempdir().unwrap();
    // Two journals with their own objects, interleaved in time, then both
    // writing the keys of one shared object turn about.
    let mut j0 = journal_workload(seed, 2000, 0, |s| 10 * s);
    let mut j1 = journal_workload(seed ^ 1, 2000, 10, |s| 10 * s + 5);
    let (n0, n1) = (j0.len(), j1.len());
    // Timestamps grow within each journal; the shared part starts after
    // both random parts.
    let created = 10 * (n0.max(n1) as u64 + 1);
    let mut buf = Vec::new();
    encode_to_vec(
        &NewEntry::create_object(100, "S"),
        n0 as u64 + 1,
        created,
        &mut buf,
    );
    j0.push(buf);
    let (first0, first1) = (n0 as u64 + 2, n1 as u64 + 1);
    shared_puts(&mut j0, 0, 100, |s| created + 10 + 10 * (s - first0));
    shared_puts(&mut j1, 1, 100, |s| created + 5 + 10 * (s - first1));

    let mut journals = Vec::new();
    let mut target = Vec::new();
    let mut stagings = Vec::new();
    for (name, entries) in [("J0", &j0), ("J1", &j1)] {
        let dir = root.path().join(name);
        stagings.push(Staging::open(&dir, StagingOptions::default()).unwrap().0);
        target.push(final_position(entries));
        journals.push(StagedJournal {
            name: name.into(),
            dir,
        });
    }
    // J0 is staged at once; J1 arrives a small frame at a time while apply
    // runs (a slower link): only the merge rule keeps J0's later
    // transactions from overtaking J1's earlier ones.
    stage(&mut stagings[0], &j0, 0, j0.len(), 100);
    let mut slow = stagings.pop().unwrap();
    let (store, _) = std::thread::scope(|s| {
        s.spawn(|| {
            for at in (0..j1.len()).step_by(40) {
                stage(&mut slow, &j1, at, (at + 40).min(j1.len()), 40);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        run_until(
            &root.path().join("replica"),
            &journals,
            Some(&target),
            Duration::from_secs(60),
        )
    });

    // The expected state: each journal's own objects as it left them, and
    // for each shared key the put with the latest timestamp.
    let mut expected: State = serial_state(&j0[..n0]);
    expected.extend(serial_state(&j1[..n1]));
    let mut latest = std::collections::BTreeMap::new();
    for e in j0[n0 + 1..].iter().chain(&j1[n1..]) {
        let e = decode(e).unwrap();
        let slot = latest.entry(e.key().to_vec()).or_insert((0, Vec::new()));
        if e.timestamp_ns() > slot.0 {
            *slot = (e.timestamp_ns(), e.after().to_vec());
        }
    }
    expected.insert(
        100,
        (
            "S".into(),
            latest.into_iter().map(|(k, (_, v))| (k, v)).collect(),
        ),
    );
    assert_eq!(store.applied_position().journals(), target);
    assert_eq!(store_state(&*store), expected);
}

/// Replica tables whose checkpoints are taken but never become durable (a
/// disk that fails the sync).
#[derive(Debug)]
struct UnsyncableTables(ReplicaTables);

impl Store for UnsyncableTables {
    fn apply(&self, txn: &apply::Txn<'_>) -> Result<(), StoreError> {
        self.0.apply(txn)
    }

    fn checkpoint(&self, _position: &AppliedPosition) -> Result<(), StoreError> {
        Err(StoreError::Database("sync failed".into()))
    }

    fn begin_checkpoint(
        &self,
        position: &AppliedPosition,
    ) -> Result<PendingCheckpoint, StoreError> {
        // The tables' own state is taken, as for a real checkpoint; only
        // its finish fails.
        drop(self.0.begin_checkpoint(position)?);
        Ok(PendingCheckpoint::new(|| {
            std::thread::sleep(Duration::from_millis(20));
            Err(StoreError::Database("sync failed".into()))
        }))
    }

    fn applied_position(&self) -> AppliedPosition {
        self.0.applied_position()
    }

    fn objects(&self) -> Result<Vec<apply::ObjectInfo>, StoreError> {
        self.0.objects()
    }

    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        self.0.scan(object_id, visit)
    }

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(object_id, key)
    }
}

/// Replica tables whose checkpoints take `index_work` longer beside apply,
/// counted as index work (a large index), noting when each began and
/// ended, and the interval the run told it before each.
#[derive(Debug)]
struct SlowIndexTables {
    tables: ReplicaTables,
    index_work: Duration,
    /// Per checkpoint: began, finished, and the index work it reported.
    taken: Arc<parking_lot::Mutex<Vec<(Instant, Instant, Duration)>>>,
    /// `checkpoint_interval`'s arguments, in order.
    told: parking_lot::Mutex<Vec<Duration>>,
}

impl Store for SlowIndexTables {
    fn apply(&self, txn: &apply::Txn<'_>) -> Result<(), StoreError> {
        self.tables.apply(txn)
    }

    fn checkpoint(&self, position: &AppliedPosition) -> Result<(), StoreError> {
        self.tables.checkpoint(position)
    }

    fn begin_checkpoint(
        &self,
        position: &AppliedPosition,
    ) -> Result<PendingCheckpoint, StoreError> {
        let began = Instant::now();
        let pending = self.tables.begin_checkpoint(position)?;
        let (taken, index_work) = (self.taken.clone(), self.index_work);
        Ok(PendingCheckpoint::new(move || {
            std::thread::sleep(index_work);
            let mut times = pending.finish()?;
            times.index += index_work;
            times.total += index_work;
            let work = times.total - times.data_sync;
            taken.lock().push((began, Instant::now(), work));
            Ok(times)
        }))
    }

    fn applied_position(&self) -> AppliedPosition {
        self.tables.applied_position()
    }

    fn checkpoint_interval(&self, every: Duration) {
        self.told.lock().push(every);
        self.tables.checkpoint_interval(every);
    }

    fn objects(&self) -> Result<Vec<apply::ObjectInfo>, StoreError> {
        self.tables.objects()
    }

    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        self.tables.scan(object_id, visit)
    }

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.get(object_id, key)
    }
}

/// A checkpoint whose index work is long (a large index) holds the next
/// one back to `CHECKPOINT_SPACING` times that work after it began, though
/// `checkpoint_every` (5 ms here) has long passed: taking the index has at
/// most a third of the time, however large the index (decisions.md 71).
/// Frames keep arriving, so each turn has something new to checkpoint.
#[test]
fn a_checkpoint_with_long_index_work_spaces_the_next_one() {
    let seed = seed("a_checkpoint_with_long_index_work_spaces_the_next_one");
    let entries = journal_workload(seed, 4000, 0, |s| 1_000 + s);
    let root = tempfile::tempdir().unwrap();
    let (journals, mut staging) = main_journal(root.path());
    let taken = Arc::default();
    let store = Arc::new(SlowIndexTables {
        tables: ReplicaTables::open(root.path().join("replica")).unwrap(),
        index_work: Duration::from_millis(20),
        taken: Arc::clone(&taken),
        told: Default::default(),
    });
    let stop = AtomicBool::new(false);
    let status = RunStatus::default();
    std::thread::scope(|s| {
        let runner = s.spawn(|| apply::run(store.clone(), &journals, &options(), &stop, &status));
        // About 1.2 s of frames, one every 3 ms.
        for from in (0..entries.len()).step_by(10) {
            stage(
                &mut staging,
                &entries,
                from,
                (from + 10).min(entries.len()),
                10,
            );
            std::thread::sleep(Duration::from_millis(3));
        }
        let target = [final_position(&entries)];
        let started = Instant::now();
        while status.checkpointed.lock().journals() != target
            && started.elapsed() < Duration::from_secs(30)
            && !runner.is_finished()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap().unwrap();
    });
    let taken = taken.lock();
    // The last one is the stop's, which waits for nothing.
    let spaced = &taken[..taken.len() - 1];
    assert!(
        spaced.len() >= 3,
        "only {} checkpoints in the run",
        spaced.len()
    );
    for pair in spaced.windows(2) {
        let ((began, _, work), (next, _, _)) = (pair[0], pair[1]);
        // The loop times from before it drains apply, a little earlier
        // than `began` here: half the work's 20 ms is room for that.
        assert!(
            next.duration_since(began) >= work * apply::CHECKPOINT_SPACING - work / 2,
            "a checkpoint began {:?} after one with {work:?} of index work began",
            next.duration_since(began)
        );
    }
    // The store is told the interval before each checkpoint: the first
    // `checkpoint_every`, then the spaced one, over which the tables spread
    // their data files' write-back (decisions.md 89); the stop's, which
    // is waited for, none.
    let told = store.told.lock();
    assert_eq!(told.len(), taken.len(), "one interval told per checkpoint");
    assert_eq!(told[0], options().checkpoint_every);
    for (interval, (_, _, work)) in told[1..told.len() - 1].iter().zip(taken.iter()) {
        let spaced = *work * apply::CHECKPOINT_SPACING;
        assert_eq!(*interval, spaced.max(options().checkpoint_every));
    }
    assert_eq!(told.last(), Some(&Duration::ZERO));
    assert_eq!(store_state(&store.tables), serial_state(&entries));
}

/// Checkpoints are made durable beside apply: `applied.pos` (which lets
/// the receiver purge staging) must move only once one is, so a checkpoint
/// that fails leaves it where it was, and apply stops with the error.
#[test]
fn applied_pos_waits_for_a_durable_checkpoint() {
    let seed = seed("applied_pos_waits_for_a_durable_checkpoint");
    let entries = journal_workload(seed, 2000, 0, |s| 1_000 + s);
    let root = tempfile::tempdir().unwrap();
    let (journals, mut staging) = main_journal(root.path());
    let dir = &journals[0].dir;
    stage(&mut staging, &entries, 0, entries.len(), 100);
    let store = Arc::new(UnsyncableTables(
        ReplicaTables::open(root.path().join("replica")).unwrap(),
    ));
    let status = RunStatus::default();
    let result = run_to_its_end(store, &journals, &status);
    let err = result.expect_err("a checkpoint that cannot be made durable stops apply");
    assert!(err.to_string().contains("sync failed"), "{err}");
    // Still where apply started (resume from the first sequence), though
    // checkpoints of later positions were begun.
    assert_eq!(read_position_file(&dir.join(APPLIED_FILE)), Some(1));
    assert_eq!(status.checkpoints.load(Ordering::Relaxed), 0);
}

/// A damaged frame in staging (in a segment the receiver has moved on from:
/// in the newest one the reader takes damage for a write in progress)
/// stops the loop with an error naming it, the reader thread's error
/// reaching `run`'s caller, and nothing after the damage is applied.
#[test]
fn a_damaged_staged_frame_stops_apply_with_an_error() {
    let entries = journal_workload(11, 3000, 0, |s| 1_000 + s);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let journals = [StagedJournal {
        name: "main".into(),
        dir: dir.clone(),
    }];
    {
        let options = StagingOptions {
            segment_bytes: 8 << 10,
            ..StagingOptions::default()
        };
        let (mut staging, _) = Staging::open(&dir, options).unwrap();
        stage(&mut staging, &entries, 0, entries.len(), 100);
    }
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "stg"))
        .collect();
    segments.sort();
    assert!(segments.len() > 1, "the workload fills several segments");
    let segment = &segments[0];
    let mut bytes = std::fs::read(segment).unwrap();
    let staged_end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[staged_end / 2] ^= 0x5a;
    std::fs::write(segment, &bytes).unwrap();

    let store = Arc::new(ReplicaTables::open(root.path().join("replica")).unwrap());
    let outcome = run_to_its_end(store.clone(), &journals, &RunStatus::default());
    let error = outcome.expect_err("apply went on past a damaged frame");
    let message = error.to_string();
    assert!(
        message.starts_with("HAX0002E") && message.contains(".stg"),
        "the error names neither the damage nor the segment: {message}"
    );
    let applied = store.applied_position().journal(0).applied;
    assert!(
        (applied as usize) < entries.len(),
        "applied up to {applied} of {} past the damage",
        entries.len()
    );
}
