//! The scraper: reads a journal at memory speed and hands selected entries on
//! in bounded batches (iCluster's HADDJS role).
//!
//! Design constraints:
//! - Zero copy: a `Batch` holds the places (`EntryAt`) of entries in the
//!   current segment map and yields `Entry` views borrowed from it, without
//!   decoding them again; the places' vector is reused, so
//!   the steady state allocates nothing per entry (a test counts allocations).
//! - A batch never spans two segments, so every entry it yields is borrowed
//!   from one map; the switch to the next segment happens at the next call.
//! - Following the tail does not spin: with nothing published, the scraper
//!   sleeps on a process-shared futex in the segment header that appenders
//!   bump when a reader waits.
//! - Every entry is validated (checksum, layout, sequence) by the engine's
//!   `JournalCursor`; corruption stops the scraper with file and offset.

mod selector;

use std::collections::HashMap;
use std::time::Duration;

use engine::journal::{Catalog, Entry, EntryAt, EntryType, JournalCursor, ReadError, Step};
use engine::limits::{SCRAPE_BATCH_BYTES_MAX, SCRAPE_BATCH_ENTRIES_MAX};

pub use selector::{ObjectSelector, Pattern, SelectorError};

/// Where to start and what to select.
#[derive(Clone, Debug)]
pub struct ScrapeOptions {
    /// First sequence to yield (entries before it are read but not yielded).
    pub from_sequence: u64,
    pub selector: ObjectSelector,
    /// A batch closes at this many entries...
    pub batch_entries_max: usize,
    /// ...or once it holds at least this many bytes.
    pub batch_bytes_max: usize,
    /// Most time a batch that found the journal idle while under half of
    /// `batch_bytes_max` is held for its caller (`next_batch_held`: the
    /// sender holds it while earlier frames are unacknowledged), then
    /// takes what was appended meanwhile. Under a steady stream of small
    /// appends this makes fewer, larger frames (each costs a wake-up, a
    /// send, a receive, a write and a sync along the way); with nothing in
    /// flight a batch goes at once. Zero: never held (decisions.md 58).
    pub linger: Duration,
}

impl Default for ScrapeOptions {
    fn default() -> Self {
        ScrapeOptions {
            from_sequence: 1,
            selector: ObjectSelector::all(),
            batch_entries_max: 4096,
            batch_bytes_max: 1024 * 1024,
            linger: Duration::ZERO,
        }
    }
}

/// Why the scraper stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("HAD0131E scrape batch limits {entries} entries / {bytes} bytes are out of range (1..={entries_max} / 1..={bytes_max})")]
    BadLimits {
        entries: usize,
        bytes: usize,
        entries_max: usize,
        bytes_max: usize,
    },
}

/// Follows one journal from a position, yielding selected entries.
#[derive(Debug)]
pub struct Scraper {
    cursor: JournalCursor,
    options: ScrapeOptions,
    entries: Vec<EntryAt>,
    selection: Selection,
    switch_pending: bool,
}

/// Which object ids are selected, decided lazily from the catalog's names.
#[derive(Debug)]
struct Selection {
    selector: ObjectSelector,
    everything: bool,
    /// Object id -> selected; an object-level entry invalidates its id.
    selected: HashMap<u64, bool>,
    last_object: Option<(u64, bool)>,
}

/// A run of selected entries from one segment, borrowed from its map.
#[derive(Debug)]
pub struct Batch<'a> {
    cursor: &'a JournalCursor,
    entries: &'a [EntryAt],
    bytes: usize,
    next_sequence: u64,
}

impl<'a> Batch<'a> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Bytes of the selected entries (unpadded).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The scraper's position after this batch: every entry below it was read
    /// (selected or not).
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Entry<'a>> + Clone + '_ {
        let cursor = self.cursor;
        self.entries.iter().map(move |&at| {
            cursor
                .entry(at)
                .expect("a batch ends before its cursor leaves the segment")
        })
    }
}

impl Scraper {
    pub fn open(
        dir: impl AsRef<std::path::Path>,
        options: ScrapeOptions,
    ) -> Result<Scraper, ScrapeError> {
        let (entries, bytes) = (options.batch_entries_max, options.batch_bytes_max);
        if !(1..=SCRAPE_BATCH_ENTRIES_MAX).contains(&entries)
            || !(1..=SCRAPE_BATCH_BYTES_MAX).contains(&bytes)
        {
            return Err(ScrapeError::BadLimits {
                entries,
                bytes,
                entries_max: SCRAPE_BATCH_ENTRIES_MAX,
                bytes_max: SCRAPE_BATCH_BYTES_MAX,
            });
        }
        Ok(Scraper {
            cursor: JournalCursor::open(dir, options.from_sequence)?,
            entries: Vec::with_capacity(entries),
            selection: Selection {
                everything: options.selector.selects_everything(),
                selector: options.selector.clone(),
                selected: HashMap::new(),
                last_object: None,
            },
            switch_pending: false,
            options,
        })
    }

    /// The id of the journal being read (from its segment headers).
    pub fn journal_id(&self) -> u64 {
        self.cursor.segment().header().journal_id
    }

    /// The sequence of the next entry the scraper will read.
    pub fn next_sequence(&self) -> u64 {
        self.cursor.position()
    }

    /// The next batch: as many selected entries as are published, up to the
    /// limits. When nothing is published, sleeps up to `wait` for an appender;
    /// an empty batch means nothing selected arrived in that time.
    pub fn next_batch(&mut self, wait: Duration) -> Result<Batch<'_>, ScrapeError> {
        self.next_batch_held(wait, &mut |_| false)
    }

    /// `next_batch`, with a batch that finds the journal idle while it is
    /// small (under half of `batch_bytes_max`) offered once to `hold`
    /// (with `ScrapeOptions::linger`, unless that is zero): `hold(linger)`
    /// waits up to `linger` for whatever the caller waits for and returns
    /// whether it waited; if it did, the batch goes on taking what was
    /// appended meanwhile.
    pub fn next_batch_held(
        &mut self,
        wait: Duration,
        hold: &mut dyn FnMut(Duration) -> bool,
    ) -> Result<Batch<'_>, ScrapeError> {
        self.entries.clear();
        let mut bytes = 0;
        let mut waited = false;
        let mut held = false;
        if std::mem::take(&mut self.switch_pending) {
            self.cursor.next_segment()?;
        }
        loop {
            match self.cursor.step()? {
                Step::Entry(at) => {
                    let entry = self
                        .cursor
                        .entry(at)
                        .expect("the cursor is still in the entry's segment");
                    let frame_bytes = entry.as_bytes().len();
                    if self.selection.selects(self.cursor.catalog(), &entry) {
                        self.entries.push(at);
                        bytes += frame_bytes;
                        if self.entries.len() >= self.options.batch_entries_max
                            || bytes >= self.options.batch_bytes_max
                        {
                            break;
                        }
                    }
                }
                Step::EndOfSegment if self.entries.is_empty() => self.cursor.next_segment()?,
                Step::EndOfSegment => {
                    self.switch_pending = true;
                    break;
                }
                Step::Idle
                    if !self.entries.is_empty()
                        && !held
                        && !self.options.linger.is_zero()
                        && bytes < self.options.batch_bytes_max / 2 =>
                {
                    held = true;
                    if !hold(self.options.linger) {
                        break;
                    }
                }
                Step::Idle if !self.entries.is_empty() || waited || wait.is_zero() => break,
                Step::Idle => {
                    self.cursor.wait(wait);
                    waited = true;
                }
            }
        }
        Ok(Batch {
            cursor: &self.cursor,
            entries: &self.entries,
            bytes,
            next_sequence: self.cursor.position(),
        })
    }
}

impl Selection {
    /// Whether `entry` belongs to the selected objects. Commit control entries
    /// always pass: they carry the transaction boundaries; so do sync-check
    /// probes (a barrier names no object).
    fn selects(&mut self, catalog: &Catalog, entry: &Entry<'_>) -> bool {
        if self.everything {
            return true;
        }
        let entry_type = entry.entry_type();
        if entry_type.is_commit_control() || entry_type == EntryType::CheckProbe {
            return true;
        }
        let id = entry.object_id();
        if entry_type.is_object() {
            // The catalog still holds the name from before this entry; the
            // entry carries the name after it (create and rename).
            let before = catalog.name(id).is_some_and(|n| self.selector.selects(n));
            let after = entry
                .object_name()
                .is_some_and(|n| self.selector.selects(n));
            self.selected.remove(&id);
            self.last_object = None;
            return match entry_type {
                EntryType::ObjectCreate => after,
                EntryType::ObjectRename => before || after,
                _ => before,
            };
        }
        if let Some((last, selected)) = self.last_object {
            if last == id {
                return selected;
            }
        }
        let selected = match self.selected.get(&id) {
            Some(selected) => *selected,
            None => {
                let selected = catalog.name(id).is_some_and(|n| self.selector.selects(n));
                self.selected.insert(id, selected);
                selected
            }
        };
        self.last_object = Some((id, selected));
        selected
    }
}
