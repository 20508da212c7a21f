//! The journal: the durable, ordered log of record changes, commit boundaries and
//! object operations that applications write and the scraper reads.
//!
//! A journal is a directory of segment files (`segment.rs`), each preallocated
//! and memory-mapped. Appenders claim space and sequence numbers together with
//! one atomic add on the segment tail, write their entry, and publish its length
//! last (`writer.rs`). Opening a journal recovers it (`recover.rs`): a torn tail
//! is truncated, corruption before the tail is refused.
//!
//! Invariants:
//! - Sequence numbers are strictly increasing and gap-free per journal, across
//!   segments (J-NR entries take a sequence number too).
//! - An entry is visible to readers only once its length word is published, and
//!   it never changes afterwards.
//! - An append returns as durable only after every entry up to it is published
//!   and synced (group commit syncs the contiguous published prefix).
//! - After a failed fsync the journal refuses every further write.

pub mod catalog;
pub mod entry;
pub mod reader;
mod recover;
pub mod retention;
pub mod segment;
mod writer;

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use catalog::{Catalog, CatalogError};
pub use entry::{decode, DecodeError, Entry, EntryError, EntryType, NewEntry};
pub use reader::{read_entries, EntryAt, JournalCursor, ReadError, Step};
pub use recover::RecoveryReport;
pub use retention::{
    acked_positions, held_positions, read_position_file, AckRecord, HoldRecord, PositionFile,
};
pub use segment::{list_segments, segment_file_name, MappedSegment, SegmentError};
pub use writer::{Appender, Journal, PurgeReport};

use crate::clock::{Clock, SystemClock};
use crate::limits::{SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

/// When an append that ends a unit of work returns, relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Never fsync; the OS writes pages back when it likes. Fastest; a power
    /// loss may lose recent entries (a killed process loses nothing).
    None,
    /// Every commit point is fsynced before its append returns. Concurrent
    /// committers may still share one fsync.
    Fsync,
    /// Commit points wait for a shared fsync; the first waiter waits up to
    /// `max_delay` for others to join before it syncs for all of them (only
    /// when more than one `Appender` is live; a lone appender syncs at once).
    GroupCommit { max_delay: Duration },
}

/// Makes a file's data durable. Behind a trait so tests can inject failures.
pub trait SyncFile: Send + Sync + Debug {
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// `fdatasync(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsSync;

impl SyncFile for OsSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// How a journal is opened.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// Written into every segment header; opening a directory whose segments
    /// carry another id is refused.
    pub journal_id: u64,
    /// Size of each new segment file.
    pub segment_bytes: usize,
    pub durability: Durability,
    pub clock: Arc<dyn Clock>,
    pub syncer: Arc<dyn SyncFile>,
    /// Prepare the next segment on a background thread (recommended); when off,
    /// the appender that fills a segment creates the next one itself.
    pub background_preallocation: bool,
    /// Have the background thread write its spare segments full of zeros
    /// and sync them before use (recommended): appends then overwrite
    /// written blocks whose pages are cached, so an appender's first touch
    /// of a page neither waits for the filesystem's journal (ext4 takes a
    /// journal handle to write into preallocated, unwritten blocks) nor has
    /// the kernel zero a new page. Costs a segment's worth of disk writes
    /// per segment, on the background thread (decisions.md 30). With
    /// `Durability::None` the zeros over a purged segment's file (see
    /// `purge_acknowledged`) go to the page cache only, neither written back
    /// nor synced (decisions.md 44): nothing syncs such a journal, the
    /// file's blocks are written already, and zeros that entries overwrite
    /// soon never reach the disk.
    /// Segments made on an appender's path are never zero-filled.
    pub zero_fill_spares: bool,
    /// Before making each spare, have the background thread purge the
    /// segments every recorded backup has acknowledged and no local
    /// consumer holds (`Journal::purge_acknowledged`, quietly; nothing while
    /// no backup is recorded). With `zero_fill_spares`, a purged segment's
    /// file becomes the next spare: zero-filled over its written, cached
    /// blocks instead of a new file's (decisions.md 35). Off: segments are
    /// kept until someone calls `purge_acknowledged` or `purge_before`.
    pub purge_acknowledged: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            journal_id: 1,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            durability: Durability::GroupCommit {
                max_delay: Duration::from_micros(200),
            },
            clock: Arc::new(SystemClock),
            syncer: Arc::new(OsSync),
            background_preallocation: true,
            zero_fill_spares: true,
            purge_acknowledged: true,
        }
    }
}

impl JournalOptions {
    pub fn validate(&self) -> Result<(), JournalError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
            || !self.segment_bytes.is_multiple_of(4096)
        {
            return Err(JournalError::InvalidOptions {
                detail: format!(
                    "segment_bytes {} must be a multiple of 4096 within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    self.segment_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Everything that can go wrong opening or writing a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("HAD0103E fsync of journal segment {path} failed; the journal refuses all further writes until it is reopened: {source}")]
    SyncFailed { path: PathBuf, source: io::Error },
    #[error("HAD0104E journal {dir} refuses writes: an earlier fsync or segment rotation failed (reopen it to recover)")]
    Poisoned { dir: PathBuf },
    #[error("HAD0111E invalid journal options: {detail}")]
    InvalidOptions { detail: String },
    #[error("HAD0112E journal segment {path} belongs to journal {found}, but this journal is {expected}")]
    WrongJournal {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("HAD0113E journal {dir} is already open for writing by another process or handle")]
    Locked { dir: PathBuf },
}
