//! The staging store: the backup node's durable log of received frames
//! (iCluster's HAX). A frame is acknowledged only after `sync` made it durable
//! here; apply reads frames back from here, and a segment is purged once the
//! apply position has passed everything in it.
//!
//! Layout: a directory of segment files `<start position, 20 digits>.stg`,
//! each a 16-byte file header (`"REPLSTG1"`, version u32, reserved u32) then
//! frames back to back, exactly as received (docs/format.md "Frame"). The
//! start position is the staged position (the `next_sequence` of the frame
//! before) when the segment was begun.
//!
//! The newest segment may be longer than its frames: segments are made
//! ahead of time by a background thread (`*.stg-spare` until a rotation
//! renames one into place), so a group commit's `fdatasync` has only data
//! blocks to write, never a size change (decisions.md 31). A segment made
//! ahead is either a new file written full of zeros, or the file of a
//! purged segment reused as it is (decisions.md 34): after the last frame
//! come zeros, or frames and pieces of frames from the file's earlier use.
//! Zeros cannot start a frame (the magic is not zero); a frame from the
//! earlier use starts below the segment's start position (positions only
//! grow), so it is told apart by its header. Both read as "nothing more
//! yet". A rotation begins the next segment, named by the position the
//! old one's last frame ends at, under a name of its own
//! (`<start position>.stg-next`) and waits for no disk: the next group
//! commit syncs the old segment and the new one, then renames the new one
//! into place and syncs the directory (decisions.md 112). So a segment
//! under its name has every frame up to its successor's start durable,
//! and its frames end there; what follows (its unused end, kept:
//! decisions.md 111) is not read. A `*.stg-next` left by a stopped
//! receiver holds nothing acknowledged: opening names it when the frames
//! before it reach it (HAX0025I), else removes it (HAX0024I).
//!
//! Positions are "next sequence" values, like a frame's `next_sequence`:
//! every entry below the staged position is staged; an empty store is at 1.
//!
//! Invariants:
//! - Frames are staged in position order with no gap and no overlap: a frame
//!   is accepted only if it starts exactly at the staged position; a resend
//!   of frames already staged is ignored; a gap or an overlap is refused.
//! - `durable_position <= staged_position`; only the durable position may be
//!   acknowledged.
//! - After a failed fsync the store refuses every write until reopened.
//! - The disk budget is never exceeded: an append that would pass it fails
//!   with HAX0012E and the caller holds the sender back.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::frame::FrameHeader;
use crate::journal::{OsSync, SyncFile};
use crate::limits::FRAME_HEADER_BYTES;
use crate::sys::{FillReach, ZeroFillControl};

mod doorbell;
mod reader;
use doorbell::Doorbell;
pub use reader::StagingReader;

pub const STAGING_MAGIC: [u8; 8] = *b"REPLSTG1";
const FILE_HEADER_BYTES: u64 = 16;
const EXTENSION: &str = "stg";
const SPARE_EXTENSION: &str = "stg-spare";
/// A segment begun by a rotation and not yet named: it takes its name
/// (`<start>.stg`) in the group commit, once it and every segment before
/// it are durable (decisions.md 112).
const UNNAMED_EXTENSION: &str = "stg-next";
/// Purged segments' files kept for reuse at most: apply's position moves a
/// checkpoint at a time (3 s apart by default: about three 256 MiB
/// segments at 1.5 M entries/s), which may purge several segments at once,
/// each the next rotations can use.
pub const KEPT_FILES: usize = 4;
/// A new segment made ahead is zero-filled only while apply is within this
/// many segments of the staged end (counting the active one): further
/// behind, what an entry waits for is the backlog, and the fill's writes
/// would only slow the catching up (decisions.md 38).
const FILL_WITHIN_SEGMENTS: usize = 2;
/// An append into a segment's made-ahead length also writes zeros to the
/// end of the page its frame ends in: the kernel reads a page from the
/// disk before writing into part of it when the page is not cached and
/// lies inside the file, and a purged segment's reused file has no page
/// cached, so without them every append of the receiver waited for a disk
/// read (decisions.md 49). The next append starts in that page, cached by
/// then. Zeros after the last frame read as the end, as a zero-filled
/// segment's unused end does; past the file's end nothing is read.
const WRITE_PAGE: u64 = 4096;
static ZEROS: [u8; WRITE_PAGE as usize] = [0; WRITE_PAGE as usize];

/// How a staging store is opened.
#[derive(Clone, Debug)]
pub struct StagingOptions {
    /// A new segment is begun once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Most bytes the store may hold on disk (segments, their zero-filled
    /// ends and a segment being made ahead); appends beyond fail (HAX0012E).
    pub budget_bytes: u64,
    /// Make each next segment ahead of time on a background thread (while
    /// the budget has room for it): a purged segment's file reused, else a
    /// new file, written full of zeros unless apply is behind by more than
    /// a segment (then only allocated). Off: a rotation creates an empty
    /// segment that appends grow, and purged segments are deleted.
    pub prepare_segments: bool,
    /// Files made at open for the first rotations, each a whole segment
    /// written full of zeros and synced, as a store that has run a while
    /// keeps its purged segments' files (at most `KEPT_FILES`, only with
    /// `prepare_segments`). Without them a new store's first rotations
    /// each zero-fill a new file beside the traffic (decisions.md 83).
    pub reserve_segments: usize,
    pub syncer: Arc<dyn SyncFile>,
}

impl Default for StagingOptions {
    fn default() -> Self {
        StagingOptions {
            segment_bytes: 256 << 20,
            budget_bytes: 64 << 30,
            prepare_segments: true,
            reserve_segments: 0,
            syncer: Arc::new(OsSync),
        }
    }
}

/// Why staging refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StagingError {
    #[error("HAX0001E staging I/O failed: {context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HAX0002E staging segment {path} is corrupt at offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("HAX0003E fsync of staging segment {path} failed; the store refuses writes until reopened: {source}")]
    SyncFailed {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HAX0004E staging store {dir} refuses writes: an earlier fsync failed (reopen it)")]
    Poisoned { dir: PathBuf },
    #[error("HAX0006E frame refused by staging: it starts at {first} but the staged position is {staged} (a gap)")]
    Gap { first: u64, staged: u64 },
    #[error("HAX0008E frame refused by staging: it covers positions {start}..{next} but the staged position {staged} lies inside (resends must start at the staged position)")]
    Overlap { start: u64, next: u64, staged: u64 },
    #[error("HAX0007E frame refused by staging: {0}")]
    BadFrame(String),
    #[error("HAX0009E staging store {dir} no longer holds position {wanted}: its oldest segment starts at {oldest} (purged past what apply needs)")]
    Purged {
        dir: PathBuf,
        wanted: u64,
        oldest: u64,
    },
    #[error("HAX0012E staging store {dir} is full (budget {budget_bytes} bytes, holding {held_bytes}): backpressure applied")]
    Full {
        dir: PathBuf,
        budget_bytes: u64,
        held_bytes: u64,
    },
}

fn io<'p>(
    context: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> StagingError + 'p {
    move |source| StagingError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug)]
struct Segment {
    start_position: u64,
    path: PathBuf,
    /// Header and frames.
    bytes: u64,
    /// The file's length when it was opened or made (a prepared segment's
    /// zero-filled end): what it holds on disk is the larger of the two.
    allocated: u64,
    /// Under its name: false from the rotation that began it to the sync
    /// that named it (`path` is then the `*.stg-next` one).
    named: bool,
}

impl Segment {
    fn disk_bytes(&self) -> u64 {
        self.bytes.max(self.allocated)
    }
}

/// The next segment, being made (or made) on a background thread.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    fill: Arc<ZeroFillControl>,
    thread: JoinHandle<Result<File, StagingError>>,
    /// Set by the thread once the segment is made.
    made: Arc<AtomicBool>,
}

impl Spare {
    /// Starts making a segment of `bytes` at `path`: with `reuse`, from the
    /// purged segment's file already there (only what it lacks of `bytes`
    /// zero-filled: it was cut to its frames when it was finished), else a
    /// new file (header, then zeros with `fill_new`, else only allocated
    /// blocks). Synced either way.
    fn start(path: PathBuf, bytes: u64, reuse: bool, fill_new: bool) -> std::io::Result<Spare> {
        let fill = Arc::new(ZeroFillControl::default());
        let made = Arc::new(AtomicBool::new(false));
        let thread = {
            let (path, fill, made) = (path.clone(), Arc::clone(&fill), Arc::clone(&made));
            std::thread::Builder::new()
                .name("stg-prealloc".into())
                .spawn(move || {
                    let file = if reuse {
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map_err(io("open purged staging segment to reuse", &path))?
                    } else {
                        create_segment(&path)?
                    };
                    let len = file
                        .metadata()
                        .map_err(io("stat staging segment", &path))?
                        .len();
                    if len > bytes {
                        file.set_len(bytes)
                            .map_err(io("cut reused staging segment", &path))?;
                    }
                    if reuse || fill_new {
                        let from = len.clamp(FILE_HEADER_BYTES, bytes);
                        crate::sys::zero_fill(&file, from, bytes, &fill, FillReach::Disk)
                            .map_err(io("zero-fill staging segment", &path))?;
                    } else {
                        crate::sys::preallocate(&file, bytes)
                            .map_err(io("allocate staging segment", &path))?;
                        file.sync_data()
                            .map_err(io("sync staging segment", &path))?;
                    }
                    made.store(true, Ordering::Release);
                    Ok(file)
                })?
        };
        Ok(Spare {
            path,
            fill,
            thread,
            made,
        })
    }

    /// Whether it was tried and failed.
    fn failed(&self) -> bool {
        self.thread.is_finished() && !self.made.load(Ordering::Acquire)
    }

    /// Stops it (a zero-fill under way gives up) and removes its file.
    fn discard(self) {
        let path = self.stop();
        let _ = std::fs::remove_file(path);
    }

    /// `discard`, the file shrunk a piece at a time first
    /// (`sys::remove_paced`): for a caller that does not hold the store.
    fn discard_paced(self) {
        let path = self.stop();
        let _ = crate::sys::remove_paced(&path);
    }

    fn stop(self) -> PathBuf {
        self.fill.give_up();
        let _ = self.thread.join();
        self.path
    }
}

/// What `append` did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Staged (not yet durable); the staged position is now this.
    Staged { staged_position: u64 },
    /// Everything in it was staged before (a resend after reconnecting).
    AlreadyStaged,
}

/// Segments to make durable, taken from the store by `prepare_sync`.
#[derive(Debug)]
pub struct PendingSync {
    files: Vec<(File, PathBuf)>,
    /// Segments begun since the last sync, to be named once durable
    /// (from, to), in the order they were begun.
    names: Vec<(PathBuf, PathBuf)>,
    dir: PathBuf,
    position: u64,
    syncer: Arc<dyn SyncFile>,
}

impl PendingSync {
    /// What is durable once this sync (and every one prepared before it)
    /// has run.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// fdatasync of every segment written since the last sync.
    pub fn run(&self) -> Result<(), (PathBuf, std::io::Error)> {
        for (file, path) in &self.files {
            self.syncer.sync_data(file).map_err(|e| (path.clone(), e))?;
        }
        Ok(())
    }

    /// After `run` succeeded, and after every sync prepared before this one
    /// has named its segments: names the segments begun since the last
    /// sync and syncs the directory, so that a segment's name is durable
    /// only once it and every segment before it are. Until then a crash
    /// leaves a `*.stg-next` file, whose frames nobody acknowledged, and
    /// opening removes it.
    pub fn name_segments(&self) -> Result<(), (PathBuf, std::io::Error)> {
        if self.names.is_empty() {
            return Ok(());
        }
        for (from, to) in &self.names {
            std::fs::rename(from, to).map_err(|e| (to.clone(), e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (self.dir.clone(), e))
    }
}

/// What opening found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StagingRecovery {
    pub frames: u64,
    pub truncated_bytes: u64,
    pub staged_position: u64,
}

impl StagingError {
    /// Whether this is the disk, or the writer's disk quota, out of space
    /// (HAX0001E): the frame is not staged, and the same append can be
    /// tried again once there is room.
    pub fn is_disk_full(&self) -> bool {
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        matches!(self, StagingError::Io { source, .. } if matches!(source.kind(), StorageFull | QuotaExceeded))
    }
}

/// An open staging store (one writer).
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    options: StagingOptions,
    segments: Vec<Segment>,
    active: File,
    /// Finished segments written since the last sync, with their files.
    unsynced: Vec<(File, PathBuf)>,
    /// The active segment was written (or begun) since the last sync.
    active_unsynced: bool,
    /// Segments begun since the last sync, to be named by the next one
    /// (from, to).
    unnamed: Vec<(PathBuf, PathBuf)>,
    staged_position: u64,
    durable_position: u64,
    poisoned: bool,
    /// An append into the active segment failed since it was begun: what
    /// it wrote past the frames is cut off when the segment is finished.
    append_cut_short: bool,
    /// The next segment, made ahead (`prepare_segments`).
    spare: Option<Spare>,
    /// Purged segments' files kept to be made into next segments (path,
    /// bytes), at most `KEPT_FILES`: renamed like spares.
    free: Vec<(PathBuf, u64)>,
    spares_started: u64,
    /// Rung after each append (decisions.md 70); `None` when it could not
    /// be made (the reader then looks every `idle_wait`).
    doorbell: Option<Doorbell>,
}

fn segment_name(start_position: u64) -> String {
    format!("{start_position:020}.{EXTENSION}")
}

fn unnamed_name(start_position: u64) -> String {
    format!("{start_position:020}.{UNNAMED_EXTENSION}")
}

fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StagingError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io("list staging", dir))? {
        let path = item.map_err(io("list staging", dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(start) = name
            .strip_suffix(".stg")
            .filter(|s| s.len() == 20)
            .and_then(|s| s.parse().ok())
        {
            out.push((start, path));
        }
    }
    out.sort();
    Ok(out)
}

/// What `read_frame` found at an offset of a segment.
enum FrameAt {
    /// A whole frame, checksums checked, now in the buffer.
    Frame(FrameHeader),
    /// The offset is the end of the segment.
    End,
    /// A frame header from the file's earlier use (a reused segment): it
    /// starts below the segment's start position. The segment's own frames
    /// end here.
    Earlier,
    /// Bytes that are not a whole, intact frame (why).
    Broken(String),
}

/// Reads the frame at `offset` of the segment begun at `segment_start`, of
/// `file_bytes` bytes, into `buf` (header and body). Shared by recovery and
/// `StagingReader`. Positioned reads, two a frame; `buf` is zeroed only
/// where it grows past its length (apply reads every frame through here).
fn read_frame(
    file: &File,
    path: &Path,
    offset: u64,
    file_bytes: u64,
    segment_start: u64,
    buf: &mut Vec<u8>,
) -> Result<FrameAt, StagingError> {
    if offset >= file_bytes {
        return Ok(FrameAt::End);
    }
    if file_bytes - offset < FRAME_HEADER_BYTES as u64 {
        return Ok(FrameAt::Broken("partial frame header".into()));
    }
    // A file shorter than `file_bytes` says (a reader's length from before
    // the receiver cut a finished segment's zero-filled end off) ends
    // where it ends.
    let read = |buf: &mut [u8], at: u64, partial: &str| match file.read_exact_at(buf, at) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Ok(Some(FrameAt::Broken(partial.into())))
        }
        Err(e) => Err(io("read staging segment", path)(e)),
    };
    let mut raw = [0u8; FRAME_HEADER_BYTES];
    if let Some(partial) = read(&mut raw, offset, "partial frame header")? {
        return Ok(partial);
    }
    let header = match FrameHeader::decode(&raw) {
        Ok(h) => h,
        Err(e) => return Ok(FrameAt::Broken(e.to_string())),
    };
    if header.start_position < segment_start {
        return Ok(FrameAt::Earlier);
    }
    let total = FRAME_HEADER_BYTES as u64 + header.body_bytes as u64;
    if file_bytes - offset < total {
        return Ok(FrameAt::Broken("partial frame body".into()));
    }
    if buf.len() < total as usize {
        buf.resize(total as usize, 0);
    } else {
        buf.truncate(total as usize);
    }
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&raw);
    let body_at = offset + FRAME_HEADER_BYTES as u64;
    if let Some(partial) = read(
        &mut buf[FRAME_HEADER_BYTES..],
        body_at,
        "partial frame body",
    )? {
        return Ok(partial);
    }
    if crate::checksum::crc32c(&buf[FRAME_HEADER_BYTES..]) != header.body_crc32c {
        return Ok(FrameAt::Broken("frame body checksum mismatch".into()));
    }
    Ok(FrameAt::Frame(header))
}

/// Whether a valid frame header of the segment begun at `segment_start`
/// starts anywhere in `bytes` after its first byte (headers from a reused
/// file's earlier use start below it and do not count).
fn valid_frame_after_first(bytes: &[u8], segment_start: u64) -> bool {
    (1..bytes.len().saturating_sub(FRAME_HEADER_BYTES - 1)).any(|at| {
        bytes[at..at + 4] == crate::frame::FRAME_MAGIC
            && FrameHeader::decode(&bytes[at..]).is_ok_and(|h| h.start_position >= segment_start)
    })
}

impl Staging {
    /// Opens (creating if needed) the store in `dir`, recovering the last
    /// segment: a torn tail is truncated; damage before it is refused.
    /// A segment a rotation began and no sync named (`*.stg-next`: the
    /// receiver stopped in between) is named and recovered in turn when the
    /// frames before it end where it begins (a killed process: its frames
    /// are all there); otherwise it, and whatever follows it, is removed
    /// (HAX0024I: nothing from its start on was acknowledged).
    pub fn open(
        dir: impl AsRef<Path>,
        options: StagingOptions,
    ) -> Result<(Staging, StagingRecovery), StagingError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(io("create staging directory", &dir))?;
        let mut unnamed = take_unnamed(&dir)?;
        let mut found = list(&dir)?;
        if found.is_empty() {
            // Positions are "next sequence" values: nothing staged is 1.
            let path = dir.join(segment_name(1));
            create_segment(&path)?;
            found.push((1, path));
        }
        let mut segments = Vec::new();
        for (start_position, path) in &found {
            let bytes = std::fs::metadata(path)
                .map_err(io("stat staging segment", path))?
                .len();
            segments.push(Segment {
                start_position: *start_position,
                path: path.clone(),
                bytes,
                allocated: bytes,
                named: true,
            });
        }
        let (mut file, mut recovery) = recover_last(&mut segments, &options)?;
        while unnamed
            .first()
            .is_some_and(|(start, _)| *start == recovery.staged_position)
        {
            let (start, from) = unnamed.remove(0);
            let to = dir.join(segment_name(start));
            // Named only once what precedes it is durable, as a sync would.
            options
                .syncer
                .sync_data(&file)
                .map_err(|source| StagingError::SyncFailed {
                    path: segments.last().expect("a segment").path.clone(),
                    source,
                })?;
            std::fs::rename(&from, &to).map_err(io("name staging segment", &to))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync staging directory", &dir))?;
            tracing::info!(
                "HAX0025I staging segment {} was begun but not yet named when the receiver stopped; the frames before it end where it begins: named and recovered",
                to.display()
            );
            let bytes = std::fs::metadata(&to)
                .map_err(io("stat staging segment", &to))?
                .len();
            segments.push(Segment {
                start_position: start,
                path: to,
                bytes,
                allocated: bytes,
                named: true,
            });
            (file, recovery) = recover_last(&mut segments, &options)?;
        }
        for (_, path) in unnamed {
            tracing::info!(
                "HAX0024I staging segment {} was begun but never named, and the frames before it do not reach it (the sync that would have named it did not end; nothing from its start on was acknowledged): removed, the primary sends its frames again",
                path.display()
            );
            std::fs::remove_file(&path).map_err(io("remove unnamed staging segment", &path))?;
        }
        remove_leftover_spares(&dir)?;
        // Only a hint: without it the reader polls.
        let doorbell = Doorbell::create(&dir).ok();
        let mut staging = Staging {
            dir,
            options,
            active: file,
            unsynced: Vec::new(),
            active_unsynced: false,
            unnamed: Vec::new(),
            staged_position: recovery.staged_position,
            durable_position: recovery.staged_position,
            segments,
            poisoned: false,
            append_cut_short: false,
            spare: None,
            free: Vec::new(),
            spares_started: 0,
            doorbell,
        };
        staging.reserve();
        staging.prepare_next();
        Ok((staging, recovery))
    }

    /// Appends a received frame (already checked by `FrameDecoder`). Not
    /// durable until `sync`.
    pub fn append(&mut self, frame: &[u8]) -> Result<Appended, StagingError> {
        if self.poisoned {
            return Err(StagingError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        let header =
            FrameHeader::decode(frame).map_err(|e| StagingError::BadFrame(e.to_string()))?;
        if frame.len() != FRAME_HEADER_BYTES + header.body_bytes as usize {
            return Err(StagingError::BadFrame(
                "length differs from the header's".into(),
            ));
        }
        if header.next_sequence <= self.staged_position {
            return Ok(Appended::AlreadyStaged);
        }
        if header.start_position > self.staged_position {
            return Err(StagingError::Gap {
                first: header.start_position,
                staged: self.staged_position,
            });
        }
        if header.start_position < self.staged_position {
            // Part staged, part new: taking it would stage entries twice.
            return Err(StagingError::Overlap {
                start: header.start_position,
                next: header.next_sequence,
                staged: self.staged_position,
            });
        }
        if self.held_bytes() + frame.len() as u64 > self.options.budget_bytes {
            // Room for frames comes before segments made (or kept) ahead.
            self.discard_made_ahead();
            let held_bytes = self.held_bytes();
            if held_bytes + frame.len() as u64 > self.options.budget_bytes {
                return Err(StagingError::Full {
                    dir: self.dir.clone(),
                    budget_bytes: self.options.budget_bytes,
                    held_bytes,
                });
            }
        }
        if self.spare.as_ref().is_some_and(Spare::failed) {
            // Said (HAX0021W) and its file removed now, not at a rotation
            // taken for it: on a full disk that would begin a segment per
            // frame, each with a new try. The next try is at the next
            // rotation.
            let _ = self.take_spare();
        }
        let active = self.segments.last().expect("active");
        let full = active.bytes + frame.len() as u64 > self.options.segment_bytes;
        // A segment that grows by appends (the first one, or one begun while
        // none was ready) gives way to a prepared one as soon as it is ready.
        let unprepared = active.allocated <= active.bytes && self.spare_ready();
        if (full || unprepared) && active.bytes > FILE_HEADER_BYTES {
            self.rotate()?;
        }
        let active = self.segments.last_mut().expect("active");
        let end = active.bytes + frame.len() as u64;
        let pad = (end
            .next_multiple_of(WRITE_PAGE)
            .min(active.allocated.max(end))
            - end) as usize;
        let mut parts = [IoSlice::new(frame), IoSlice::new(&ZEROS[..pad])];
        if let Err(source) =
            crate::sys::write_all_vectored_at(&self.active, &mut parts, active.bytes)
        {
            self.append_cut_short = true;
            return Err(io("write staging segment", &active.path)(source));
        }
        active.bytes = end;
        self.active_unsynced = true;
        self.staged_position = header.next_sequence;
        if let Some(doorbell) = &self.doorbell {
            doorbell.ring();
        }
        Ok(Appended::Staged {
            staged_position: self.staged_position,
        })
    }

    /// Finishes the active segment and begins the next, at the staged
    /// position: the one made ahead when it is ready, else a new empty one.
    /// Nothing here waits for the disk (decisions.md 112): the old segment
    /// is synced, and the new one named, by the next group commit.
    fn rotate(&mut self) -> Result<(), StagingError> {
        // What lies past the old segment's frames stays: the unused end of
        // a segment made ahead (zeros, or a reused file's earlier frames)
        // reads as the end, and readers move on at the successor, which
        // the position its last frame ends at names. Cutting it off had the
        // filesystem free (and, mounted with `discard`, discard) its blocks
        // on the receiver's session thread (decisions.md 111). Only what an
        // append cut short (a full disk) left there is cut off: it may hold
        // a whole frame that the successor holds too. The sync that names
        // the successor makes the cut durable first.
        let old = self.segments.last_mut().expect("active");
        let len = self
            .active
            .metadata()
            .map_err(io("stat staging segment", &old.path))?
            .len();
        if self.append_cut_short || len > old.disk_bytes() {
            self.active
                .set_len(old.bytes)
                .map_err(io("cut the unused end of staging segment", &old.path))?;
            old.allocated = old.bytes;
            self.active_unsynced = true;
        }
        self.append_cut_short = false;
        let old_path = old.path.clone();

        // Begun under a name of its own (`*.stg-next`): the group commit
        // renames it into place once it and the segments before it are
        // durable, so a segment under its name always has every frame up
        // to its successor's name, as recovery (which reads the last
        // segment only) and readers take it to. Readers look for the
        // successor under both names.
        let unnamed = self.dir.join(unnamed_name(self.staged_position));
        let named = self.dir.join(segment_name(self.staged_position));
        let (file, allocated) = match self.take_spare() {
            Some((file, spare_path)) => {
                std::fs::rename(&spare_path, &unnamed)
                    .map_err(io("rename prepared staging segment to", &unnamed))?;
                (file, self.options.segment_bytes)
            }
            None => (create_segment(&unnamed)?, FILE_HEADER_BYTES),
        };
        let old_file = std::mem::replace(&mut self.active, file);
        if std::mem::replace(&mut self.active_unsynced, true) {
            self.unsynced.push((old_file, old_path));
        }
        if let Some(doorbell) = &self.doorbell {
            doorbell.rotated();
        }
        self.unnamed.push((unnamed.clone(), named));
        self.segments.push(Segment {
            start_position: self.staged_position,
            path: unnamed,
            bytes: FILE_HEADER_BYTES,
            allocated,
            named: false,
        });
        self.prepare_next();
        Ok(())
    }

    /// Makes the files `reserve_segments` asks for (as many as the budget
    /// has room for), kept like purged segments' files for the rotations
    /// that follow. Zero-filled at once: nothing else writes yet. Only an
    /// aid: a file that cannot be made is said (HAX0021W) and the store
    /// opens without it.
    fn reserve(&mut self) {
        let wanted = match self.options.prepare_segments {
            true => self.options.reserve_segments.min(KEPT_FILES),
            false => 0,
        };
        if wanted == 0 {
            return;
        }
        let began = std::time::Instant::now();
        let bytes = self.options.segment_bytes;
        // Room left beside the segment being written, grown to its size,
        // and the one made ahead.
        let room = (self.options.budget_bytes).saturating_sub(self.held_bytes() + 2 * bytes);
        let fill = ZeroFillControl::default();
        fill.hurry();
        while self.free.len() < wanted.min((room / bytes) as usize) {
            let path = self.spare_path();
            let made = create_segment(&path).and_then(|file| {
                crate::sys::zero_fill(&file, FILE_HEADER_BYTES, bytes, &fill, FillReach::Disk)
                    .map_err(io("zero-fill staging segment", &path))
            });
            if let Err(e) = made {
                self.not_prepared(&e);
                let _ = std::fs::remove_file(&path);
                break;
            }
            self.free.push((path, bytes));
        }
        let made = self.free.len();
        tracing::info!(
            "HAX0023I staging {}: {made} of {wanted} reserved segments made for the first rotations ({} MB zero-filled in {} ms)",
            self.dir.display(),
            made as u64 * bytes / 1_000_000,
            began.elapsed().as_millis(),
        );
    }

    /// Starts making the next segment ahead, from a purged segment's file
    /// when one was kept, unless one is under way or the budget has no
    /// room for it.
    fn prepare_next(&mut self) {
        if !self.options.prepare_segments || self.spare.is_some() || self.poisoned {
            return;
        }
        let kept = self.free.last().map_or(0, |(_, bytes)| *bytes);
        if self.held_bytes() - kept + self.options.segment_bytes > self.options.budget_bytes {
            return;
        }
        let (path, reuse) = match self.free.pop() {
            Some((path, _)) => (path, true),
            None => (self.spare_path(), false),
        };
        let fill_new = self.segments.len() <= FILL_WITHIN_SEGMENTS;
        match Spare::start(path.clone(), self.options.segment_bytes, reuse, fill_new) {
            Ok(spare) => self.spare = Some(spare),
            Err(e) => {
                self.not_prepared(&e);
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Gives up the segment being made ahead and the purged files kept for
    /// reuse, and removes their files.
    fn discard_made_ahead(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.discard();
        }
        for (path, _) in self.free.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// A new name for a segment made ahead (removed if found at open).
    fn spare_path(&mut self) -> PathBuf {
        self.spares_started += 1;
        self.dir.join(format!(
            "{}-{}.{SPARE_EXTENSION}",
            std::process::id(),
            self.spares_started
        ))
    }

    /// Keeps a purged segment's file to be made into a next segment: its
    /// blocks are allocated and written already, so nothing needs to be
    /// zero-filled (decisions.md 34). A new segment still being
    /// zero-filled is given up for it (into `cleanup`). Whether it was kept.
    fn keep_for_reuse(
        &mut self,
        segment: &Segment,
        cleanup: &mut Cleanup,
    ) -> Result<bool, StagingError> {
        if !self.options.prepare_segments || self.poisoned || self.free.len() >= KEPT_FILES {
            return Ok(false);
        }
        let path = self.spare_path();
        std::fs::rename(&segment.path, &path)
            .map_err(io("rename purged staging segment to", &path))?;
        self.free.push((path, segment.disk_bytes()));
        if !self.spare_ready() {
            cleanup.spares.extend(self.spare.take());
        }
        Ok(true)
    }

    fn not_prepared(&self, error: &dyn std::fmt::Display) {
        tracing::warn!(
            "HAX0021W could not prepare the next staging segment in {} ahead of time: {error}",
            self.dir.display()
        );
    }

    fn spare_ready(&self) -> bool {
        self.spare.as_ref().is_some_and(|s| s.thread.is_finished())
    }

    /// The segment made ahead, if it is ready (not while it is being made:
    /// a rotation does not wait for it). A failure is logged and dropped.
    fn take_spare(&mut self) -> Option<(File, PathBuf)> {
        if !self.spare_ready() {
            // Wanted now: no more pauses; a segment that grows by appends
            // gives way to it as soon as it is ready.
            if let Some(spare) = &self.spare {
                spare.fill.hurry();
            }
            return None;
        }
        let spare = self.spare.take()?;
        match spare.thread.join() {
            Ok(Ok(file)) => Some((file, spare.path)),
            Ok(Err(e)) => {
                self.not_prepared(&e);
                let _ = std::fs::remove_file(&spare.path);
                None
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Waits until the segment being made ahead is ready; whether there is
    /// one. The next rotation then begins it rather than an empty segment.
    pub fn await_prepared_segment(&self) -> bool {
        let Some(spare) = &self.spare else {
            return false;
        };
        while !spare.thread.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }

    /// Whether no segment is being made ahead now: the one begun last is
    /// ready, or none was begun. Does not wait (`await_prepared_segment`
    /// does).
    pub fn prepared_segment_ready(&self) -> bool {
        self.spare
            .as_ref()
            .is_none_or(|spare| spare.thread.is_finished())
    }

    /// Makes everything staged durable; returns the new durable position (the
    /// one to acknowledge). A failure poisons the store.
    pub fn sync(&mut self) -> Result<u64, StagingError> {
        let pending = self.prepare_sync()?;
        let result = pending.run().and_then(|()| pending.name_segments());
        self.complete_sync(pending, result)
    }

    /// The first half of `sync`, for a caller that runs the fsyncs without
    /// holding the store (group commit: frames keep arriving meanwhile). Run
    /// the returned `PendingSync`, then (in the order the syncs were
    /// prepared) its `name_segments`, then hand the result to
    /// `complete_sync`.
    pub fn prepare_sync(&mut self) -> Result<PendingSync, StagingError> {
        if self.poisoned {
            return Err(StagingError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        let mut files = std::mem::take(&mut self.unsynced);
        if std::mem::take(&mut self.active_unsynced) {
            let active = self.segments.last().expect("active");
            let file = self
                .active
                .try_clone()
                .map_err(io("open staging segment", &active.path))?;
            files.push((file, active.path.clone()));
        }
        Ok(PendingSync {
            files,
            names: std::mem::take(&mut self.unnamed),
            dir: self.dir.clone(),
            position: self.staged_position,
            syncer: Arc::clone(&self.options.syncer),
        })
    }

    /// The second half of `sync`: on success the durable position moves to
    /// what was staged when `prepare_sync` ran; a failure poisons the store.
    pub fn complete_sync(
        &mut self,
        pending: PendingSync,
        result: Result<(), (PathBuf, std::io::Error)>,
    ) -> Result<u64, StagingError> {
        if let Err((path, source)) = result {
            self.poisoned = true;
            tracing::error!(
                "HAX0003E fsync of staging segment {} failed: {source}",
                path.display()
            );
            return Err(StagingError::SyncFailed { path, source });
        }
        if self.poisoned {
            return Err(StagingError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        for (from, to) in pending.names {
            if let Some(segment) = self.segments.iter_mut().find(|s| s.path == from) {
                segment.path = to;
                segment.named = true;
            }
        }
        self.durable_position = self.durable_position.max(pending.position);
        Ok(self.durable_position)
    }

    /// Deletes segments all of whose frames end at or below `applied_position`
    /// (or keeps their files for reuse). The active segment is kept.
    /// Returns the bytes freed for frames.
    pub fn purge_through(&mut self, applied_position: u64) -> Result<u64, StagingError> {
        let (freed, cleanup) = self.purge_through_later(applied_position)?;
        cleanup.run()?;
        Ok(freed)
    }

    /// `purge_through`, leaving the slow part (deleting files, stopping a
    /// segment being made that a purged file replaces) to the returned
    /// `Cleanup`, for a caller that runs it without holding the store
    /// (appends wait for the store meanwhile).
    pub fn purge_through_later(
        &mut self,
        applied_position: u64,
    ) -> Result<(u64, Cleanup), StagingError> {
        let mut freed = 0;
        let mut cleanup = Cleanup::default();
        // A segment goes only once its successor is named: until then a
        // crash would leave the successor unnamed, removed at open, and
        // the store without the segment that holds its staged position.
        while self.segments.len() > 1
            && self.segments[1].named
            && self.segments[1].start_position <= applied_position
        {
            let segment = self.segments.remove(0);
            if !self.keep_for_reuse(&segment, &mut cleanup)? {
                cleanup.files.push(segment.path.clone());
            }
            tracing::info!(
                "HAX0020I staging segment {} purged: applied through {applied_position}",
                segment.path.display()
            );
            freed += segment.disk_bytes();
        }
        self.prepare_next();
        Ok((freed, cleanup))
    }

    pub fn staged_position(&self) -> u64 {
        self.staged_position
    }
    pub fn durable_position(&self) -> u64 {
        self.durable_position
    }
    /// Bytes on disk: segments (with any unused end), the segment being
    /// made ahead and a purged segment's file kept for the next one.
    pub fn held_bytes(&self) -> u64 {
        let spare = if self.spare.is_some() {
            self.options.segment_bytes
        } else {
            0
        };
        let kept: u64 = self.free.iter().map(|(_, bytes)| bytes).sum();
        self.segments.iter().map(Segment::disk_bytes).sum::<u64>() + spare + kept
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every frame staged (durable or not), in order, each as its full bytes.
    /// Sequential reads; apply builds on this. A segment with a successor
    /// ends where its frames reach the successor's start: what lies past
    /// them is its unused end (`rotate`).
    pub fn read_all(&self) -> Result<Vec<Vec<u8>>, StagingError> {
        let mut frames = Vec::new();
        for (i, segment) in self.segments.iter().enumerate() {
            let successor = self.segments.get(i + 1).map(|s| s.start_position);
            let file =
                File::open(&segment.path).map_err(io("open staging segment", &segment.path))?;
            let mut offset = FILE_HEADER_BYTES;
            let mut position = segment.start_position;
            let mut buf = Vec::new();
            while successor != Some(position) {
                let corrupt = |detail: String| StagingError::Corrupt {
                    path: segment.path.clone(),
                    offset,
                    detail,
                };
                match read_frame(
                    &file,
                    &segment.path,
                    offset,
                    segment.bytes,
                    segment.start_position,
                    &mut buf,
                )? {
                    FrameAt::Frame(h) if h.start_position == position => {
                        offset += buf.len() as u64;
                        position = h.next_sequence;
                        frames.push(buf.clone());
                    }
                    FrameAt::Frame(h) => {
                        return Err(corrupt(format!(
                            "frame covers {}..{} but the previous frame ended at {position}",
                            h.start_position, h.next_sequence
                        )))
                    }
                    FrameAt::End if successor.is_none() => break,
                    FrameAt::End => {
                        return Err(corrupt(format!(
                            "the segment ends at position {position}, before its successor's start"
                        )))
                    }
                    FrameAt::Earlier => {
                        return Err(corrupt(
                            "a frame from before the segment's start position among its frames"
                                .into(),
                        ))
                    }
                    FrameAt::Broken(detail) => return Err(corrupt(detail)),
                }
            }
        }
        Ok(frames)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.discard_made_ahead();
    }
}

/// What a purge leaves to be done outside the store: purged segments to
/// delete and segments being made ahead to stop and delete.
#[derive(Debug, Default)]
#[must_use = "run it, or the purged files stay on disk"]
pub struct Cleanup {
    files: Vec<PathBuf>,
    spares: Vec<Spare>,
}

impl Cleanup {
    pub fn run(self) -> Result<(), StagingError> {
        // Shrunk a piece at a time before each removal: the disk's discard
        // of a whole segment's blocks at once held the syncer's syncs
        // (decisions.md 109).
        for spare in self.spares {
            spare.discard_paced();
        }
        for path in &self.files {
            crate::sys::remove_paced(path).map_err(io("remove staging segment", path))?;
        }
        Ok(())
    }
}

/// Removes segments made ahead by an earlier run, and purged segments'
/// files kept for reuse (never renamed into place, so they hold no frame
/// anyone needs).
fn remove_leftover_spares(dir: &Path) -> Result<(), StagingError> {
    for item in std::fs::read_dir(dir).map_err(io("list staging", dir))? {
        let path = item.map_err(io("list staging", dir))?.path();
        if path.extension().is_some_and(|e| e == SPARE_EXTENSION) {
            std::fs::remove_file(&path).map_err(io("remove leftover staging spare", &path))?;
        }
    }
    Ok(())
}

/// The segments a rotation began and no sync named (`*.stg-next`), by
/// start position, for `Staging::open` to name or remove. Named segments
/// after the first of them are removed first: a sync names several
/// segments when several rotations came between two syncs, and after a
/// power loss any of those names may have reached the disk without the
/// others; nothing from the first one's start on was acknowledged.
fn take_unnamed(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StagingError> {
    let mut unnamed = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io("list staging", dir))? {
        let path = item.map_err(io("list staging", dir))?.path();
        if path.extension().is_none_or(|e| e != UNNAMED_EXTENSION) {
            continue;
        }
        match path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(start) => unnamed.push((start, path)),
            None => {
                std::fs::remove_file(&path).map_err(io("remove unnamed staging segment", &path))?
            }
        }
    }
    unnamed.sort();
    if let Some((first, _)) = unnamed.first() {
        for (start, path) in list(dir)? {
            if start > *first {
                tracing::info!(
                    "HAX0024I staging segment {} follows one begun but never named (the sync that would have named both did not end; nothing in it was acknowledged): removed, the primary sends its frames again",
                    path.display()
                );
                std::fs::remove_file(&path).map_err(io("remove staging segment", &path))?;
            }
        }
    }
    Ok(unnamed)
}

/// Recovers the last of `segments` (opened by `Staging::open`): reads its
/// frames, cuts a torn tail, gives a segment torn at creation its header
/// back. Returns its file and what was found.
fn recover_last(
    segments: &mut [Segment],
    options: &StagingOptions,
) -> Result<(File, StagingRecovery), StagingError> {
    let last = segments.last_mut().expect("at least one segment");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last.path)
        .map_err(io("open staging segment", &last.path))?;
    if last.bytes < FILE_HEADER_BYTES {
        // Created by a rotation that crashed before its header was durable:
        // it holds no frame; write the header again.
        file.set_len(0)
            .map_err(io("reset staging segment", &last.path))?;
        drop(file);
        std::fs::remove_file(&last.path).map_err(io("reset staging segment", &last.path))?;
        file = create_segment(&last.path)?;
        file.seek(SeekFrom::Start(0))
            .map_err(io("seek staging segment", &last.path))?;
        last.bytes = FILE_HEADER_BYTES;
        last.allocated = FILE_HEADER_BYTES;
    }
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    let corrupt = |offset: u64, detail: String| StagingError::Corrupt {
        path: last.path.clone(),
        offset,
        detail,
    };
    if file.read_exact(&mut header).is_err() || header[..8] != STAGING_MAGIC {
        return Err(corrupt(
            0,
            "not a staging segment (bad or short file header)".into(),
        ));
    }
    let mut recovery = StagingRecovery {
        staged_position: last.start_position,
        ..StagingRecovery::default()
    };
    let mut offset = FILE_HEADER_BYTES;
    let mut buf = Vec::new();
    loop {
        let detail = match read_frame(
            &file,
            &last.path,
            offset,
            last.bytes,
            last.start_position,
            &mut buf,
        )? {
            FrameAt::Frame(h) if h.start_position == recovery.staged_position => {
                offset += buf.len() as u64;
                recovery.frames += 1;
                recovery.staged_position = h.next_sequence;
                continue;
            }
            FrameAt::Frame(h) => {
                return Err(corrupt(
                    offset,
                    format!(
                        "frame covers {}..{} but the previous frame ended at {}",
                        h.start_position, h.next_sequence, recovery.staged_position
                    ),
                ))
            }
            FrameAt::End => break,
            FrameAt::Broken(_)
                if crate::sys::is_zero(&file, offset, last.bytes)
                    .map_err(io("read staging segment", &last.path))? =>
            {
                // The unused end of a segment made ahead.
                break;
            }
            FrameAt::Broken(detail) => detail,
            FrameAt::Earlier => "a frame from the file's earlier use".to_owned(),
        };
        // Not a frame of this segment and not zeros to the end: a torn
        // tail, or what a reused file held before. Either way the end,
        // unless a frame of this segment follows.
        let mut rest = Vec::new();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut rest))
            .map_err(io("read staging segment", &last.path))?;
        if valid_frame_after_first(&rest, last.start_position) {
            return Err(corrupt(
                offset,
                format!("{detail}; valid frames follow, so this is not a torn tail"),
            ));
        }
        let torn = rest.len() < FRAME_HEADER_BYTES
            || FrameHeader::decode(&rest)
                .is_ok_and(|h| h.start_position == recovery.staged_position);
        if !torn {
            tracing::info!("HAX0022I staging segment {}: its frames end at offset {offset}; the {} bytes after are not frames of it (the reused file's earlier frames, or a write cut short) and will be overwritten", last.path.display(), last.bytes - offset);
            break;
        }
        tracing::warn!("HAX0005W staging segment {} had a torn tail at offset {offset} ({detail}): {} bytes truncated", last.path.display(), last.bytes - offset);
        recovery.truncated_bytes = last.bytes - offset;
        file.set_len(offset)
            .map_err(io("truncate staging segment", &last.path))?;
        options
            .syncer
            .sync_data(&file)
            .map_err(|source| StagingError::SyncFailed {
                path: last.path.clone(),
                source,
            })?;
        last.allocated = offset;
        break;
    }
    last.bytes = offset;
    Ok((file, recovery))
}

fn create_segment(path: &Path) -> Result<File, StagingError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("create staging segment", path))?;
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&STAGING_MAGIC);
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    if let Err(source) = file.write_all(&header) {
        // Not left behind: the next try (a full disk with room again)
        // makes it anew rather than finding it there. Should the removal
        // fail too, opening the store resets a segment torn at creation.
        let _ = std::fs::remove_file(path);
        return Err(io("write staging segment header", path)(source));
    }
    Ok(file)
}
