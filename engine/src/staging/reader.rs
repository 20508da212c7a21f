//! Reading a staging store while its receiver keeps writing it: apply's
//! source. A `StagingReader` follows the segments in position order from a
//! given position and hands out whole frames, checksums checked.
//!
//! The reader writes nothing but its doorbell's waiting flag
//! (`prepare_wait`, decisions.md 70). It may run in another process than
//! the receiver, so it learns what is there from the files alone:
//! - A frame is taken only when all its bytes are present and its body
//!   checksum matches. A partial or damaged frame at the end of the newest
//!   segment is a write in progress (or a torn tail the receiver will cut
//!   off when it restarts): the reader waits for it.
//! - A segment is finished once a later segment exists: the receiver
//!   begins a new one (named by the staged position; `*.stg-next` until
//!   the group commit names it) only after the last frame of the old one,
//!   and never appends to an older one. A finished segment keeps its unused
//!   end (zeros, or a reused file's earlier frames): the reader leaves it
//!   at the successor its position names (below). A partial or damaged
//!   frame in a finished segment short of that is corruption (HAX0002E);
//!   what was read before the later segment was seen is read again first,
//!   as it may predate the finishing.
//! - In the newest segment, a frame whose header is whole but whose body
//!   does not match its checksum, followed by the header of the frame that
//!   continues it, is damage too: the receiver writes a frame wholly before
//!   it begins the next (read again first, for the same reason). Damage
//!   there that leaves no whole header after it (or breaks the header
//!   itself) cannot be told from a write in progress and is waited on.
//! - Frames follow each other without gap: a frame that does not start
//!   where the previous one ended is corruption too.
//! - A segment named by the reader's position (under either name), once
//!   it exists, means the segment being read is finished and wholly read:
//!   the reader goes on there whatever else the open file holds (the look
//!   for it waits for the doorbell's rotation count to move, decisions.md
//!   112). Purged segments' files are
//!   reused as new segments (decisions.md 34), possibly under a reader
//!   that has not yet moved on; a new segment's earlier frames start
//!   below its name and read as "nothing more yet".

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    list, read_frame, segment_name, unnamed_name, Doorbell, FrameAt, StagingError,
    FILE_HEADER_BYTES, STAGING_MAGIC,
};
use crate::frame::{CheckedBody, FrameHeader};
use crate::limits::FRAME_HEADER_BYTES;

/// Follows one staging store from a position.
#[derive(Debug)]
pub struct StagingReader {
    dir: PathBuf,
    /// The segment being read, once there is one.
    segment: Option<OpenSegment>,
    /// Everything below this has been handed out (or skipped as below the
    /// starting position); the next frame must start here.
    position: u64,
    /// The starting position: frames holding nothing at or above it (their
    /// `next_sequence` is at or below it) are skipped, not handed out.
    from: u64,
    /// The receiver's doorbell, once it has made one.
    doorbell: Option<Doorbell>,
    /// When the directory was last listed for a later segment.
    listed_at: Option<Instant>,
    /// The doorbell's rotation count at the last look for the successor's
    /// file that found none, and when that was (`successor_may_exist`).
    /// Cleared on moving to the successor: the count may have passed
    /// several rotations by then (a reader a few segments behind).
    looked_for_successor: Option<(u32, Instant)>,
}

#[derive(Debug)]
struct OpenSegment {
    start: u64,
    file: File,
    path: PathBuf,
    offset: u64,
    /// The file's length when last looked at: it is looked at again only
    /// when no whole frame lies below it (an `fstat` a frame was a tenth of
    /// the reads' system calls).
    len: u64,
    /// The kernel was asked to drop this file's cached pages below here.
    released: u64,
}

/// What the reader found at its position.
enum Found {
    Frame(FrameHeader),
    /// A whole frame that does not start at the reader's position.
    Stray(FrameHeader),
    /// No whole, checked frame of this segment at the offset; `trailing`
    /// bytes follow it.
    NotYet {
        trailing: u64,
    },
}

impl StagingReader {
    /// A reader that will hand out the frames holding positions `from` and
    /// after (the first one may begin below `from`: the caller skips those
    /// entries). Refuses (HAX0009E) when staging no longer holds `from`.
    pub fn open(dir: impl AsRef<Path>, from: u64) -> Result<StagingReader, StagingError> {
        let mut reader = StagingReader {
            dir: dir.as_ref().to_owned(),
            segment: None,
            position: 0,
            from,
            doorbell: None,
            listed_at: None,
            looked_for_successor: None,
        };
        reader.find_start(from)?;
        Ok(reader)
    }

    /// Whether a segment later than the one begun at `start` exists. Every
    /// look that finds nothing new in a segment made ahead (its zeros are
    /// trailing bytes) asks; the directory is listed at most every
    /// `LIST_EVERY` unless `now` (the second look before damage is
    /// reported). The next segment in the normal course begins at the
    /// reader's position and is found by name first (`next`); one anywhere
    /// else means damage, whose report can wait that long.
    fn later_segment(&mut self, start: u64, now: bool) -> Result<bool, StagingError> {
        if !now && self.listed_at.is_some_and(|at| at.elapsed() < LIST_EVERY) {
            return Ok(false);
        }
        self.listed_at = Some(Instant::now());
        Ok(list(&self.dir)?.iter().any(|(s, _)| *s > start))
    }

    /// Before a last look for a frame (`next`) when nothing came: says to
    /// the receiver that the reader is about to sleep, and returns what
    /// `wait` then sleeps on. `None` while the receiver has made no
    /// doorbell: the caller then sleeps a while and looks again.
    pub fn prepare_wait(&mut self) -> Option<u32> {
        if self.doorbell.is_none() {
            self.doorbell = Doorbell::open(&self.dir).ok();
        }
        self.doorbell.as_ref().map(Doorbell::prepare)
    }

    /// Sleeps until the receiver appends a frame after `prepare_wait`
    /// returned `seen` (at once if one was appended since), or `timeout`.
    pub fn wait(&self, seen: u32, timeout: Duration) {
        match &self.doorbell {
            Some(doorbell) => doorbell.wait(seen, timeout),
            None => std::thread::sleep(timeout),
        }
    }

    /// The position after the last frame handed out or skipped.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Chooses the segment holding `from`, if the store exists yet.
    fn find_start(&mut self, from: u64) -> Result<(), StagingError> {
        if !self.dir.exists() {
            return Ok(());
        }
        let found = list(&self.dir)?;
        let Some((start, path)) = found.iter().rev().find(|(start, _)| *start <= from) else {
            return match found.first() {
                None => Ok(()),
                Some((oldest, _)) => Err(StagingError::Purged {
                    dir: self.dir.clone(),
                    wanted: from,
                    oldest: *oldest,
                }),
            };
        };
        self.position = *start;
        let file = File::open(path).map_err(super::io("open staging segment", path))?;
        self.segment = Some(open_segment(*start, path, file)?);
        Ok(())
    }

    /// The next whole frame into `buf` (header and body), or `None` when
    /// nothing more is staged yet. Call again later for more. Its body was
    /// checked against its checksum: hand `buf` and the `CheckedBody` to
    /// `FrameDecoder::decode_checked`.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<CheckedBody>, StagingError> {
        // A later segment was seen while this one showed no whole frame.
        let mut finished = false;
        loop {
            if self.segment.is_none() {
                self.find_start(self.from)?;
                if self.segment.is_none() {
                    return Ok(None);
                }
            }
            let found = self.read_at_offset(buf)?;
            if let Found::Frame(header) = found {
                if header.next_sequence <= self.from {
                    finished = false;
                    continue;
                }
                // `read_frame` compared the body with its checksum.
                return Ok(Some(CheckedBody::new(header)));
            }
            let current = self.segment.as_ref().expect("open").start;
            // Looked for at once on a second pass (`finished`: a later
            // segment was listed).
            if current != self.position && (finished || self.successor_may_exist()) {
                if let Some(next) = self.open_successor()? {
                    // Finished before its successor was begun.
                    self.segment.as_ref().expect("open").release_rest();
                    self.segment = Some(next);
                    self.looked_for_successor = None;
                    finished = false;
                    continue;
                }
            }
            match found {
                Found::Frame(_) => unreachable!("handed out above"),
                Found::Stray(header) => {
                    let current = self.segment.as_ref().expect("open");
                    return Err(StagingError::Corrupt {
                        path: current.path.clone(),
                        offset: current.offset,
                        detail: format!(
                            "frame covers {}..{} but the previous frame ended at {}",
                            header.start_position, header.next_sequence, self.position
                        ),
                    });
                }
                Found::NotYet { trailing: 0 } => return Ok(None),
                Found::NotYet { trailing } => {
                    // A write in progress, unless the receiver has moved on
                    // to a later segment: then these bytes are damage.
                    let current = self.segment.as_ref().expect("open").start;
                    if !self.later_segment(current, finished)? {
                        if !self.followed_by_a_frame()? {
                            return Ok(None);
                        }
                        if !finished {
                            finished = true;
                            continue;
                        }
                        let current = self.segment.as_ref().expect("open");
                        return Err(StagingError::Corrupt {
                            path: current.path.clone(),
                            offset: current.offset,
                            detail: "a frame whose body does not match its checksum, followed by the frame after it".into(),
                        });
                    }
                    if !finished {
                        // Read again: the segment may have been finished
                        // since (its last frame written).
                        finished = true;
                        continue;
                    }
                    let current = self.segment.as_ref().expect("open");
                    return Err(StagingError::Corrupt {
                        path: current.path.clone(),
                        offset: current.offset,
                        detail: format!(
                            "{trailing} bytes here are not a whole, intact frame, and a later segment exists"
                        ),
                    });
                }
            }
        }
    }

    /// Whether to look for the successor's file now: when the receiver has
    /// rotated since the last look that found none (a rotation bumps the
    /// count after the file is there), or `LIST_EVERY` has passed (a
    /// doorbell made by a receiver that counts no rotations), or there is
    /// no doorbell. Each look is two or three failed path lookups while the
    /// reader keeps up with the receiver: at every look for a frame, they
    /// cost apply 10% more CPU in lag runs (decisions.md 112).
    fn successor_may_exist(&mut self) -> bool {
        let Some(doorbell) = &self.doorbell else {
            return true;
        };
        let rotations = doorbell.rotations();
        let due = self
            .looked_for_successor
            .is_none_or(|(seen, at)| seen != rotations || at.elapsed() >= LIST_EVERY);
        if due {
            self.looked_for_successor = Some((rotations, Instant::now()));
        }
        due
    }

    /// The segment that begins at the reader's position, if the receiver
    /// has begun it: under its name, or under the name it has from its
    /// rotation until the group commit renames it (decisions.md 112). A
    /// rename between two looks is looked through once more.
    fn open_successor(&self) -> Result<Option<OpenSegment>, StagingError> {
        let named = self.dir.join(segment_name(self.position));
        let unnamed = self.dir.join(unnamed_name(self.position));
        for path in [&named, &unnamed, &named] {
            match File::open(path) {
                Ok(file) => return open_segment(self.position, path, file).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(super::io("open staging segment", path)(e)),
            }
        }
        Ok(None)
    }

    fn read_at_offset(&mut self, buf: &mut Vec<u8>) -> Result<Found, StagingError> {
        let segment = self.segment.as_mut().expect("open");
        let mut looked = false;
        let header = loop {
            match read_frame(
                &segment.file,
                &segment.path,
                segment.offset,
                segment.len,
                segment.start,
                buf,
            )? {
                FrameAt::Frame(header) => break header,
                FrameAt::End | FrameAt::Earlier | FrameAt::Broken(_) if !looked => {
                    segment.len = segment
                        .file
                        .metadata()
                        .map_err(super::io("stat staging segment", &segment.path))?
                        .len();
                    looked = true;
                }
                FrameAt::End | FrameAt::Earlier | FrameAt::Broken(_) => {
                    return Ok(Found::NotYet {
                        trailing: segment.len.saturating_sub(segment.offset),
                    })
                }
            }
        };
        if header.start_position != self.position {
            return Ok(Found::Stray(header));
        }
        segment.offset += buf.len() as u64;
        self.position = header.next_sequence;
        segment.release_behind();
        Ok(Found::Frame(header))
    }

    /// Whether the frame at the offset has a whole header that continues
    /// the stream, and the header of the frame that continues it follows
    /// where its body ends.
    fn followed_by_a_frame(&self) -> Result<bool, StagingError> {
        let segment = self.segment.as_ref().expect("open");
        let header_at = |offset: u64| -> Result<Option<FrameHeader>, StagingError> {
            let mut raw = [0u8; FRAME_HEADER_BYTES];
            match segment.file.read_exact_at(&mut raw, offset) {
                Ok(()) => Ok(FrameHeader::decode(&raw).ok()),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(super::io("read staging segment", &segment.path)(e)),
            }
        };
        let Some(this) = header_at(segment.offset)?.filter(|h| h.start_position == self.position)
        else {
            return Ok(false);
        };
        let next = segment.offset + (FRAME_HEADER_BYTES as u64) + u64::from(this.body_bytes);
        Ok(header_at(next)?.is_some_and(|after| after.start_position == this.next_sequence))
    }
}

/// Most time between listings of the directory while nothing new comes
/// (`StagingReader::later_segment`).
const LIST_EVERY: Duration = Duration::from_millis(20);

/// How far behind the reader a segment's cached pages are given back, and
/// in steps of how much. A frame behind the reader is read again only after
/// a restart (from the disk then); its pages are worth more as the next
/// pages anyone writes: on a VM whose host reclaims freed guest memory, a
/// page cache that keeps growing pays a host fault per new page (about
/// 10 us here, against under 1 us for a page freed moments before:
/// decisions.md 48). The lag leaves the receiver time to make them durable
/// first (dirty pages are not dropped, only queued for write-back).
const RELEASE_LAG: u64 = 32 << 20;
const RELEASE_STEP: u64 = 8 << 20;
/// Released ranges end on this boundary, so that they tile: the kernel
/// drops only pages wholly inside a range (any page size up to this).
const RELEASE_ALIGN: u64 = 64 << 10;

impl OpenSegment {
    /// Gives back the pages more than `RELEASE_LAG` behind the reader.
    fn release_behind(&mut self) {
        let to = self.offset.saturating_sub(RELEASE_LAG) / RELEASE_ALIGN * RELEASE_ALIGN;
        if to >= self.released + RELEASE_STEP {
            // Only a hint: a filesystem that refuses it loses nothing.
            let _ = crate::sys::drop_cached(&self.file, self.released, to - self.released);
            self.released = to;
        }
    }

    /// Gives back a segment the reader has finished: all of it, as pages
    /// asked for while still dirty were kept then.
    fn release_rest(&self) {
        let _ = crate::sys::drop_cached(&self.file, 0, 0);
    }
}

fn open_segment(start: u64, path: &Path, file: File) -> Result<OpenSegment, StagingError> {
    // Read-ahead from the frames being read runs on past the receiver's
    // last write, into the zeros or earlier frames of the file's made-ahead
    // length: disk reads of what the receiver overwrites moments later
    // (decisions.md 49). Frames are read whole, so nothing is lost. Only a
    // hint: a filesystem that refuses it reads ahead.
    let _ = crate::sys::no_read_ahead(&file);
    let mut header = [0u8; FILE_HEADER_BYTES as usize];
    // A segment shorter than its header is one being created: its frames
    // start after the header once it is written.
    if file.read_exact_at(&mut header, 0).is_ok() && header[..8] != STAGING_MAGIC {
        return Err(StagingError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            detail: "not a staging segment (bad file header)".into(),
        });
    }
    Ok(OpenSegment {
        start,
        file,
        path: path.to_owned(),
        offset: FILE_HEADER_BYTES,
        len: 0,
        released: 0,
    })
}
