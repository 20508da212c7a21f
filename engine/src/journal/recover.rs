//! Journal recovery on open: find where the log really ends.
//!
//! Recovery modes are explicit (as in fjall and RocksDB's WAL):
//! - **Torn tail, tolerated**: the last segment ends in an unpublished slot, a
//!   partly written entry, bytes that fail their checksum with no valid entry
//!   after them, or entries of the file's earlier use (sequences below the
//!   segment's first: a reused file whose zeros stayed in the page cache).
//!   The tail is truncated (zeroed in place, so stale bytes can never be
//!   read back as entries) and the journal continues from there.
//! - **Corruption, refused**: an invalid entry followed by a valid later entry,
//!   an entry with the wrong sequence number, or a bad segment header. Opening
//!   fails with the segment file and offset; nothing is skipped.
//!
//! With several appenders, a crash can leave a published entry after an
//! unpublished slot (its writer finished first). Such entries were never
//! reported durable (durability covers only the contiguous published prefix),
//! so they are dropped with the tail and counted in the report.
//!
//! Only the last segment (and, when it is empty, the one before) is scanned:
//! older segments were sealed by a J-NR and are checked by every reader instead.

use std::path::{Path, PathBuf};

use super::catalog::Catalog;
use super::entry::EntryType;
use super::segment::{list_segments, MappedSegment, SegmentError, SEGMENT_FILE_EXTENSION};
use super::writer::{SpareMaker, SPARE_SUFFIX};
use super::{Durability, JournalError, JournalOptions};

/// What recovery found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files present after recovery.
    pub segments: usize,
    /// The sequence the next append gets.
    pub next_sequence: u64,
    /// Bytes of torn tail zeroed.
    pub truncated_bytes: u64,
    /// Published entries dropped because an unpublished slot came before them.
    pub dropped_entries: u64,
    /// Empty segment files removed (a crash during rotation).
    pub removed_segments: Vec<PathBuf>,
    /// Leftover spare files removed.
    pub removed_spares: usize,
}

pub(crate) struct Recovered {
    pub active: MappedSegment,
    pub tail_offset: usize,
    pub tail_entries: u64,
    pub catalog: Catalog,
    pub report: RecoveryReport,
}

/// Where a scan of one segment stopped, and why.
struct Scan {
    /// Offset just past the last valid entry.
    end: usize,
    next_sequence: u64,
    entries: u64,
    last_type: Option<EntryType>,
    catalog: Catalog,
    /// The first invalid slot, if the scan did not end in clean zeros.
    stop: Option<(usize, String)>,
}

fn corrupt(seg: &MappedSegment, offset: usize, detail: String) -> JournalError {
    SegmentError::Corrupt {
        path: seg.path().to_owned(),
        offset: offset as u64,
        detail,
    }
    .into()
}

/// Reads entries from the start of `seg` while they are valid and in sequence.
fn scan(seg: &MappedSegment) -> Result<Scan, JournalError> {
    let mut scan = Scan {
        end: seg.entries_start(),
        next_sequence: seg.first_sequence(),
        entries: 0,
        last_type: None,
        catalog: seg.catalog()?,
        stop: None,
    };
    while scan.last_type != Some(EntryType::NextSegment) && scan.end + 8 <= seg.len() {
        match seg.entry_at(scan.end) {
            Ok(None) => break,
            Ok(Some(entry)) if entry.sequence() < seg.first_sequence() => {
                // The file's earlier use (a reused file whose zeros never
                // reached the disk: decisions.md 44): this use ends here.
                scan.stop = Some((
                    scan.end,
                    format!(
                        "an entry of the file's earlier use (sequence {}, below the segment's first {})",
                        entry.sequence(),
                        seg.first_sequence()
                    ),
                ));
                break;
            }
            Ok(Some(entry)) if entry.sequence() != scan.next_sequence => {
                return Err(corrupt(
                    seg,
                    scan.end,
                    format!(
                        "entry has sequence {}, expected {}",
                        entry.sequence(),
                        scan.next_sequence
                    ),
                ));
            }
            Ok(Some(entry)) => {
                scan.catalog.apply_entry(&entry);
                scan.last_type = Some(entry.entry_type());
                scan.end += entry.padded_bytes();
                scan.next_sequence += 1;
                scan.entries += 1;
            }
            Err(err) => {
                scan.stop = Some((scan.end, err.to_string()));
                break;
            }
        }
    }
    Ok(scan)
}

/// Counts valid entries with a sequence at or above `min_sequence` anywhere at
/// an aligned offset in `[from, len)`.
fn valid_entries_after(seg: &MappedSegment, from: usize, min_sequence: u64) -> u64 {
    let mut found = 0;
    let mut offset = from;
    while offset + 8 <= seg.len() {
        if seg.published_len(offset) != 0 {
            if let Ok(Some(entry)) = seg.entry_at(offset) {
                if entry.sequence() >= min_sequence {
                    found += 1;
                    offset += entry.padded_bytes();
                    continue;
                }
            }
        }
        offset += 8;
    }
    found
}

/// Decides whether the end of `scan` is a torn tail (returns the entries
/// dropped with it) or corruption (error).
fn classify_tail(seg: &MappedSegment, scan: &Scan) -> Result<u64, JournalError> {
    let after = valid_entries_after(seg, scan.end + 8, scan.next_sequence);
    match &scan.stop {
        Some((offset, detail)) if after > 0 => Err(corrupt(
            seg,
            *offset,
            format!("{detail}; {after} valid entries follow, so this is not a torn tail"),
        )),
        _ if scan.last_type == Some(EntryType::NextSegment) && after > 0 => Err(corrupt(
            seg,
            scan.end,
            format!("{after} valid entries follow the J-NR that closes this segment"),
        )),
        _ => Ok(after),
    }
}

fn remove_leftover_spares(dir: &Path) -> Result<usize, JournalError> {
    let mut removed = 0;
    for item in std::fs::read_dir(dir).map_err(SegmentError::io("list journal", dir))? {
        let path = item.map_err(SegmentError::io("list journal", dir))?.path();
        if path.to_str().is_some_and(|p| p.ends_with(SPARE_SUFFIX)) {
            std::fs::remove_file(&path)
                .map_err(SegmentError::io("remove leftover spare", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether the bytes of `path` after a header-sized prefix are all zero: a
/// segment whose creation was cut short, holding nothing.
fn is_blank_after_header(path: &Path) -> Result<bool, JournalError> {
    let blank = || {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let from = (crate::limits::SEGMENT_HEADER_BYTES as u64).min(len);
        crate::sys::is_zero(&file, from, len)
    };
    Ok(blank().map_err(SegmentError::io("read segment", path))?)
}

pub(crate) fn recover(
    dir: &Path,
    options: &JournalOptions,
    spares: &SpareMaker,
) -> Result<Recovered, JournalError> {
    let mut report = RecoveryReport {
        removed_spares: remove_leftover_spares(dir)?,
        ..RecoveryReport::default()
    };
    let mut segments = list_segments(dir).map_err(SegmentError::io("list journal", dir))?;
    let (active, scan) = loop {
        let Some((first, path)) = segments.last().cloned() else {
            let catalog = Catalog::default();
            let now = options.clock.now_unix_ns();
            let seg = spares
                .take()?
                .finalize(dir, options.journal_id, 1, now, &catalog)?;
            segments.push((1, seg.path().to_owned()));
            let scan = scan_checked(&seg, options)?;
            break (seg, scan);
        };
        let seg = match MappedSegment::open(&path, true) {
            Ok(seg) => seg,
            Err(SegmentError::Corrupt { .. })
                if segments.len() > 1 && is_blank_after_header(&path)? =>
            {
                remove_orphan(&path, &mut report)?;
                segments.pop();
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if seg.first_sequence() != first {
            return Err(corrupt(
                &seg,
                24,
                format!(
                    "header says first sequence {}, file name says {first}",
                    seg.first_sequence()
                ),
            ));
        }
        let scan = scan_checked(&seg, options)?;
        if segments.len() == 1 {
            break (seg, scan);
        }
        // The last segment is live only if the previous one ends in a J-NR that
        // points at it. Writers publish J-NR before anything can be appended to
        // the new segment, so without it the new segment must be empty (rotation
        // crashed in between) and is removed; with entries, it is corruption.
        let prev = MappedSegment::open(&segments[segments.len() - 2].1, false)?;
        let prev_scan = scan_checked(&prev, options)?;
        if prev_scan.last_type == Some(EntryType::NextSegment) && prev_scan.next_sequence == first {
            break (seg, scan);
        }
        if scan.entries > 0 {
            let detail = format!(
                "segment ends at sequence {} without the J-NR that leads to {}, which holds entries",
                prev_scan.next_sequence - 1,
                seg.path().display()
            );
            return Err(corrupt(&prev, prev_scan.end, detail));
        }
        drop(seg);
        remove_orphan(&path, &mut report)?;
        segments.pop();
    };
    let dropped = classify_tail(&active, &scan)?;
    let written_end = active.written_end(scan.end);
    if written_end > scan.end {
        tracing::warn!(
            "HAD0116W journal segment {} had a torn tail at offset {}: {} bytes truncated{}",
            active.path().display(),
            scan.end,
            written_end - scan.end,
            scan.stop
                .as_ref()
                .map(|(_, d)| format!(" ({d})"))
                .unwrap_or_default()
        );
        active.zero_range(scan.end, written_end);
        active
            .sync_data()
            .map_err(SegmentError::io("sync recovered segment", active.path()))?;
        report.truncated_bytes = (written_end - scan.end) as u64;
        report.dropped_entries = dropped;
    }
    report.segments = segments.len();
    let (active, scan) = if scan.last_type == Some(EntryType::NextSegment) {
        // The segment after this J-NR never reached the disk: start it now.
        let now = options.clock.now_unix_ns();
        let next = spares.take()?.finalize(
            dir,
            options.journal_id,
            scan.next_sequence,
            now,
            &scan.catalog,
        )?;
        report.segments += 1;
        let next_scan = scan_checked(&next, options)?;
        (next, next_scan)
    } else {
        (active, scan)
    };
    report.next_sequence = scan.next_sequence;
    if options.durability != Durability::None {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(SegmentError::io("sync journal directory", dir))?;
    }
    Ok(Recovered {
        tail_offset: scan.end,
        tail_entries: scan.entries,
        catalog: scan.catalog,
        active,
        report,
    })
}

fn scan_checked(seg: &MappedSegment, options: &JournalOptions) -> Result<Scan, JournalError> {
    if seg.header().journal_id != options.journal_id {
        return Err(JournalError::WrongJournal {
            path: seg.path().to_owned(),
            found: seg.header().journal_id,
            expected: options.journal_id,
        });
    }
    scan(seg)
}

fn remove_orphan(path: &Path, report: &mut RecoveryReport) -> Result<(), JournalError> {
    tracing::warn!(
        "HAD0117W journal segment {} was created by a rotation that did not complete; removed",
        path.display()
    );
    debug_assert!(path
        .extension()
        .is_some_and(|e| e == SEGMENT_FILE_EXTENSION));
    std::fs::remove_file(path).map_err(SegmentError::io("remove orphan segment", path))?;
    report.removed_segments.push(path.to_owned());
    Ok(())
}
