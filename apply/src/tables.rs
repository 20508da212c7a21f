//! Replica tables: the embedded default store, built for apply speed.
//!
//! Shape (Bitcask-like, decisions.md 16):
//! - Records live in append-only data files (`data-<id>.tbl`, 64 MiB each,
//!   read through read-only maps). A put appends `[crc32c u32][object u64]
//!   [key len u32][value len u32][key][value]` and points the index at it.
//!   Each shard appends to its own current file (its lane) under its own
//!   lock: records are gathered in memory and written with one `pwrite`
//!   (128 KiB, and always before the shard is unlocked: decisions.md 27).
//!   A transaction's records go to its lowest shard's lane; a part's
//!   (`lock_parts`) to its first shard's.
//! - The index is in memory: 64 shards by the low bits of the record hash
//!   (as stripes are chosen, decisions.md 22), each one open-addressing
//!   table (`index.rs`) of 64-byte slots (record hash, object, key, file,
//!   offset, length), probed with the hash computed once per change; `apply`
//!   prefetches a transaction's slots before it changes them. Keys up to 35
//!   bytes sit in the slot; longer ones in a side list. Cost per key: a
//!   64-byte slot over the load factor (3/8 to 3/4: 85-170 bytes; 106
//!   measured at 632 k records), plus the key for keys over 35 bytes (`index_bytes`).
//!   Values stay on disk (page cache), so tables larger than memory work as
//!   long as the keys fit.
//! - No write-ahead log: staging already is one. A checkpoint takes, with
//!   apply paused, only the applied position and the objects
//!   (`begin_checkpoint`, microseconds); then, beside apply, it copies the
//!   shards one at a time under each one's lock, each with its stamps
//!   (per journal, the last commit that changed it), lists the data files
//!   with their lengths, syncs those written since the last checkpoint,
//!   writes the shards to an index file (`index-<number>`), and
//!   `checkpoint.tmp` listing it, syncs both and renames the latter over
//!   `checkpoint` (decisions.md 41). The index file holds every record
//!   (a whole index) or only the regions of each shard changed since the
//!   last one (a delta: `Chain`, decisions.md 75); `checkpoint` lists the
//!   whole index and the deltas after it. A shard taken late holds changes after the
//!   position: opening loads the last checkpoint, deletes data files made
//!   after it and keeps each shard's stamps as floors, and apply replays
//!   staging from the position, each shard passing over the changes it
//!   already holds (`Shard::admit`); until replay passes every floor
//!   (`Store::mixed_until`), probes are not answered.
//! - Writers hold the write locks of every shard their transaction touches
//!   (in shard order) while they update the index, or of every shard while
//!   the parts of a run apply (`lock_parts`), and readers take the read
//!   lock of the shard (or shards, `get_many`) they read: a reader sees a
//!   transaction all at once or not at all.
//! - Compaction (decisions.md 46): each shard counts, per data file, the
//!   bytes of the records its index points at there. A checkpoint picks the
//!   files at most a quarter held (not files a lane writes); apply's loop
//!   moves the records still held there between batches, a slice of slots
//!   at a time with every shard locked (`Store::maintain`); the next
//!   checkpoint, before it takes the shards, moves what is left (the held
//!   counts tell which shards still point into them), and takes the files
//!   out of the tables' files.
//!   Once a checkpoint that no longer lists them is durable, they are free:
//!   lanes write over them (same id, pages already cached) instead of
//!   making new files; past what such a file's lane wrote lie its earlier
//!   use's records, which nothing reads (reads stop at the written length,
//!   the checkpoint's after a crash). Readers that keep locations past their shard's lock
//!   pin the files (`DataFiles::pins`) so none is emptied under them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::lock_api::RawRwLock as _;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::check::bucket_of;
use crate::index::{
    region_of, Entry as IndexEntry, Index, Loc, PrefetchHint, INLINE_KEY, REGIONS, SHARD_BITS,
};
use crate::position::AppliedPosition;
use crate::store::{
    check_objects, record_hash, visit_buckets_in_memory, BucketVisit, CheckpointTimes, ObjectCheck,
    ObjectInfo, PartedApply, PendingCheckpoint, Store, StoreError, StoreSpace,
};
use crate::txn::{LargeTxn, Op, OpKind, Txn, TxnBatch, TxnMeta};

/// At most 64: a transaction's shards are a bit set in a u64.
const SHARDS: usize = 1 << SHARD_BITS;
const _: () = assert!(SHARDS <= 64);
/// Size of one data file.
pub const DATA_FILE_BYTES: usize = 64 << 20;
const RECORD_HEADER_BYTES: usize = 20;
/// Records `visit_buckets` takes from the index at once, in whole shards
/// (24 bytes each: 6 MiB, which the gather reads back from cache). Larger
/// groups cost a check's first run their fresh pages (decisions.md 32).
const VISIT_GROUP_RECORDS: usize = 256 << 10;
/// Records `visit_buckets` copies from the data files before checking and
/// visiting them (about 70 KiB of 100-byte records: in L2).
const VISIT_BATCH_RECORDS: usize = 512;
/// Records `visit_buckets` fetches into cache ahead of the one it reads.
const PREFETCH_AHEAD: usize = 16;
/// Record bytes a lane gathers before writing them to its data file.
const LANE_BUFFER_BYTES: usize = 128 << 10;
/// How far ahead of the change it makes `apply` fetches index slots: enough
/// misses in flight to hide their latency, not so many that they evict each
/// other.
const LOOKAHEAD_OPS: usize = 8;
/// Most cache lines of one key or value `prefetch_bytes` asks for: a
/// record of replbench's kind is two; the hardware's own prefetcher takes
/// over on a long value once the copy streams through it.
const PREFETCH_LINES: usize = 4;
/// Checkpoints as written: the position, the objects and the data files,
/// and the index files that hold the shards: a whole index, then the
/// deltas written after it (decisions.md 75).
const CHECKPOINT_MAGIC: &[u8; 8] = b"HATBLCK3";
/// Checkpoints that held the shards themselves, with their stamps
/// (decisions.md 41), still read.
const CHECKPOINT_MAGIC_V2: &[u8; 8] = b"HATBLCK2";
/// Checkpoints taken with apply paused, one flat index, still read.
const CHECKPOINT_MAGIC_V1: &[u8; 8] = b"HATBLCK1";
/// An index file holding every shard's records, its entries compact
/// (`EntryFormat::Compact`, decisions.md 78).
const INDEX_MAGIC: &[u8; 8] = b"HATBIDX2";
/// An index file holding, per shard, the records of the regions changed
/// since the index file before it, its entries compact.
const DELTA_MAGIC: &[u8; 8] = b"HATBIDD2";
/// The same two with fixed-size entries (`EntryFormat::Fixed`), still read:
/// a chain may hold both kinds after an upgrade.
const INDEX_MAGIC_FIXED: &[u8; 8] = b"HATBIDX1";
const DELTA_MAGIC_FIXED: &[u8; 8] = b"HATBIDD1";
/// Deltas after a whole index, at most: opening reads them all.
const CHAIN_DELTAS_MAX: usize = 16;
/// A delta is written only when it is expected to be at most this part
/// of the whole index (1/4): above, a whole index costs about as much
/// (decisions.md 75).
const DELTA_SHARE_MAX: u64 = 4;
/// A fixed-size index entry without its key: object u64, key length u32,
/// then (after the key) file, offset and length, u32 each.
const RECORD_ENTRY_BYTES: usize = 24;
/// A compact index entry's numbers at most: object (10 bytes as a varint),
/// then key length, file, offset and value length (5 each).
const COMPACT_NUMBERS_MAX: usize = 30;
/// The fewest bytes a compact index entry takes: five one-byte numbers and
/// an empty key.
const COMPACT_ENTRY_MIN: usize = 5;
const CHECKPOINT_FILE: &str = "checkpoint";
/// A data file is compacted once the index holds at most this share of
/// what was written to it (1/4: three quarters dead), so each byte moved
/// frees at least three (decisions.md 46).
const COMPACT_HELD_DIVISOR: u64 = 4;
/// A compaction pass reads every slot of the index: it runs when the files
/// it would empty hold at least an eighth of the index's bytes in dead
/// records.
const COMPACT_DEAD_PER_INDEX_BYTE_DIVISOR: u64 = 8;

/// Sizes the tables work with: `Tuning::DEFAULT` but in tests, which want
/// small files and short compaction steps.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// Each data file's size.
    file_bytes: usize,
    /// Most slots a compaction step between apply's batches looks at.
    sweep_step_slots: usize,
    /// Whether apply's steps spread a pass over most of the time between
    /// checkpoints (`Sweep::step_slots`), or each looks at
    /// `sweep_step_slots` (tests, whose steps must not depend on the clock).
    sweep_paced: bool,
    /// A pass runs when the files it empties hold dead bytes of at least
    /// the index's bytes divided by this.
    dead_per_index_divisor: u64,
    /// How index files' entries are written: compact, but in the test that
    /// files of the fixed format older versions wrote still load.
    entries: EntryFormat,
}

impl Tuning {
    const DEFAULT: Tuning = Tuning {
        file_bytes: DATA_FILE_BYTES,
        sweep_step_slots: SWEEP_SLOTS_PER_STEP,
        sweep_paced: true,
        dead_per_index_divisor: COMPACT_DEAD_PER_INDEX_BYTE_DIVISOR,
        entries: EntryFormat::Compact,
    };
}

/// How an index file lays out each record (decisions.md 78).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryFormat {
    /// Object u64, key length u32, key, file, offset and length u32 each:
    /// 40 bytes for a 16-byte key (`HATBIDX1`, `HATBIDD1`, and the index
    /// inside checkpoints before `HATBLCK3`).
    Fixed,
    /// Object, key length, key, file, offset and the value's length
    /// (the record's length less its header and key), each number a LEB128
    /// varint: 24 bytes for a 16-byte key and a 100-byte value in a data
    /// file numbered below 128 at an offset from 2 MiB to 256 MiB
    /// (`HATBIDX2`, `HATBIDD2`).
    Compact,
}
/// Slots apply's loop looks at in one compaction step between batches
/// (2 MiB of slots, every shard locked: about a millisecond with the
/// records it moves at 1.5 M entries/s, decisions.md 81; an index of 2 M
/// slots in about 64 steps).
const SWEEP_SLOTS_PER_STEP: usize = 32 << 10;
/// The fewest and the most slots a paced step looks at before its span is
/// over: fewer wait for a later batch (every shard is locked for a step
/// however few slots it looks at); more wait too, so that when batches
/// come far apart (apply slowed by a checkpoint) the pass falls behind
/// rather than slowing apply further, and catches up in the quick batches
/// after (decisions.md 81).
const SWEEP_SLOTS_LEAST_STEP: usize = SWEEP_SLOTS_PER_STEP / 8;
const SWEEP_SLOTS_PACED_STEP: usize = SWEEP_SLOTS_PER_STEP / 4;
/// The span of a pass with no gap between checkpoints to go by yet, and
/// the most any pass is spread over (`Compaction::sweep_span`).
const SWEEP_SPAN_FIRST: Duration = Duration::from_millis(800);
const SWEEP_SPAN_MOST: Duration = Duration::from_secs(10);
/// Emptied data files kept for reuse, in bytes (8 files of
/// `DATA_FILE_BYTES`), unless `ReplicaTables::reserve_data` reserved
/// more; more are deleted.
const FREE_BYTES_MAX: usize = 512 << 20;
/// The share of the time between checkpoints (`Store::checkpoint_interval`)
/// that a checkpoint's data files may take to write back, paced; nearer
/// than that the pauses shrink (`WriteBackDeadline`), so that checkpoints
/// keep up with apply's writes (decisions.md 89).
const WRITE_BACK_SHARE: f64 = 0.75;
const MAX_JOURNALS: usize = 4096;

/// One data file, mapped for its whole size.
#[derive(Debug)]
struct DataFile {
    id: u32,
    path: PathBuf,
    file: File,
    map: MmapRaw,
    /// The file's size (`DATA_FILE_BYTES` but in tests).
    bytes: usize,
    /// Bytes written so far (only the owning lane, under its shard's
    /// lock, writes).
    used: AtomicU32,
}

impl DataFile {
    fn create(dir: &Path, id: u32, bytes: usize) -> Result<DataFile, StoreError> {
        let path = data_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create data file", &path))?;
        file.set_len(bytes as u64)
            .map_err(StoreError::io("size data file", &path))?;
        DataFile::map(id, path, file, bytes, 0)
    }

    fn open(dir: &Path, id: u32, bytes: usize, used: u32) -> Result<DataFile, StoreError> {
        let path = data_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open data file", &path))?;
        let len = file
            .metadata()
            .map_err(StoreError::io("stat data file", &path))?
            .len();
        if len != bytes as u64 || used as usize > bytes {
            return Err(StoreError::Corrupt {
                path,
                detail: format!("size {len}, checkpoint says {used} bytes used of {bytes}"),
            });
        }
        DataFile::map(id, path, file, bytes, used)
    }

    fn map(
        id: u32,
        path: PathBuf,
        file: File,
        bytes: usize,
        used: u32,
    ) -> Result<DataFile, StoreError> {
        let map = MmapOptions::new()
            .len(bytes)
            .map_raw_read_only(&file)
            .map_err(StoreError::io("map data file", &path))?;
        Ok(DataFile {
            id,
            path,
            file,
            map,
            bytes,
            used: AtomicU32::new(used),
        })
    }

    /// Asks the CPU to start loading the record at `loc` into cache (a
    /// hint; nothing on targets without one).
    fn prefetch(&self, loc: Loc) {
        #[cfg(target_arch = "x86_64")]
        if loc.offset as usize + loc.len as usize <= self.bytes {
            let mut at = loc.offset as usize;
            while at < loc.offset as usize + loc.len as usize {
                // SAFETY: a prefetch is a hint with no effect on memory, and
                // the address lies inside the map (checked above).
                unsafe {
                    std::arch::x86_64::_mm_prefetch(
                        self.map.as_ptr().add(at).cast(),
                        std::arch::x86_64::_MM_HINT_T0,
                    )
                };
                at += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = loc;
    }

    /// The bytes of the record at `loc`, checked only for lying inside the
    /// written part of the file.
    fn raw(&self, loc: Loc) -> Result<&[u8], StoreError> {
        let end = loc.offset as usize + loc.len as usize;
        if end > self.used.load(Ordering::Acquire) as usize
            || (loc.len as usize) < RECORD_HEADER_BYTES
        {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "record at {} ({} bytes) lies outside the written part",
                    loc.offset, loc.len
                ),
            });
        }
        // SAFETY: offset..end lies inside the map and below `used`, so it was
        // written to the file (`Lane::flush`) before the shard lock under
        // which the index entry pointing at it was made was released, and
        // the caller holds or held that lock since; a file is written over
        // only once compaction emptied it and took it out of the tables'
        // files, which waits for readers that keep locations past their
        // shard's lock (`DataFiles::pins`), and no one holds it any more
        // (`DataFiles::next`).
        Ok(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(loc.offset as usize), loc.len as usize)
        })
    }

    /// The record at `loc`, checked against its checksum.
    fn record(&self, loc: Loc) -> Result<(u64, &[u8], &[u8]), StoreError> {
        let bytes = self.raw(loc)?;
        check_record_sum(bytes, loc.offset)
            .and_then(|()| parse_record(bytes, loc.offset))
            .map_err(|detail| StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            })
    }
}

/// Whether a record's bytes (as a lane wrote them) match its checksum;
/// what is wrong otherwise, naming the record by its `offset` in its data
/// file.
fn check_record_sum(bytes: &[u8], offset: u32) -> Result<(), String> {
    let crc = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    match engine::checksum::crc32c(&bytes[4..]) == crc {
        true => Ok(()),
        false => Err(format!(
            "checksum mismatch in the record at offset {offset}"
        )),
    }
}

/// A record's object, key and value from its bytes (as a lane wrote them),
/// checked against its lengths (not its checksum: `check_record_sum`).
fn parse_record(bytes: &[u8], offset: u32) -> Result<(u64, &[u8], &[u8]), String> {
    let object = u64::from_le_bytes(bytes[4..12].try_into().unwrap());
    let klen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let vlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    if RECORD_HEADER_BYTES + klen + vlen != bytes.len() {
        return Err(format!(
            "record at offset {offset} has inconsistent lengths"
        ));
    }
    let key = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + klen];
    Ok((object, key, &bytes[RECORD_HEADER_BYTES + klen..]))
}

fn data_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("data-{id:08}.tbl"))
}

fn parse_data_name(name: &str) -> Option<u32> {
    name.strip_prefix("data-")?
        .strip_suffix(".tbl")?
        .parse()
        .ok()
}

/// A lane appends records to its current data file: gathered in memory
/// and written with one `pwrite` (decisions.md 27).
#[derive(Debug, Default)]
struct Lane {
    file: Option<Arc<DataFile>>,
    /// Records not yet in `file`; they go at its `used` offset. Empty
    /// whenever the shard that owns the lane is unlocked.
    pending: Vec<u8>,
}

impl Lane {
    /// Writes the gathered records to the file. Whole pages written this
    /// way are filled by the copy itself, where pages faulted into a map
    /// are zeroed by the kernel first and then written again.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self.file.as_deref().expect("gathered records have a file");
        let at = file.used.load(Ordering::Relaxed);
        file.file
            .write_all_at(&self.pending, at as u64)
            .map_err(StoreError::io("write data file", &file.path))?;
        file.used
            .store(at + self.pending.len() as u32, Ordering::Release);
        self.pending.clear();
        Ok(())
    }

    /// Where a record of `len` bytes gathered next goes: after what the
    /// lane holds, in its file, or at the start of the next one
    /// (`DataFiles::next`) when this one has no room.
    ///
    /// Inlined, with the move to a new file out of line: a `Loc` returned
    /// through memory from a call was read back before its stores had
    /// reached the cache, a stall at every record (decisions.md 99).
    #[inline(always)]
    fn place(&mut self, data: &DataFiles, len: usize) -> Result<Loc, StoreError> {
        let fits = |file: &DataFile| {
            file.used.load(Ordering::Relaxed) as usize + self.pending.len() + len <= file.bytes
        };
        if !self.file.as_deref().is_some_and(fits) {
            self.next_file(data, len)?;
        }
        let file = self.file.as_deref().expect("a lane with room has a file");
        Ok(Loc {
            file: file.id,
            offset: (file.used.load(Ordering::Relaxed) as usize + self.pending.len()) as u32,
            len: len as u32,
        })
    }

    /// Writes what the lane holds and takes a new file for a record of
    /// `len` bytes.
    #[cold]
    #[inline(never)]
    fn next_file(&mut self, data: &DataFiles, len: usize) -> Result<(), StoreError> {
        assert!(
            len <= data.tuning.file_bytes,
            "a {len}-byte record fits no data file"
        );
        self.flush()?;
        self.file = Some(data.next()?);
        Ok(())
    }

    /// Writes the gathered records once they make a buffer's worth.
    fn gathered(&mut self) -> Result<(), StoreError> {
        match self.pending.len() >= LANE_BUFFER_BYTES {
            true => self.flush(),
            false => Ok(()),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    records: Index,
    /// Ids of the objects that exist, the same in every shard: changed only
    /// with every shard write-locked, so a transaction checks its objects
    /// under the shard locks it holds anyway, touching no shared line.
    live: Arc<[u64]>,
    /// Bytes of records this shard's changes replaced or deleted.
    dead: u64,
    /// Per data file (by id), the bytes of the records this shard's index
    /// points at there: compaction picks files by what all shards hold.
    held: Vec<u64>,
    /// Records held per object, by ascending object id (objects with none
    /// may be missing): clearing or dropping an object skips the shards
    /// that hold none of it, and `record_count` adds these up.
    counts: Vec<ObjectRecords>,
    /// The data file transactions whose lowest shard is this one append
    /// to: written under this shard's lock, so appending takes no lock of
    /// its own.
    lane: Lane,
    /// Per journal (by index in the group), the commit sequence of the last
    /// transaction that changed this shard: a checkpoint takes the shards
    /// one at a time beside apply and records each one's stamps with its
    /// records (decisions.md 41).
    stamps: Vec<u64>,
    /// After opening at such a checkpoint: per journal, the last commit this
    /// shard already holds (its stamps then), which replay must pass over
    /// here; 0 once replay is past it. Empty when nothing is left to pass.
    floors: Vec<u64>,
}

impl Shard {
    /// Whether a change of the transaction committed at `commit` in
    /// `journal` is to be made here: `false` while replay passes over what
    /// this shard already held when its checkpoint took it. Notes it as
    /// the shard's last change otherwise.
    fn admit(&mut self, journal: u32, commit: u64) -> bool {
        let j = journal as usize;
        if let Some(floor) = self.floors.get_mut(j) {
            if commit <= *floor {
                return false;
            }
            // Commits of a journal come in order: replay is past this one.
            *floor = 0;
            if self.floors.iter().all(|&f| f == 0) {
                self.floors = Vec::new();
            }
        }
        if self.stamps.len() <= j {
            self.stamps.resize(j + 1, 0);
        }
        self.stamps[j] = commit;
        true
    }

    fn get(&self, hash: u64, object: u64, key: &[u8]) -> Option<Loc> {
        self.records.get(hash, object, key)
    }

    /// Points the record at `loc`; returns where it was before.
    fn put(&mut self, hash: u64, object: u64, key: &[u8], loc: Loc) -> Option<Loc> {
        let old = self.records.put(hash, object, key, loc);
        self.hold(loc);
        match old {
            Some(old) => self.let_go(old),
            None => {
                let i = match self.counts.binary_search_by_key(&object, |c| c.object) {
                    Ok(i) => i,
                    Err(i) => {
                        self.counts.insert(i, ObjectRecords::new(object));
                        i
                    }
                };
                self.counts[i].add(hash);
            }
        }
        old
    }

    fn remove(&mut self, hash: u64, object: u64, key: &[u8]) -> Option<Loc> {
        let old = self.records.remove(hash, object, key);
        if let Some(old) = old {
            self.let_go(old);
            let i = self.counts.binary_search_by_key(&object, |c| c.object);
            self.counts[i.expect("a record held is counted")].take(hash);
        }
        old
    }

    fn hold(&mut self, loc: Loc) {
        hold(&mut self.held, loc);
    }

    fn let_go(&mut self, loc: Loc) {
        let_go(&mut self.held, loc);
    }

    /// Bytes of records held in data file `id`.
    fn held_in(&self, id: u32) -> u64 {
        self.held.get(id as usize).copied().unwrap_or(0)
    }

    /// Records of `object` held here.
    fn count(&self, object: u64) -> u64 {
        self.counts
            .binary_search_by_key(&object, |c| c.object)
            .map_or(0, |i| self.counts[i].count)
    }

    /// Removes every record of `object`; returns their bytes. A shard that
    /// holds none is not looked at; one that holds a few (their hashes
    /// listed) looks only where those hashes lead; others scan their whole
    /// table (decisions.md 76).
    fn remove_object(&mut self, object: u64) -> u64 {
        let Ok(i) = self.counts.binary_search_by_key(&object, |c| c.object) else {
            return 0;
        };
        let entry = self.counts.remove(i);
        if entry.count == 0 {
            return 0;
        }
        let mut bytes = 0;
        let mut removed = 0;
        let held = &mut self.held;
        let mut gone = |loc: Loc| {
            let_go(held, loc);
            bytes += loc.len as u64;
            removed += 1;
        };
        match entry.hashes {
            Some(mut hashes) => {
                // Records sharing a hash leave together at the first.
                hashes.sort_unstable();
                hashes.dedup();
                for hash in hashes {
                    self.records.remove_hashed(hash, object, &mut gone);
                }
            }
            None => self.records.retain(|o| o != object, &mut gone),
        }
        debug_assert_eq!(
            removed, entry.count,
            "object {object}: removed what it counted"
        );
        bytes
    }
}

/// Most records of one object a shard lists the hashes of: a small object
/// (replbench's scratch table, a control table) is cleared or dropped by
/// looking up its records rather than scanning the shard's whole table,
/// which at 30 M records held every shard's lock for ~75 ms (decisions.md
/// 76). 64 hashes are 512 bytes an object a shard.
const LISTED_RECORDS: usize = 64;

/// The records one shard holds of one object.
#[derive(Debug)]
struct ObjectRecords {
    object: u64,
    count: u64,
    /// One hash per record while the shard has held no more than
    /// `LISTED_RECORDS` of the object since it last held none; `None` past
    /// that, until it holds none again.
    hashes: Option<Vec<u64>>,
}

impl ObjectRecords {
    fn new(object: u64) -> ObjectRecords {
        ObjectRecords {
            object,
            count: 0,
            hashes: Some(Vec::new()),
        }
    }

    /// A record of the object with this hash is new here.
    fn add(&mut self, hash: u64) {
        self.count += 1;
        if let Some(hashes) = &mut self.hashes {
            match hashes.len() < LISTED_RECORDS {
                true => hashes.push(hash),
                false => self.hashes = None,
            }
        }
    }

    /// A record of the object with this hash is gone.
    fn take(&mut self, hash: u64) {
        self.count -= 1;
        match (&mut self.hashes, self.count) {
            (_, 0) => self.hashes = Some(Vec::new()),
            (Some(hashes), _) => {
                let at = hashes.iter().position(|&h| h == hash);
                hashes.swap_remove(at.expect("a listed record's hash is listed"));
            }
            (None, _) => {}
        }
    }
}

/// Counts the record at `loc` in `held` (a shard's bytes held per file).
fn hold(held: &mut Vec<u64>, loc: Loc) {
    let file = loc.file as usize;
    if held.len() <= file {
        held.resize(file + 1, 0);
    }
    held[file] += loc.len as u64;
}

/// The record at `loc` is no longer held (replaced, deleted or moved).
fn let_go(held: &mut [u64], loc: Loc) {
    held[loc.file as usize] -= loc.len as u64;
}

/// Gives every shard the current list of objects (all shards write-locked).
fn publish_objects(objects: &BTreeMap<u64, String>, shards: &mut [RwLockWriteGuard<'_, Shard>]) {
    let live: Arc<[u64]> = objects.keys().copied().collect();
    for shard in shards.iter_mut() {
        shard.live = live.clone();
    }
}

/// Data files by id; `None` for ids never made or deleted.
#[derive(Debug, Default)]
struct Files {
    by_id: Vec<Option<Arc<DataFile>>>,
}

impl Files {
    fn get(&self, id: u32) -> Option<&Arc<DataFile>> {
        self.by_id.get(id as usize)?.as_ref()
    }

    fn insert(&mut self, file: Arc<DataFile>) {
        let id = file.id as usize;
        if self.by_id.len() <= id {
            self.by_id.resize(id + 1, None);
        }
        self.by_id[id] = Some(file);
    }
}

/// The tables' data files through their life: made or reused for lanes,
/// synced by checkpoints, emptied by compaction, and reused once a durable
/// checkpoint no longer lists them (decisions.md 46). Shared with the
/// background half of checkpoints.
#[derive(Debug)]
struct DataFiles {
    dir: PathBuf,
    tuning: Tuning,
    files: RwLock<Files>,
    /// The id of the next file made (a reused file keeps its id).
    next_id: AtomicU32,
    /// Files written since the last checkpoint.
    dirty: Mutex<Vec<Arc<DataFile>>>,
    /// Files compacted that no durable checkpoint lists: the next lanes'
    /// files, written over in place, where pages are cached already (a new
    /// file's pages each cost a fresh page of memory: decisions.md 46).
    free: Mutex<Vec<Arc<DataFile>>>,
    /// The most bytes of files `free` keeps: `FREE_BYTES_MAX`, or what
    /// `ReplicaTables::reserve_data` reserved if that is more.
    keep_bytes: AtomicUsize,
    /// Held (shared) by readers that keep record locations after letting
    /// go of their shards' locks (`visit_buckets`, `scan`), and
    /// (exclusive) by compaction while it takes the files it emptied out of
    /// `files`: a location such a reader took stays readable until it is
    /// done.
    pins: RwLock<()>,
    /// Dead bytes in the files compaction emptied since open.
    reclaimed_bytes: AtomicU64,
    /// The files compaction is emptying, if any.
    sweep: Mutex<Option<Sweep>>,
    /// The first failure that may have left the index pointing at records
    /// never written or synced (decisions.md 73): from then on the tables
    /// refuse to apply or checkpoint until reopened.
    failed: OnceLock<String>,
}

impl DataFiles {
    fn new(dir: PathBuf, tuning: Tuning) -> DataFiles {
        DataFiles {
            dir,
            tuning,
            files: RwLock::default(),
            next_id: AtomicU32::new(1),
            dirty: Mutex::default(),
            free: Mutex::default(),
            keep_bytes: AtomicUsize::new(FREE_BYTES_MAX),
            pins: RwLock::new(()),
            reclaimed_bytes: AtomicU64::new(0),
            sweep: Mutex::new(None),
            failed: OnceLock::new(),
        }
    }

    /// Passes `result` on, noting its error as the tables' failure unless
    /// it is a refusal (made before anything changed). Called with the
    /// shards the failed work changed still locked, so a checkpoint that
    /// takes them after finds the failure noted and refuses.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            if !e.is_refusal() {
                let _ = self.failed.set(e.to_string());
            }
        }
        result
    }

    /// HAD0214E once a failure was noted.
    fn refuse_if_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(cause) => Err(StoreError::Failed {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A file for a lane to write from its start: a free one if there is
    /// one, else a new one.
    fn next(&self) -> Result<Arc<DataFile>, StoreError> {
        let reused = self.free.lock().pop().map(Arc::try_unwrap);
        let file = match reused {
            Some(Ok(mut file)) => {
                *file.used.get_mut() = 0;
                file
            }
            Some(Err(held)) => {
                // Unreachable while readers pin what they read: remove it
                // rather than write under a reader (its map stays valid).
                std::fs::remove_file(&held.path)
                    .map_err(StoreError::io("remove data file", &held.path))?;
                self.create()?
            }
            None => self.create()?,
        };
        let file = Arc::new(file);
        self.files.write().insert(file.clone());
        self.dirty.lock().push(file.clone());
        Ok(file)
    }

    fn create(&self) -> Result<DataFile, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        DataFile::create(&self.dir, id, self.tuning.file_bytes)
    }

    /// Files emptied by compaction that the durable checkpoint no longer
    /// lists: kept for reuse, up to `keep_bytes`; the rest deleted.
    fn release(&self, emptied: Vec<Arc<DataFile>>) -> Result<(), StoreError> {
        let keep = self.keep_bytes.load(Ordering::Relaxed);
        let mut free = self.free.lock();
        for file in emptied {
            if (free.len() + 1) * self.tuning.file_bytes <= keep {
                free.push(file);
                continue;
            }
            std::fs::remove_file(&file.path)
                .map_err(StoreError::io("remove data file", &file.path))?;
        }
        Ok(())
    }
}

/// The write locks of a set of shards (a bit per shard), taken in shard
/// order and released when dropped: what `apply` holds, without a guard
/// per possible shard to set up and drop for every transaction.
struct ShardSet<'a> {
    shards: &'a [RwLock<Shard>],
    set: u64,
}

impl<'a> ShardSet<'a> {
    fn lock(shards: &'a [RwLock<Shard>], set: u64) -> ShardSet<'a> {
        let mut rest = set;
        while rest != 0 {
            // SAFETY: the raw lock is only taken here and released in
            // `drop`, which this value's existence guarantees.
            unsafe { shards[rest.trailing_zeros() as usize].raw() }.lock_exclusive();
            rest &= rest - 1;
        }
        ShardSet { shards, set }
    }

    /// Shard `s`, which must be in the set.
    fn shard(&mut self, s: usize) -> &mut Shard {
        assert!(self.set & (1 << s) != 0, "shard {s} is not locked");
        // SAFETY: we hold shard s's write lock (taken in `lock`, released
        // only in `drop`), and `&mut self` keeps this the only reference
        // handed out at a time.
        unsafe { &mut *self.shards[s].data_ptr() }
    }
}

/// Every shard write-locked (in shard order, as any lock set is taken), the
/// shards then applied in `parts` parts by record hash, each part by one
/// thread at a time (`Store::lock_parts`). Part `p` holds the shards `s`
/// with `s % parts == p` and appends its records through shard `p`'s lane.
struct Parted<'a> {
    tables: &'a ReplicaTables,
    locked: ShardSet<'a>,
    parts: usize,
    /// The objects (no object-level change runs while this is held).
    live: Arc<[u64]>,
    /// Held by the thread applying each part: a part's shards are handed
    /// out to one thread at a time.
    busy: Box<[Mutex<()>]>,
}

impl Parted<'_> {
    /// Shard `s`, of a part whose `busy` lock the caller holds.
    ///
    /// # Safety
    /// No other reference to shard `s` may be live: the caller holds the
    /// `busy` lock of the part `s` belongs to and hands out one at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn shard(&self, s: usize) -> &mut Shard {
        debug_assert!(self.locked.set & (1 << s) != 0);
        // SAFETY: `locked` holds shard s's write lock while `self` lives;
        // exclusivity among the part threads is the caller's promise.
        unsafe { &mut *self.locked.shards[s].data_ptr() }
    }
}

impl PartedApply for Parted<'_> {
    fn refusal(&self, txn: &Txn<'_>) -> Option<StoreError> {
        let mut known = u64::MAX;
        for (kind, object_id, sequence) in txn.kinds() {
            if object_id != known && kind != OpKind::Probe {
                if self.live.binary_search(&object_id).is_err() {
                    return Some(StoreError::UnknownObject {
                        sequence,
                        label: kind.label(),
                        object_id,
                    });
                }
                known = object_id;
            }
        }
        None
    }

    fn apply_part(&self, part: usize, batch: &TxnBatch, txns: &[u32]) -> Result<(), StoreError> {
        assert!(part < self.parts, "part {part} of {}", self.parts);
        let data = &self.tables.data;
        data.refuse_if_failed()?;
        // Every shard stays locked (`self.locked`) past the failure's note.
        data.note(self.apply_part_inner(part, batch, txns))
    }
}

impl Parted<'_> {
    fn apply_part_inner(
        &self,
        part: usize,
        batch: &TxnBatch,
        txns: &[u32],
    ) -> Result<(), StoreError> {
        let _busy = self.busy[part].lock();
        // `parts` divides SHARDS, a power of two (`lock_parts`): the part
        // of a hash is its low bits. A `%` here was a 64-bit division for
        // every change of the batch on each part's thread.
        let mask = self.parts as u64 - 1;
        let mine = txns.iter().flat_map(|&i| {
            let txn = batch.get(i as usize);
            let meta = txn.meta();
            txn.ops_by_hash(move |hash| hash & mask == part as u64)
                .map(move |(op, hash)| (op, hash, meta.journal, meta.commit_sequence))
        });
        // Each change's slot is fetched LOOKAHEAD_OPS changes before it is
        // made, its hash kept from then.
        let mut ahead = std::collections::VecDeque::with_capacity(LOOKAHEAD_OPS + 1);
        for change in mine {
            // SAFETY: the record's shard is in this part.
            unsafe { self.shard(shard_of(change.1)) }
                .records
                .prefetch(change.1);
            // Its key and value too: the staging-read thread wrote them on
            // the other core, and the lane copies them (decisions.md 57).
            prefetch_bytes(change.0.key);
            prefetch_bytes(change.0.value);
            ahead.push_back(change);
            if ahead.len() > LOOKAHEAD_OPS {
                self.make_change(part, ahead.pop_front().expect("not empty"))?;
            }
        }
        for change in ahead {
            self.make_change(part, change)?;
        }
        // SAFETY: as in `make_change`.
        unsafe { self.shard(part) }.lane.flush()
    }

    /// One change of part `part`, its slot fetched ahead. Inlined at both
    /// of its call sites by hand: left to the compiler, an unrelated change
    /// elsewhere in this file once moved it out of line, and apply's CPU
    /// rose 3-8% in catch-up runs (decisions.md 78).
    #[inline(always)]
    fn make_change(
        &self,
        part: usize,
        (op, hash, journal, commit): (Op<'_>, u64, u32, u64),
    ) -> Result<(), StoreError> {
        // SAFETY: the record's shard is in this part, whose `busy` lock
        // we hold; the reference ends with this line.
        if !unsafe { self.shard(shard_of(hash)) }.admit(journal, commit) {
            return Ok(());
        }
        let loc = match op.kind {
            // SAFETY: shard `part` is in this part (part < parts), whose
            // `busy` lock we hold; the reference ends with this line.
            OpKind::Put => Some(
                self.tables
                    .append(unsafe { &mut self.shard(part).lane }, &op)?,
            ),
            OpKind::Delete => None,
            OpKind::Probe => return Ok(()),
            _ => unreachable!("object-level changes are not applied in parts"),
        };
        // SAFETY: as above, for the record's own shard.
        ReplicaTables::index_change(unsafe { self.shard(shard_of(hash)) }, hash, &op, loc);
        Ok(())
    }
}

impl Drop for ShardSet<'_> {
    fn drop(&mut self) {
        let mut rest = self.set;
        while rest != 0 {
            // SAFETY: `lock` took this shard's write lock and nothing
            // released it since.
            unsafe {
                self.shards[rest.trailing_zeros() as usize]
                    .raw()
                    .unlock_exclusive()
            };
            rest &= rest - 1;
        }
    }
}

/// The replica tables of one group.
#[derive(Debug)]
pub struct ReplicaTables {
    dir: PathBuf,
    objects: RwLock<BTreeMap<u64, String>>,
    /// Shared with the background half of a checkpoint, which takes them one
    /// at a time (as the data files and the dirty list).
    shards: Arc<[RwLock<Shard>]>,
    data: Arc<DataFiles>,
    /// `Store::mixed_until`, from the checkpoint opened.
    mixed_until: Vec<u64>,
    /// Each shard's `Index::hint`, read without its lock.
    hints: Box<[Arc<PrefetchHint>]>,
    /// Checkpoints begun.
    begun: AtomicU64,
    durable: Arc<Durable>,
}

/// Starts loading the first lines (`PREFETCH_LINES`) of `bytes`.
fn prefetch_bytes(bytes: &[u8]) {
    for line in lines_of(bytes) {
        crate::index::prefetch_line(line as *const u8);
    }
}

/// The addresses of the 64-byte lines `bytes` starts on, at most
/// `PREFETCH_LINES` of them.
fn lines_of(bytes: &[u8]) -> impl Iterator<Item = usize> {
    let start = bytes.as_ptr() as usize;
    let lines = match bytes.len() {
        0 => 0,
        len => ((start + len - 1) >> 6) - (start >> 6) + 1,
    };
    (0..lines.min(PREFETCH_LINES)).map(move |i| (start & !63) + 64 * i)
}

fn shard_of(hash: u64) -> usize {
    // The low bits, as stripes (`stripe_of`: the hash modulo the stripe
    // count) take them: with a stripe count that is a multiple of SHARDS, a
    // stripe lies in one shard, and parallel apply's placement of stripes on
    // workers keeps each shard (its lock, its table, its lane) on one core.
    hash as usize % SHARDS
}

impl ReplicaTables {
    /// Opens (or creates) the tables in `dir` at their last checkpoint.
    pub fn open(dir: impl AsRef<Path>) -> Result<ReplicaTables, StoreError> {
        ReplicaTables::open_with(dir.as_ref(), Tuning::DEFAULT)
    }

    /// `open`, sized by `tuning` (small in tests).
    fn open_with(dir: &Path, tuning: Tuning) -> Result<ReplicaTables, StoreError> {
        let dir = dir.to_owned();
        std::fs::create_dir_all(&dir).map_err(StoreError::io("create tables directory", &dir))?;
        let shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
        let hints = shards.iter().map(|s| s.records.hint()).collect();
        let mut tables = ReplicaTables {
            objects: RwLock::new(BTreeMap::new()),
            shards: shards.into_iter().map(RwLock::new).collect(),
            hints,
            data: Arc::new(DataFiles::new(dir.clone(), tuning)),
            mixed_until: Vec::new(),
            begun: AtomicU64::new(0),
            durable: Arc::default(),
            dir,
        };
        let path = tables.dir.join(CHECKPOINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => tables.mixed_until = tables.load_checkpoint(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("read checkpoint", &path)(e)),
        }
        tables.remove_unlisted_files()?;
        Ok(tables)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of records replaced or deleted since open (compaction reclaims
    /// them in time: `reclaimed_bytes`).
    pub fn dead_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.read().dead).sum()
    }

    /// Bytes of replaced and deleted records in the data files compaction
    /// emptied since open.
    pub fn reclaimed_bytes(&self) -> u64 {
        self.data.reclaimed_bytes.load(Ordering::Relaxed)
    }

    /// Data files in use (free ones, kept for reuse, not counted).
    pub fn data_files(&self) -> usize {
        self.data.files.read().by_id.iter().flatten().count()
    }

    /// Sizes the index for `records` in all (`[apply] expected_records`),
    /// so that apply does not grow it on the way there (decisions.md 45).
    /// Each shard gets its share and room for the spread of a hash's
    /// placement (four standard deviations); a shard that already holds
    /// more keeps its size.
    pub fn reserve(&self, records: usize) {
        let share = records.div_ceil(SHARDS);
        let spread = 4 * share.isqrt() + 64;
        for shard in self.shards.iter() {
            shard.write().records.reserve(share + spread);
        }
    }

    /// Makes data files of `bytes` in all (whole files, rounded up) for
    /// lanes to take before they make any new one, and keeps up to as many
    /// bytes of emptied files for reuse from then on (`[apply]
    /// reserve_data`, decisions.md 61). Each file's blocks are allocated
    /// and its pages brought into the cache as zeros, so the writes that
    /// fill it allocate neither blocks nor memory: on a virtual machine
    /// whose host reclaims the guest's free memory, a page cache that grows
    /// pays a host fault per new page, and a replica's data files grow to
    /// several times its records' bytes between compaction and reuse. A
    /// replica in service has its files; this gives a new or reopened one
    /// the same (files no checkpoint lists are removed at open, so each
    /// open makes them again). Returns the files made.
    pub fn reserve_data(&self, bytes: u64) -> Result<usize, StoreError> {
        let file_bytes = self.data.tuning.file_bytes;
        let wanted = (bytes as usize).div_ceil(file_bytes);
        self.data
            .keep_bytes
            .fetch_max(wanted * file_bytes, Ordering::Relaxed);
        let mut made = 0;
        while self.data.free.lock().len() < wanted {
            let file = self.data.create()?;
            engine::sys::preallocate(&file.file, file_bytes as u64)
                .map_err(StoreError::io("allocate data file", &file.path))?;
            engine::sys::cache_in(&file.file, file_bytes as u64);
            self.data.free.lock().push(Arc::new(file));
            made += 1;
        }
        Ok(made)
    }

    /// Records held, over all objects.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().records.len()).sum()
    }

    /// Bytes the in-memory index takes (slots and long keys): divided by
    /// `len`, the index cost per key.
    pub fn index_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().records.memory_bytes())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads several records under one lock set: all as of the same moment,
    /// never part of a transaction.
    pub fn get_many(&self, keys: &[(u64, &[u8])]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let hashes: Vec<u64> = keys.iter().map(|(o, k)| record_hash(*o, k)).collect();
        let mut ids: Vec<usize> = hashes.iter().map(|&h| shard_of(h)).collect();
        ids.sort_unstable();
        ids.dedup();
        let guards: Vec<_> = ids.iter().map(|&s| self.shards[s].read()).collect();
        let files = self.data.files.read();
        keys.iter()
            .zip(&hashes)
            .map(|((object, key), &hash)| {
                let guard = &guards[ids.binary_search(&shard_of(hash)).unwrap()];
                self.read_value(&files, guard.get(hash, *object, key))
            })
            .collect()
    }

    fn read_value(&self, files: &Files, loc: Option<Loc>) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(loc) = loc else { return Ok(None) };
        let file = files.get(loc.file).ok_or_else(|| StoreError::Corrupt {
            path: data_path(&self.dir, loc.file),
            detail: "the index names a data file that does not exist".into(),
        })?;
        Ok(Some(file.record(loc)?.2.to_vec()))
    }

    /// Appends one record through `lane`, opening a new data file when the
    /// current one is full. The record is in the file only once the lane is
    /// flushed (`Lane::flush`), which every writer does before it lets go
    /// of the lane's shard. Inlined, as `Lane::place`: its `Loc` came back
    /// through memory and was read at once (decisions.md 99).
    #[inline(always)]
    fn append(&self, lane: &mut Lane, op: &Op<'_>) -> Result<Loc, StoreError> {
        let loc = lane.place(
            &self.data,
            RECORD_HEADER_BYTES + op.key.len() + op.value.len(),
        )?;
        let start = lane.pending.len();
        let pending = &mut lane.pending;
        pending.extend_from_slice(&[0; 4]);
        pending.extend_from_slice(&op.object_id.to_le_bytes());
        pending.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        pending.extend_from_slice(&(op.value.len() as u32).to_le_bytes());
        pending.extend_from_slice(op.key);
        pending.extend_from_slice(op.value);
        // One checksum over the record just gathered (in cache), not one
        // per part.
        let crc = engine::checksum::crc32c(&pending[start + 4..]);
        pending[start..start + 4].copy_from_slice(&crc.to_le_bytes());
        lane.gathered()?;
        Ok(loc)
    }

    /// Points the index at a put's record (`loc`) or removes a deleted one.
    fn index_change(shard: &mut Shard, hash: u64, op: &Op<'_>, loc: Option<Loc>) {
        let old = match (op.kind, loc) {
            (OpKind::Put, Some(loc)) => shard.put(hash, op.object_id, op.key, loc),
            (OpKind::Delete, None) => shard.remove(hash, op.object_id, op.key),
            _ => unreachable!("a put with its record, a delete without"),
        };
        if let Some(old) = old {
            shard.dead += old.len as u64;
        }
    }

    /// A transaction with object-level changes: everything locked, checked
    /// first against object existence as the transaction itself changes it.
    fn apply_exclusive(&self, txn: &Txn<'_>) -> Result<(), StoreError> {
        let mut objects = self.objects.write();
        let mut shards: Vec<RwLockWriteGuard<'_, Shard>> =
            self.shards.iter().map(|s| s.write()).collect();
        check_objects(
            txn.ops()
                .map(|op| (op.kind, op.object_id, op.sequence, op.kind.label())),
            |id| objects.contains_key(&id),
        )?;
        let meta = txn.meta();
        let applied = txn
            .ops()
            .try_for_each(|op| self.apply_op_exclusive(&mut objects, &mut shards, meta, &op));
        publish_objects(&objects, &mut shards);
        self.data
            .note(applied.and_then(|()| shards[0].lane.flush()))
    }

    /// One change of the transaction `meta`, with the objects and every
    /// shard locked (records go to shard 0's lane). The objects always
    /// change (a checkpoint takes them as of its position); a shard only
    /// if it admits the change (`Shard::admit`).
    fn apply_op_exclusive(
        &self,
        objects: &mut BTreeMap<u64, String>,
        shards: &mut [RwLockWriteGuard<'_, Shard>],
        meta: TxnMeta,
        op: &Op<'_>,
    ) -> Result<(), StoreError> {
        match op.kind {
            OpKind::Create | OpKind::Rename => {
                objects.insert(op.object_id, String::from_utf8_lossy(op.key).into_owned());
            }
            OpKind::Drop | OpKind::Clear => {
                if op.kind == OpKind::Drop {
                    objects.remove(&op.object_id);
                }
                for shard in shards.iter_mut() {
                    if shard.admit(meta.journal, meta.commit_sequence) {
                        shard.dead += shard.remove_object(op.object_id);
                    }
                }
            }
            OpKind::Put | OpKind::Delete => {
                let hash = record_hash(op.object_id, op.key);
                if !shards[shard_of(hash)].admit(meta.journal, meta.commit_sequence) {
                    return Ok(());
                }
                let loc = match op.kind {
                    OpKind::Put => Some(self.append(&mut shards[0].lane, op)?),
                    _ => None,
                };
                Self::index_change(&mut shards[shard_of(hash)], hash, op, loc);
            }
            OpKind::Probe => {}
        }
        Ok(())
    }
}

/// The data files written since the last checkpoint, which it must sync;
/// files still being written stay on the list for the next one (the
/// checkpoint thread's own lane, compaction's, puts its file back itself).
fn take_dirty(shards: &[RwLock<Shard>], dirty: &Mutex<Vec<Arc<DataFile>>>) -> Vec<Arc<DataFile>> {
    let taken = std::mem::take(&mut *dirty.lock());
    // (Shard locks are taken before the dirty list's, as `append` does.)
    let current: Vec<Arc<DataFile>> = shards
        .iter()
        .filter_map(|shard| shard.read().lane.file.clone())
        .collect();
    let mut again = dirty.lock();
    for f in current {
        if !again.iter().any(|d| d.id == f.id) {
            again.push(f);
        }
    }
    taken
}

/// Writes the shard count, then each shard's number and stamps and its
/// records into `index`: all of them (`whole`), or the records of each
/// region changed since the shard was last taken, by region (a delta:
/// decisions.md 75). The shards one at a time, each under its lock, while
/// apply goes on (decisions.md 41); taking a shard clears its dirty
/// regions. Last shard first: apply locks them first to last, so once it
/// waits for the shard taken here, the next one taken is one it holds, and
/// it waits for one shard, not for every shard ahead of it. `between` runs
/// after each shard is taken (tests apply there). Returns the regions a
/// delta lists.
fn capture_shards(
    shards: &[RwLock<Shard>],
    index: &mut Vec<u8>,
    whole: bool,
    format: EntryFormat,
    between: &mut dyn FnMut(),
) -> u64 {
    index.extend_from_slice(&(shards.len() as u32).to_le_bytes());
    let mut regions_listed = 0;
    let mut entry: EntryScratch = [0; COMPACT_NUMBERS_MAX + INLINE_KEY];
    for (s, shard) in shards.iter().enumerate().rev() {
        // Apply's real-time threads wait for this shard while it is taken.
        let section = engine::sys::realtime_section();
        let mut shard = shard.write();
        let records = shard.records.len();
        index.extend_from_slice(&(s as u32).to_le_bytes());
        index.extend_from_slice(&(shard.stamps.len() as u32).to_le_bytes());
        for stamp in &shard.stamps {
            index.extend_from_slice(&stamp.to_le_bytes());
        }
        if whole {
            shard.records.clear_dirty();
            // Room for entries of 16-byte keys; the buffer is kept from one
            // checkpoint to the next, so this grows it the first time only.
            index.reserve(8 + records * (COMPACT_ENTRY_MIN + 20));
            index.extend_from_slice(&(records as u64).to_le_bytes());
            for record in shard.records.iter() {
                put_index_entry(index, &mut entry, record, format);
            }
        } else {
            let regions = shard.records.take_dirty();
            index.extend_from_slice(&(regions.len() as u32).to_le_bytes());
            regions_listed += regions.len() as u64;
            for region in regions {
                index.extend_from_slice(&(region as u32).to_le_bytes());
                let count_at = index.len();
                index.extend_from_slice(&0u32.to_le_bytes());
                let mut count = 0u32;
                shard.records.region_entries(region, |record| {
                    put_index_entry(index, &mut entry, record, format);
                    count += 1;
                });
                index[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            }
        }
        drop(shard);
        drop(section);
        between();
    }
    regions_listed
}

/// A record of an index file laid out before it is copied in (a key that
/// fits a slot fits it).
type EntryScratch = [u8; COMPACT_NUMBERS_MAX + INLINE_KEY];

/// One record of an index file in `format`. Compact: the key and the
/// numbers around it gathered in `entry` (the caller's, made once) and
/// copied in at once, not field by field (a key past `INLINE_KEY` goes in
/// on its own). Fixed (the compatibility test only): field by field.
fn put_index_entry(
    index: &mut Vec<u8>,
    entry: &mut EntryScratch,
    record: IndexEntry<'_>,
    format: EntryFormat,
) {
    let key = record.key;
    let loc = record.loc;
    let k = key.len();
    if format == EntryFormat::Fixed {
        index.extend_from_slice(&record.object.to_le_bytes());
        index.extend_from_slice(&(k as u32).to_le_bytes());
        index.extend_from_slice(key);
        index.extend_from_slice(&loc.file.to_le_bytes());
        index.extend_from_slice(&loc.offset.to_le_bytes());
        index.extend_from_slice(&loc.len.to_le_bytes());
        return;
    }
    // Every record holds its header and key (`parse_record`); what follows
    // them is its value.
    let value = loc.len as usize - RECORD_HEADER_BYTES - k;
    let mut at = put_varint(entry, 0, record.object);
    at = put_varint(entry, at, k as u64);
    if k > INLINE_KEY {
        index.extend_from_slice(&entry[..at]);
        index.extend_from_slice(key);
        at = 0;
    } else {
        entry[at..at + k].copy_from_slice(key);
        at += k;
    }
    at = put_varint(entry, at, loc.file.into());
    at = put_varint(entry, at, loc.offset.into());
    at = put_varint(entry, at, value as u64);
    index.extend_from_slice(&entry[..at]);
}

/// Writes `value` as a LEB128 varint (seven bits a byte, low bits first,
/// the top bit set on every byte but the last) at `at`; returns where it
/// ends.
fn put_varint(out: &mut [u8], mut at: usize, mut value: u64) -> usize {
    while value >= 0x80 {
        out[at] = value as u8 | 0x80;
        value >>= 7;
        at += 1;
    }
    out[at] = value as u8;
    at + 1
}

/// The index files a checkpoint lists: a whole index first, then the
/// deltas after it, oldest first (decisions.md 75).
#[derive(Debug, Default, Clone)]
struct Chain {
    files: Vec<IndexFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexFile {
    /// Its number: each index file written has the next one, so its name
    /// (`index_name`) is new.
    number: u64,
    delta: bool,
    /// The file's length, and its body's checksum, as written.
    bytes: u64,
    crc: u32,
}

/// Bytes of a chain entry in the checkpoint: number u64, delta u8, bytes
/// u64, crc u32.
const CHAIN_ENTRY_BYTES: usize = 21;

fn index_name(number: u64) -> String {
    format!("index-{number:016x}")
}

fn parse_index_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("index-")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

impl Chain {
    /// Whether the next checkpoint writes the whole index: when there is no
    /// whole one yet, when the deltas are as many as opening should read,
    /// when the next delta (estimated by the share of regions marked dirty,
    /// `dirty` of them) would be more than `DELTA_SHARE_MAX` of the whole
    /// index (it would save little: a region listed costs more to take
    /// than a slot walked over, and the files kept cost page cache), or
    /// when it would make the deltas outweigh the whole index (opening then
    /// reads at most about twice the index).
    fn wants_whole(&self, dirty: u64) -> bool {
        let Some(base) = self.files.first() else {
            return true;
        };
        let deltas = &self.files[1..];
        let delta_bytes: u64 = deltas.iter().map(|f| f.bytes).sum();
        let estimate = (base.bytes as u128 * dirty as u128 / (SHARDS * REGIONS) as u128) as u64;
        deltas.len() >= CHAIN_DELTAS_MAX
            || estimate > base.bytes / DELTA_SHARE_MAX
            || delta_bytes + estimate > base.bytes
    }

    /// The number of the next index file.
    fn next_number(&self) -> u64 {
        self.files.last().map_or(1, |f| f.number + 1)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            out.extend_from_slice(&f.number.to_le_bytes());
            out.push(u8::from(f.delta));
            out.extend_from_slice(&f.bytes.to_le_bytes());
            out.extend_from_slice(&f.crc.to_le_bytes());
        }
    }
}

/// Writes `magic`, the body's length and checksum, and the body (`parts`
/// one after another) to a new file at `path`, not synced; returns the
/// file, its length and the body's checksum.
fn write_checked(
    path: &Path,
    magic: &[u8; 8],
    parts: &[&[u8]],
) -> Result<(File, u64, u32), StoreError> {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let crc = parts
        .iter()
        .fold(0, |crc, part| engine::checksum::crc32c_append(crc, part));
    let file = File::create(path).map_err(StoreError::io("create checkpoint", path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let write = |out: &mut BufWriter<File>, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(StoreError::io("write checkpoint", path))
    };
    write(&mut out, magic)?;
    write(&mut out, &(body_len as u64).to_le_bytes())?;
    write(&mut out, &crc.to_le_bytes())?;
    for part in parts {
        write(&mut out, part)?;
    }
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io("write checkpoint", path)(e.into_error()))?;
    Ok((file, (magic.len() + 8 + 4 + body_len) as u64, crc))
}

/// Syncs a file `write_checked` wrote, its pages written back a MiB at a
/// time first.
fn sync_written(file: &File, bytes: u64, path: &Path) -> Result<(), StoreError> {
    engine::sys::paced_write_back(file, 0, bytes, None);
    file.sync_all()
        .map_err(StoreError::io("sync checkpoint", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync tables directory", dir))
}

/// The data files and their written lengths, as the checkpoint lists them.
fn list_files(files: &RwLock<Files>) -> Vec<u8> {
    let files = files.read();
    let listed: Vec<&Arc<DataFile>> = files.by_id.iter().flatten().collect();
    let mut out = Vec::with_capacity(4 + 8 * listed.len());
    out.extend_from_slice(&(listed.len() as u32).to_le_bytes());
    for f in &listed {
        out.extend_from_slice(&f.id.to_le_bytes());
        out.extend_from_slice(&f.used.load(Ordering::Acquire).to_le_bytes());
    }
    out
}

/// The background half of a checkpoint (decisions.md 41). `head` (the
/// position and the objects) was taken with apply paused; this takes the
/// shards one at a time beside apply, then lists the data files with their
/// lengths (every record a shard taken points at is below them), makes
/// the files written since the last checkpoint durable (a sync covers later
/// appends too, which is harmless), and writes the checkpoint file and
/// renames it into place.
#[derive(Debug)]
struct CheckpointWrite {
    generation: u64,
    head: Vec<u8>,
    position: AppliedPosition,
    shards: Arc<[RwLock<Shard>]>,
    data: Arc<DataFiles>,
}

/// What the background half of checkpoints shares with the tables.
#[derive(Debug, Default)]
struct Durable {
    /// The generation of the last checkpoint written; locked while one is
    /// written, so they are written one at a time and never an older one
    /// over a newer one.
    written: Mutex<u64>,
    /// The position of the last checkpoint written.
    position: Mutex<AppliedPosition>,
    /// The last checkpoint's index buffer, for the next one: a fresh one
    /// of tens of MB costs a page fault and a zeroed page per 4 KiB.
    spare_index: Mutex<Vec<u8>>,
    compaction: Mutex<Compaction>,
    /// The index files the last checkpoint written lists.
    chain: Mutex<Chain>,
    /// The time apply's run means to leave between checkpoints' beginnings
    /// (`Store::checkpoint_interval`): a checkpoint's data files are
    /// written back within `WRITE_BACK_SHARE` of it where the disk allows.
    interval: Mutex<Option<Duration>>,
}

/// Compaction (decisions.md 46). A checkpoint picks the mostly dead data
/// files (`Sweep`); apply's loop moves the records still held there a slice
/// of slots at a time between batches (`Store::maintain`), with every shard
/// locked as its runs hold them anyway; the next checkpoint, before it
/// takes the shards, moves whatever is left itself (apply idle or slow, or
/// records that apply's changes shifted back past the sweep: the per-file
/// held counts tell), takes the files out of the tables' files, and they
/// are reused once a checkpoint that does not list them is durable.
#[derive(Debug, Default)]
struct Compaction {
    /// Where the records a checkpoint moves itself go.
    lane: Lane,
    /// Files emptied that the durable checkpoint may still list.
    emptied: Vec<Arc<DataFile>>,
    /// When the last checkpoint ran its share (`run`), and the time
    /// between the two before it: a pass is spread over four fifths of the
    /// shorter of that and the time since the last (`sweep_span`).
    last_run: Option<Instant>,
    last_gap: Option<Duration>,
}

/// The files being emptied, and how far apply's loop has moved their
/// records.
#[derive(Debug)]
struct Sweep {
    /// By file id: the files being emptied.
    victims: Vec<Option<Arc<DataFile>>>,
    /// Their dead bytes when they were picked.
    dead: u64,
    /// The next slot apply's steps look at: shard, then slot in its table.
    shard: usize,
    slot: usize,
    /// When it was picked, the time apply's steps spread it over (zero:
    /// not paced), the slots of every shard then, and the slots looked at
    /// since.
    began: Instant,
    span: Duration,
    slots: usize,
    looked: usize,
}

impl Sweep {
    /// The slots apply's next step looks at (`most` unpaced). Paced: as
    /// many as bring the slots looked at up to the share of them that the
    /// time since the pick is of the span, none while that is fewer than
    /// `SWEEP_SLOTS_LEAST_STEP` and at most `SWEEP_SLOTS_PACED_STEP`; once
    /// the span is over, `most` (the tables may have grown since the
    /// pick). Unpaced, a pass ran in the first 60 or so batches after each
    /// checkpoint, about a millisecond each on apply's loop, and apply
    /// fell behind the changes coming in at 1.5 M entries/s for the
    /// 200-300 ms it took (decisions.md 81).
    fn step_slots(&self, now: Instant, most: usize) -> usize {
        if self.span.is_zero() {
            return most;
        }
        let share =
            now.saturating_duration_since(self.began).as_secs_f64() / self.span.as_secs_f64();
        if share >= 1.0 {
            return most;
        }
        let ahead = ((self.slots as f64 * share) as usize).saturating_sub(self.looked);
        match ahead >= SWEEP_SLOTS_LEAST_STEP {
            true => ahead.min(SWEEP_SLOTS_PACED_STEP),
            false => 0,
        }
    }

    fn victims(&self) -> impl Iterator<Item = &Arc<DataFile>> + '_ {
        self.victims.iter().flatten()
    }

    /// Bytes `shard`'s index still points at in the files being emptied.
    fn held_by(&self, shard: &Shard) -> u64 {
        self.victims().map(|f| shard.held_in(f.id)).sum()
    }
}

/// Moves the records of `records`' slots `range` that lie in `victims` (by
/// file id) through `lane`, counting them in `held`. The caller flushes the
/// lane before it lets go of the shard.
fn move_out(
    records: &mut Index,
    held: &mut Vec<u64>,
    lane: &mut Lane,
    data: &DataFiles,
    victims: &[Option<Arc<DataFile>>],
    range: std::ops::Range<usize>,
) -> Result<(), StoreError> {
    records.change_locs(range, |loc| {
        let Some(Some(from)) = victims.get(loc.file as usize) else {
            return Ok(false);
        };
        let bytes = from.raw(*loc)?;
        let to = lane.place(data, bytes.len())?;
        lane.pending.extend_from_slice(bytes);
        let_go(held, *loc);
        hold(held, to);
        *loc = to;
        lane.gathered().map(|()| true)
    })
}

impl ReplicaTables {
    /// Apply's share of compaction: moves the records in the slots due
    /// (`Sweep::step_slots`), every shard locked, through shard 0's lane.
    /// Skipped while a checkpoint looks at the sweep.
    fn sweep_step(&self) -> Result<(), StoreError> {
        self.data.refuse_if_failed()?;
        let Some(mut sweep) = self.data.sweep.try_lock() else {
            return Ok(());
        };
        let Some(state) = sweep.as_mut().filter(|s| s.shard < SHARDS) else {
            return Ok(());
        };
        let mut budget = state.step_slots(Instant::now(), self.data.tuning.sweep_step_slots);
        if budget == 0 {
            return Ok(());
        }
        let mut set = ShardSet::lock(&self.shards, u64::MAX >> (64 - SHARDS));
        let mut lane = std::mem::take(&mut set.shard(0).lane);
        let moved = (|| {
            while budget > 0 && state.shard < SHARDS {
                let shard = set.shard(state.shard);
                let to = (state.slot + budget).min(shard.records.slot_count());
                state.looked += to.saturating_sub(state.slot);
                let Shard { records, held, .. } = shard;
                move_out(
                    records,
                    held,
                    &mut lane,
                    &self.data,
                    &state.victims,
                    state.slot..to,
                )?;
                budget = budget.saturating_sub(to.saturating_sub(state.slot).max(1));
                (state.shard, state.slot) = match to >= records.slot_count() {
                    true => (state.shard + 1, 0),
                    false => (state.shard, to),
                };
            }
            Ok(())
        })();
        // Whatever moved is written before the shards are let go.
        let flushed = lane.flush();
        set.shard(0).lane = lane;
        self.data.note(moved.and(flushed))
    }
}

impl Compaction {
    /// A checkpoint's share of compaction, before it takes the shards:
    /// finishes the files the last one picked (`finish`: apply's steps have
    /// moved most of their records by now), then picks the next ones.
    fn run(&mut self, shards: &[RwLock<Shard>], data: &DataFiles) -> Result<(), StoreError> {
        let mut sweep = data.sweep.lock();
        if let Some(state) = sweep.take() {
            self.finish(shards, data, &state)?;
        }
        let now = Instant::now();
        let span = match data.tuning.sweep_paced {
            true => self.sweep_span(now),
            false => Duration::ZERO,
        };
        let (victims, dead, slots) = self.victims(shards, data);
        if !victims.is_empty() {
            let mut by_id: Vec<Option<Arc<DataFile>>> = Vec::new();
            for file in victims {
                let id = file.id as usize;
                by_id.resize(by_id.len().max(id + 1), None);
                by_id[id] = Some(file);
            }
            *sweep = Some(Sweep {
                victims: by_id,
                dead,
                shard: 0,
                slot: 0,
                began: now,
                span,
                slots,
                looked: 0,
            });
        }
        Ok(())
    }

    /// The time apply's steps spread the pass picked `now` over: four
    /// fifths of the time between checkpoints, taken as the shorter of the
    /// last two gaps between their runs, so that the first checkpoint
    /// after apply stood idle (none begins while nothing is applied) does
    /// not spread its pass over the idle time and leave most of it to the
    /// next checkpoint's thread; `SWEEP_SPAN_FIRST` without a gap yet, at
    /// most `SWEEP_SPAN_MOST`.
    fn sweep_span(&mut self, now: Instant) -> Duration {
        let gap = self
            .last_run
            .map(|last| now.saturating_duration_since(last));
        let shorter = match (gap, self.last_gap) {
            (Some(gap), Some(before)) => Some(gap.min(before)),
            (gap, _) => gap,
        };
        self.last_run = Some(now);
        self.last_gap = gap;
        shorter.map_or(SWEEP_SPAN_FIRST, |g| (g * 4 / 5).min(SWEEP_SPAN_MOST))
    }

    /// Moves what apply's steps left in the files `state` empties, each
    /// shard still pointing into them write-locked in turn (last first, as
    /// `capture_shards` takes them), and takes the files out of the tables'
    /// files.
    fn finish(
        &mut self,
        shards: &[RwLock<Shard>],
        data: &DataFiles,
        state: &Sweep,
    ) -> Result<(), StoreError> {
        for shard in shards.iter().rev() {
            if state.held_by(&shard.read()) == 0 {
                // Nothing points into the files from here, and nothing will:
                // nothing writes to them.
                continue;
            }
            // As in `capture_shards`: apply waits for this shard meanwhile
            // (declared before the shard's guard, so let go after it).
            let _section = engine::sys::realtime_section();
            let mut shard = shard.write();
            let Shard { records, held, .. } = &mut *shard;
            let lane = &mut self.lane;
            let moved = move_out(records, held, lane, data, &state.victims, 0..usize::MAX);
            // Whatever moved is written before the shard is let go.
            let flushed = lane.flush();
            data.note(moved.and(flushed))?;
        }
        {
            let _pinned = data.pins.write();
            let mut files = data.files.write();
            for file in state.victims() {
                files.by_id[file.id as usize] = None;
            }
        }
        if let Some(file) = &self.lane.file {
            let mut dirty = data.dirty.lock();
            if !dirty.iter().any(|d| d.id == file.id) {
                dirty.push(file.clone());
            }
        }
        debug_assert!(shards.iter().all(|s| state.held_by(&s.read()) == 0));
        self.emptied.extend(state.victims().cloned());
        data.reclaimed_bytes
            .fetch_add(state.dead, Ordering::Relaxed);
        Ok(())
    }

    /// The files to empty, the dead bytes in them, and the slots of every
    /// shard: no files unless those bytes make a pass over the index worth
    /// it. Files lanes write to are never taken.
    fn victims(
        &self,
        shards: &[RwLock<Shard>],
        data: &DataFiles,
    ) -> (Vec<Arc<DataFile>>, u64, usize) {
        let mut held: Vec<u64> = Vec::new();
        let mut writing: Vec<u32> = self.lane.file.iter().map(|f| f.id).collect();
        let mut index_bytes = 0u64;
        let mut slots = 0;
        for shard in shards {
            let shard = shard.read();
            held.resize(held.len().max(shard.held.len()), 0);
            for (all, here) in held.iter_mut().zip(&shard.held) {
                *all += here;
            }
            writing.extend(shard.lane.file.as_ref().map(|f| f.id));
            index_bytes += shard.records.memory_bytes() as u64;
            slots += shard.records.slot_count();
        }
        let files = data.files.read();
        let mut dead = 0;
        let victims: Vec<Arc<DataFile>> = files
            .by_id
            .iter()
            .flatten()
            .filter(|f| {
                let used = f.used.load(Ordering::Acquire) as u64;
                let kept = held.get(f.id as usize).copied().unwrap_or(0);
                let chosen =
                    used > 0 && !writing.contains(&f.id) && kept * COMPACT_HELD_DIVISOR <= used;
                if chosen {
                    dead += used - kept;
                }
                chosen
            })
            .cloned()
            .collect();
        match dead * data.tuning.dead_per_index_divisor >= index_bytes {
            true => (victims, dead, slots),
            false => (Vec::new(), 0, slots),
        }
    }
}

impl CheckpointWrite {
    /// Any failure is the tables' (`DataFiles::note`): a data file's
    /// failed sync leaves its pages in doubt, and compaction may have moved
    /// records.
    fn finish(self, dir: &Path, durable: &Durable) -> Result<CheckpointTimes, StoreError> {
        let data = self.data.clone();
        data.note(self.finish_with(dir, durable, &mut || {}))
    }

    /// `finish`, running `between` after each shard it takes (and not
    /// noting a failure: tests).
    fn finish_with(
        self,
        dir: &Path,
        durable: &Durable,
        between: &mut dyn FnMut(),
    ) -> Result<CheckpointTimes, StoreError> {
        let mut written = durable.written.lock();
        if *written >= self.generation {
            return Ok(CheckpointTimes::default());
        }
        self.data.refuse_if_failed()?;
        let mut times = CheckpointTimes::default();
        let began = Instant::now();
        let mut phase = began;
        let mut lap = || {
            let now = Instant::now();
            std::mem::replace(&mut phase, now).elapsed()
        };
        let mut compaction = durable.compaction.lock();
        compaction.run(&self.shards, &self.data)?;
        times.compaction = lap();
        let mut chain = durable.chain.lock();
        let dirty = (self.shards.iter())
            .map(|s| s.read().records.dirty_count() as u64)
            .sum();
        let whole = chain.wants_whole(dirty);
        let mut index = std::mem::take(&mut *durable.spare_index.lock());
        index.clear();
        let format = self.data.tuning.entries;
        let regions = capture_shards(&self.shards, &mut index, whole, format, between);
        times.delta_regions = (!whole).then_some(regions);
        times.index = lap();
        let listed = list_files(&self.data.files);
        let dirty = take_dirty(&self.shards, &self.data.dirty);
        let bytes = dirty
            .iter()
            .map(|f| f.used.load(Ordering::Acquire) as u64)
            .sum();
        let mut deadline = durable.interval.lock().map(|interval| {
            engine::sys::WriteBackDeadline::new(began + interval.mul_f64(WRITE_BACK_SHARE), bytes)
        });
        for file in dirty {
            let used = file.used.load(Ordering::Acquire) as u64;
            engine::sys::paced_write_back(&file.file, 0, used, deadline.as_mut());
            file.file
                .sync_data()
                .map_err(StoreError::io("sync data file", &file.path))?;
            times.data_files_synced += 1;
        }
        times.data_sync = lap();
        // A failure noted while the shards were taken may have left some of
        // them pointing at records never written.
        self.data.refuse_if_failed()?;
        // The index file, then the checkpoint naming it after the ones it
        // follows: head (position, objects), data files, index files.
        let number = chain.next_number();
        let index_path = dir.join(index_name(number));
        let magic = match (whole, format) {
            (true, EntryFormat::Compact) => INDEX_MAGIC,
            (false, EntryFormat::Compact) => DELTA_MAGIC,
            (true, EntryFormat::Fixed) => INDEX_MAGIC_FIXED,
            (false, EntryFormat::Fixed) => DELTA_MAGIC_FIXED,
        };
        let (index_file, index_bytes, index_crc) = write_checked(&index_path, magic, &[&index])?;
        let mut next = match whole {
            true => Chain::default(),
            false => chain.clone(),
        };
        next.files.push(IndexFile {
            number,
            delta: !whole,
            bytes: index_bytes,
            crc: index_crc,
        });
        let mut listed_chain = Vec::with_capacity(4 + CHAIN_ENTRY_BYTES * next.files.len());
        next.encode(&mut listed_chain);
        let tmp = dir.join("checkpoint.tmp");
        let (file, file_bytes, _) = write_checked(
            &tmp,
            CHECKPOINT_MAGIC,
            &[&self.head, &listed, &listed_chain],
        )?;
        times.file_bytes = index_bytes + file_bytes;
        times.file_write = lap();
        sync_written(&index_file, index_bytes, &index_path)?;
        sync_written(&file, file_bytes, &tmp)?;
        // The index file's name is durable before the checkpoint that
        // names it is.
        sync_dir(dir)?;
        let path = dir.join(CHECKPOINT_FILE);
        std::fs::rename(&tmp, &path).map_err(StoreError::io("rename checkpoint", &path))?;
        sync_dir(dir)?;
        times.file_sync = lap();
        let replaced = std::mem::replace(&mut *chain, next);
        if whole {
            for f in replaced.files {
                let path = dir.join(index_name(f.number));
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(
                        "HAD0234W cannot remove {}, an index file no checkpoint lists any more: {e}; opening the tables removes it",
                        path.display()
                    );
                }
            }
        }
        *written = self.generation;
        *durable.position.lock() = self.position;
        *durable.spare_index.lock() = index;
        // No checkpoint lists the files compaction emptied before this one
        // took its shards (and none of those shards points into them).
        self.data.release(std::mem::take(&mut compaction.emptied))?;
        times.total = began.elapsed();
        Ok(times)
    }
}

impl ReplicaTables {
    fn checkpoint_write(&self, position: &AppliedPosition) -> CheckpointWrite {
        CheckpointWrite {
            generation: self.begun.fetch_add(1, Ordering::Relaxed) + 1,
            head: self.checkpoint_head(position),
            position: position.clone(),
            shards: self.shards.clone(),
            data: self.data.clone(),
        }
    }

    /// What a checkpoint takes with apply paused: the position and the
    /// objects (the shards follow beside apply, `capture_shards`).
    fn checkpoint_head(&self, position: &AppliedPosition) -> Vec<u8> {
        let mut head = Vec::new();
        position.encode(&mut head);
        let objects = self.objects.read();
        head.extend_from_slice(&(objects.len() as u32).to_le_bytes());
        for (id, name) in objects.iter() {
            head.extend_from_slice(&id.to_le_bytes());
            head.extend_from_slice(&(name.len() as u32).to_le_bytes());
            head.extend_from_slice(name.as_bytes());
        }
        head
    }

    /// Loads the checkpoint `bytes` (read from `path`) and the index files
    /// it lists; returns `Store::mixed_until`.
    fn load_checkpoint(&self, path: &Path, bytes: &[u8]) -> Result<Vec<u64>, StoreError> {
        let corrupt = |detail: &str| corrupt_at(path, detail);
        let short = || corrupt("ends early");
        let magic = bytes.get(..8);
        let format = [CHECKPOINT_MAGIC, CHECKPOINT_MAGIC_V2, CHECKPOINT_MAGIC_V1]
            .iter()
            .position(|m| magic == Some(&m[..]))
            .ok_or_else(|| corrupt("not a replica tables checkpoint (bad magic)"))?;
        let body = checked_body(path, bytes)?;
        let mut r = Reader { bytes: body, at: 0 };
        let (position, used) =
            AppliedPosition::decode(body, MAX_JOURNALS).ok_or_else(|| corrupt("bad position"))?;
        r.at = used;
        let mut objects = self.objects.write();
        for _ in 0..r.u32().ok_or_else(short)? {
            let id = r.u64().ok_or_else(short)?;
            let n = r.u32().ok_or_else(short)? as usize;
            let name = r.take(n).ok_or_else(short)?;
            objects.insert(id, String::from_utf8_lossy(name).into_owned());
        }
        let mut files = self.data.files.write();
        let mut max_id = 0;
        for _ in 0..r.u32().ok_or_else(short)? {
            let id = r.u32().ok_or_else(short)?;
            let used = r.u32().ok_or_else(short)?;
            files.insert(Arc::new(DataFile::open(
                &self.dir,
                id,
                self.data.tuning.file_bytes,
                used,
            )?));
            max_id = max_id.max(id);
        }
        self.data.next_id.store(max_id + 1, Ordering::Relaxed);
        let mut shards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        let mut load = Loader {
            files: &files,
            shards: &mut shards,
            position: &position,
            claimed: vec![0; SHARDS * REGIONS / 64],
            stamped: 0,
            mixed_until: Vec::new(),
        };
        match format {
            0 => {
                let chain = read_chain(&mut r).ok_or_else(short)?;
                end(path, &r)?;
                if chain.files.is_empty() {
                    return Err(corrupt("lists no index file"));
                }
                // Newest first: the newest listing of a region is its
                // records; an older file's records there are passed over.
                for (i, file) in chain.files.iter().enumerate().rev() {
                    if file.delta != (i > 0) {
                        return Err(corrupt(&format!(
                            "index file {} is listed as {} in place {i} of {}",
                            index_name(file.number),
                            if file.delta {
                                "a delta"
                            } else {
                                "a whole index"
                            },
                            chain.files.len()
                        )));
                    }
                    let index_path = self.dir.join(index_name(file.number));
                    let bytes = std::fs::read(&index_path).map_err(|e| {
                        corrupt(&format!(
                            "cannot read index file {} that it lists: {e}",
                            index_path.display()
                        ))
                    })?;
                    let magics = match file.delta {
                        true => [DELTA_MAGIC, DELTA_MAGIC_FIXED],
                        false => [INDEX_MAGIC, INDEX_MAGIC_FIXED],
                    };
                    let format = match magics.iter().position(|m| bytes.starts_with(*m)) {
                        Some(0) => Some(EntryFormat::Compact),
                        Some(_) => Some(EntryFormat::Fixed),
                        None => None,
                    };
                    let Some(format) = format.filter(|_| bytes.len() as u64 == file.bytes) else {
                        return Err(corrupt_at(
                            &index_path,
                            &format!(
                                "not the index file the checkpoint lists ({} bytes, {} bytes listed, or the wrong magic)",
                                bytes.len(),
                                file.bytes
                            ),
                        ));
                    };
                    let body = checked_body(&index_path, &bytes)?;
                    // The body matches its header's checksum: that one must
                    // be the one listed.
                    if bytes[16..20] != file.crc.to_le_bytes() {
                        return Err(corrupt(&format!(
                            "index file {} is not the one it lists (another checksum)",
                            index_path.display()
                        )));
                    }
                    let mut r = Reader { bytes: body, at: 0 };
                    match file.delta {
                        true => load.delta(&index_path, &mut r, format)?,
                        false => load.whole(&index_path, &mut r, true, format)?,
                    }
                    end(&index_path, &r)?;
                }
                *self.durable.chain.lock() = chain;
            }
            // The index inside the checkpoint: a group per shard, or one
            // flat group (each record in the shard of its hash).
            v => {
                load.whole(path, &mut r, v == 1, EntryFormat::Fixed)?;
                end(path, &r)?;
            }
        }
        let mixed_until = std::mem::take(&mut load.mixed_until);
        for shard in shards.iter_mut() {
            shard.records.clear_dirty();
        }
        publish_objects(&objects, &mut shards);
        *self.durable.position.lock() = position;
        Ok(mixed_until)
    }

    /// Data files a crash left behind after the last checkpoint hold nothing
    /// the checkpoint points at: staging replays their contents. Index
    /// files it does not list were written for a checkpoint the crash cut
    /// short, or replaced by a later whole index.
    fn remove_unlisted_files(&self) -> Result<(), StoreError> {
        let files = self.data.files.read();
        let chain = self.durable.chain.lock();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(StoreError::io("list tables directory", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list tables directory", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = match (parse_data_name(&name), parse_index_name(&name)) {
                (Some(id), _) => files.get(id).is_none(),
                (_, Some(number)) => !chain.files.iter().any(|f| f.number == number),
                _ => name == "checkpoint.tmp",
            };
            if stale {
                std::fs::remove_file(entry.path())
                    .map_err(StoreError::io("remove stale file", entry.path()))?;
            }
        }
        Ok(())
    }
}

fn corrupt_at(path: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: detail.to_owned(),
    }
}

/// The body of a file `write_checked` wrote, its length and checksum
/// checked (its magic is the caller's).
fn checked_body<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    if bytes.len() < 20 {
        return Err(corrupt_at(path, "shorter than its header"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    let body = &bytes[20..];
    if body.len() as u64 != len {
        return Err(corrupt_at(
            path,
            &format!("body is {} bytes, header says {len}", body.len()),
        ));
    }
    if engine::checksum::crc32c(body) != crc {
        return Err(corrupt_at(path, "checksum mismatch"));
    }
    Ok(body)
}

/// Nothing follows what was read.
fn end(path: &Path, r: &Reader<'_>) -> Result<(), StoreError> {
    match r.at == r.bytes.len() {
        true => Ok(()),
        false => Err(corrupt_at(path, "trailing bytes after the index")),
    }
}

fn read_chain(r: &mut Reader<'_>) -> Option<Chain> {
    let n = r.u32()? as usize;
    if n > CHAIN_DELTAS_MAX + 1 {
        return None;
    }
    let mut chain = Chain::default();
    for _ in 0..n {
        chain.files.push(IndexFile {
            number: r.u64()?,
            delta: r.take(1)?[0] != 0,
            bytes: r.u64()?,
            crc: r.u32()?,
        });
    }
    Some(chain)
}

/// Loading the index files of a checkpoint into the shards, newest first.
struct Loader<'a, 'g> {
    files: &'a Files,
    shards: &'a mut [RwLockWriteGuard<'g, Shard>],
    position: &'a AppliedPosition,
    /// Per shard, a bit per region: listed by a delta loaded already (a
    /// newer one), whose records are the region's.
    claimed: Vec<u64>,
    /// Shards whose stamps were taken (from the newest file).
    stamped: u64,
    mixed_until: Vec<u64>,
}

impl Loader<'_, '_> {
    /// A whole index: every shard's records but in the regions claimed, in
    /// groups per shard (`sharded`) or as one flat group.
    fn whole(
        &mut self,
        path: &Path,
        r: &mut Reader<'_>,
        sharded: bool,
        format: EntryFormat,
    ) -> Result<(), StoreError> {
        let short = || corrupt_at(path, "ends early");
        let groups = match sharded {
            true => self.shard_count(path, r)?,
            false => 1,
        };
        let mut seen = 0u64;
        for _ in 0..groups {
            let group = match sharded {
                true => Some(self.shard_head(path, r, &mut seen)?),
                false => None,
            };
            let count = r.u64().ok_or_else(short)?;
            // A count the rest cannot hold is damage, not a table to make
            // room for.
            if count > ((r.bytes.len() - r.at) / format.entry_min()) as u64 {
                return Err(short());
            }
            if let Some(s) = group {
                self.shards[s].records.reserve(count as usize);
            }
            for _ in 0..count {
                let (object, key, loc) = read_entry(path, r, format)?;
                let hash = record_hash(object, key);
                let s = shard_of(hash);
                if group.is_some_and(|g| g != s) {
                    return Err(corrupt_at(
                        path,
                        "a record is listed in a shard not its own",
                    ));
                }
                if !self.is_claimed(s, region_of(hash)) {
                    self.insert(path, s, hash, object, key, loc)?;
                }
            }
        }
        Ok(())
    }

    /// A delta: per shard, the regions it lists, each with its records.
    fn delta(
        &mut self,
        path: &Path,
        r: &mut Reader<'_>,
        format: EntryFormat,
    ) -> Result<(), StoreError> {
        let short = || corrupt_at(path, "ends early");
        let mut seen = 0u64;
        for _ in 0..self.shard_count(path, r)? {
            let s = self.shard_head(path, r, &mut seen)?;
            let regions = r.u32().ok_or_else(short)? as usize;
            let mut last = None;
            for _ in 0..regions {
                let region = r.u32().ok_or_else(short)? as usize;
                if region >= REGIONS || last.is_some_and(|l| region <= l) {
                    return Err(corrupt_at(
                        path,
                        &format!("shard {s} lists region {region} out of order or past the last"),
                    ));
                }
                last = Some(region);
                let count = r.u32().ok_or_else(short)? as usize;
                if count > (r.bytes.len() - r.at) / format.entry_min() {
                    return Err(short());
                }
                let newest = !self.is_claimed(s, region);
                self.claimed[(s * REGIONS + region) / 64] |= 1 << (region % 64);
                for _ in 0..count {
                    let (object, key, loc) = read_entry(path, r, format)?;
                    let hash = record_hash(object, key);
                    if shard_of(hash) != s || region_of(hash) != region {
                        return Err(corrupt_at(
                            path,
                            "a record is listed in a region not its own",
                        ));
                    }
                    if newest {
                        self.insert(path, s, hash, object, key, loc)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn shard_count(&self, path: &Path, r: &mut Reader<'_>) -> Result<usize, StoreError> {
        let groups = r.u32().ok_or_else(|| corrupt_at(path, "ends early"))? as usize;
        if groups != SHARDS {
            return Err(corrupt_at(
                path,
                &format!("{groups} shards, the tables have {SHARDS}"),
            ));
        }
        Ok(groups)
    }

    /// A shard's number and stamps: the stamps are the shard's if this is
    /// the newest file to list it.
    fn shard_head(
        &mut self,
        path: &Path,
        r: &mut Reader<'_>,
        seen: &mut u64,
    ) -> Result<usize, StoreError> {
        let short = || corrupt_at(path, "ends early");
        let s = r.u32().ok_or_else(short)? as usize;
        if s >= SHARDS || *seen & (1 << s) != 0 {
            return Err(corrupt_at(
                path,
                &format!("shard {s} unknown or listed twice"),
            ));
        }
        *seen |= 1 << s;
        let n = r.u32().ok_or_else(short)? as usize;
        if n > MAX_JOURNALS {
            return Err(corrupt_at(
                path,
                &format!("shard {s} has {n} journal stamps"),
            ));
        }
        let stamps = (0..n)
            .map(|_| r.u64().ok_or_else(short))
            .collect::<Result<Vec<u64>, _>>()?;
        if self.stamped & (1 << s) != 0 {
            return Ok(s);
        }
        self.stamped |= 1 << s;
        // What replay from the position must pass over in this shard: the
        // commits it holds beyond the position.
        let mut floors = stamps.clone();
        for (j, floor) in floors.iter_mut().enumerate() {
            if *floor <= self.position.journal(j as u32).applied {
                *floor = 0;
            }
        }
        if floors.iter().any(|&f| f != 0) {
            let m = &mut self.mixed_until;
            m.resize(m.len().max(floors.len()), 0);
            for (m, &f) in m.iter_mut().zip(&floors) {
                *m = (*m).max(f);
            }
        } else {
            floors.clear();
        }
        self.shards[s].stamps = stamps;
        self.shards[s].floors = floors;
        Ok(s)
    }

    fn is_claimed(&self, s: usize, region: usize) -> bool {
        self.claimed[(s * REGIONS + region) / 64] & (1 << (region % 64)) != 0
    }

    fn insert(
        &mut self,
        path: &Path,
        s: usize,
        hash: u64,
        object: u64,
        key: &[u8],
        loc: Loc,
    ) -> Result<(), StoreError> {
        let known = self.files.get(loc.file).is_some_and(|f| {
            loc.offset as u64 + loc.len as u64 <= f.used.load(Ordering::Relaxed) as u64
        });
        if !known {
            return Err(corrupt_at(
                path,
                "an index entry points outside the listed data files",
            ));
        }
        if self.shards[s].put(hash, object, key, loc).is_some() {
            return Err(corrupt_at(path, "a record is listed twice"));
        }
        Ok(())
    }
}

/// One record of an index in `format`: object, key, location.
fn read_entry<'a>(
    path: &Path,
    r: &mut Reader<'a>,
    format: EntryFormat,
) -> Result<(u64, &'a [u8], Loc), StoreError> {
    let short = || corrupt_at(path, "ends early");
    let (object, key, loc) = match format {
        EntryFormat::Fixed => {
            let object = r.u64().ok_or_else(short)?;
            let n = r.u32().ok_or_else(short)? as usize;
            check_key_length(path, n)?;
            let key = r.take(n).ok_or_else(short)?;
            let loc = Loc {
                file: r.u32().ok_or_else(short)?,
                offset: r.u32().ok_or_else(short)?,
                len: r.u32().ok_or_else(short)?,
            };
            if (loc.len as usize) < RECORD_HEADER_BYTES + n {
                return Err(corrupt_at(
                    path,
                    &format!(
                        "an index entry's record ({} bytes) is shorter than its header and key",
                        loc.len
                    ),
                ));
            }
            (object, key, loc)
        }
        EntryFormat::Compact => {
            let object = index_number(path, r, "object", u64::MAX)?;
            let n = index_number(path, r, "key length", u32::MAX.into())? as usize;
            check_key_length(path, n)?;
            let key = r.take(n).ok_or_else(short)?;
            let file = index_number(path, r, "data file", u32::MAX.into())? as u32;
            let offset = index_number(path, r, "offset", u32::MAX.into())? as u32;
            let len_max = u64::from(u32::MAX) - (RECORD_HEADER_BYTES + n) as u64;
            let value = index_number(path, r, "value length", len_max)? as u32;
            let loc = Loc {
                file,
                offset,
                len: (RECORD_HEADER_BYTES + n) as u32 + value,
            };
            (object, key, loc)
        }
    };
    Ok((object, key, loc))
}

/// A compact index entry's number named `what`, at most `max`.
fn index_number(path: &Path, r: &mut Reader<'_>, what: &str, max: u64) -> Result<u64, StoreError> {
    match r.varint() {
        Ok(v) if v <= max => Ok(v),
        Ok(v) => Err(corrupt_at(
            path,
            &format!("an index entry's {what} ({v}) is past {max}"),
        )),
        Err(e) => Err(corrupt_at(path, e)),
    }
}

/// An index entry's key is no longer than any key apply takes.
fn check_key_length(path: &Path, n: usize) -> Result<(), StoreError> {
    match n > engine::limits::KEY_BYTES_MAX {
        true => Err(corrupt_at(
            path,
            &format!("an index entry's key of {n} bytes is longer than any key"),
        )),
        false => Ok(()),
    }
}

impl EntryFormat {
    /// The fewest bytes an entry takes: a count of entries past what the
    /// rest of a file can hold is damage.
    fn entry_min(self) -> usize {
        match self {
            EntryFormat::Fixed => RECORD_ENTRY_BYTES,
            EntryFormat::Compact => COMPACT_ENTRY_MIN,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A LEB128 varint as `put_varint` writes it; what is wrong otherwise.
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = *self.bytes.get(self.at).ok_or("ends early")?;
            self.at += 1;
            // The tenth byte holds the 64th bit only.
            if i == 9 && byte > 1 {
                return Err("holds a number longer than 64 bits");
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("holds a number longer than 64 bits")
    }
}

impl Store for ReplicaTables {
    fn apply(&self, txn: &Txn<'_>) -> Result<(), StoreError> {
        if txn.is_empty() {
            return Ok(());
        }
        self.data.refuse_if_failed()?;
        if txn.has_object_ops() {
            return self.apply_exclusive(txn);
        }
        let mut shards = 0u64;
        for op in txn.ops() {
            shards |= 1 << shard_of(record_hash(op.object_id, op.key));
        }
        // Every shard the transaction touches, locked in shard order, held
        // until all its changes are in: readers see all of it or none.
        let mut locked = ShardSet::lock(&self.shards, shards);
        // Objects change only with every shard locked: any shard's list is
        // current while we hold one.
        let lane = shards.trailing_zeros() as usize;
        let live = &locked.shard(lane).live;
        let mut known = u64::MAX;
        for op in txn.ops() {
            if op.object_id != known && op.kind != OpKind::Probe {
                if live.binary_search(&op.object_id).is_err() {
                    return Err(StoreError::UnknownObject {
                        sequence: op.sequence,
                        label: op.kind.label(),
                        object_id: op.object_id,
                    });
                }
                known = op.object_id;
            }
        }
        // Records go to the lowest shard's lane, under its lock. The index
        // slot LOOKAHEAD_OPS changes on is fetched while this one is made
        // (`prefetch` fetched the first ones).
        let meta = txn.meta();
        let mut ahead = txn.ops().skip(LOOKAHEAD_OPS);
        let mut changes = || -> Result<(), StoreError> {
            for op in txn.ops() {
                if let Some(next) = ahead.next() {
                    let hash = record_hash(next.object_id, next.key);
                    locked.shard(shard_of(hash)).records.prefetch(hash);
                }
                let hash = record_hash(op.object_id, op.key);
                if op.kind == OpKind::Probe
                    || !locked
                        .shard(shard_of(hash))
                        .admit(meta.journal, meta.commit_sequence)
                {
                    continue;
                }
                let loc = match op.kind {
                    OpKind::Put => Some(self.append(&mut locked.shard(lane).lane, &op)?),
                    _ => None,
                };
                Self::index_change(locked.shard(shard_of(hash)), hash, &op, loc);
            }
            locked.shard(lane).lane.flush()
        };
        // Noted before `locked` lets the shards go.
        self.data.note(changes())
    }

    /// Streams the transaction twice with everything locked: a check pass
    /// (nothing changes if it is refused), then the apply pass; readers wait
    /// until both are done. Values go straight to the data files, so memory
    /// grows only by the index entries of new keys.
    fn apply_large(&self, txn: &mut dyn LargeTxn) -> Result<(), StoreError> {
        self.data.refuse_if_failed()?;
        let mut objects = self.objects.write();
        let mut shards: Vec<RwLockWriteGuard<'_, Shard>> =
            self.shards.iter().map(|s| s.write()).collect();
        {
            let mut check = ObjectCheck::new(|id| objects.contains_key(&id));
            txn.for_each(&mut |op| check.see(op.kind, op.object_id, op.sequence, op.kind.label()))?;
        }
        // An error in this pass (I/O, or staging unreadable) leaves part of
        // the transaction in memory: noted, so nothing is checkpointed until
        // the store is reopened from its checkpoint, which has none of it.
        let meta = txn.meta();
        let applied =
            txn.for_each(&mut |op| self.apply_op_exclusive(&mut objects, &mut shards, meta, &op));
        publish_objects(&objects, &mut shards);
        self.data
            .note(applied.and_then(|()| shards[0].lane.flush()))
    }

    fn checkpoint(&self, position: &AppliedPosition) -> Result<(), StoreError> {
        self.begin_checkpoint(position)?.finish().map(drop)
    }

    /// The index slots of the transaction's first `LOOKAHEAD_OPS` records
    /// (`apply` fetches the rest as it goes; the data files are appended in
    /// order, which the hardware prefetches by itself).
    fn prefetch(&self, txn: &Txn<'_>) {
        for op in txn.ops().take(LOOKAHEAD_OPS) {
            let hash = record_hash(op.object_id, op.key);
            self.hints[shard_of(hash)].prefetch(hash);
        }
    }

    /// Every shard locked, in `parts` parts of `SHARDS / parts` shards
    /// each (`parts` must divide `SHARDS`; else `None`).
    fn lock_parts(&self, parts: usize) -> Option<Box<dyn PartedApply + '_>> {
        if parts == 0 || !SHARDS.is_multiple_of(parts) {
            return None;
        }
        debug_assert!(parts.is_power_of_two());
        let mut locked = ShardSet::lock(&self.shards, u64::MAX >> (64 - SHARDS));
        let live = locked.shard(0).live.clone();
        Some(Box::new(Parted {
            tables: self,
            locked,
            parts,
            live,
            busy: (0..parts).map(|_| Mutex::new(())).collect(),
        }))
    }

    /// Takes the position and the objects (apply paused); the shards are
    /// taken, the data files synced and the checkpoint file written by the
    /// returned checkpoint's `finish`, beside apply (decisions.md 41).
    fn begin_checkpoint(
        &self,
        position: &AppliedPosition,
    ) -> Result<PendingCheckpoint, StoreError> {
        self.data.refuse_if_failed()?;
        let write = self.checkpoint_write(position);
        let dir = self.dir.clone();
        let durable = self.durable.clone();
        Ok(PendingCheckpoint::new(move || write.finish(&dir, &durable)))
    }

    fn applied_position(&self) -> AppliedPosition {
        self.durable.position.lock().clone()
    }

    fn checkpoint_interval(&self, every: Duration) {
        *self.durable.interval.lock() = Some(every);
    }

    fn mixed_until(&self) -> Vec<u64> {
        self.mixed_until.clone()
    }

    fn maintain(&self) -> Result<(), StoreError> {
        self.sweep_step()
    }

    fn space(&self) -> Option<StoreSpace> {
        let (data_files, written_bytes) = {
            let files = self.data.files.read();
            let listed = files.by_id.iter().flatten();
            listed.fold((0, 0), |(n, bytes), f| {
                (n + 1, bytes + f.used.load(Ordering::Relaxed) as u64)
            })
        };
        Some(StoreSpace {
            data_files,
            free_files: self.data.free.lock().len(),
            written_bytes,
            held_bytes: self
                .shards
                .iter()
                .map(|s| s.read().held.iter().sum::<u64>())
                .sum(),
            reclaimed_bytes: self.reclaimed_bytes(),
        })
    }

    fn objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        Ok(self
            .objects
            .read()
            .iter()
            .map(|(id, name)| ObjectInfo {
                object_id: *id,
                name: name.clone(),
            })
            .collect())
    }

    fn scan(&self, object_id: u64, visit: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        // The locations are read after the shards' locks are let go.
        let _pinned = self.data.pins.read();
        let mut locs: Vec<(Box<[u8]>, Loc)> = Vec::new();
        for shard in self.shards.iter() {
            locs.extend(
                shard
                    .read()
                    .records
                    .iter()
                    .filter(|s| s.object == object_id)
                    .map(|s| (Box::from(s.key), s.loc)),
            );
        }
        locs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let files = self.data.files.read();
        for (key, loc) in &locs {
            if let Some(value) = self.read_value(&files, Some(*loc))? {
                visit(key, &value);
            }
        }
        Ok(())
    }

    fn record_count(&self, object_id: u64) -> Result<u64, StoreError> {
        Ok(self.shards.iter().map(|s| s.read().count(object_id)).sum())
    }

    /// By groups of shards (a bucket lies in one shard: buckets and shards
    /// both take the low bits of the record hash): the group's record
    /// locations are taken under each shard's read lock in the order of the
    /// index's slots, which is the visiting order (`Index::ordered`), then
    /// the records are read from the data files in that order, fetched a few
    /// ahead (a location stays valid after the lock is released: the group
    /// pins the data files, `DataFiles::pins`).
    ///
    /// A pass over the whole object (`only` is `None`) checks each record's
    /// lengths but not its checksum: sync-check compares what it hashes with
    /// the source, which finds any damage to a key or value, and then reads
    /// the buckets that differ again with `only`, checksums checked, so the
    /// damage is named as such (HAD0211E, decisions.md 32).
    fn visit_buckets(
        &self,
        object_id: u64,
        bits: u32,
        only: Option<&[u64]>,
        visit: &mut BucketVisit<'_>,
    ) -> Result<(), StoreError> {
        if (1usize << bits) < SHARDS {
            return visit_buckets_in_memory(self, object_id, bits, only, visit);
        }
        // With `only`: the buckets as a bit set, and the shards they lie in.
        let wanted = only.map(|only| {
            let mut set = vec![0u64; (1usize << bits).div_ceil(64)];
            for &b in only.iter().filter(|&&b| b < 1 << bits) {
                set[b as usize / 64] |= 1 << (b % 64);
            }
            set
        });
        let in_shard =
            |s: usize| only.is_none_or(|only| only.iter().any(|&b| b as usize % SHARDS == s));
        let counts: Vec<usize> = (0..SHARDS)
            .map(|s| match in_shard(s) {
                true => self.shards[s].read().count(object_id) as usize,
                false => 0,
            })
            .collect();
        // (hash, location) in visiting order: room for the largest group
        // (counts may grow while the groups are read). A few buckets take
        // what they need.
        let room = match only {
            None => {
                let largest = counts.iter().copied().max().unwrap_or(0);
                counts
                    .iter()
                    .sum::<usize>()
                    .min(largest.max(VISIT_GROUP_RECORDS))
            }
            Some(_) => 0,
        };
        let mut held: Vec<(u64, Loc)> = Vec::with_capacity(room);
        let mut gather = Gather {
            out: Vec::new(),
            checksums: only.is_some(),
        };
        let mut first = 0;
        while first < SHARDS {
            let mut end = first + 1;
            let mut group = counts[first];
            while end < SHARDS && group + counts[end] <= VISIT_GROUP_RECORDS {
                group += counts[end];
                end += 1;
            }
            held.clear();
            // The locations are read after the shards' locks are let go.
            let pinned = self.data.pins.read();
            for s in (first..end).filter(|&s| in_shard(s)) {
                let wanted = |hash: u64| {
                    wanted.as_ref().is_none_or(|set| {
                        let b = bucket_of(hash, bits);
                        set[b as usize / 64] & (1 << (b % 64)) != 0
                    })
                };
                self.shards[s]
                    .read()
                    .records
                    .ordered(object_id, wanted, &mut held);
            }
            first = end;
            let files: Vec<Option<Arc<DataFile>>> = self.data.files.read().by_id.clone();
            gather.visit(&self.dir, &files, &held, visit)?;
            drop(files);
            drop(pinned);
        }
        Ok(())
    }

    fn get(&self, object_id: u64, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let hash = record_hash(object_id, key);
        let shard = self.shards[shard_of(hash)].read();
        let files = self.data.files.read();
        self.read_value(&files, shard.get(hash, object_id, key))
    }
}

/// How `visit_buckets` reads a group's records: a batch at a time copied
/// from the data files (fetched ahead), then checked and visited from the
/// copy (decisions.md 29). Checking each record where it lies in the map
/// makes its checksum wait for its cache miss, and the misses no longer
/// overlap.
struct Gather {
    /// The batch's records as the data files hold them.
    out: Vec<u8>,
    /// Whether each record is checked against its checksum (its lengths
    /// always are).
    checksums: bool,
}

impl Gather {
    /// Visits the records of `sorted` (in the order of their bit-reversed
    /// hash: bucket by bucket) in that order.
    fn visit(
        &mut self,
        dir: &Path,
        files: &[Option<Arc<DataFile>>],
        sorted: &[(u64, Loc)],
        visit: &mut BucketVisit<'_>,
    ) -> Result<(), StoreError> {
        let file = |loc: Loc| {
            files
                .get(loc.file as usize)
                .and_then(Option::as_ref)
                .ok_or_else(|| StoreError::Corrupt {
                    path: data_path(dir, loc.file),
                    detail: "the index names a data file that does not exist".into(),
                })
        };
        let mut from = 0;
        while from < sorted.len() {
            // A batch ends between two hashes, so records with one hash
            // (rare) are in one batch.
            let mut to = (from + VISIT_BATCH_RECORDS).min(sorted.len());
            while to < sorted.len() && sorted[to].0 == sorted[to - 1].0 {
                to += 1;
            }
            self.out.clear();
            for i in from..to {
                if let Some(&(_, ahead)) = sorted.get(i + PREFETCH_AHEAD) {
                    file(ahead)?.prefetch(ahead);
                }
                let loc = sorted[i].1;
                self.out.extend_from_slice(file(loc)?.raw(loc)?);
            }
            self.visit_batch(dir, &sorted[from..to], visit)?;
            from = to;
        }
        Ok(())
    }

    /// Checks and visits `batch`'s records from `out`; records that share
    /// a hash go by key.
    fn visit_batch(
        &self,
        dir: &Path,
        batch: &[(u64, Loc)],
        visit: &mut BucketVisit<'_>,
    ) -> Result<(), StoreError> {
        let out = &self.out;
        let record = |at: usize, loc: Loc| {
            let bytes = &out[at..at + loc.len as usize];
            match self.checksums {
                true => check_record_sum(bytes, loc.offset),
                false => Ok(()),
            }
            .and_then(|()| parse_record(bytes, loc.offset))
            .map_err(|detail| StoreError::Corrupt {
                path: data_path(dir, loc.file),
                detail,
            })
        };
        let mut at = 0;
        let mut i = 0;
        while i < batch.len() {
            let (hash, loc) = batch[i];
            if batch.get(i + 1).is_some_and(|next| next.0 == hash) {
                let mut same = Vec::new();
                while i < batch.len() && batch[i].0 == hash {
                    let (_, key, value) = record(at, batch[i].1)?;
                    same.push((key, value));
                    at += batch[i].1.len as usize;
                    i += 1;
                }
                same.sort_unstable_by_key(|r| r.0);
                for (key, value) in same {
                    visit(hash, key, value);
                }
                continue;
            }
            let (_, key, value) = record(at, loc)?;
            visit(hash, key, value);
            at += loc.len as usize;
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use std::sync::atomic::AtomicBool;
    use testkit::{copy_dir, seed, Rng};

    /// Random puts, removes and whole-object removals on one shard, objects
    /// small (their hashes listed) and large (past `LISTED_RECORDS`, and
    /// back under it), with colliding hashes and runs that wrap the table,
    /// against a map: records, per-object counts and bytes held per file
    /// must agree after every step (seed printed).
    #[test]
    fn a_shard_removes_exactly_an_objects_records_small_or_large() {
        let seed = seed("tables a_shard_removes_exactly_an_objects_records_small_or_large");
        let mut rng = Rng(seed);
        let mut shard = Shard::default();
        let mut model: BTreeMap<(u64, u64), (u64, Loc)> = BTreeMap::new();
        let (mut listed_removals, mut scanned_removals) = (0, 0);
        for step in 0..60_000u32 {
            // Object 0 grows to hundreds of records (cleared a tenth as
            // often); the others stay small or cross the bound now and then.
            let object = rng.below(4);
            let k = rng.below(if object == 0 { 400 } else { 90 });
            // Few homes, at both ends of the table; hash collisions between
            // keys (k % 29) and between objects.
            let spot = k % 29;
            let high = match k % 2 {
                0 => spot,
                _ => (1 << 26) - 1 - spot,
            };
            let hash = (high << 32).reverse_bits();
            let key = k.to_le_bytes();
            match rng.below(100) {
                0..=59 => {
                    let l = Loc {
                        file: step % 5,
                        offset: step,
                        len: 1 + step % 50,
                    };
                    let before = shard.put(hash, object, &key, l);
                    let want = model.insert((object, k), (hash, l)).map(|m| m.1);
                    assert_eq!(before, want, "seed {seed} step {step}");
                }
                60..=97 => {
                    let want = model.remove(&(object, k)).map(|m| m.1);
                    assert_eq!(shard.remove(hash, object, &key), want, "seed {seed}");
                }
                _ if object == 0 && rng.below(10) > 0 => {}
                _ => {
                    let held = shard.counts.iter().find(|c| c.object == object);
                    match held.filter(|c| c.count > 0).map(|c| c.hashes.is_some()) {
                        Some(true) => listed_removals += 1,
                        Some(false) => scanned_removals += 1,
                        None => {}
                    }
                    let mut want = 0;
                    model.retain(|&(o, _), (_, l)| {
                        want += (o == object) as u64 * l.len as u64;
                        o != object
                    });
                    assert_eq!(shard.remove_object(object), want, "seed {seed} step {step}");
                }
            }
            for object in 0..4 {
                let want = model.range((object, 0)..(object + 1, 0)).count() as u64;
                assert_eq!(shard.count(object), want, "seed {seed} step {step}");
            }
            assert_eq!(shard.records.len(), model.len(), "seed {seed} step {step}");
            let mut held = [0u64; 5];
            for (_, l) in model.values() {
                held[l.file as usize] += l.len as u64;
            }
            for file in 0..5 {
                assert_eq!(shard.held_in(file), held[file as usize], "seed {seed}");
            }
        }
        for (&(object, k), &(hash, l)) in &model {
            assert_eq!(
                shard.get(hash, object, &k.to_le_bytes()),
                Some(l),
                "seed {seed}"
            );
        }
        assert!(
            listed_removals > 100 && scanned_removals > 10,
            "seed {seed}: {listed_removals} by hash, {scanned_removals} by scan"
        );
    }

    /// Applies `range` of `batch` as parallel apply does: transactions with
    /// object-level changes alone, runs of up to 8 others in two parts.
    fn apply_stream(tables: &ReplicaTables, batch: &TxnBatch, range: Range<usize>) {
        apply_stream_with(tables, batch, range, 2);
    }

    /// `apply_stream`, with a compaction step (`Store::maintain`) after
    /// every `maintain_every`-th run (never for 0), as apply's loop takes
    /// one after each batch.
    fn apply_stream_with(
        tables: &ReplicaTables,
        batch: &TxnBatch,
        range: Range<usize>,
        maintain_every: usize,
    ) {
        let mut runs = 0;
        let mut i = range.start;
        while i < range.end {
            if batch.get(i).has_object_ops() {
                let _ = tables.apply(&batch.get(i));
                i += 1;
                continue;
            }
            let end = (i..range.end.min(i + 8))
                .take_while(|&j| !batch.get(j).has_object_ops())
                .last()
                .expect("i itself")
                + 1;
            let locked = tables.lock_parts(2).expect("the tables split");
            let chosen: Vec<u32> = (i..end)
                .filter(|&j| locked.refusal(&batch.get(j)).is_none())
                .map(|j| j as u32)
                .collect();
            for part in 0..2 {
                locked.apply_part(part, batch, &chosen).unwrap();
            }
            drop(locked);
            runs += 1;
            if maintain_every > 0 && runs % maintain_every == 0 {
                tables.maintain().unwrap();
            }
            i = end;
        }
    }

    /// A transaction committed at `commit_sequence` of `journal` with no
    /// other open: replay resumes right after it.
    fn alone(journal: u32, commit_sequence: u64) -> TxnMeta {
        TxnMeta {
            journal,
            commit_sequence,
            resume_from: commit_sequence + 1,
            commit_time_ns: 0,
        }
    }

    /// Record changes over three objects and two journals, with object
    /// operations (some refused) between them.
    fn stream(rng: &mut Rng, txns: usize) -> TxnBatch {
        let mut batch = TxnBatch::new();
        // Journal 0's commits far above journal 1's: a stamp of one
        // journal taken for the other's would pass over changes.
        let mut commits = [1u64 << 20, 0];
        let values: Vec<Vec<u8>> = (0..8u8).map(|v| vec![v; 1 + 5 * v as usize]).collect();
        let keys: Vec<[u8; 2]> = (0..300u16).map(u16::to_be_bytes).collect();
        for _ in 0..txns {
            let journal = rng.below(2) as u32;
            commits[journal as usize] += 1 + rng.below(3);
            let commit_sequence = commits[journal as usize];
            let meta = alone(journal, commit_sequence);
            let op = |kind, object_id, key, value| Op {
                kind,
                object_id,
                sequence: commit_sequence,
                key,
                value,
            };
            if rng.below(20) == 0 {
                let object = 1 + rng.below(3);
                let kind = [OpKind::Create, OpKind::Clear, OpKind::Drop, OpKind::Rename]
                    [rng.below(4) as usize];
                batch.push(meta, [op(kind, object, b"name".as_slice(), b"".as_slice())]);
                continue;
            }
            // The batch copies the keys and values.
            let ops: Vec<Op<'_>> = (0..1 + rng.below(6))
                .map(|_| {
                    let key = keys[rng.below(keys.len() as u64) as usize].as_slice();
                    let object = 1 + rng.below(3);
                    match rng.below(4) {
                        0 => op(OpKind::Delete, object, key, b"".as_slice()),
                        _ => op(OpKind::Put, object, key, &values[rng.below(8) as usize]),
                    }
                })
                .collect();
            batch.push(meta, ops);
        }
        batch
    }

    #[test]
    fn an_index_sized_ahead_takes_its_records_without_growing() {
        let records = 40_000u32;
        for sized in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let tables = ReplicaTables::open(dir.path()).unwrap();
            if sized {
                tables.reserve(records as usize);
            }
            let before = tables.index_bytes();
            let mut batch = TxnBatch::new();
            let meta = |commit_sequence| alone(0, commit_sequence);
            let op = |kind, key, value| Op {
                kind,
                object_id: 1,
                sequence: 1,
                key,
                value,
            };
            batch.push(
                meta(1),
                [op(OpKind::Create, b"A".as_slice(), b"".as_slice())],
            );
            let keys: Vec<[u8; 4]> = (0..records).map(u32::to_be_bytes).collect();
            for (n, chunk) in keys.chunks(100).enumerate() {
                let ops: Vec<Op<'_>> = chunk
                    .iter()
                    .map(|k| op(OpKind::Put, k.as_slice(), b"image".as_slice()))
                    .collect();
                batch.push(meta(2 + n as u64), ops);
            }
            for i in 0..batch.len() {
                tables.apply(&batch.get(i)).unwrap();
            }
            assert_eq!(tables.len(), records as usize);
            if sized {
                assert_eq!(tables.index_bytes(), before, "the sized index grew");
            } else {
                assert!(tables.index_bytes() > before, "an empty index did not grow");
            }
        }
    }

    #[test]
    fn a_checkpoint_that_takes_its_shards_between_changes_replays_to_the_same_state() {
        let seed = seed("tables-checkpoint-beside-apply");
        let mut rng = Rng(seed);
        for round in 0..12 {
            let txns = 400 + rng.below(400) as usize;
            let batch = stream(&mut rng, txns);
            let reference_dir = tempfile::tempdir().unwrap();
            let reference = ReplicaTables::open(reference_dir.path()).unwrap();
            apply_stream(&reference, &batch, 0..txns);
            let expected = crate::store::contents(&reference).unwrap();

            let dir = tempfile::tempdir().unwrap();
            let at = rng.below(txns as u64) as usize;
            let mut position = AppliedPosition::new(2);
            {
                let tables = ReplicaTables::open(dir.path()).unwrap();
                apply_stream(&tables, &batch, 0..at);
                batch
                    .iter()
                    .take(at)
                    .for_each(|t| position.advance(&t.meta()));
                // The shards are taken one at a time while transactions
                // after `at` apply between them; more apply after, then a
                // crash.
                let write = tables.checkpoint_write(&position);
                let mut next = at;
                let (dir, durable) = (tables.dir.clone(), tables.durable.clone());
                write
                    .finish_with(&dir, &durable, &mut || {
                        let end = (next + rng.below(3) as usize).min(txns);
                        apply_stream(&tables, &batch, next..end);
                        next = end;
                    })
                    .unwrap();
                let crash = next + rng.below((txns - next) as u64 + 1) as usize;
                apply_stream(&tables, &batch, next..crash);
            }
            let tables = ReplicaTables::open(dir.path()).unwrap();
            assert_eq!(
                tables.applied_position(),
                position,
                "seed {seed} round {round}"
            );
            apply_stream(&tables, &batch, at..txns);
            assert!(
                crate::store::contents(&tables).unwrap() == expected,
                "seed {seed} round {round}: replay from {at} of {txns} differs"
            );
            for object in 1..=3 {
                assert_eq!(
                    tables.record_count(object).unwrap(),
                    reference.record_count(object).unwrap(),
                    "seed {seed} round {round}: object {object}"
                );
            }
        }
    }

    /// Data files of a few dozen records, so compaction has files to empty
    /// in a test's worth of changes; steps that leave a sweep partway
    /// between checkpoints; passes whenever a file is mostly dead, so files
    /// still holding records are emptied too.
    const SMALL: Tuning = Tuning {
        file_bytes: 1024,
        sweep_step_slots: 512,
        sweep_paced: false,
        dead_per_index_divisor: 1 << 20,
        entries: EntryFormat::Compact,
    };

    fn checkpoint(tables: &ReplicaTables, position: &AppliedPosition) {
        let write = tables.checkpoint_write(position);
        write.finish(&tables.dir, &tables.durable).unwrap();
    }

    /// `ops` (kind, key and value by index) into `batch`, cleared first,
    /// in transactions of ten, each its own commit after `commit`; a key's
    /// object is 1 or 2 by its index's parity.
    fn push_in_tens<K: AsRef<[u8]>>(
        batch: &mut TxnBatch,
        commit: &mut u64,
        keys: &[K],
        values: &[Vec<u8>],
        ops: &[(OpKind, usize, usize)],
    ) {
        batch.clear();
        for chunk in ops.chunks(10) {
            *commit += 1;
            let ops = chunk.iter().map(|&(kind, k, v)| Op {
                kind,
                object_id: 1 + (k % 2) as u64,
                sequence: *commit,
                key: keys[k].as_ref(),
                value: values[v].as_slice(),
            });
            batch.push(alone(0, *commit), ops);
        }
    }

    /// Moves `position` past the transactions `range` of `batch`.
    fn advance(position: &mut AppliedPosition, batch: &TxnBatch, range: Range<usize>) {
        range.for_each(|i| position.advance(&batch.get(i).meta()));
    }

    fn files_on_disk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                parse_data_name(&e.as_ref().unwrap().file_name().to_string_lossy()).is_some()
            })
            .count()
    }

    /// Creates object 1, then in each of `rounds` rounds puts every one of
    /// `keys` keys (ten a transaction) with `value(round, key)`, applies
    /// them (`apply_stream_with`, a compaction step every `maintain_every`
    /// runs) and checkpoints.
    fn put_rounds(
        tables: &ReplicaTables,
        keys: u16,
        rounds: usize,
        maintain_every: usize,
        value: impl Fn(usize, [u8; 2]) -> Vec<u8>,
    ) {
        fn op<'a>(kind: OpKind, key: &'a [u8], value: &'a [u8]) -> Op<'a> {
            Op {
                kind,
                object_id: 1,
                sequence: 1,
                key,
                value,
            }
        }
        let mut batch = TxnBatch::new();
        batch.push(alone(0, 1), [op(OpKind::Create, b"A", b"")]);
        tables.apply(&batch.get(0)).unwrap();
        let keys: Vec<[u8; 2]> = (0..keys).map(u16::to_be_bytes).collect();
        let mut position = AppliedPosition::new(1);
        let mut commit = 1;
        for round in 0..rounds {
            let values: Vec<Vec<u8>> = keys.iter().map(|&k| value(round, k)).collect();
            batch.clear();
            for (k, v) in keys.chunks(10).zip(values.chunks(10)) {
                commit += 1;
                let ops: Vec<Op<'_>> = k
                    .iter()
                    .zip(v)
                    .map(|(k, v)| op(OpKind::Put, k.as_slice(), v.as_slice()))
                    .collect();
                batch.push(alone(0, commit), ops);
            }
            apply_stream_with(tables, &batch, 0..batch.len(), maintain_every);
            batch.iter().for_each(|t| position.advance(&t.meta()));
            checkpoint(tables, &position);
        }
    }

    #[test]
    fn compaction_empties_mostly_replaced_files_and_lanes_reuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        put_rounds(&tables, 200, 60, 2, |round, _| vec![round as u8; 30]);
        // 60 rounds of 200 records of 52 bytes: 624 KB, about 640 files
        // without compaction; the live records take about 11.
        assert!(
            tables.reclaimed_bytes() > 500_000,
            "{}",
            tables.reclaimed_bytes()
        );
        assert!(tables.data_files() < 60, "{} files", tables.data_files());
        let made = tables.data.next_id.load(Ordering::Relaxed) as usize - 1;
        assert!(
            made < 120,
            "{made} files made: emptied files were not reused"
        );
        let free = tables.data.free.lock().len();
        assert_eq!(files_on_disk(dir.path()), tables.data_files() + free);
        let space = tables.space().unwrap();
        assert_eq!(space.data_files, tables.data_files());
        assert_eq!(space.free_files, free);
        // 200 records of a 20-byte header, a 2-byte key and a 30-byte value.
        assert_eq!(space.held_bytes, 200 * 52);
        assert!(space.written_bytes >= space.held_bytes);
        assert_eq!(space.reclaimed_bytes, tables.reclaimed_bytes());
        let expected = crate::store::contents(&tables).unwrap();
        let (_, records) = &expected[&1];
        assert_eq!(records.len(), 200);
        assert!(records.values().all(|v| v == &[59u8; 30]));
        let files = tables.data_files();
        drop(tables);
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert!(crate::store::contents(&tables).unwrap() == expected);
        assert_eq!(tables.data_files(), files);
        assert_eq!(
            files_on_disk(dir.path()),
            files,
            "free files are deleted at open"
        );
    }

    /// After a whole index, a checkpoint writes only the regions changed
    /// since the one before (a delta a fraction of the whole); the tables
    /// reopen from the whole index and its deltas to what they held, with
    /// a key's newest listing winning over older ones (deleted keys stay
    /// deleted); past the deltas' bound a whole index follows and the
    /// files it replaces go; index files no checkpoint lists are removed
    /// at open.
    #[test]
    fn checkpoints_write_the_changed_regions_and_reopen_from_the_whole_index_and_its_deltas() {
        let seed = seed("tables-index-deltas");
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().unwrap();
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        let keys: Vec<[u8; 4]> = (0..20_000u32).map(u32::to_be_bytes).collect();
        let values: Vec<Vec<u8>> = (0..4u8).map(|v| vec![v; 3 + v as usize]).collect();
        let mut batch = TxnBatch::new();
        let mut commit = 0;
        let mut position = AppliedPosition::new(1);
        let mut run =
            |batch: &mut TxnBatch, ops: &mut dyn Iterator<Item = (OpKind, usize, usize)>| {
                let ops: Vec<(OpKind, usize, usize)> = ops.collect();
                push_in_tens(batch, &mut commit, &keys, &values, &ops);
                apply_stream(&tables, batch, 0..batch.len());
                advance(&mut position, batch, 0..batch.len());
                let write = tables.checkpoint_write(&position);
                let times = write.finish(&tables.dir, &tables.durable).unwrap();
                (times, position.clone())
            };
        for object in 1..=2 {
            batch.clear();
            batch.push(
                alone(0, object),
                [Op {
                    kind: OpKind::Create,
                    object_id: object,
                    sequence: object,
                    key: b"name".as_slice(),
                    value: b"".as_slice(),
                }],
            );
            tables.apply(&batch.get(0)).unwrap();
        }
        let (whole, _) = run(
            &mut batch,
            &mut (0..keys.len()).map(|k| (OpKind::Put, k, 0)),
        );
        assert_eq!(whole.delta_regions, None, "seed {seed}");
        let index_files = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| parse_index_name(n).is_some())
                .collect();
            names.sort();
            names
        };
        let mut deltas = 0;
        let mut wholes = 0;
        for round in 0..40 {
            // A few dozen changes: puts and deletes of random keys.
            let changes: Vec<(OpKind, usize, usize)> = (0..1 + rng.below(60))
                .map(|_| {
                    let kind = match rng.below(3) {
                        0 => OpKind::Delete,
                        _ => OpKind::Put,
                    };
                    (
                        kind,
                        rng.below(keys.len() as u64) as usize,
                        rng.below(4) as usize,
                    )
                })
                .collect();
            let (times, position) = run(&mut batch, &mut changes.iter().copied());
            let chain = tables.durable.chain.lock().clone();
            match times.delta_regions {
                Some(regions) => {
                    deltas += 1;
                    assert!(
                        regions as usize <= changes.len(),
                        "seed {seed} round {round}"
                    );
                    assert!(
                        times.file_bytes * 20 < whole.file_bytes,
                        "seed {seed} round {round}: a delta of {times:?} against {whole:?}"
                    );
                    assert_eq!(chain.files.len(), 1 + chain.files[1..].len());
                    assert!(chain.files[1..].iter().all(|f| f.delta), "seed {seed}");
                }
                None => {
                    wholes += 1;
                    assert_eq!(chain.files.len(), 1, "seed {seed} round {round}");
                }
            }
            let listed: Vec<String> = chain.files.iter().map(|f| index_name(f.number)).collect();
            assert_eq!(index_files(dir.path()), listed, "seed {seed} round {round}");
            if round % 7 == 3 {
                let copy = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), copy.path());
                // An index file a crash left before its checkpoint was
                // written: not read, and removed.
                std::fs::write(copy.path().join(index_name(chain.next_number())), b"junk").unwrap();
                let reopened = ReplicaTables::open_with(copy.path(), SMALL)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
                assert!(
                    crate::store::contents(&reopened).unwrap()
                        == crate::store::contents(&tables).unwrap(),
                    "seed {seed} round {round}: reopened from {listed:?} differs"
                );
                assert_eq!(
                    index_files(copy.path()),
                    listed,
                    "seed {seed} round {round}"
                );
                assert_eq!(reopened.applied_position(), position, "seed {seed}");
            }
        }
        assert!(
            deltas >= 30 && wholes >= 1,
            "seed {seed}: {deltas} deltas, {wholes} whole indexes"
        );
    }

    /// A paced pass's steps look at the slots due by the time gone, none
    /// while few are due, a paced step's most while behind, and the most
    /// past the span; unpaced steps always the most.
    #[test]
    fn paced_steps_follow_the_share_of_the_span_gone_and_catch_up_past_it() {
        let began = Instant::now();
        let at = |ms: u64| began + Duration::from_millis(ms);
        let mut sweep = Sweep {
            victims: Vec::new(),
            dead: 0,
            shard: 0,
            slot: 0,
            began,
            span: Duration::from_millis(800),
            slots: 1 << 20,
            looked: 0,
        };
        let most = SWEEP_SLOTS_PER_STEP;
        // 1 ms of 800: too few slots due for a step that locks every shard.
        assert_eq!(sweep.step_slots(at(1), most), 0);
        // 4 ms of 800: half a percent of the slots.
        let due = (1 << 20) / 200;
        assert!((SWEEP_SLOTS_LEAST_STEP..=SWEEP_SLOTS_PACED_STEP).contains(&due));
        assert_eq!(sweep.step_slots(at(4), most), due);
        sweep.looked = due;
        assert_eq!(sweep.step_slots(at(4), most), 0);
        // Far behind: a paced step's most, not more.
        assert_eq!(sweep.step_slots(at(400), most), SWEEP_SLOTS_PACED_STEP);
        // Past the span: `most`, whatever the count says is left.
        sweep.looked = 1 << 20;
        assert_eq!(sweep.step_slots(at(800), most), most);
        // Not paced: the most, always.
        sweep.span = Duration::ZERO;
        sweep.looked = 0;
        assert_eq!(sweep.step_slots(at(0), most), most);
    }

    /// A pass is spread over four fifths of the time between checkpoints:
    /// the first without one to go by, then the shorter of the last two
    /// gaps, so an idle stretch does not stretch the next pass.
    #[test]
    fn a_pass_spans_four_fifths_of_the_shorter_of_the_last_two_gaps() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut compaction = Compaction::default();
        assert_eq!(compaction.sweep_span(at(0)), SWEEP_SPAN_FIRST);
        assert_eq!(compaction.sweep_span(at(1000)), Duration::from_millis(800));
        // After 60 s idle: the gap before it, not the idle time.
        assert_eq!(
            compaction.sweep_span(at(61_000)),
            Duration::from_millis(800)
        );
        // Then the next gap is shorter than the idle one.
        assert_eq!(
            compaction.sweep_span(at(62_500)),
            Duration::from_millis(1200)
        );
        assert_eq!(
            compaction.sweep_span(at(64_000)),
            Duration::from_millis(1200)
        );
        // Checkpoints far apart (a large index): at most the cap.
        compaction.sweep_span(at(100_000));
        assert_eq!(compaction.sweep_span(at(140_000)), SWEEP_SPAN_MOST);
    }

    /// Numbers at the edges of each varint length, and every u64's top:
    /// written and read back the same, in as many bytes as they need;
    /// a number running past 64 bits or past the bytes is refused.
    #[test]
    fn varints_read_back_what_was_written_and_refuse_what_runs_over() {
        let mut numbers = vec![0, 1, u64::MAX, u64::MAX - 1];
        for bits in (7..64).step_by(7) {
            numbers.extend([(1u64 << bits) - 1, 1 << bits]);
        }
        let mut bytes = [0u8; 10];
        for &n in &numbers {
            let end = put_varint(&mut bytes, 0, n);
            assert_eq!(
                end,
                (64 - n.leading_zeros() as usize).div_ceil(7).max(1),
                "{n}"
            );
            let mut r = Reader {
                bytes: &bytes[..end],
                at: 0,
            };
            assert_eq!(r.varint(), Ok(n));
            assert_eq!(r.at, end);
            let mut cut = Reader {
                bytes: &bytes[..end - 1],
                at: 0,
            };
            assert_eq!(cut.varint(), Err("ends early"), "{n}");
        }
        let long = "holds a number longer than 64 bits";
        let mut r = Reader {
            bytes: &[0xff; 11],
            at: 0,
        };
        assert_eq!(r.varint(), Err(long));
        let mut tenth = [0xffu8; 10];
        tenth[9] = 2;
        let mut r = Reader {
            bytes: &tenth,
            at: 0,
        };
        assert_eq!(r.varint(), Err(long));
    }

    /// Compact entries at the edges: the largest object, file, offset and
    /// record length, an empty key and value, a key past what a slot holds;
    /// each reads back as written. Damage is named: a value length past a
    /// record's largest, a key past any key's length.
    #[test]
    fn compact_index_entries_read_back_and_refuse_what_no_record_has() {
        let path = Path::new("index-test");
        let long_key = [7u8; INLINE_KEY + 9];
        let header = RECORD_HEADER_BYTES as u32;
        let cases: [(u64, &[u8], Loc); 4] = [
            (
                0,
                b"",
                Loc {
                    file: 0,
                    offset: 0,
                    len: header,
                },
            ),
            (
                1,
                b"0123456789abcdef",
                Loc {
                    file: 3,
                    offset: 1 << 25,
                    len: header + 116,
                },
            ),
            (
                u64::MAX,
                &long_key,
                Loc {
                    file: u32::MAX,
                    offset: u32::MAX,
                    len: u32::MAX,
                },
            ),
            (
                1 << 40,
                &long_key[..INLINE_KEY],
                Loc {
                    file: 200,
                    offset: 9,
                    len: header + INLINE_KEY as u32 + 300,
                },
            ),
        ];
        let mut scratch: EntryScratch = [0; COMPACT_NUMBERS_MAX + INLINE_KEY];
        for format in [EntryFormat::Compact, EntryFormat::Fixed] {
            let mut index = Vec::new();
            for &(object, key, loc) in &cases {
                let entry = IndexEntry { object, key, loc };
                put_index_entry(&mut index, &mut scratch, entry, format);
            }
            let mut r = Reader {
                bytes: &index,
                at: 0,
            };
            for &(object, key, loc) in &cases {
                let read = read_entry(path, &mut r, format).unwrap();
                assert_eq!(read, (object, key, loc), "{format:?}");
            }
            assert_eq!(r.at, index.len());
        }
        // The replbench record: 24 bytes, not the fixed format's 40.
        let mut index = Vec::new();
        let (object, key, loc) = cases[1];
        let entry = IndexEntry { object, key, loc };
        put_index_entry(&mut index, &mut scratch, entry, EntryFormat::Compact);
        assert_eq!(index.len(), 24);
        let damaged = |bytes: &[u8]| {
            let mut r = Reader { bytes, at: 0 };
            read_entry(path, &mut r, EntryFormat::Compact)
                .unwrap_err()
                .to_string()
        };
        // Object 1, key of 0 bytes, file 0, offset 0, value length 2^32.
        let past = [1, 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10];
        let e = damaged(&past);
        assert!(e.contains("value length (4294967296) is past"), "{e}");
        let mut too_long = vec![1];
        let n = engine::limits::KEY_BYTES_MAX as u64 + 1;
        let end = put_varint(&mut scratch, 0, n);
        too_long.extend_from_slice(&scratch[..end]);
        let e = damaged(&too_long);
        assert!(e.contains("longer than any key"), "{e}");
        let e = damaged(&index[..20]);
        assert!(e.contains("ends early"), "{e}");
    }

    /// Index files of the fixed format (before decisions.md 78), a whole
    /// index and a delta, load into tables that write compact ones; a
    /// compact delta then follows the fixed whole index in one chain and
    /// loads with it; a compact whole index of the same records is much
    /// smaller.
    #[test]
    fn fixed_index_files_still_load_and_compact_ones_follow_them() {
        let seed = seed("tables fixed_index_files_still_load_and_compact_ones_follow_them");
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().unwrap();
        let fixed = Tuning {
            entries: EntryFormat::Fixed,
            ..SMALL
        };
        // Keys of 16 bytes, and a few past a slot's inline key; values
        // empty to a few hundred bytes.
        let keys: Vec<Vec<u8>> = (0..6000u32)
            .map(|k| match k % 50 {
                0 => vec![k as u8; INLINE_KEY + 1 + k as usize % 20],
                _ => [k.to_be_bytes(); 4].concat(),
            })
            .collect();
        let values: Vec<Vec<u8>> = [0, 1, 100, 300].iter().map(|&n| vec![n as u8; n]).collect();
        let mut commit = 0;
        let mut position = AppliedPosition::new(1);
        let mut batch = TxnBatch::new();
        let mut run = |tables: &ReplicaTables, ops: &[(OpKind, usize, usize)]| {
            push_in_tens(&mut batch, &mut commit, &keys, &values, ops);
            apply_stream(tables, &batch, 0..batch.len());
            advance(&mut position, &batch, 0..batch.len());
            let write = tables.checkpoint_write(&position);
            write.finish(&tables.dir, &tables.durable).unwrap()
        };
        let mut changes = |n: u64| -> Vec<(OpKind, usize, usize)> {
            (0..n)
                .map(|_| {
                    let kind = match rng.below(4) {
                        0 => OpKind::Delete,
                        _ => OpKind::Put,
                    };
                    let k = rng.below(keys.len() as u64) as usize;
                    (kind, k, rng.below(4) as usize)
                })
                .collect()
        };
        let magics = |dir: &Path| -> Vec<[u8; 8]> {
            let tables = ReplicaTables::open_with(dir, SMALL).unwrap();
            let chain = tables.durable.chain.lock().clone();
            (chain.files.iter())
                .map(|f| {
                    let bytes = std::fs::read(dir.join(index_name(f.number))).unwrap();
                    bytes[..8].try_into().unwrap()
                })
                .collect()
        };
        let tables = ReplicaTables::open_with(dir.path(), fixed).unwrap();
        for object in 1..=2 {
            let mut created = TxnBatch::new();
            let create = Op {
                kind: OpKind::Create,
                object_id: object,
                sequence: object,
                key: b"name".as_slice(),
                value: b"".as_slice(),
            };
            created.push(alone(0, object), [create]);
            tables.apply(&created.get(0)).unwrap();
        }
        let all: Vec<_> = (0..keys.len()).map(|k| (OpKind::Put, k, k % 4)).collect();
        let whole_fixed = run(&tables, &all);
        assert_eq!(whole_fixed.delta_regions, None, "seed {seed}");
        assert!(
            run(&tables, &changes(20)).delta_regions.is_some(),
            "seed {seed}"
        );
        let want = crate::store::contents(&tables).unwrap();
        drop(tables);
        assert_eq!(magics(dir.path()), [*INDEX_MAGIC_FIXED, *DELTA_MAGIC_FIXED]);

        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert!(
            crate::store::contents(&tables).unwrap() == want,
            "seed {seed}: the fixed files loaded other records"
        );
        assert!(
            run(&tables, &changes(20)).delta_regions.is_some(),
            "seed {seed}"
        );
        let want = crate::store::contents(&tables).unwrap();
        drop(tables);
        assert_eq!(
            magics(dir.path()),
            [*INDEX_MAGIC_FIXED, *DELTA_MAGIC_FIXED, *DELTA_MAGIC]
        );
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert!(
            crate::store::contents(&tables).unwrap() == want,
            "seed {seed}: the mixed chain loaded other records"
        );
        // Every key written again until the deltas add up to a whole
        // index, compact, of the records the fixed one held.
        let whole = (0..=CHAIN_DELTAS_MAX)
            .map(|_| run(&tables, &all))
            .find(|times| times.delta_regions.is_none())
            .unwrap_or_else(|| panic!("seed {seed}: no whole index"));
        let want = crate::store::contents(&tables).unwrap();
        drop(tables);
        assert_eq!(magics(dir.path()), [*INDEX_MAGIC]);
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert!(
            crate::store::contents(&tables).unwrap() == want,
            "seed {seed}"
        );
        assert!(
            whole.file_bytes * 10 < whole_fixed.file_bytes * 7,
            "seed {seed}: compact {whole:?} against fixed {whole_fixed:?}"
        );
    }

    /// Files reserved at open are what lanes write before any new file is
    /// made; no checkpoint lists one until it is written, and those still
    /// unwritten are removed at the next open.
    #[test]
    fn reserved_data_files_are_written_before_any_new_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert_eq!(tables.reserve_data(200 * 1024 - 1).unwrap(), 200);
        assert_eq!(tables.reserve_data(100 * 1024).unwrap(), 0, "made twice");
        assert_eq!(files_on_disk(dir.path()), 200);
        assert_eq!(tables.space().unwrap().free_files, 200);
        assert_eq!(
            tables.data_files(),
            0,
            "a reserved file is the tables' before it is written"
        );
        for f in tables.data.free.lock().iter() {
            assert!(
                f.file.metadata().unwrap().blocks() * 512 >= 1024,
                "a reserved file's blocks are not allocated"
            );
        }
        // 60 keys over 3 rounds of 52-byte records, compacted as they go:
        // a few dozen files.
        put_rounds(&tables, 60, 3, 2, |round, _| vec![round as u8; 30]);
        let used = tables.data_files();
        assert!(used > 3, "{used} files written");
        assert_eq!(
            tables.data.next_id.load(Ordering::Relaxed) - 1,
            200,
            "a new file was made while reserved ones were free"
        );
        let expected = crate::store::contents(&tables).unwrap();
        drop(tables);
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        assert!(crate::store::contents(&tables).unwrap() == expected);
        assert_eq!(
            files_on_disk(dir.path()),
            tables.data_files(),
            "reserved files left unwritten are removed at open"
        );
        // Reserving again tops the free files up to the reserve.
        let free = tables.data.free.lock().len();
        assert_eq!(tables.reserve_data(10 * 1024).unwrap(), 10 - free.min(10));
    }

    /// A crash anywhere (the directory copied as it stands) while
    /// checkpoints compact and lanes reuse the files they emptied reopens
    /// at the last durable checkpoint, and replay from there ends where
    /// the uninterrupted tables did.
    #[test]
    fn a_crash_while_compaction_runs_reopens_at_the_last_durable_checkpoint() {
        let seed = seed("tables-compaction-crash");
        let mut rng = Rng(seed);
        for round in 0..3 {
            // Compaction's moves made by apply's steps now and then, often,
            // or never (then by the checkpoints themselves).
            let maintain_every = [3, 1, 0][round];
            let txns = 4000 + rng.below(2000) as usize;
            let batch = stream(&mut rng, txns);
            let dir = tempfile::tempdir().unwrap();
            let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
            let mut position = AppliedPosition::new(2);
            // (txns applied at the last durable checkpoint, its position)
            let mut durable = (0, tables.applied_position());
            // (copy, what was durable when it was made)
            let mut crashes = Vec::new();
            let mut at = 0;
            while at < txns {
                let end = (at + 1 + rng.below(300) as usize).min(txns);
                apply_stream_with(&tables, &batch, at..end, maintain_every);
                advance(&mut position, &batch, at..end);
                at = end;
                if rng.below(4) == 0 {
                    let copy = tempfile::tempdir().unwrap();
                    copy_dir(dir.path(), copy.path());
                    crashes.push((copy, durable.clone()));
                }
                // Transactions apply while the checkpoint takes its shards
                // (lanes reuse files its compaction emptied only once it is
                // durable), and a crash comes then: after its compaction,
                // before it is durable.
                let crash_after = rng.below(SHARDS as u64) as usize;
                let write = tables.checkpoint_write(&position);
                let (d, durable_state) = (tables.dir.clone(), tables.durable.clone());
                let (mut taken, mut next) = (0, at);
                write
                    .finish_with(&d, &durable_state, &mut || {
                        let end = (next + rng.below(6) as usize).min(txns);
                        apply_stream_with(&tables, &batch, next..end, maintain_every);
                        next = end;
                        if taken == crash_after {
                            // Lanes may write over any free file at any time:
                            // here, over all of them.
                            for file in tables.data.free.lock().iter() {
                                let junk = vec![0xa5; file.bytes];
                                file.file.write_all_at(&junk, 0).unwrap();
                            }
                            let copy = tempfile::tempdir().unwrap();
                            copy_dir(&d, copy.path());
                            crashes.push((copy, durable.clone()));
                        }
                        taken += 1;
                    })
                    .unwrap();
                durable = (at, position.clone());
                advance(&mut position, &batch, at..next);
                at = next;
                // Every record the index points at reads back whole: none
                // was left in a file compaction took out.
                if let Err(e) = crate::store::contents(&tables) {
                    panic!("seed {seed} round {round}: {e}");
                }
            }
            assert!(
                tables.reclaimed_bytes() > 0,
                "seed {seed} round {round}: nothing compacted"
            );
            let expected = crate::store::contents(&tables).unwrap();
            for (n, (copy, (from, position))) in crashes.iter().enumerate() {
                let reopened = ReplicaTables::open_with(copy.path(), SMALL)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round} crash {n}: {e}"));
                // Every record the checkpoint points at reads back whole
                // (replay would write most of them again).
                if let Err(e) = crate::store::contents(&reopened) {
                    panic!("seed {seed} round {round} crash {n}: {e}");
                }
                assert_eq!(
                    &reopened.applied_position(),
                    position,
                    "seed {seed} round {round} crash {n}"
                );
                apply_stream(&reopened, &batch, *from..txns);
                assert!(
                    crate::store::contents(&reopened).unwrap() == expected,
                    "seed {seed} round {round} crash {n}: replay from {from} differs"
                );
            }
        }
    }

    /// Sync-check reads records after letting go of the shards' locks:
    /// while compaction empties files and lanes write over them, every
    /// record it reads is one the index pointed at (its key, the value
    /// made for that key).
    #[test]
    fn readers_that_keep_locations_read_whole_records_while_compaction_empties_files() {
        let dir = tempfile::tempdir().unwrap();
        let tables = ReplicaTables::open_with(dir.path(), SMALL).unwrap();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut passes = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let mut bad = None;
                    tables
                        .visit_buckets(1, SHARD_BITS, None, &mut |hash, key, value| {
                            if hash != record_hash(1, key) || value.get(..2) != Some(key) {
                                bad = Some((key.to_vec(), value.to_vec()));
                            }
                        })
                        .unwrap();
                    assert_eq!(bad, None, "pass {passes} read another record");
                    passes += 1;
                }
                passes
            });
            // A key's value: the key, then the round. No compaction steps:
            // each checkpoint moves the records and takes the files out at
            // once, as close together as they come.
            put_rounds(&tables, 300, 3 * 256, 0, |round, key| {
                vec![key[0], key[1], round as u8]
            });
            done.store(true, Ordering::Relaxed);
            let passes = reader.join().unwrap();
            assert!(passes > 0);
        });
        assert!(tables.reclaimed_bytes() > 0, "nothing compacted");
    }

    #[test]
    fn a_prefetch_asks_for_the_lines_a_slice_starts_on_and_no_more() {
        let buffer = vec![0u8; 1024];
        let base = buffer.as_ptr() as usize;
        let skip = (64 - base % 64) % 64; // the first whole line
        for (offset, len, expected) in [
            (0, 0, 0),
            (0, 1, 1),
            (0, 64, 1),
            (0, 65, 2),
            (63, 2, 2),
            (10, 100, 2),
            (0, 900, PREFETCH_LINES),
        ] {
            let bytes = &buffer[skip + offset..skip + offset + len];
            let lines: Vec<usize> = lines_of(bytes).collect();
            assert_eq!(lines.len(), expected, "{offset}+{len}");
            for (i, line) in lines.iter().enumerate() {
                assert_eq!(*line % 64, 0);
                assert_eq!(*line, (bytes.as_ptr() as usize & !63) + 64 * i);
            }
        }
    }
}
