//! Helpers shared by the journal and staging test suites: owned copies of
//! entries read back through the one validating reader, options for small
//! segments, and which pages of a file are cached.
#![allow(dead_code)]

use std::path::Path;

use engine::journal::{
    Durability, EntryType, JournalCursor, JournalOptions, NewEntry, ReadError, Step,
};
use engine::limits::SEGMENT_BYTES_MIN;

/// An entry read back, owned, for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub sequence: u64,
    pub entry_type: EntryType,
    pub commit_cycle: u64,
    pub object_id: u64,
    pub key: Vec<u8>,
    pub after: Vec<u8>,
    pub before: Option<Vec<u8>>,
}

impl Owned {
    pub fn from_new(sequence: u64, e: &NewEntry<'_>) -> Owned {
        Owned {
            sequence,
            entry_type: e.entry_type,
            commit_cycle: e.commit_cycle,
            object_id: e.object_id,
            key: e.key.to_vec(),
            after: e.after.to_vec(),
            before: e.before.map(<[u8]>::to_vec),
        }
    }
}

/// Every entry of the journal from `from`, J-NR excluded, until the tail.
pub fn read_all_from(dir: &Path, from: u64) -> Result<Vec<Owned>, ReadError> {
    let mut cursor = JournalCursor::open(dir, from)?;
    let mut out = Vec::new();
    loop {
        match cursor.step()? {
            Step::Entry(at) => {
                let e = cursor.entry(at).unwrap();
                out.push(Owned::from_new(e.sequence(), &e.to_new_entry()));
            }
            Step::EndOfSegment => cursor.next_segment()?,
            Step::Idle => return Ok(out),
        }
    }
}

pub fn read_all(dir: &Path) -> Vec<Owned> {
    read_all_from(dir, 1).unwrap()
}

/// Smallest segments, so tests rotate often; no background thread, no fsync.
pub fn small_options() -> JournalOptions {
    JournalOptions {
        segment_bytes: SEGMENT_BYTES_MIN,
        durability: Durability::None,
        background_preallocation: false,
        ..JournalOptions::default()
    }
}

/// Deterministic image for (thread, index), so a reader can check content.
pub fn image(tag: u64, i: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[allow(unused_imports)] // each test binary uses its own part
pub use testkit::{seed, Rng};

/// Compares entry lists and reports the first difference compactly (entries
/// can be large; a full dump helps nobody).
#[track_caller]
pub fn assert_same(actual: &[Owned], expected: &[Owned], context: &str) {
    if let Some(i) = (0..actual.len().min(expected.len())).find(|i| actual[*i] != expected[*i]) {
        panic!(
            "{context}: entry {i} differs: got seq {} {:?} key {:?}, expected seq {} {:?} key {:?}",
            actual[i].sequence,
            actual[i].entry_type,
            actual[i].key,
            expected[i].sequence,
            expected[i].entry_type,
            expected[i].key
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{context}: got {} entries (last seq {:?}), expected {} (last seq {:?})",
        actual.len(),
        actual.last().map(|e| e.sequence),
        expected.len(),
        expected.last().map(|e| e.sequence)
    );
}

/// For each 4 KiB page of `path`, whether it is in the page cache.
pub fn resident_pages(path: &std::path::Path) -> Vec<bool> {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a read-only map only looked at by mincore, never read through.
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let pages = map.len().div_ceil(4096);
    let mut resident = vec![0u8; pages];
    // SAFETY: the map is `pages` pages long and page-aligned; `resident`
    // has a byte per page.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), resident.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    resident.iter().map(|p| p & 1 == 1).collect()
}

/// For each MiB of `path`, whether any of its pages is in the page cache.
pub fn resident_mib(path: &std::path::Path) -> Vec<bool> {
    resident_pages(path)
        .chunks(256)
        .map(|mib| mib.iter().any(|p| *p))
        .collect()
}

/// Panics unless none of `path`'s pages is in the page cache (a file read
/// through and given back).
pub fn assert_none_cached(path: &std::path::Path) {
    let resident = resident_mib(path);
    assert!(
        resident.iter().all(|r| !*r),
        "{} was read through and is still cached: {resident:?}",
        path.display()
    );
}

/// A temporary directory on a filesystem that drops clean cached pages
/// when asked, or `None` (with a note) where it keeps them (tmpfs, say:
/// its pages are the file).
pub fn dir_that_drops_cached_pages() -> Option<tempfile::TempDir> {
    use std::os::unix::fs::FileExt;
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("probe");
    let file = std::fs::File::create(&path).unwrap();
    file.write_all_at(&vec![1u8; 1 << 20], 0).unwrap();
    file.sync_all().unwrap();
    engine::sys::drop_cached(&file, 0, 0).unwrap();
    let dropped = !resident_mib(&path)[0];
    std::fs::remove_file(&path).unwrap();
    if !dropped {
        eprintln!(
            "skipped: {} keeps dropped pages cached",
            root.path().display()
        );
    }
    dropped.then_some(root)
}
