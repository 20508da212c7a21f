//! A segment file ("receiver"): a preallocated, memory-mapped file that holds a
//! header, the object catalog as of its first sequence, then entries.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//!  0 magic            [u8; 8] = "REPLJRNL"
//!  8 format_version   u32     = 1
//! 12 header_bytes     u32     = 64
//! 16 journal_id       u64
//! 24 first_sequence   u64     sequence of the first entry in this segment
//! 32 segment_bytes    u64     file size
//! 40 created_unix_ns  u64
//! 48 catalog_bytes    u32     length of the catalog block at offset 64
//! 52 header_crc32c    u32     CRC32C of bytes [0, 52)
//! 56 wake_epoch       u32     live: bumped to wake readers (not persisted meaning)
//! 60 waiters          u32     live: raised by a reader going to sleep on wake_epoch
//! 64 catalog block, then entries from 64 + catalog_bytes
//! ```
//!
//! Constraint: both the writer and readers map the file shared and read-write;
//! entry bytes are only ever touched through raw pointers, and a slice is formed
//! only over an entry whose length word was observed published (it never changes
//! afterwards), so no Rust reference ever aliases bytes being written.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};

use super::catalog::Catalog;
use super::entry::{decode, DecodeError, Entry};
use crate::limits::{CATALOG_BYTES_MAX, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES};
use crate::sys;

pub const SEGMENT_MAGIC: [u8; 8] = *b"REPLJRNL";
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
pub const SEGMENT_FILE_EXTENSION: &str = "jrn";
const WAKE_EPOCH_AT: usize = 56;
const WAITERS_AT: usize = 60;

/// File name of the segment whose first entry has `first_sequence`; names sort
/// in sequence order.
pub fn segment_file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.{SEGMENT_FILE_EXTENSION}")
}

/// The first sequence encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(SEGMENT_FILE_EXTENSION)?
        .strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Segment files of `dir`, sorted by first sequence.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if let Some(first) = item.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((first, item.path()));
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// The persistent fields of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub journal_id: u64,
    pub first_sequence: u64,
    pub segment_bytes: u64,
    pub created_unix_ns: u64,
    pub catalog_bytes: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.journal_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.first_sequence.to_le_bytes());
        h[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        h[40..48].copy_from_slice(&self.created_unix_ns.to_le_bytes());
        h[48..52].copy_from_slice(&self.catalog_bytes.to_le_bytes());
        let crc = crate::checksum::crc32c(&h[0..52]);
        h[52..56].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and checks a header; `file_bytes` is the file's actual length.
    pub fn decode(h: &[u8], file_bytes: u64) -> Result<SegmentHeader, &'static str> {
        if h.len() < SEGMENT_HEADER_BYTES {
            return Err("file is shorter than a segment header");
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        if h[0..8] != SEGMENT_MAGIC {
            return Err("bad magic (not a journal segment)");
        }
        if u32_at(52) != crate::checksum::crc32c(&h[0..52]) {
            return Err("header checksum mismatch");
        }
        if u32_at(8) != SEGMENT_FORMAT_VERSION {
            return Err("unsupported format version");
        }
        if u32_at(12) as usize != SEGMENT_HEADER_BYTES {
            return Err("unexpected header length");
        }
        let header = SegmentHeader {
            journal_id: u64_at(16),
            first_sequence: u64_at(24),
            segment_bytes: u64_at(32),
            created_unix_ns: u64_at(40),
            catalog_bytes: u32_at(48),
        };
        if header.first_sequence == 0 {
            return Err("first sequence is 0");
        }
        if header.segment_bytes > SEGMENT_BYTES_MAX as u64 || file_bytes > header.segment_bytes {
            return Err("segment size out of range, or file longer than its header says");
        }
        let catalog = header.catalog_bytes as usize;
        if !(8..=CATALOG_BYTES_MAX).contains(&catalog) || !catalog.is_multiple_of(8) {
            return Err("catalog length out of range");
        }
        if (SEGMENT_HEADER_BYTES + catalog) as u64 > header.segment_bytes {
            return Err("catalog does not fit the segment");
        }
        Ok(header)
    }

    pub fn entries_start(&self) -> usize {
        SEGMENT_HEADER_BYTES + self.catalog_bytes as usize
    }
}

/// A mapped segment file, shared by the writer and readers of one process.
#[derive(Debug)]
pub struct MappedSegment {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    header: SegmentHeader,
}

/// Why a segment could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    #[error("HAD0101E journal I/O failed: {context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("HAD0102E journal segment {path} is corrupt at offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

impl SegmentError {
    pub fn io<'p>(
        context: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(io::Error) -> SegmentError + 'p {
        move |source| SegmentError::Io {
            context,
            path: path.to_owned(),
            source,
        }
    }
}

impl MappedSegment {
    /// Creates a new segment file at `path` (which must not exist), preallocated to
    /// `segment_bytes` (with `zero_fill`, written full of zeros and synced,
    /// paced unless told to hurry: decisions.md 30, 31; given up, the file
    /// removed, when told to) and mapped. Pages are faulted in by the appends themselves:
    /// pre-faulting ahead cost append-to-staged latency and bought no append
    /// throughput (decisions.md 5). The header is written by `finalize`.
    pub fn create_spare(
        path: &Path,
        segment_bytes: usize,
        zero_fill: Option<&sys::ZeroFillControl>,
    ) -> Result<MappedSegment, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(SegmentError::io("create segment", path))?;
        sys::preallocate(&file, segment_bytes as u64)
            .map_err(SegmentError::io("preallocate segment", path))?;
        // Written back even where nothing syncs the journal: the fill is
        // what turns a new file's preallocated blocks into written ones
        // (decisions.md 30, 44).
        let fill = zero_fill.map(|control| (control, sys::FillReach::Disk));
        Self::fill_and_map(path, file, segment_bytes, fill)
    }

    /// Makes a spare of the purged segment's file at `path` (renamed there
    /// by purge), as `create_spare` with a zero-fill makes a new one: its
    /// blocks are allocated and written and its pages likely cached, so the
    /// fill allocates neither (decisions.md 35); with `FillReach::Cache`
    /// its zeros are neither written back nor synced (decisions.md 44).
    /// Given up (the file removed) when told to.
    pub fn reuse_spare(
        path: &Path,
        segment_bytes: usize,
        zero_fill: (&sys::ZeroFillControl, sys::FillReach),
    ) -> Result<MappedSegment, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(SegmentError::io("open purged segment to reuse", path))?;
        let len = file
            .metadata()
            .map_err(SegmentError::io("stat segment", path))?
            .len();
        if len != segment_bytes as u64 {
            // Made with another segment size.
            file.set_len(segment_bytes as u64)
                .and_then(|()| sys::preallocate(&file, segment_bytes as u64))
                .map_err(SegmentError::io("resize purged segment to reuse", path))?;
        }
        Self::fill_and_map(path, file, segment_bytes, Some(zero_fill))
    }

    fn fill_and_map(
        path: &Path,
        file: File,
        segment_bytes: usize,
        zero_fill: Option<(&sys::ZeroFillControl, sys::FillReach)>,
    ) -> Result<MappedSegment, SegmentError> {
        if let Some((control, reach)) = zero_fill {
            if let Err(source) = sys::zero_fill(&file, 0, segment_bytes as u64, control, reach) {
                let _ = std::fs::remove_file(path);
                let context = if source.kind() == io::ErrorKind::Interrupted {
                    "zero-fill segment (given up: the journal is closing)"
                } else {
                    "zero-fill segment"
                };
                return Err(SegmentError::Io {
                    context,
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let map = MmapOptions::new()
            .len(segment_bytes)
            .map_raw(&file)
            .map_err(SegmentError::io("map segment", path))?;
        let header = SegmentHeader {
            journal_id: 0,
            first_sequence: 0,
            segment_bytes: segment_bytes as u64,
            created_unix_ns: 0,
            catalog_bytes: 0,
        };
        Ok(MappedSegment {
            path: path.to_owned(),
            file,
            map,
            header,
        })
    }

    /// Writes header and catalog into a spare and renames it to its final name in
    /// `dir`. Entries may be appended as soon as this returns. Nothing is
    /// synced: a rotation that wants the header on disk before the name
    /// calls `write_header`, syncs, then `install` (recovery takes a newest
    /// segment with a blank header for an interrupted rotation either way).
    pub fn finalize(
        mut self,
        dir: &Path,
        journal_id: u64,
        first_sequence: u64,
        created_unix_ns: u64,
        catalog: &Catalog,
    ) -> Result<MappedSegment, SegmentError> {
        self.write_header(journal_id, first_sequence, created_unix_ns, catalog);
        self.install(dir)
    }

    /// Writes header and catalog into a spare (through the map: a later
    /// `fdatasync` of the file writes them back).
    pub(crate) fn write_header(
        &mut self,
        journal_id: u64,
        first_sequence: u64,
        created_unix_ns: u64,
        catalog: &Catalog,
    ) {
        let block = catalog.encode();
        self.header = SegmentHeader {
            journal_id,
            first_sequence,
            segment_bytes: self.header.segment_bytes,
            created_unix_ns,
            catalog_bytes: block.len() as u32,
        };
        let header = self.header.encode();
        // SAFETY: nobody else knows this spare yet; header and catalog fit the map
        // because the catalog is bounded and segments are at least SEGMENT_BYTES_MIN.
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), self.ptr(), 52 + 4);
            std::ptr::copy_nonoverlapping(
                block.as_ptr(),
                self.ptr().add(SEGMENT_HEADER_BYTES),
                block.len(),
            );
        }
    }

    /// Renames a spare whose header is written to its segment name in
    /// `dir`.
    pub(crate) fn install(mut self, dir: &Path) -> Result<MappedSegment, SegmentError> {
        let path = dir.join(segment_file_name(self.header.first_sequence));
        std::fs::rename(&self.path, &path)
            .map_err(SegmentError::io("rename spare segment to", &path))?;
        self.path = path;
        Ok(self)
    }

    /// Opens an existing segment read-write and checks its header. A file shorter
    /// than its header says (cut by a crash or by hand) is extended back to full
    /// length when `repair` is set (writer recovery) and refused otherwise.
    pub fn open(path: &Path, repair: bool) -> Result<MappedSegment, SegmentError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(SegmentError::io("open segment", path))?;
        let file_bytes = file
            .metadata()
            .map_err(SegmentError::io("stat segment", path))?
            .len();
        let corrupt = |detail: &str| SegmentError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            detail: detail.to_owned(),
        };
        let mut raw = [0u8; SEGMENT_HEADER_BYTES];
        let read = std::os::unix::fs::FileExt::read_at(&file, &mut raw, 0)
            .map_err(SegmentError::io("read segment header", path))?;
        let header = SegmentHeader::decode(&raw[..read], file_bytes).map_err(corrupt)?;
        if file_bytes < header.segment_bytes && !repair {
            return Err(corrupt(
                "file is shorter than its header says (run writer recovery)",
            ));
        }
        if file_bytes < header.segment_bytes {
            // A truncated file (torn by a crash or an operator): map it at full
            // size again; the missing part reads as zeros, i.e. unwritten.
            // Allocated, not only lengthened: appends store to the map, and a
            // mapped page with no block behind it on a full disk is a SIGBUS.
            sys::preallocate(&file, header.segment_bytes)
                .map_err(SegmentError::io("restore segment length", path))?;
        }
        let map = MmapOptions::new()
            .len(header.segment_bytes as usize)
            .map_raw(&file)
            .map_err(SegmentError::io("map segment", path))?;
        Ok(MappedSegment {
            path: path.to_owned(),
            file,
            map,
            header,
        })
    }

    /// Unmaps the segment and asks the kernel to drop its cached pages
    /// (only a hint: pages still mapped elsewhere, or dirty, stay): for a
    /// reader done with it (decisions.md 53).
    pub fn release_cached(self) {
        let MappedSegment { file, map, .. } = self;
        drop(map);
        let _ = crate::sys::drop_cached(&file, 0, 0);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }
    pub fn first_sequence(&self) -> u64 {
        self.header.first_sequence
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
    pub fn entries_start(&self) -> usize {
        self.header.entries_start()
    }
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The catalog block of this segment.
    pub fn catalog(&self) -> Result<Catalog, SegmentError> {
        // SAFETY: the catalog block is written once, before the segment is renamed
        // into place, and never changes; it lies inside the map (checked in decode).
        let block = unsafe {
            std::slice::from_raw_parts(
                self.ptr().add(SEGMENT_HEADER_BYTES),
                self.header.catalog_bytes as usize,
            )
        };
        Catalog::decode(block).map_err(|e| SegmentError::Corrupt {
            path: self.path.clone(),
            offset: SEGMENT_HEADER_BYTES as u64,
            detail: e.to_string(),
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len(),
            "word offset {offset} outside segment"
        );
        // SAFETY: in bounds and 4-byte aligned (the map is page aligned); the
        // mapping lives as long as `self`, and all access to these words is atomic.
        unsafe { AtomicU32::from_ptr(self.ptr().add(offset).cast()) }
    }

    /// The length word of the entry slot at `offset`; 0 while unpublished.
    pub fn published_len(&self, offset: usize) -> u32 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Publishes the entry at `offset` and wakes sleeping readers, if any.
    pub(crate) fn publish(&self, offset: usize, frame_bytes: u32) {
        // A SeqCst store is a full barrier on its own: no fence is needed
        // before the waiters check (Dekker with `wait_published`).
        self.word(offset).store(frame_bytes, Ordering::SeqCst);
        self.wake_if_waiting();
    }

    /// Publishes without waking; the caller calls `wake_readers` after a batch.
    pub(crate) fn publish_quiet(&self, offset: usize, frame_bytes: u32) {
        self.word(offset).store(frame_bytes, Ordering::Release);
    }

    pub(crate) fn wake_readers(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.wake_if_waiting();
    }

    /// Wakes the readers asleep, once: the appender that finds the
    /// `waiters` flag raised lowers it, so the appenders after it, until a
    /// reader raises it again, make no system call (decisions.md 4: a woken
    /// reader can take a while to run, and with a count every commit in
    /// that while woke it again, ~35 futex calls per sleep at 0.75 M
    /// changes/s).
    fn wake_if_waiting(&self) {
        sys::ring(self.word(WAKE_EPOCH_AT), self.word(WAITERS_AT));
    }

    /// Sleeps until the slot at `offset` is published or `timeout` passes.
    /// Uses a process-shared futex, so a writer in another process wakes us too.
    ///
    /// No wake-up is lost: the flag is raised before the slot is checked
    /// (`sys::ring` says why that suffices).
    pub fn wait_published(&self, offset: usize, timeout: Duration) {
        let epoch = self.word(WAKE_EPOCH_AT);
        let seen = sys::raise_waiting(epoch, self.word(WAITERS_AT));
        if self.word(offset).load(Ordering::SeqCst) == 0 {
            sys::futex_wait(epoch, seen, timeout);
        }
    }

    /// The published, validated entry at `offset`, `Ok(None)` if the slot is not
    /// yet published, or the reason the bytes there are not a valid entry.
    #[inline]
    pub fn entry_at(&self, offset: usize) -> Result<Option<Entry<'_>>, DecodeError> {
        if offset + 8 > self.len() {
            return Err(DecodeError::Truncated {
                needed: 8,
                available: self.len().saturating_sub(offset),
            });
        }
        let len = self.published_len(offset) as usize;
        if len == 0 {
            return Ok(None);
        }
        let available = (self.len() - offset).min(len);
        // SAFETY: the length word was observed published (acquire), so the `len`
        // bytes behind it are complete and never written again; `available`
        // keeps the slice inside the map even if the length word is corrupt.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr().add(offset), available) };
        decode(bytes).map(Some)
    }

    /// Zeroes `[from, to)` (recovery only: erases a torn tail so no stale bytes
    /// can ever be read back as entries).
    pub(crate) fn zero_range(&self, from: usize, to: usize) {
        assert!(from <= to && to <= self.len());
        // SAFETY: in bounds; recovery runs before any appender or reader of this
        // journal exists in this process and holds the journal's lock.
        unsafe { std::ptr::write_bytes(self.ptr().add(from), 0, to - from) }
    }

    /// Index of the last non-zero byte at or after `from`, plus one (or `from`).
    pub(crate) fn written_end(&self, from: usize) -> usize {
        // SAFETY: recovery-only read of a region no thread is writing.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr().add(from), self.len() - from) };
        from + bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
    }

    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the first hole of `file` starts (its length when it has none):
    /// preallocated blocks never written count as a hole on ext4 and tmpfs.
    fn first_hole(file: &File) -> u64 {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an open descriptor we own; no memory is passed.
        let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
        assert!(at >= 0, "{}", io::Error::last_os_error());
        at as u64
    }

    #[test]
    fn a_zero_filled_spare_is_written_to_its_end_and_maps_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 3 * sys::ZERO_FILL_BYTES + 4096;
        let go_on = sys::ZeroFillControl::default();
        let spare =
            MappedSegment::create_spare(&dir.path().join("a.spare"), bytes, Some(&go_on)).unwrap();
        assert_eq!(spare.file().metadata().unwrap().len(), bytes as u64);
        assert_eq!(
            first_hole(spare.file()),
            bytes as u64,
            "a block was left unwritten"
        );
        // SAFETY: the map is `bytes` long and nobody else writes it.
        let mapped = unsafe { std::slice::from_raw_parts(spare.ptr(), bytes) };
        assert!(mapped.iter().all(|&b| b == 0));
        // Told to give up, it stops and leaves no file behind.
        let path = dir.path().join("b.spare");
        let stop = sys::ZeroFillControl::default();
        stop.give_up();
        let err = MappedSegment::create_spare(&path, bytes, Some(&stop)).unwrap_err();
        assert!(err.to_string().contains("journal is closing"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn a_reused_file_filled_in_the_cache_maps_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 2 * sys::ZERO_FILL_BYTES + 4096;
        let path = dir.path().join("old.spare");
        std::fs::write(&path, vec![0xa5u8; bytes]).unwrap();
        let go_on = sys::ZeroFillControl::default();
        let spare =
            MappedSegment::reuse_spare(&path, bytes, (&go_on, sys::FillReach::Cache)).unwrap();
        // SAFETY: the map is `bytes` long and nobody else writes it.
        let mapped = unsafe { std::slice::from_raw_parts(spare.ptr(), bytes) };
        assert!(mapped.iter().all(|&b| b == 0), "an earlier byte shows");
        drop(spare);
        std::fs::write(&path, vec![0xa5u8; bytes]).unwrap();
        let stop = sys::ZeroFillControl::default();
        stop.give_up();
        let err =
            MappedSegment::reuse_spare(&path, bytes, (&stop, sys::FillReach::Cache)).unwrap_err();
        assert!(err.to_string().contains("journal is closing"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn a_sleeping_reader_is_woken_once_not_at_every_publish() {
        let dir = tempfile::tempdir().unwrap();
        let seg = MappedSegment::create_spare(&dir.path().join("a.spare"), 1 << 20, None).unwrap();
        let epoch = || seg.word(WAKE_EPOCH_AT).load(Ordering::SeqCst);
        seg.publish(4096, 8);
        assert_eq!(epoch(), 0, "woken with nobody asleep");
        // Times out: the reader stays registered, as one still asleep would.
        seg.wait_published(8192, Duration::from_millis(1));
        seg.publish(8192, 8);
        assert_eq!(epoch(), 1, "the sleeping reader was not woken");
        seg.publish(12288, 8);
        seg.wake_readers();
        assert_eq!(epoch(), 1, "woken again before the reader slept again");
        // A reader on another thread, asleep before the publish, wakes.
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let start = std::time::Instant::now();
                seg.wait_published(16384, Duration::from_secs(20));
                start.elapsed()
            });
            while seg.word(WAITERS_AT).load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            seg.publish(16384, 8);
            let slept = reader.join().unwrap();
            assert!(
                slept < Duration::from_secs(10),
                "slept {slept:?}: the wake was lost"
            );
        });
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(1), "00000000000000000001.jrn");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("1.jrn"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.jrn.tmp"),
            None
        );
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn header_roundtrip_and_refusals() {
        let h = SegmentHeader {
            journal_id: 3,
            first_sequence: 17,
            segment_bytes: 1 << 20,
            created_unix_ns: 5,
            catalog_bytes: 8,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes, 1 << 20), Ok(h));
        for i in 0..52 {
            let mut bad = bytes;
            bad[i] ^= 1;
            assert!(SegmentHeader::decode(&bad, 1 << 20).is_err(), "flip at {i}");
        }
        assert!(SegmentHeader::decode(&bytes[..10], 1 << 20).is_err());
    }
}
