//! Retention: which journal segments a backup still needs.
//!
//! The sender records each backup's acknowledged position in the journal
//! directory, one small file per backup node: `acked-<node>.pos`, 16 bytes
//! (position u64, CRC32C of it u32, reserved u32; little-endian). The writer
//! purges only below the smallest recorded position, so a segment a backup
//! has not acknowledged is never deleted.
//!
//! The file is rewritten in place without fsync: after a crash it may hold an
//! older position, which only retains more. A torn or damaged file reads as
//! position 1 (retain everything) with a warning, never as a larger position.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{JournalError, PurgeReport};
use crate::journal::segment::SegmentError;
use crate::journal::Journal;

const PREFIX: &str = "acked-";
/// Local consumers (the source's journaled store) record the first sequence
/// they still need as `held-<name>.pos`.
const HELD_PREFIX: &str = "held-";
const SUFFIX: &str = ".pos";
const FILE_BYTES: usize = 16;

/// Whether `node` can name an ack file (and a node in general): 1..=64 bytes
/// of ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn valid_node_name(node: &str) -> bool {
    (1..=64).contains(&node.len())
        && !node.starts_with('.')
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn ack_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{node}{SUFFIX}"))
}

/// A backup's acknowledged position as the primary records it.
pub type AckRecord = PositionFile;

impl AckRecord {
    /// Opens (creating at position 1 if new) the record of `node` in the
    /// journal directory `dir`.
    pub fn open(dir: &Path, node: &str) -> Result<AckRecord, JournalError> {
        if !valid_node_name(node) {
            return Err(JournalError::InvalidOptions {
                detail: format!("node name {node:?} is not 1..=64 of [A-Za-z0-9._-]"),
            });
        }
        PositionFile::open_path(ack_path(dir, node))
    }
}

/// The first sequence a local consumer of the journal still needs (the
/// journaled store's tables replay from it), recorded like a backup's ack:
/// purge keeps every segment from it on.
pub type HoldRecord = PositionFile;

impl HoldRecord {
    /// Opens (creating at position 1 if new) the hold of consumer `name`.
    pub fn open_hold(dir: &Path, name: &str) -> Result<HoldRecord, JournalError> {
        if !valid_node_name(name) {
            return Err(JournalError::InvalidOptions {
                detail: format!("consumer name {name:?} is not 1..=64 of [A-Za-z0-9._-]"),
            });
        }
        PositionFile::open_path(dir.join(format!("{HELD_PREFIX}{name}{SUFFIX}")))
    }
}

/// A position kept in a small file (16 bytes: position u64, CRC32C u32,
/// reserved u32), rewritten in place. Used for acknowledged positions on the
/// primary and the applied position on the backup. Readers treat a damaged
/// file as position 1: the conservative answer for retention.
#[derive(Debug)]
pub struct PositionFile {
    file: std::fs::File,
    path: PathBuf,
    position: u64,
}

impl PositionFile {
    /// Opens (creating at position 1 if new) the file at `path`.
    pub fn open_path(path: PathBuf) -> Result<PositionFile, JournalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SegmentError::io("open ack record", &path))?;
        let position = read_position(&file, &path);
        let mut record = PositionFile {
            file,
            path,
            position,
        };
        if record.position == 0 {
            record.store(1)?;
        }
        Ok(record)
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Records a new position. Positions only move forward here; an older
    /// one is ignored (see `reset`).
    pub fn store(&mut self, position: u64) -> Result<(), JournalError> {
        if position <= self.position && self.position != 0 {
            return Ok(());
        }
        self.reset(position)
    }

    /// Records `position` even if it is older (a backup that lost staging
    /// and asks to resume from further back).
    pub fn reset(&mut self, position: u64) -> Result<(), JournalError> {
        let mut bytes = [0u8; FILE_BYTES];
        bytes[..8].copy_from_slice(&position.to_le_bytes());
        let crc = crate::checksum::crc32c(&bytes[..8]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&bytes, 0)
            .map_err(SegmentError::io("write ack record", &self.path))?;
        self.position = position;
        Ok(())
    }
}

/// 0 for a new (empty) file; 1 with a warning for a damaged one.
fn read_position(file: &std::fs::File, path: &Path) -> u64 {
    let mut bytes = [0u8; FILE_BYTES];
    match file.read_at(&mut bytes, 0) {
        Ok(0) => 0,
        Ok(FILE_BYTES) => {
            let position = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
            if crc == crate::checksum::crc32c(&bytes[..8]) && position >= 1 {
                position
            } else {
                tracing::warn!(
                    "HAD0125W ack record {} is damaged; retaining the whole journal for that backup",
                    path.display()
                );
                1
            }
        }
        _ => {
            tracing::warn!(
                "HAD0125W ack record {} is damaged; retaining the whole journal for that backup",
                path.display()
            );
            1
        }
    }
}

/// The position in the file at `path`: `None` if there is no file, 1 if it
/// is damaged.
pub fn read_position_file(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    Some(read_position(&file, path).max(1))
}

/// Every backup's recorded position in journal directory `dir`, by node name.
pub fn acked_positions(dir: &Path) -> Result<Vec<(String, u64)>, JournalError> {
    positions(dir, PREFIX)
}

/// Every local consumer's hold in journal directory `dir`, by name.
pub fn held_positions(dir: &Path) -> Result<Vec<(String, u64)>, JournalError> {
    positions(dir, HELD_PREFIX)
}

fn positions(dir: &Path, prefix: &str) -> Result<Vec<(String, u64)>, JournalError> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(SegmentError::io("list journal", dir))? {
        let path = item.map_err(SegmentError::io("list journal", dir))?.path();
        let Some(node) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| valid_node_name(n))
        else {
            continue;
        };
        let file =
            std::fs::File::open(&path).map_err(SegmentError::io("open ack record", &path))?;
        out.push((node.to_owned(), read_position(&file, &path).max(1)));
    }
    out.sort();
    Ok(out)
}

impl Journal {
    /// Purges the segments every recorded backup has acknowledged and no
    /// local consumer holds. With no backup recorded nothing is purged: a
    /// journal is kept until some backup has it (returns `None`, with a
    /// message).
    pub fn purge_acknowledged(&self) -> Result<Option<PurgeReport>, JournalError> {
        let Some(safe) = safe_sequence(self.dir())? else {
            tracing::info!(
                "HAD0124I journal {}: no backup has acknowledged anything yet; nothing purged",
                self.dir().display()
            );
            return Ok(None);
        };
        self.purge_before(safe).map(Some)
    }
}

/// The last sequence every recorded backup has acknowledged and no local
/// consumer holds (`None` while no backup is recorded): segments wholly at
/// or below it may be purged.
pub(crate) fn safe_sequence(dir: &Path) -> Result<Option<u64>, JournalError> {
    let Some(lowest) = acked_positions(dir)?.iter().map(|(_, p)| *p).min() else {
        return Ok(None);
    };
    // Everything below `lowest` is staged on every backup and no longer
    // needed by any local consumer.
    let lowest = held_positions(dir)?
        .iter()
        .map(|(_, p)| *p)
        .fold(lowest, u64::min);
    Ok(Some(lowest - 1))
}
