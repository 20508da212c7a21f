//! A sequential, validating reader over a journal's segments: the one place
//! where entries are read back in order. The scraper follows the live tail with
//! it; recovery tests and the journal tool read whole journals with it.
//!
//! Invariants checked on every step: each entry's checksum and layout, and that
//! its sequence is exactly one more than the previous one, across segments. A
//! published entry that fails these checks is corruption, never skipped.
//!
//! The cursor never changes segment by itself: after J-NR it reports
//! `Step::EndOfSegment`, so a caller holding offsets into the current segment
//! (a batch) can finish with them before calling `next_segment`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::catalog::Catalog;
use super::entry::{decode_validated, Entry, EntryType};
use super::segment::{list_segments, segment_file_name, MappedSegment, SegmentError};

/// A finished segment's pages are dropped when at least this many segments
/// follow the one the cursor enters: it is reading a backlog, not following
/// the writer (decisions.md 53).
const BEHIND_SEGMENTS: usize = 2;

/// One step of the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A valid entry of the current segment (`JournalCursor::entry` gives
    /// it).
    Entry(EntryAt),
    /// Nothing is published at the tail yet.
    Idle,
    /// The current segment ended with J-NR; call `next_segment`.
    EndOfSegment,
}

/// Where a step found a valid entry: its segment, offset and length. Only
/// the cursor makes one, after the entry's every check passed, so
/// `JournalCursor::entry` gives the entry back without decoding it again
/// (a sender reads each entry's place three times after the step:
/// selection, the frame's offsets, the copy).
///
/// One `u128`: the first sequence of its segment in the low half, its
/// offset and length above. Made of three fields, it was written with three
/// stores and copied out of `step`'s result with one 16-byte load, which
/// waited for the stores to reach the cache at every entry; a `u128` is
/// written and read as two 8-byte halves (decisions.md 99).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EntryAt(u128);

impl EntryAt {
    fn new(segment: u64, offset: u32, len: u32) -> EntryAt {
        EntryAt(segment as u128 | (offset as u128) << 64 | (len as u128) << 96)
    }

    /// The first sequence of the segment it is in.
    fn segment(&self) -> u64 {
        self.0 as u64
    }

    /// Its byte offset in its segment.
    pub fn offset(&self) -> usize {
        (self.0 >> 64) as u32 as usize
    }

    fn len(&self) -> usize {
        (self.0 >> 96) as u32 as usize
    }
}

impl std::fmt::Debug for EntryAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryAt")
            .field("segment", &self.segment())
            .field("offset", &self.offset())
            .field("len", &self.len())
            .finish()
    }
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("HAD0121E journal {dir} no longer holds sequence {requested}: the oldest retained is {oldest}")]
    Purged {
        dir: PathBuf,
        requested: u64,
        oldest: u64,
    },
    #[error("HAD0122E journal {dir} has no segments")]
    Empty { dir: PathBuf },
    #[error(
        "HAD0123E journal segment {path} is missing, but the previous segment's J-NR points to it"
    )]
    MissingSegment { path: PathBuf },
}

/// A position in a journal that reads forward, validating as it goes.
#[derive(Debug)]
pub struct JournalCursor {
    dir: PathBuf,
    segment: MappedSegment,
    offset: usize,
    next_sequence: u64,
    skip_below: u64,
    catalog: Catalog,
    /// Object entry whose catalog change applies at the next step, so callers
    /// still see the old name of an object being dropped or renamed.
    pending_catalog: Option<(EntryType, u64)>,
    at_end_of_segment: bool,
}

impl JournalCursor {
    /// A cursor whose first `Step::Entry` is sequence `from_sequence` (or the
    /// first entry written after it, if the journal has not reached it yet).
    pub fn open(dir: impl AsRef<Path>, from_sequence: u64) -> Result<JournalCursor, ReadError> {
        let dir = dir.as_ref().to_owned();
        let segments = list_segments(&dir).map_err(SegmentError::io("list journal", &dir))?;
        let oldest = segments
            .first()
            .ok_or_else(|| ReadError::Empty { dir: dir.clone() })?
            .0;
        let from_sequence = from_sequence.max(1);
        if from_sequence < oldest {
            return Err(ReadError::Purged {
                dir,
                requested: from_sequence,
                oldest,
            });
        }
        let path = &segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= from_sequence)
            .expect("oldest <= from")
            .1;
        let segment = MappedSegment::open(path, false)?;
        Ok(JournalCursor {
            offset: segment.entries_start(),
            next_sequence: segment.first_sequence(),
            catalog: segment.catalog()?,
            skip_below: from_sequence,
            segment,
            dir,
            pending_catalog: None,
            at_end_of_segment: false,
        })
    }

    /// Reads the next entry, if one is published.
    pub fn step(&mut self) -> Result<Step, ReadError> {
        loop {
            if let Some((entry_type, offset)) = self.pending_catalog.take() {
                let entry = published_entry(&self.segment, offset as usize).expect("validated");
                debug_assert_eq!(entry.entry_type(), entry_type);
                self.catalog.apply_entry(&entry);
            }
            if self.at_end_of_segment {
                return Ok(Step::EndOfSegment);
            }
            let offset = self.offset;
            let entry = match self.segment.entry_at(offset) {
                Ok(None) => return Ok(Step::Idle),
                Ok(Some(entry)) => entry,
                Err(err) => return Err(self.corrupt(offset, err.to_string())),
            };
            if entry.sequence() != self.next_sequence {
                let detail = format!(
                    "entry has sequence {}, expected {}",
                    entry.sequence(),
                    self.next_sequence
                );
                return Err(self.corrupt(offset, detail));
            }
            let entry_type = entry.entry_type();
            self.offset += entry.padded_bytes();
            self.next_sequence += 1;
            if entry_type == EntryType::NextSegment {
                self.at_end_of_segment = true;
                return Ok(Step::EndOfSegment);
            }
            if entry_type.is_object() {
                self.pending_catalog = Some((entry_type, offset as u64));
            }
            if entry.sequence() >= self.skip_below {
                return Ok(Step::Entry(EntryAt::new(
                    self.segment.first_sequence(),
                    offset as u32,
                    entry.as_bytes().len() as u32,
                )));
            }
        }
    }

    /// Moves to the segment after a J-NR.
    pub fn next_segment(&mut self) -> Result<(), ReadError> {
        assert!(
            self.at_end_of_segment,
            "next_segment called before EndOfSegment"
        );
        let path = self.dir.join(segment_file_name(self.next_sequence));
        if !path.exists() {
            return Err(ReadError::MissingSegment { path });
        }
        let segment = MappedSegment::open(&path, false)?;
        if segment.first_sequence() != self.next_sequence {
            return Err(self.corrupt(
                24,
                format!("next segment starts at {}", segment.first_sequence()),
            ));
        }
        self.offset = segment.entries_start();
        let entered = segment.first_sequence();
        let finished = std::mem::replace(&mut self.segment, segment);
        if self.segments_after(entered) >= BEHIND_SEGMENTS {
            // Far behind the writer, the cursor reads a segment once: its
            // pages are given back for the next ones to be made of. At the
            // tail they stay, for its file's reuse as a spare (decisions.md 53).
            finished.release_cached();
        }
        self.at_end_of_segment = false;
        Ok(())
    }

    /// How many of the journal's segments start after `first` (0 when the
    /// directory cannot be listed).
    fn segments_after(&self, first: u64) -> usize {
        list_segments(&self.dir).map_or(0, |segments| {
            segments.iter().filter(|(f, _)| *f > first).count()
        })
    }

    /// The entry a `Step::Entry` reported, while the cursor is still in its
    /// segment (`None` after `next_segment`).
    #[inline]
    pub fn entry(&self, at: EntryAt) -> Option<Entry<'_>> {
        if at.segment() != self.segment.first_sequence() {
            return None;
        }
        let (offset, len) = (at.offset(), at.len());
        assert!(
            offset + len <= self.segment.len(),
            "{at:?} is outside its segment"
        );
        // SAFETY: inside the map (just checked); the step that made `at`
        // saw the entry published, so its bytes are complete and never
        // written again.
        let bytes = unsafe { std::slice::from_raw_parts(self.segment.ptr().add(offset), len) };
        Some(Entry::validated(bytes))
    }

    /// Sleeps until something may be published at the tail, or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        if !self.at_end_of_segment {
            self.segment.wait_published(self.offset, timeout);
        }
    }

    /// Sequence of the next entry this cursor will read.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Sequence of the next entry this cursor will return: entries below the
    /// `from_sequence` it was opened at are read but never returned.
    pub fn position(&self) -> u64 {
        self.next_sequence.max(self.skip_below)
    }

    /// The object catalog as of the last entry returned.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn segment(&self) -> &MappedSegment {
        &self.segment
    }

    fn corrupt(&self, offset: usize, detail: String) -> ReadError {
        SegmentError::Corrupt {
            path: self.segment.path().to_owned(),
            offset: offset as u64,
            detail,
        }
        .into()
    }
}

/// Every entry of the journal in `dir` from `from_sequence` to its current
/// end, encoded, in order (J-NR excluded): for tools and tests that read a
/// whole small journal.
pub fn read_entries(dir: impl AsRef<Path>, from_sequence: u64) -> Result<Vec<Vec<u8>>, ReadError> {
    let mut cursor = JournalCursor::open(dir, from_sequence)?;
    let mut out = Vec::new();
    loop {
        match cursor.step()? {
            Step::Entry(at) => out.push(cursor.entry(at).expect("validated").as_bytes().to_vec()),
            Step::EndOfSegment => cursor.next_segment()?,
            Step::Idle => return Ok(out),
        }
    }
}

fn published_entry(segment: &MappedSegment, offset: usize) -> Option<Entry<'_>> {
    if offset + 8 > segment.len() || segment.published_len(offset) == 0 {
        return None;
    }
    let available = segment.len() - offset;
    // SAFETY: the length word is published (acquire above), so the entry bytes
    // are complete and immutable; the slice stays inside the map.
    let bytes = unsafe { std::slice::from_raw_parts(segment.ptr().add(offset), available) };
    decode_validated(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::EntryAt;

    #[test]
    fn an_entry_place_gives_back_its_segment_offset_and_length() {
        for (segment, offset, len) in [
            (0, 0, 0),
            (1, 56, 152),
            (u64::MAX, u32::MAX, u32::MAX),
            (u64::MAX - 1, 0, u32::MAX),
            (7, u32::MAX, 0),
        ] {
            let at = EntryAt::new(segment, offset, len);
            assert_eq!(
                (at.segment(), at.offset(), at.len()),
                (segment, offset as usize, len as usize),
                "{at:?}"
            );
        }
        assert_ne!(EntryAt::new(1, 2, 3), EntryAt::new(1, 3, 2));
    }
}
