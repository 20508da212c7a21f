//! The journal writer: many appenders, one segment tail, group commit.
//!
//! Design constraints:
//! - One atomic add claims both space and sequence numbers: the segment tail is
//!   a `u64` holding `(entries_claimed << 32) | bytes_claimed`, so concurrent
//!   appenders never take a lock on the hot path (Aeron's log buffer does the
//!   same). An appender writes its entry, then publishes the length word.
//! - The claim that first crosses the segment's usable end writes J-NR in the
//!   space it claimed (there is always room: the last J-NR-sized bytes are kept
//!   back) and rotates to the next segment; later claims past the end wait for
//!   that segment and retry there.
//! - Object entries change the catalog, which each new segment records. They
//!   hold the catalog lock from claim to catalog update; rotation takes the same
//!   lock, so a segment's catalog reflects exactly the entries before it.
//! - Durability is computed over the *contiguous published prefix*: an entry
//!   is reported durable only when every entry before it is published and
//!   synced, so recovery (which stops at the first unpublished slot) never drops
//!   an entry that was reported durable.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::catalog::Catalog;
use super::entry::{align_up, write_unpublished, NewEntry};
use super::recover::{recover, RecoveryReport};
use super::segment::{list_segments, MappedSegment, SegmentError};
use super::{Durability, JournalError, JournalOptions};
use crate::limits::{APPEND_BATCH_BYTES_MAX, ENTRY_HEADER_BYTES};
use crate::sys::{FillReach, ZeroFillControl};

/// Bytes a J-NR entry takes; the end of every segment keeps this much back.
const NEXT_SEGMENT_BYTES: usize = align_up(ENTRY_HEADER_BYTES);

/// A segment being appended to, and the link to the one after it.
#[derive(Debug)]
pub(crate) struct LiveSegment {
    pub(crate) seg: MappedSegment,
    usable_end: usize,
    tail: AtomicU64,
    /// Entries published so far (J-NR included): once the segment has
    /// rotated, it is wholly published when this reaches the next
    /// segment's first sequence, which needs no walk over its entries.
    published: AtomicU64,
    next: Mutex<NextSegment>,
    next_ready: Condvar,
}

#[derive(Debug)]
enum NextSegment {
    Pending,
    Ready(Arc<LiveSegment>),
    Failed,
}

enum Claim {
    Fits { offset: usize, first_sequence: u64 },
    Crossed { offset: usize, sequence: u64 },
    Beyond,
}

impl LiveSegment {
    pub(crate) fn new(seg: MappedSegment, tail_offset: usize, tail_entries: u64) -> LiveSegment {
        let usable_end = seg.len() - NEXT_SEGMENT_BYTES;
        LiveSegment {
            seg,
            usable_end,
            tail: AtomicU64::new((tail_entries << 32) | tail_offset as u64),
            published: AtomicU64::new(tail_entries),
            next: Mutex::new(NextSegment::Pending),
            next_ready: Condvar::new(),
        }
    }

    fn claim(&self, entries: usize, bytes: usize) -> Claim {
        let prev = self
            .tail
            .fetch_add(((entries as u64) << 32) | bytes as u64, Ordering::AcqRel);
        let offset = (prev & 0xffff_ffff) as usize;
        let sequence = self.seg.first_sequence() + (prev >> 32);
        if offset + bytes <= self.usable_end {
            Claim::Fits {
                offset,
                first_sequence: sequence,
            }
        } else if offset <= self.usable_end {
            Claim::Crossed { offset, sequence }
        } else {
            Claim::Beyond
        }
    }

    /// Blocks until the appender that crossed this segment's end has rotated.
    fn wait_next(&self) -> Option<Arc<LiveSegment>> {
        let mut next = self.next.lock();
        loop {
            match &*next {
                NextSegment::Ready(seg) => return Some(seg.clone()),
                NextSegment::Failed => return None,
                NextSegment::Pending => self.next_ready.wait(&mut next),
            }
        }
    }

    fn set_next(&self, next: NextSegment) {
        *self.next.lock() = next;
        self.next_ready.notify_all();
    }

    /// Counts `entries` more as published, after their length words.
    fn count_published(&self, entries: usize) {
        self.published.fetch_add(entries as u64, Ordering::Release);
    }

    /// The next segment, if this one has rotated and every entry of it
    /// (J-NR included) is published.
    fn next_if_wholly_published(&self) -> Option<Arc<LiveSegment>> {
        let NextSegment::Ready(next) = &*self.next.lock() else {
            return None;
        };
        let entries = next.seg.first_sequence() - self.seg.first_sequence();
        (self.published.load(Ordering::Acquire) == entries).then(|| next.clone())
    }

    /// The sequence the next claim would get (entries past the end included).
    fn claimed_sequence(&self) -> u64 {
        self.seg.first_sequence() + (self.tail.load(Ordering::Acquire) >> 32)
    }
}

/// Progress of group commit: everything below `cursor` is published, and
/// synced but for the files in `unsynced`.
#[derive(Debug)]
struct SyncState {
    durable_sequence: u64,
    cursor: Arc<LiveSegment>,
    cursor_offset: usize,
    /// The last sequence the cursor has passed (`durable_sequence` once the
    /// files in `unsynced` are synced).
    cursor_sequence: u64,
    /// Segments the cursor passed without syncing them (`advance_unsynced`,
    /// `Durability::None`): the next sync includes those still there.
    unsynced: Vec<PathBuf>,
    in_progress: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    options: JournalOptions,
    _lock: File,
    active: Mutex<Arc<LiveSegment>>,
    catalog: Mutex<Catalog>,
    sync: Arc<Mutex<SyncState>>,
    sync_done: Condvar,
    poisoned: AtomicBool,
    /// Live `Appender`s: group commit waits for others to join only when
    /// there are others (PostgreSQL's `commit_siblings`).
    appenders: AtomicUsize,
    spares: Arc<SpareMaker>,
    spare_thread: Mutex<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
}

/// An open journal. Cheap to clone; every clone and every `Appender` refers to
/// the same journal. Only one process may have a journal open for writing.
#[derive(Debug, Clone)]
pub struct Journal {
    shared: Arc<Shared>,
}

/// A handle one thread uses to append. It caches the current segment so the hot
/// path touches nothing shared but the segment tail.
#[derive(Debug)]
pub struct Appender {
    shared: Arc<Shared>,
    segment: Arc<LiveSegment>,
}

/// What `Journal::purge_before` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    pub removed: Vec<PathBuf>,
    /// First sequence still retained.
    pub retained_from: u64,
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(SegmentError::io("open lock file", &path))?;
    // SAFETY: flock on an owned descriptor; no memory is passed.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(JournalError::Locked {
            dir: dir.to_owned(),
        });
    }
    Ok(file)
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, recovering it after a
    /// crash: a torn tail is truncated, corruption before the tail is refused.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<Journal, JournalError> {
        let dir = dir.as_ref().to_owned();
        options.validate()?;
        std::fs::create_dir_all(&dir)
            .map_err(SegmentError::io("create journal directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let spares = Arc::new(SpareMaker::new(&dir, &options));
        let recovered = recover(&dir, &options, &spares)?;
        for first in [&spares.active_first, &spares.cursor_first] {
            first.store(recovered.active.first_sequence(), Ordering::Release);
        }
        let live = Arc::new(LiveSegment::new(
            recovered.active,
            recovered.tail_offset,
            recovered.tail_entries,
        ));
        let durable_sequence = recovered.report.next_sequence - 1;
        let sync = Arc::new(Mutex::new(SyncState {
            durable_sequence,
            cursor: live.clone(),
            cursor_offset: recovered.tail_offset,
            cursor_sequence: durable_sequence,
            unsynced: Vec::new(),
            in_progress: false,
        }));
        let _ = spares.sync.set(Arc::clone(&sync));
        let spare_thread = options
            .background_preallocation
            .then(|| spares.clone().spawn());
        Ok(Journal {
            shared: Arc::new(Shared {
                sync,
                sync_done: Condvar::new(),
                active: Mutex::new(live),
                catalog: Mutex::new(recovered.catalog),
                poisoned: AtomicBool::new(false),
                appenders: AtomicUsize::new(0),
                spares,
                spare_thread: Mutex::new(spare_thread),
                recovery: recovered.report,
                dir,
                options,
                _lock: lock,
            }),
        })
    }

    /// A handle for one appending thread.
    pub fn appender(&self) -> Appender {
        self.shared.appenders.fetch_add(1, Ordering::Relaxed);
        Appender {
            segment: self.shared.active.lock().clone(),
            shared: self.shared.clone(),
        }
    }

    /// Appends one entry (convenience; threads that append often keep an `Appender`).
    pub fn append(&self, entry: &NewEntry<'_>) -> Result<u64, JournalError> {
        self.appender().append(entry)
    }

    /// Makes every entry published so far durable; returns the durable sequence.
    pub fn flush(&self) -> Result<u64, JournalError> {
        self.shared.wait_durable(None)
    }

    /// Waits until `sequence` and everything before it is durable, as the
    /// journal's durability asks (at once with `Durability::None`). For
    /// entries appended with `Appender::append_deferred`.
    pub fn wait_durable(&self, sequence: u64) -> Result<(), JournalError> {
        if self.shared.options.durability != Durability::None {
            self.shared.wait_durable(Some(sequence))?;
        }
        Ok(())
    }

    /// Highest sequence known to be durable (0 when none).
    pub fn durable_sequence(&self) -> u64 {
        self.shared.sync.lock().durable_sequence
    }

    /// The sequence the next append will get, if no other thread appends first.
    pub fn next_sequence(&self) -> u64 {
        self.shared.active.lock().claimed_sequence()
    }

    /// The object catalog as of the last completed object entry.
    pub fn catalog(&self) -> Catalog {
        self.shared.catalog.lock().clone()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// What recovery found and did when this journal was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// Deletes every segment all of whose entries are at or below `safe_sequence`
    /// (the slowest consumer's acknowledged position). The segment being
    /// appended to is never deleted. One purged file may be kept to become
    /// the next spare (`JournalOptions::purge_acknowledged`).
    pub fn purge_before(&self, safe_sequence: u64) -> Result<PurgeReport, JournalError> {
        if self.shared.spares.advances_unsynced {
            self.shared.spares.advance_unsynced();
        }
        let active_first = self.shared.active.lock().seg.first_sequence();
        let kept_from = active_first.min(self.shared.spares.retained_from());
        purge_segments(&self.shared.spares, kept_from, safe_sequence)
    }
}

/// `Journal::purge_before` for the segments before the one beginning at
/// `kept_from` (the active segment's, or the sync cursor's if older); the
/// background thread's purge runs it too.
fn purge_segments(
    spares: &SpareMaker,
    kept_from: u64,
    safe_sequence: u64,
) -> Result<PurgeReport, JournalError> {
    let dir = &spares.dir;
    let segments = list_segments(dir).map_err(SegmentError::io("list journal", dir))?;
    let mut report = PurgeReport {
        removed: Vec::new(),
        retained_from: segments.first().map_or(kept_from, |s| s.0),
    };
    for pair in segments.windows(2) {
        let ((first, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *first >= kept_from || next_first - 1 > safe_sequence {
            break;
        }
        if !spares.keep_for_reuse(path)? {
            match std::fs::remove_file(path) {
                // Purged by a caller of `purge_before` at the same time.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other.map_err(SegmentError::io("remove purged segment", path))?,
            }
        }
        tracing::info!(
            "HAD0120I journal segment {} purged: all its entries are at or below the safe position {safe_sequence}",
            path.display()
        );
        report.removed.push(path.clone());
        report.retained_from = *next_first;
    }
    Ok(report)
}

impl Shared {
    fn check_poisoned(&self) -> Result<(), JournalError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(JournalError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Writes J-NR at `offset` of `old` after putting the next segment in place.
    /// `catalog` is the caller's catalog guard if it holds one.
    fn rotate(
        &self,
        old: &LiveSegment,
        offset: usize,
        sequence: u64,
        catalog: Option<&Catalog>,
    ) -> Result<Arc<LiveSegment>, JournalError> {
        let result = self.open_next(sequence + 1, catalog);
        let next = match result {
            Ok(next) => next,
            Err(err) => {
                self.poisoned.store(true, Ordering::SeqCst);
                old.set_next(NextSegment::Failed);
                tracing::error!(
                    "HAD0114E journal {} could not rotate to a new segment: {err}",
                    self.dir.display()
                );
                return Err(err);
            }
        };
        // J-NR first, then hand the new segment out: no entry can reach the new
        // segment before the J-NR that leads to it is published, so a crash in
        // between leaves at worst an empty segment that recovery removes.
        let now = self.options.clock.now_unix_ns();
        // SAFETY: this claim crossed the usable end, so `offset..offset+56` is ours
        // and inside the segment (the last NEXT_SEGMENT_BYTES are kept back).
        let len = unsafe {
            write_unpublished(
                old.seg.ptr().add(offset),
                &NewEntry::NEXT_SEGMENT,
                sequence,
                now,
            )
        };
        old.seg.publish(offset, len);
        old.count_published(1);
        old.set_next(NextSegment::Ready(next.clone()));
        *self.active.lock() = next.clone();
        Ok(next)
    }

    fn open_next(
        &self,
        first_sequence: u64,
        catalog: Option<&Catalog>,
    ) -> Result<Arc<LiveSegment>, JournalError> {
        let guard;
        let catalog = match catalog {
            Some(catalog) => catalog,
            None => {
                guard = self.catalog.lock();
                &*guard
            }
        };
        let mut spare = self.spares.take()?;
        let now = self.options.clock.now_unix_ns();
        spare.write_header(self.options.journal_id, first_sequence, now, catalog);
        if self.options.durability != Durability::None {
            // Header and catalog must be on disk before the name points at them.
            self.options
                .syncer
                .sync_data(spare.file())
                .map_err(|source| self.sync_failed(spare.path(), source))?;
        }
        let seg = spare.install(&self.dir)?;
        // Purge keeps everything from here on (the J-NR that leads here is
        // not even published yet, so no backup can have acknowledged it).
        self.spares
            .active_first
            .store(first_sequence, Ordering::Release);
        if self.options.durability != Durability::None {
            let dir = File::open(&self.dir)
                .map_err(SegmentError::io("open journal directory", &self.dir))?;
            dir.sync_all()
                .map_err(|source| self.sync_failed(&self.dir, source))?;
        }
        let entries_start = seg.entries_start();
        Ok(Arc::new(LiveSegment::new(seg, entries_start, 0)))
    }

    fn sync_failed(&self, path: &Path, source: std::io::Error) -> JournalError {
        self.poisoned.store(true, Ordering::SeqCst);
        tracing::error!(
            "HAD0103E fsync of {} failed: {source}; journal refuses further writes",
            path.display()
        );
        JournalError::SyncFailed {
            path: path.to_owned(),
            source,
        }
    }

    /// Waits until `target` (or, for `None`, everything published now) is durable,
    /// syncing as the leader of a group commit if no sync is under way.
    fn wait_durable(&self, target: Option<u64>) -> Result<u64, JournalError> {
        let mut state = self.sync.lock();
        let mut synced_once = false;
        loop {
            self.check_poisoned()?;
            if let Some(target) = target {
                if state.durable_sequence >= target {
                    return Ok(state.durable_sequence);
                }
            } else if synced_once {
                return Ok(state.durable_sequence);
            }
            if state.in_progress {
                self.sync_done.wait(&mut state);
                continue;
            }
            state.in_progress = true;
            let cursor = state.cursor.clone();
            let cursor_offset = state.cursor_offset;
            let passed = state.cursor_sequence;
            let unsynced = std::mem::take(&mut state.unsynced);
            let outcome = parking_lot::MutexGuard::unlocked(&mut state, || {
                if let Durability::GroupCommit { max_delay } = self.options.durability {
                    let siblings = self.appenders.load(Ordering::Relaxed) > 1;
                    if target.is_some() && siblings && !max_delay.is_zero() {
                        std::thread::sleep(max_delay);
                    }
                }
                self.sync_published(cursor, cursor_offset, passed, &unsynced)
            });
            state.in_progress = false;
            synced_once = true;
            self.sync_done.notify_all();
            let (cursor, offset, sequence) = outcome?;
            self.spares
                .cursor_first
                .store(cursor.seg.first_sequence(), Ordering::Release);
            state.cursor = cursor;
            state.cursor_offset = offset;
            state.cursor_sequence = sequence;
            state.durable_sequence = sequence;
        }
    }

    /// Walks the published prefix from the cursor, syncs every segment it
    /// covers and the `unsynced` files, and returns the new cursor and
    /// durable sequence.
    fn sync_published(
        &self,
        segment: Arc<LiveSegment>,
        offset: usize,
        sequence: u64,
        unsynced: &[PathBuf],
    ) -> Result<(Arc<LiveSegment>, usize, u64), JournalError> {
        let (segment, offset, sequence, to_sync) =
            walk_published(&self.dir, segment, offset, sequence)?;
        for path in unsynced {
            match File::open(path) {
                Ok(file) => self
                    .options
                    .syncer
                    .sync_data(&file)
                    .map_err(|source| self.sync_failed(path, source))?,
                // Purged since: nothing left to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(self.sync_failed(path, source)),
            }
        }
        for live in &to_sync {
            self.options
                .syncer
                .sync_data(live.seg.file())
                .map_err(|source| self.sync_failed(live.seg.path(), source))?;
        }
        Ok((segment, offset, sequence))
    }
}

/// Walks the published prefix from `offset` of `segment` (`sequence` passed
/// so far) of the journal in `dir`: where it ends, and the segments it
/// covered (the one it ends in last, unless it covered nothing).
#[allow(clippy::type_complexity)]
fn walk_published(
    dir: &Path,
    mut segment: Arc<LiveSegment>,
    mut offset: usize,
    mut sequence: u64,
) -> Result<(Arc<LiveSegment>, usize, u64, Vec<Arc<LiveSegment>>), JournalError> {
    let start_sequence = sequence;
    let mut to_sync = skip_published_segments(&mut segment);
    if !to_sync.is_empty() {
        offset = segment.seg.entries_start();
        sequence = segment.seg.first_sequence() - 1;
    }
    loop {
        let len = segment.seg.published_len(offset) as usize;
        if len == 0 {
            break;
        }
        // SAFETY: the entry at `offset` is published, so its header bytes are
        // complete and immutable; the type lies at bytes 40..43 of it.
        let code = unsafe { *segment.seg.ptr().add(offset + 40) };
        offset += align_up(len);
        sequence += 1;
        if code == b'J' {
            // The rotating appender hands the next segment out right after
            // publishing J-NR; wait for it (or for the rotation's failure).
            let next = segment.wait_next().ok_or_else(|| JournalError::Poisoned {
                dir: dir.to_owned(),
            })?;
            to_sync.push(std::mem::replace(&mut segment, next));
            offset = segment.seg.entries_start();
        }
    }
    if sequence == start_sequence {
        return Ok((segment, offset, sequence, Vec::new()));
    }
    to_sync.push(segment.clone());
    Ok((segment, offset, sequence, to_sync))
}

/// Moves `segment` past every wholly published segment from it on, without
/// reading their entries; returns those it passed.
fn skip_published_segments(segment: &mut Arc<LiveSegment>) -> Vec<Arc<LiveSegment>> {
    let mut passed = Vec::new();
    while let Some(next) = segment.next_if_wholly_published() {
        passed.push(std::mem::replace(segment, next));
    }
    passed
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.spares.shutdown();
        if let Some(thread) = self.spare_thread.lock().take() {
            let _ = thread.join();
        }
        self.spares.discard();
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.shared.appenders.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Appender {
    /// Appends one entry and returns its sequence number. If the entry is a
    /// commit point and the journal's durability asks for it, returns only once
    /// the entry (and everything before it) is durable.
    pub fn append(&mut self, entry: &NewEntry<'_>) -> Result<u64, JournalError> {
        let sequence = self.append_deferred(entry)?;
        if entry.is_commit_point() && self.shared.options.durability != Durability::None {
            self.shared.wait_durable(Some(sequence))?;
        }
        Ok(sequence)
    }

    /// Appends one entry and returns its sequence number without waiting for
    /// durability, whatever the entry: a caller that must publish something
    /// else first (under its own lock) waits afterwards with
    /// `Journal::wait_durable`.
    pub fn append_deferred(&mut self, entry: &NewEntry<'_>) -> Result<u64, JournalError> {
        entry.validate()?;
        if entry.entry_type.is_object() {
            return self
                .append_piece(std::slice::from_ref(entry), entry.padded_bytes())
                .map(|r| r.end - 1);
        }
        let bytes = entry.padded_bytes();
        let sequence = loop {
            self.shared.check_poisoned()?;
            match self.segment.claim(1, bytes) {
                Claim::Fits {
                    offset,
                    first_sequence,
                } => {
                    let now = self.shared.options.clock.now_unix_ns();
                    // SAFETY: the claim gave us `offset..offset+bytes` exclusively,
                    // inside the segment's usable part; offsets are 8-aligned.
                    let len = unsafe {
                        write_unpublished(
                            self.segment.seg.ptr().add(offset),
                            entry,
                            first_sequence,
                            now,
                        )
                    };
                    self.segment.seg.publish(offset, len);
                    self.segment.count_published(1);
                    break first_sequence;
                }
                Claim::Crossed { offset, sequence } => {
                    self.segment = self.shared.rotate(&self.segment, offset, sequence, None)?;
                }
                Claim::Beyond => self.advance()?,
            }
        };
        Ok(sequence)
    }

    /// Appends `entries` in order with consecutive sequence numbers (unless the
    /// batch is larger than one claim, in which case other appenders' entries may
    /// fall between its pieces). Returns the sequence range (empty for no entries). Waits for durability
    /// once, at the end, if any entry is a commit point.
    pub fn append_batch(&mut self, entries: &[NewEntry<'_>]) -> Result<Range<u64>, JournalError> {
        for entry in entries {
            entry.validate()?;
        }
        let mut first = None;
        let mut last = 0;
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && (end == start || bytes + entries[end].padded_bytes() <= APPEND_BATCH_BYTES_MAX)
            {
                bytes += entries[end].padded_bytes();
                end += 1;
            }
            let range = self.append_piece(&entries[start..end], bytes)?;
            first.get_or_insert(range.start);
            last = range.end - 1;
            start = end;
        }
        let Some(first) = first else {
            return Ok(0..0);
        };
        if self.shared.options.durability != Durability::None
            && entries.iter().any(NewEntry::is_commit_point)
        {
            self.shared.wait_durable(Some(last))?;
        }
        Ok(first..last + 1)
    }

    fn append_piece(
        &mut self,
        entries: &[NewEntry<'_>],
        bytes: usize,
    ) -> Result<Range<u64>, JournalError> {
        let has_object = entries.iter().any(|e| e.entry_type.is_object());
        loop {
            self.shared.check_poisoned()?;
            let mut catalog = has_object.then(|| self.shared.catalog.lock());
            let updated = match &catalog {
                Some(current) => Some(checked_catalog(current, entries)?),
                None => None,
            };
            match self.segment.claim(entries.len(), bytes) {
                Claim::Fits {
                    offset,
                    first_sequence,
                } => {
                    let now = self.shared.options.clock.now_unix_ns();
                    let seg = &self.segment.seg;
                    let mut at = offset;
                    for (i, entry) in entries.iter().enumerate() {
                        // SAFETY: the claim gave us `offset..offset+bytes`; each
                        // entry gets its padded share of it, in order.
                        unsafe {
                            write_unpublished(
                                seg.ptr().add(at),
                                entry,
                                first_sequence + i as u64,
                                now,
                            )
                        };
                        at += entry.padded_bytes();
                    }
                    at = offset;
                    for entry in entries {
                        seg.publish_quiet(at, entry.frame_bytes() as u32);
                        at += entry.padded_bytes();
                    }
                    seg.wake_readers();
                    self.segment.count_published(entries.len());
                    if let (Some(catalog), Some(updated)) = (catalog.as_mut(), updated) {
                        **catalog = updated;
                    }
                    return Ok(first_sequence..first_sequence + entries.len() as u64);
                }
                Claim::Crossed { offset, sequence } => {
                    self.segment =
                        self.shared
                            .rotate(&self.segment, offset, sequence, catalog.as_deref())?;
                }
                Claim::Beyond => {
                    drop(catalog);
                    self.advance()?;
                }
            }
        }
    }

    fn advance(&mut self) -> Result<(), JournalError> {
        match self.segment.wait_next() {
            Some(next) => {
                self.segment = next;
                Ok(())
            }
            None => Err(JournalError::Poisoned {
                dir: self.shared.dir.clone(),
            }),
        }
    }

    /// The journal this appender writes to.
    pub fn journal(&self) -> Journal {
        Journal {
            shared: self.shared.clone(),
        }
    }
}

/// The catalog after `entries`' object operations, or the first one refused.
fn checked_catalog(current: &Catalog, entries: &[NewEntry<'_>]) -> Result<Catalog, JournalError> {
    let mut next = current.clone();
    for entry in entries.iter().filter(|e| e.entry_type.is_object()) {
        next.check(entry)?;
        next.apply(
            entry.entry_type,
            entry.object_id,
            std::str::from_utf8(entry.key).ok(),
        );
    }
    Ok(next)
}

/// Prepares the next segment file ahead of time (create, preallocate, map), so
/// rotation costs a rename rather than file creation and block allocation.
/// Its background thread also purges acknowledged segments, and makes its
/// spares of their files when it can.
#[derive(Debug)]
pub(crate) struct SpareMaker {
    dir: PathBuf,
    segment_bytes: usize,
    /// Whether the background thread zero-fills its spares.
    zero_fill: bool,
    /// How far the zeros over a reused file reach: the page cache only when
    /// nothing syncs the journal (`Durability::None`), else the disk
    /// (decisions.md 44). A new file's always reach the disk.
    fill_reach: FillReach,
    /// Whether the background thread purges acknowledged segments first.
    purge: bool,
    /// The first sequence of the segment being appended to (or about to
    /// be): purge never reaches it.
    active_first: AtomicU64,
    /// The first sequence of the segment the sync cursor is in: purge never
    /// reaches it either, as the cursor reads the segments from there on
    /// through their maps, which a reused file would change underneath it.
    cursor_first: AtomicU64,
    /// The journal's sync state, once open, for `advance_unsynced`.
    sync: OnceLock<Arc<Mutex<SyncState>>>,
    /// Whether the background thread moves the sync cursor before it
    /// purges (`Durability::None`: nothing else does).
    advances_unsynced: bool,
    /// Tells a zero-fill under way to hurry (an appender waits for it) or
    /// give up (the journal closes).
    fill: ZeroFillControl,
    slot: Mutex<SpareSlot>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SpareSlot {
    spare: Option<MappedSegment>,
    /// The background thread is making a spare right now.
    creating: bool,
    made: u64,
    shutdown: bool,
    /// Purged segments' files, renamed as spares, for the next spares the
    /// background thread makes (at most `KEPT_SPARES`; the last kept is
    /// used first).
    reusable: Vec<PathBuf>,
    /// Files made for `reusable` since open (`SPARES_MADE_AT_OPEN`).
    made_for_reuse: usize,
}

/// Purged segments' files kept for the spares that follow: a backup whose
/// acknowledgement lags a rotation or two lets several segments go at once
/// (decisions.md 47).
const KEPT_SPARES: usize = 4;

/// New files the background thread makes for reuse once the first spare
/// is ready after open, while nothing waits for a spare: a journal in
/// service has purged files to reuse, an opened one has none until the
/// backups acknowledge, and an appender writing faster than a paced
/// zero-fill of a new file (decisions.md 31) waited for its second spare
/// (decisions.md 79).
const SPARES_MADE_AT_OPEN: usize = 2;

pub(crate) const SPARE_SUFFIX: &str = ".spare";

impl SpareMaker {
    fn new(dir: &Path, options: &JournalOptions) -> SpareMaker {
        // Only the background thread zero-fills, and only a zero-fill makes
        // an old file blank.
        let zero_fill = options.background_preallocation && options.zero_fill_spares;
        SpareMaker {
            dir: dir.to_owned(),
            segment_bytes: options.segment_bytes,
            zero_fill,
            fill_reach: if options.durability == Durability::None {
                FillReach::Cache
            } else {
                FillReach::Disk
            },
            purge: options.background_preallocation && options.purge_acknowledged,
            active_first: AtomicU64::new(1),
            cursor_first: AtomicU64::new(1),
            sync: OnceLock::new(),
            advances_unsynced: options.durability == Durability::None,
            fill: ZeroFillControl::default(),
            slot: Mutex::new(SpareSlot::default()),
            changed: Condvar::new(),
        }
    }

    /// A new name for a spare (removed if found by recovery).
    fn spare_path(&self, slot: &mut SpareSlot) -> PathBuf {
        slot.made += 1;
        self.dir.join(format!(
            "{}-{}{SPARE_SUFFIX}",
            std::process::id(),
            slot.made
        ))
    }

    /// A spare: with `zero_fill` (only off an appender's path), made of a
    /// purged file kept for reuse when there is one; else a new file.
    fn create(&self, zero_fill: bool) -> Result<MappedSegment, SegmentError> {
        let (path, reuse) = {
            let mut slot = self.slot.lock();
            let reusable = if zero_fill { slot.reusable.pop() } else { None };
            match reusable {
                Some(path) => (path, true),
                None => (self.spare_path(&mut slot), false),
            }
        };
        if zero_fill {
            self.fill.pace();
        }
        if reuse {
            MappedSegment::reuse_spare(&path, self.segment_bytes, (&self.fill, self.fill_reach))
        } else {
            MappedSegment::create_spare(&path, self.segment_bytes, zero_fill.then_some(&self.fill))
        }
    }

    /// Whether the background thread, its spare ready, makes a new file
    /// for `reusable` next (`SPARES_MADE_AT_OPEN`).
    fn wants_reusable(&self, slot: &SpareSlot) -> bool {
        self.zero_fill
            && slot.made_for_reuse < SPARES_MADE_AT_OPEN
            && slot.reusable.len() < KEPT_SPARES
    }

    /// Makes a new zero-filled file and keeps it in `reusable`, as a purged
    /// segment's file would be kept. Marked as making a spare, so an
    /// appender that takes the ready spare meanwhile waits for the next
    /// (made at once of this file) rather than making an unfilled one.
    fn make_reusable(&self, mut slot: parking_lot::MutexGuard<'_, SpareSlot>) {
        slot.made_for_reuse += 1;
        slot.creating = true;
        let path = self.spare_path(&mut slot);
        drop(slot);
        self.fill.pace();
        let made = MappedSegment::create_spare(&path, self.segment_bytes, Some(&self.fill));
        let mut slot = self.slot.lock();
        slot.creating = false;
        self.changed.notify_all();
        match made {
            // Its map goes; the file stays, blocks written, pages cached.
            Ok(_) if !slot.shutdown => slot.reusable.push(path),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
            }
            // A zero-fill given up because the journal closes.
            Err(_) if slot.shutdown => {}
            Err(err) => {
                slot.made_for_reuse = SPARES_MADE_AT_OPEN;
                tracing::warn!(
                    "HAD0127W could not make a journal segment file for reuse ahead of time: {err}"
                );
            }
        }
    }

    /// Keeps a purged segment's file (renamed as a spare) for a later
    /// spare, when spares are zero-filled and fewer than `KEPT_SPARES` are
    /// kept. Whether it was kept; if not, the caller removes it.
    fn keep_for_reuse(&self, path: &Path) -> Result<bool, SegmentError> {
        let mut slot = self.slot.lock();
        if !self.zero_fill || slot.shutdown || slot.reusable.len() >= KEPT_SPARES {
            return Ok(false);
        }
        let spare = self.spare_path(&mut slot);
        match std::fs::rename(path, &spare) {
            Ok(()) => {
                slot.reusable.push(spare);
                Ok(true)
            }
            // Purged by a caller of `purge_before` at the same time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(SegmentError::io("rename purged segment to", &spare)(e)),
        }
    }

    /// With `Durability::None` nothing waits for a sync, so the sync cursor
    /// would stay where the last `flush` left it, holding every segment
    /// after it, and purge, which takes only segments the cursor has
    /// passed, would take none. Before each purge the background thread
    /// therefore moves it, without syncing, to the first segment not yet
    /// wholly published (from per-segment counts: no entry is read), and
    /// the next sync includes the files it passed. Skipped while a sync is
    /// under way.
    fn advance_unsynced(&self) {
        let Some(sync) = self.sync.get() else {
            return;
        };
        let Some(mut state) = sync.try_lock() else {
            return;
        };
        if state.in_progress {
            return;
        }
        let mut cursor = state.cursor.clone();
        let passed = skip_published_segments(&mut cursor);
        if passed.is_empty() {
            return;
        }
        let paths = passed.iter().map(|live| live.seg.path().to_owned());
        state.unsynced.extend(paths);
        // Purged since: nothing left to sync.
        state.unsynced.retain(|path| path.exists());
        self.cursor_first
            .store(cursor.seg.first_sequence(), Ordering::Release);
        state.cursor_offset = cursor.seg.entries_start();
        state.cursor_sequence = cursor.seg.first_sequence() - 1;
        state.cursor = cursor;
    }

    /// Where purge must stop: the segment being appended to, or the one
    /// the sync cursor is in if that is older.
    fn retained_from(&self) -> u64 {
        let active = self.active_first.load(Ordering::Acquire);
        active.min(self.cursor_first.load(Ordering::Acquire))
    }

    /// The background thread's purge before it makes a spare: what
    /// `Journal::purge_acknowledged` does, without its message when no
    /// backup is recorded. A failure is logged; the next rotation tries
    /// again.
    fn purge_acknowledged(&self) {
        let purged = super::retention::safe_sequence(&self.dir).and_then(|safe| {
            let Some(safe) = safe else {
                return Ok(());
            };
            // Only when the backups have what the cursor holds back, so purge
            // could use it (else `unsynced` would grow at every rotation).
            if self.advances_unsynced && safe >= self.cursor_first.load(Ordering::Acquire) {
                self.advance_unsynced();
            }
            purge_segments(self, self.retained_from(), safe).map(drop)
        });
        if let Err(err) = purged {
            tracing::warn!(
                "HAD0126W journal {}: could not purge acknowledged segments: {err}",
                self.dir.display()
            );
        }
    }

    /// The prepared spare, or a new one made now. Waits for a spare the
    /// background thread is making rather than racing it with a second one
    /// (telling a zero-fill to stop pausing: decisions.md 31).
    pub(crate) fn take(&self) -> Result<MappedSegment, SegmentError> {
        let mut slot = self.slot.lock();
        while slot.spare.is_none() && slot.creating && !slot.shutdown {
            self.fill.hurry();
            self.changed.wait(&mut slot);
        }
        let taken = slot.spare.take();
        drop(slot);
        self.changed.notify_all();
        match taken {
            Some(spare) => Ok(spare),
            None => self.create(false),
        }
    }

    fn spawn(self: Arc<Self>) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("jrn-prealloc".into())
            .spawn(move || loop {
                {
                    let mut slot = self.slot.lock();
                    while slot.spare.is_some() && !self.wants_reusable(&slot) && !slot.shutdown {
                        self.changed.wait(&mut slot);
                    }
                    if slot.shutdown {
                        return;
                    }
                    if slot.spare.is_some() {
                        self.make_reusable(slot);
                        continue;
                    }
                }
                if self.purge {
                    self.purge_acknowledged();
                }
                {
                    let mut slot = self.slot.lock();
                    if slot.shutdown {
                        return;
                    }
                    slot.creating = true;
                }
                let created = self.create(self.zero_fill);
                let mut slot = self.slot.lock();
                slot.creating = false;
                self.changed.notify_all();
                match created {
                    Ok(spare) if slot.shutdown => {
                        let _ = std::fs::remove_file(spare.path());
                        return;
                    }
                    Ok(spare) => slot.spare = Some(spare),
                    // A zero-fill given up because the journal closes.
                    Err(_) if slot.shutdown => return,
                    Err(err) => {
                        tracing::warn!("HAD0115W could not prepare a spare journal segment ahead of time: {err}");
                        // Try again at the next rotation; appenders make their own.
                        if !slot.shutdown {
                            self.changed.wait(&mut slot);
                        }
                    }
                }
            })
            .expect("spawn journal preallocation thread")
    }

    fn shutdown(&self) {
        self.fill.give_up();
        self.slot.lock().shutdown = true;
        self.changed.notify_all();
    }

    fn discard(&self) {
        let mut slot = self.slot.lock();
        if let Some(spare) = slot.spare.take() {
            let _ = std::fs::remove_file(spare.path());
        }
        for path in slot.reusable.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SEGMENT_BYTES_MIN;

    /// The sync cursor skips a segment without reading its entries only
    /// when every one of them is published: an appender that claimed a
    /// slot and has not yet written it holds the cursor (and so purge)
    /// in its segment, however many segments follow.
    #[test]
    fn a_rotated_segment_is_skipped_only_once_every_entry_of_it_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            segment_bytes: SEGMENT_BYTES_MIN,
            durability: Durability::None,
            background_preallocation: false,
            ..JournalOptions::default()
        };
        let journal = Journal::open(dir.path(), options).unwrap();
        let spares = &journal.shared.spares;
        let after = [7u8; 100];
        let entry = NewEntry::put(1, b"key", &after);
        let slow = journal.appender();
        let mut fast = journal.appender();
        fast.append(&entry).unwrap();
        let Claim::Fits {
            offset,
            first_sequence: stalled,
        } = slow.segment.claim(1, entry.padded_bytes())
        else {
            panic!("the first segment has room");
        };
        // Two rotations: the stalled segment and a wholly published one
        // lie behind the active segment.
        let mut rotations = 0;
        while rotations < 2 {
            let before = fast.segment.seg.first_sequence();
            fast.append(&entry).unwrap();
            rotations += usize::from(fast.segment.seg.first_sequence() != before);
        }
        let active = journal.shared.active.lock().seg.first_sequence();
        spares.advance_unsynced();
        assert_eq!(spares.cursor_first.load(Ordering::Acquire), 1);
        assert_eq!(
            journal.flush().unwrap(),
            stalled - 1,
            "the walk stops at the gap"
        );
        assert_eq!(spares.cursor_first.load(Ordering::Acquire), 1);

        // SAFETY: the claim gave this test `offset..offset+padded_bytes`.
        let len =
            unsafe { write_unpublished(slow.segment.seg.ptr().add(offset), &entry, stalled, 0) };
        slow.segment.seg.publish(offset, len);
        slow.segment.count_published(1);
        spares.advance_unsynced();
        assert_eq!(spares.cursor_first.load(Ordering::Acquire), active);
        assert_eq!(journal.flush().unwrap(), journal.next_sequence() - 1);
    }
}
