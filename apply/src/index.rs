//! The replica tables' in-memory index: one open-addressing hash table per
//! shard, built so that a change costs one cache miss, and that miss can be
//! started early.
//!
//! Each slot is one 64-byte cache line: record hash, object, location, and
//! the key itself when it has at most 35 bytes (longer keys live in a side
//! list the slot points into). Linear probing, at most 3/4 full, with
//! deletion by backward shift (no tombstones): a lookup reads the home slot's
//! line and, rarely, the next ones, which the hardware fetches with it.
//! `prefetch` starts loading a record's home slot, and `PrefetchHint` lets
//! that be done without the shard's lock: parallel apply has the store fetch
//! the slots of the transactions a few ahead of the one it applies
//! (`Store::prefetch`), and `ReplicaTables::apply` fetches a transaction's
//! later slots as it goes.
//!
//! Why not `hashbrown`: its control bytes and its slots are separate lines,
//! and its layout gives no address to prefetch (decisions.md 26).

use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::check::record_order;

/// Where a record is: data file, offset, length (never 0: a record has a
/// header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: u32,
    pub offset: u32,
    pub len: u32,
}

/// Keys up to this many bytes sit in the slot.
pub(crate) const INLINE_KEY: usize = 35;
/// `key_len` of a slot whose key is in the side list.
const LONG: u8 = u8::MAX;
const MIN_SLOTS: usize = 64;

/// One record's entry: a cache line. All zeroes is an empty slot (its
/// `loc.len` is 0).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slot {
    hash: u64,
    object: u64,
    loc: Loc,
    key_len: u8,
    /// The key, or for a long key the index of its entry in `Index::long`
    /// (little-endian u32 in the first 4 bytes).
    key: [u8; INLINE_KEY],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    fn is_empty(&self) -> bool {
        self.loc.len == 0
    }

    fn zeroed() -> Slot {
        Slot {
            hash: 0,
            object: 0,
            loc: Loc::default(),
            key_len: 0,
            key: [0; INLINE_KEY],
        }
    }

    fn long_index(&self) -> usize {
        u32::from_le_bytes(self.key[..4].try_into().unwrap()) as usize
    }
}

/// Where a table's slots are, readable without the table's lock, so apply
/// can start fetching the slots of transactions it has not reached yet.
/// Read racily on purpose: a stale or torn pair only makes a useless
/// prefetch, which never faults.
#[derive(Debug, Default)]
pub(crate) struct PrefetchHint {
    base: AtomicUsize,
    mask: AtomicUsize,
}

impl PrefetchHint {
    /// Starts loading the home slot of `hash` into cache.
    pub fn prefetch(&self, hash: u64) {
        let base = self.base.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        let home = home(hash, self.mask.load(Ordering::Relaxed));
        prefetch_line(base.wrapping_add(home * std::mem::size_of::<Slot>()) as *const u8);
    }
}

/// Low bits of the record hash that all of a table's records share (the
/// replica tables' shard: `SHARDS` is `1 << SHARD_BITS`).
pub(crate) const SHARD_BITS: u32 = 6;

/// The slot a record's probe starts at in a table of `mask + 1` slots: the
/// next bits of `record_order(hash)` (the bit-reversed hash) after the
/// shard's, so the slots run in the order sync-check visits records in
/// (`Index::ordered`, decisions.md 32).
fn home(hash: u64, mask: usize) -> usize {
    let shift = (mask as u64).leading_zeros();
    ((record_order(hash) << SHARD_BITS).checked_shr(shift)).unwrap_or(0) as usize
}

/// A hint to the CPU to load the line at `at` (nothing on targets without
/// one). Any address will do: a prefetch never faults.
pub(crate) fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no effect on memory or program
    // state, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast(), std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Slot arrays of at least this many bytes get a map of their own in
/// transparent huge pages (this host's THP mode is `madvise`, so a plain
/// allocation never gets them): a change's slot is a random line of a
/// table far larger than the 4 KiB TLB's reach, and on 4 KiB pages the
/// prefetch of it waits for a page walk (decisions.md 37).
const HUGE_SLOTS_BYTES: usize = 2 << 20;

/// A table's slots: on the heap, or mapped in huge pages when large.
enum SlotArray {
    Heap(Box<[Slot]>),
    Mapped(memmap2::MmapMut),
}

impl std::ops::Deref for SlotArray {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        match self {
            SlotArray::Heap(slots) => slots,
            // SAFETY: the map is page-aligned (so 64-byte aligned), a
            // whole number of slots long, zeroed when made (all zeroes is
            // an empty `Slot`), and lives as long as `self`.
            SlotArray::Mapped(map) => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<Slot>(), map.len() / SLOT_BYTES)
            },
        }
    }
}

impl std::ops::DerefMut for SlotArray {
    fn deref_mut(&mut self) -> &mut [Slot] {
        match self {
            SlotArray::Heap(slots) => slots,
            // SAFETY: as in `deref`, and `&mut self` makes this the only
            // reference to the map's bytes.
            SlotArray::Mapped(map) => unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_mut_ptr().cast::<Slot>(),
                    map.len() / SLOT_BYTES,
                )
            },
        }
    }
}

const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// One shard's table.
pub(crate) struct Index {
    /// A power of two long, or empty before the first insert.
    slots: SlotArray,
    len: usize,
    /// Keys longer than `INLINE_KEY`; `None` where freed.
    long: Vec<Option<Box<[u8]>>>,
    free_long: Vec<u32>,
    hint: Arc<PrefetchHint>,
    /// The table this one grows into, made and faulted in ahead by the
    /// `index-prep` thread (`prepare`); `None` until it is there.
    next: Arc<Mutex<Option<MadeAhead>>>,
    /// Whether `next` was asked for at this size.
    asked: bool,
    /// One bit per region (`region_of`): set when a record of the region
    /// was put, removed or moved since the last `take_dirty`. A checkpoint
    /// writes only those regions' records again (decisions.md 75).
    dirty: Box<[u64]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            slots: SlotArray::Heap(Box::new([])),
            len: 0,
            long: Vec::new(),
            free_long: Vec::new(),
            hint: Arc::default(),
            next: Arc::default(),
            asked: false,
            dirty: vec![0; REGIONS / 64].into_boxed_slice(),
        }
    }
}

/// Regions a shard's records are divided into by hash, for checkpoints
/// that write only what changed (decisions.md 75): the next bits of
/// `record_order(hash)` after the shard's, so a region's records sit in one
/// stretch of slots whatever the table's size. 2^14 a shard: about 30
/// records a region at 30 M records, a dirty bit a region costing 2 KiB a
/// shard.
pub(crate) const REGION_BITS: u32 = 14;
pub(crate) const REGIONS: usize = 1 << REGION_BITS;

/// The region of a record's hash within its shard.
pub(crate) fn region_of(hash: u64) -> usize {
    ((record_order(hash) << SHARD_BITS) >> (64 - REGION_BITS)) as usize
}

/// Tables smaller than this are made when they are needed: their pages
/// cost little.
const PREPARE_MIN_BYTES: usize = 64 << 10;

/// Bytes of tables made ahead and not yet grown into nor dropped, at most:
/// under uniform keys every shard asks at nearly the same moment, and a
/// table made ahead for each would hold twice the index again; past this,
/// growths make their own tables as before.
const MADE_AHEAD_BUDGET_BYTES: usize = 512 << 20;

static MADE_AHEAD: Budget = Budget {
    used: AtomicUsize::new(0),
    limit: MADE_AHEAD_BUDGET_BYTES,
};

/// Bytes that tables made ahead may hold together.
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// `bytes` of the budget, if it has them; given back when the share is
    /// dropped.
    fn take(&self, bytes: usize) -> Option<Share<'_>> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + bytes > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Share {
                        budget: self,
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }
}

struct Share<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A table made ahead, with its share of `MADE_AHEAD`.
struct MadeAhead {
    table: SlotArray,
    _share: Share<'static>,
}

/// Work for the `index-prep` thread.
enum Prep {
    /// Make a table of `slots` empty slots, fault its pages in, and leave
    /// it in `into`.
    Make {
        slots: usize,
        into: Arc<Mutex<Option<MadeAhead>>>,
        share: Share<'static>,
    },
    /// A table grown out of: unmapped or freed there, not on apply's path.
    Drop(#[allow(dead_code)] SlotArray),
}

/// The `index-prep` thread's queue, the thread started on first use; `None`
/// if it cannot start (tables are then made where they are needed).
fn prep() -> Option<&'static crossbeam_channel::Sender<Prep>> {
    static PREP: OnceLock<Option<crossbeam_channel::Sender<Prep>>> = OnceLock::new();
    PREP.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Prep>();
        std::thread::Builder::new()
            .name("index-prep".into())
            .spawn(move || {
                for work in rx {
                    if let Prep::Make { slots, into, share } = work {
                        let mut table = empty_slots(slots);
                        fault_in(&mut table);
                        *into.lock() = Some(MadeAhead {
                            table,
                            _share: share,
                        });
                    }
                }
            })
            .ok()
            .map(|_| tx)
    })
    .as_ref()
}

/// Touches every page of `table` (with the zeroes already there), so its
/// page faults are taken here.
fn fault_in(table: &mut [Slot]) {
    for slot in table.iter_mut().step_by(4096 / SLOT_BYTES) {
        slot.hash = std::hint::black_box(slot.hash);
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// A record as the index holds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a> {
    pub object: u64,
    pub key: &'a [u8],
    pub loc: Loc,
}

/// `n` empty slots: zeroed memory straight from the kernel or the
/// allocator (a large table's fresh pages are zero already, not written
/// here).
fn empty_slots(n: usize) -> SlotArray {
    let bytes = n * SLOT_BYTES;
    if bytes >= HUGE_SLOTS_BYTES {
        // Without a map (an address-space limit), the heap will do.
        if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
            // Only a hint: without huge pages the table works the same.
            let _ = map.advise(memmap2::Advice::HugePage);
            return SlotArray::Mapped(map);
        }
    }
    let layout = Layout::array::<Slot>(n).expect("index size overflows");
    // SAFETY: `n` > 0 (callers ask for at least MIN_SLOTS), so the layout
    // has a non-zero size; all zeroes is a valid `Slot` (integers only); and
    // the pointer comes from the global allocator with the layout a
    // `Box<[Slot]>` of `n` frees it with.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<Slot>();
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        SlotArray::Heap(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, n)))
    }
}

impl Index {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Where this table's slots are, kept current as it grows.
    pub fn hint(&self) -> Arc<PrefetchHint> {
        self.hint.clone()
    }

    /// Bytes this table holds in memory (slots and long keys).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
            + self
                .long
                .iter()
                .map(|k| k.as_ref().map_or(0, |k| k.len() + 16))
                .sum::<usize>()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, hash: u64) -> usize {
        home(hash, self.mask())
    }

    fn key_of<'a>(&'a self, slot: &'a Slot) -> &'a [u8] {
        if slot.key_len == LONG {
            self.long[slot.long_index()]
                .as_deref()
                .expect("a slot points at a freed long key")
        } else {
            &slot.key[..slot.key_len as usize]
        }
    }

    fn matches(&self, slot: &Slot, hash: u64, object: u64, key: &[u8]) -> bool {
        slot.hash == hash && slot.object == object && self.key_of(slot) == key
    }

    /// Where the record is, or the empty slot where it would go.
    fn find(&self, hash: u64, object: u64, key: &[u8]) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let slot = &self.slots[i];
            if slot.is_empty() {
                return Err(i);
            }
            if self.matches(slot, hash, object, key) {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the home slot of `hash` into cache, the slot after
    /// it (a line of its own: a probe that passes the home, and a removal
    /// closing its hole, read it), and the word of the dirty map a change
    /// there marks: read at every change, the map (2 KiB a shard) is
    /// evicted by the records streaming through the cache between two
    /// changes of its line, and its load was half of `put`'s time
    /// (decisions.md 99).
    pub fn prefetch(&self, hash: u64) {
        if !self.slots.is_empty() {
            let home = self.home(hash);
            prefetch_line((&self.slots[home] as *const Slot).cast());
            prefetch_line((&self.slots[(home + 1) & self.mask()] as *const Slot).cast());
        }
        if let Some(word) = self.dirty.get(region_of(hash) / 64) {
            prefetch_line((word as *const u64).cast());
        }
    }

    pub fn get(&self, hash: u64, object: u64, key: &[u8]) -> Option<Loc> {
        if self.len == 0 {
            return None;
        }
        self.find(hash, object, key).ok().map(|i| self.slots[i].loc)
    }

    /// Points the record at `loc`; returns where it was before.
    pub fn put(&mut self, hash: u64, object: u64, key: &[u8], loc: Loc) -> Option<Loc> {
        assert!(loc.len > 0, "a record location has a length");
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        } else if !self.asked && (self.len + 1) * 8 > self.slots.len() * 5 {
            self.prepare();
        }
        self.mark(hash);
        match self.find(hash, object, key) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].loc, loc)),
            Err(i) => {
                let mut slot = Slot {
                    hash,
                    object,
                    loc,
                    key_len: key.len() as u8,
                    key: [0; INLINE_KEY],
                };
                if key.len() <= INLINE_KEY {
                    slot.key[..key.len()].copy_from_slice(key);
                } else {
                    slot.key_len = LONG;
                    let at = match self.free_long.pop() {
                        Some(at) => {
                            self.long[at as usize] = Some(key.into());
                            at
                        }
                        None => {
                            self.long.push(Some(key.into()));
                            u32::try_from(self.long.len() - 1).expect("over 4G long keys")
                        }
                    };
                    slot.key[..4].copy_from_slice(&at.to_le_bytes());
                }
                self.slots[i] = slot;
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, hash: u64, object: u64, key: &[u8]) -> Option<Loc> {
        if self.len == 0 {
            return None;
        }
        let i = self.find(hash, object, key).ok()?;
        let loc = self.slots[i].loc;
        self.mark(hash);
        self.vacate(i);
        Some(loc)
    }

    /// Empties slot `i`, then moves later slots of its run back into the
    /// hole wherever their home allows, so every record stays reachable from
    /// its home without tombstones.
    fn vacate(&mut self, i: usize) {
        let slot = self.slots[i];
        if slot.key_len == LONG {
            self.long[slot.long_index()] = None;
            self.free_long.push(slot.long_index() as u32);
        }
        let mask = self.mask();
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let next = self.slots[j];
            if next.is_empty() {
                break;
            }
            let home = self.home(next.hash);
            // `next` may move to the hole unless its home lies after the
            // hole (cyclically, in hole+1..=j).
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = next;
                hole = j;
            }
        }
        self.slots[hole] = Slot::zeroed();
        self.len -= 1;
    }

    /// Removes every record of `object` whose hash is `hash`; hands the
    /// location of each to `gone`. Looks only at the run of slots from the
    /// hash's home to the first empty one, where all of them are: an object
    /// with a few records here leaves without a scan of the whole table.
    pub fn remove_hashed(&mut self, hash: u64, object: u64, mut gone: impl FnMut(Loc)) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        let mut i = self.home(hash);
        loop {
            let slot = self.slots[i];
            if slot.is_empty() {
                return;
            }
            if slot.hash == hash && slot.object == object {
                gone(slot.loc);
                self.mark(hash);
                // Only slots after `i` move back into it: look at it again.
                self.vacate(i);
                continue;
            }
            i = (i + 1) & mask;
        }
    }

    /// Keeps the records `keep` says to (by object); hands the location of
    /// each one removed to `gone`.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool, mut gone: impl FnMut(Loc)) {
        let mut i = 0;
        // Backward shifts move records only towards lower indices within a
        // run, except across the wrap: scan until a pass removes nothing.
        loop {
            let mut removed = false;
            while i < self.slots.len() {
                let slot = self.slots[i];
                if !slot.is_empty() && !keep(slot.object) {
                    gone(slot.loc);
                    self.mark(slot.hash);
                    self.vacate(i);
                    removed = true;
                    // Slot i now holds a shifted record: look again.
                    continue;
                }
                i += 1;
            }
            if !removed {
                return;
            }
            i = 0;
        }
    }

    /// Past 5/8 full (it grows past 3/4): has the next table made ahead,
    /// when it is large enough for its page faults to matter (under
    /// uniform keys all 64 shards grow within a few runs, and those faults,
    /// a huge page's zeroing among them, stalled apply for hundreds of
    /// milliseconds: decisions.md 42).
    fn prepare(&mut self) {
        self.asked = true;
        let slots = self.slots.len() * 2;
        if slots * SLOT_BYTES < PREPARE_MIN_BYTES {
            return;
        }
        if let (Some(prep), Some(share)) = (prep(), MADE_AHEAD.take(slots * SLOT_BYTES)) {
            let _ = prep.send(Prep::Make {
                slots,
                into: self.next.clone(),
                share,
            });
        }
    }

    /// Makes room for `records` in all, so that inserting that many grows
    /// the table at most once, here (opening a checkpoint, which lists each
    /// shard's record count, or `[apply] expected_records`), with its pages
    /// faulted in here too: opening pays for them, not apply's first
    /// changes.
    pub fn reserve(&mut self, records: usize) {
        let mut n = self.slots.len().max(MIN_SLOTS);
        while (records + 1) * 4 > n * 3 {
            n *= 2;
        }
        if n > self.slots.len() {
            self.resize(n);
            fault_in(&mut self.slots);
        }
    }

    fn grow(&mut self) {
        self.resize((self.slots.len() * 2).max(MIN_SLOTS));
    }

    /// Moves the records into a table of `n` slots (a power of two).
    fn resize(&mut self, n: usize) {
        let made = (self.next.lock().take())
            .map(|made| made.table)
            .filter(|t| t.len() == n);
        self.asked = false;
        let old = std::mem::replace(&mut self.slots, made.unwrap_or_else(|| empty_slots(n)));
        let mask = self.mask();
        for slot in old.iter().filter(|s| !s.is_empty()) {
            let mut i = self.home(slot.hash);
            while !self.slots[i].is_empty() {
                i = (i + 1) & mask;
            }
            self.slots[i] = *slot;
        }
        self.hint.mask.store(mask, Ordering::Relaxed);
        self.hint
            .base
            .store(self.slots.as_ptr() as usize, Ordering::Relaxed);
        if old.len() * SLOT_BYTES >= PREPARE_MIN_BYTES {
            if let Some(prep) = prep() {
                let _ = prep.send(Prep::Drop(old));
            }
        }
    }

    /// Appends the (hash, location) of every record of `object` whose hash
    /// `keep` accepts to `out`, in `record_order` of their hashes. The
    /// slots are in that order already but for the records linear probing
    /// put after their home (a few places, or around the end of the table to
    /// its start): an insertion sort puts those back, at a cost of the
    /// distance each one moves.
    pub fn ordered(
        &self,
        object: u64,
        mut keep: impl FnMut(u64) -> bool,
        out: &mut Vec<(u64, Loc)>,
    ) {
        let start = out.len();
        // The run at the table's start may hold records that wrapped around
        // from its end: those go last.
        let lead = self.slots.iter().position(Slot::is_empty).unwrap_or(0);
        let mut wrapped = Vec::new();
        for (i, slot) in self.slots[..lead].iter().enumerate() {
            if slot.object == object && keep(slot.hash) {
                match self.home(slot.hash) > i {
                    true => wrapped.push((slot.hash, slot.loc)),
                    false => out.push((slot.hash, slot.loc)),
                }
            }
        }
        // The rest without a branch on each slot: a quarter to a half of
        // them are empty, at random.
        let mut block = [(0, Loc::default()); 64];
        for chunk in self.slots[lead..].chunks(block.len()) {
            let mut n = 0;
            for slot in chunk {
                block[n] = (slot.hash, slot.loc);
                n += usize::from(!slot.is_empty() & (slot.object == object) & keep(slot.hash));
            }
            out.extend_from_slice(&block[..n]);
        }
        out.extend_from_slice(&wrapped);
        for i in start + 1..out.len() {
            let x = out[i];
            let mut j = i;
            while j > start && record_order(out[j - 1].0) > record_order(x.0) {
                out[j] = out[j - 1];
                j -= 1;
            }
            out[j] = x;
        }
    }

    /// Slots in the table, empty or not.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Hands `change` the location of each record in slots `range`
    /// (clamped to the table), to change in place (compaction moves records
    /// to other files; their slots stay where they are); `change` says
    /// whether it did, which marks the record's region dirty.
    pub fn change_locs<E>(
        &mut self,
        range: std::ops::Range<usize>,
        mut change: impl FnMut(&mut Loc) -> Result<bool, E>,
    ) -> Result<(), E> {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        for i in start..end {
            let slot = &mut self.slots[i];
            if !slot.is_empty() && change(&mut slot.loc)? {
                let hash = slot.hash;
                self.mark(hash);
            }
        }
        Ok(())
    }

    fn mark(&mut self, hash: u64) {
        let region = region_of(hash);
        self.dirty[region / 64] |= 1 << (region % 64);
    }

    /// Regions marked dirty since the last take.
    pub fn dirty_count(&self) -> usize {
        self.dirty.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The regions marked dirty since the last take, in ascending order;
    /// clears the marks.
    pub fn take_dirty(&mut self) -> Vec<usize> {
        let mut regions = Vec::new();
        for (w, word) in self.dirty.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                regions.push(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        regions
    }

    /// Clears every dirty mark (the table was just written whole, or
    /// loaded from what is on disk).
    pub fn clear_dirty(&mut self) {
        self.dirty.fill(0);
    }

    /// Hands `visit` every record of `region`. They sit in the slots from
    /// the region's first home to its last, and after those in the run of
    /// full slots that continues past it (around the table's end to its
    /// start for the last region); records of the neighbouring regions
    /// spilled in among them are skipped by their hash.
    pub fn region_entries(&self, region: usize, mut visit: impl FnMut(Entry<'_>)) {
        if self.len == 0 {
            return;
        }
        let mask = self.mask();
        // The homes of the region's first and last possible hashes, by
        // their order (`home` reads the bits after the shard's; the order
        // is the reversed hash, so reversing an order gives its hash).
        let first = ((region as u64) << (64 - REGION_BITS)) >> SHARD_BITS;
        let last = first | (u64::MAX >> (REGION_BITS + SHARD_BITS));
        let (lo, hi) = (
            self.home(record_order(first)),
            self.home(record_order(last)),
        );
        let homes = hi - lo + 1;
        let mut i = lo;
        let mut seen = 0;
        loop {
            let slot = &self.slots[i];
            if slot.is_empty() {
                if seen >= homes {
                    return;
                }
            } else if region_of(slot.hash) == region {
                visit(Entry {
                    object: slot.object,
                    key: self.key_of(slot),
                    loc: slot.loc,
                });
            }
            seen += 1;
            if seen > self.slots.len() {
                return;
            }
            i = (i + 1) & mask;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        self.slots.iter().filter(|s| !s.is_empty()).map(|s| Entry {
            object: s.object,
            key: self.key_of(s),
            loc: s.loc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn loc(n: u32) -> Loc {
        Loc {
            file: n,
            offset: n.wrapping_mul(7),
            len: 20 + n % 100,
        }
    }

    /// Shares of a budget are given only while it lasts, and given back.
    #[test]
    fn a_budget_gives_shares_while_it_lasts() {
        let budget = Budget {
            used: AtomicUsize::new(0),
            limit: 100,
        };
        let first = budget.take(60).expect("within the budget");
        assert!(budget.take(50).is_none());
        let second = budget.take(40).expect("exactly the rest");
        drop(first);
        assert!(budget.take(61).is_none());
        assert!(budget.take(60).is_some());
        drop(second);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// A table made room for takes that many records without growing.
    #[test]
    fn a_reserved_table_takes_its_records_without_growing() {
        for records in [0usize, 1, 47, 48, 49, 5000, 100_000] {
            let mut index = Index::default();
            index.reserve(records);
            let size = index.slots.len();
            for n in 1..=records as u64 {
                let hash = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                index.put(hash, 1, &n.to_le_bytes(), loc(n as u32));
            }
            assert_eq!(index.slots.len(), size, "{records} records");
            assert_eq!(index.len(), records);
        }
    }

    /// Past 5/8 full, a table large enough has its next table made on the
    /// `index-prep` thread, and growing moves into that one.
    #[test]
    fn a_table_grows_into_the_table_made_ahead_for_it() {
        let mut index = Index::default();
        let mut n = 0u64;
        let mut put = |index: &mut Index| {
            n += 1;
            let hash = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            index.put(hash, 1, &n.to_le_bytes(), loc(n as u32));
        };
        while index.slots.len() * SLOT_BYTES < PREPARE_MIN_BYTES {
            put(&mut index);
        }
        while !index.asked {
            put(&mut index);
        }
        let size = index.slots.len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // (A table asked for at the last size may come first.)
        let made = loop {
            if let Some(made) = index
                .next
                .lock()
                .as_ref()
                .filter(|m| m.table.len() == 2 * size)
            {
                break made.table.as_ptr();
            }
            assert!(std::time::Instant::now() < deadline, "no table made ahead");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        while index.slots.len() == size {
            put(&mut index);
        }
        assert_eq!(index.slots.as_ptr(), made);
        assert!(index.next.lock().is_none());
        for m in 1..=n {
            let hash = m.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(index.get(hash, 1, &m.to_le_bytes()), Some(loc(m as u32)));
        }
    }

    /// Random puts, overwrites and removes with short and long keys and
    /// colliding hashes, against a HashMap; the table must agree after
    /// every step (seed printed).
    #[test]
    fn agrees_with_a_map_under_random_changes() {
        let seed = testkit::seed("index agrees_with_a_map_under_random_changes");
        let mut rng = testkit::Rng(seed);
        let mut index = Index::default();
        let mut model: HashMap<(u64, Vec<u8>), Loc> = HashMap::new();
        let mut hashes: HashMap<(u64, Vec<u8>), u64> = HashMap::new();
        for step in 0..200_000u32 {
            let k = rng.below(3000);
            let object = k % 3;
            let key: Vec<u8> = if k.is_multiple_of(5) {
                vec![k as u8; 40 + (k % 7) as usize]
            } else {
                k.to_le_bytes().to_vec()
            };
            // Few distinct homes (the table takes them from the bit-reversed
            // hash after the shard's bits), half at the start of the table,
            // half at its end: long runs, and runs that wrap around.
            let spot = k % 97;
            let high = if k.is_multiple_of(2) {
                spot
            } else {
                (1 << 26) - 1 - spot
            };
            let hash = (high << 32).reverse_bits() | (k % 64);
            hashes.insert((object, key.clone()), hash);
            match rng.below(10) {
                0..=5 => {
                    let l = loc(step);
                    let before = index.put(hash, object, &key, l);
                    assert_eq!(
                        before,
                        model.insert((object, key.clone()), l),
                        "seed {seed}"
                    );
                }
                6..=8 => {
                    assert_eq!(
                        index.remove(hash, object, &key),
                        model.remove(&(object, key.clone())),
                        "seed {seed}"
                    );
                }
                _ => {
                    assert_eq!(
                        index.get(hash, object, &key),
                        model.get(&(object, key.clone())).copied(),
                        "seed {seed}"
                    );
                }
            }
            assert_eq!(index.len(), model.len(), "seed {seed}");
        }
        let mut seen: Vec<(u64, Vec<u8>, Loc)> = index
            .iter()
            .map(|e| (e.object, e.key.to_vec(), e.loc))
            .collect();
        seen.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut want: Vec<(u64, Vec<u8>, Loc)> = model
            .iter()
            .map(|((o, k), l)| (*o, k.clone(), *l))
            .collect();
        want.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(seen, want, "seed {seed}");
        for object in 0..3 {
            let mut ordered = Vec::new();
            index.ordered(object, |h| h % 3 != 0, &mut ordered);
            assert!(
                ordered
                    .windows(2)
                    .all(|w| w[0].0.reverse_bits() <= w[1].0.reverse_bits()),
                "seed {seed}: records out of order"
            );
            let mut got: Vec<Loc> = ordered.iter().map(|r| r.1).collect();
            let mut want: Vec<Loc> = model
                .iter()
                .filter(|((o, k), _)| *o == object && !hashes[&(*o, k.clone())].is_multiple_of(3))
                .map(|(_, l)| *l)
                .collect();
            got.sort_by_key(|l| (l.file, l.offset, l.len));
            want.sort_by_key(|l| (l.file, l.offset, l.len));
            assert_eq!(got, want, "seed {seed}: object {object}");
        }

        let mut removed = 0;
        index.retain(|object| object != 1, |loc| removed += loc.len as u64);
        let want_bytes: u64 = model
            .iter()
            .filter(|((o, _), _)| *o == 1)
            .map(|(_, l)| l.len as u64)
            .sum();
        model.retain(|(o, _), _| *o != 1);
        assert_eq!(removed, want_bytes, "seed {seed}");
        assert_eq!(index.len(), model.len(), "seed {seed}");
        for ((o, k), l) in &model {
            let hash = hashes[&(*o, k.clone())];
            assert_eq!(index.get(hash, *o, k), Some(*l), "seed {seed}");
        }
    }

    /// Every put, remove and moved location marks its record's region, and
    /// nothing else does; a region lists exactly the records of its hashes,
    /// in a table smaller than the region count and in a larger one, with
    /// runs that cross regions' bounds and wrap around the table's end.
    #[test]
    fn changes_mark_their_regions_and_a_region_lists_exactly_its_records() {
        let seed = testkit::seed("index changes_mark_their_regions");
        let mut rng = testkit::Rng(seed);
        let mut index = Index::default();
        let mut model: HashMap<(u64, Vec<u8>), (u64, Loc)> = HashMap::new();
        let mut step = 0u32;
        for keys in [200u64, 6_000, 70_000] {
            let mut touched = std::collections::BTreeSet::new();
            for _ in 0..keys * 3 {
                step += 1;
                let k = rng.below(keys);
                let object = k % 3;
                let mut key = k.to_le_bytes().to_vec();
                if k.is_multiple_of(11) {
                    key.resize(40 + (k % 5) as usize, 7);
                }
                // Some keys crowd a few orders at the regions' bounds (the
                // last region's among them): runs over the bounds and
                // around the table's end.
                let hash = match k % 3 {
                    0 if k < 600 => {
                        let region = [0, 1, 77, REGIONS as u64 - 1][(k / 3 % 4) as usize];
                        let order = ((region << (64 - REGION_BITS)) >> SHARD_BITS)
                            | (u64::MAX >> (REGION_BITS + SHARD_BITS + 4 - (k % 8) as u32));
                        record_order(order) | (k % 64)
                    }
                    _ => (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed) | 1,
                };
                if rng.below(4) == 0 {
                    let gone = index.remove(hash, object, &key).is_some();
                    assert_eq!(gone, model.remove(&(object, key)).is_some(), "seed {seed}");
                    if gone {
                        touched.insert(region_of(hash));
                    }
                } else {
                    model.insert((object, key.clone()), (hash, loc(step)));
                    index.put(hash, object, &key, loc(step));
                    touched.insert(region_of(hash));
                }
            }
            assert_eq!(
                index.take_dirty(),
                std::mem::take(&mut touched).into_iter().collect::<Vec<_>>(),
                "seed {seed}: {keys} keys"
            );
            // Compaction's pass: every other location in a stretch moves.
            let mut moved = 0;
            index
                .change_locs(0..index.slot_count() / 3, |l| {
                    moved += 1;
                    if moved % 2 == 0 {
                        return Ok::<_, ()>(false);
                    }
                    l.offset = l.offset.wrapping_add(1);
                    Ok(true)
                })
                .unwrap();
            for ((object, key), (hash, l)) in model.iter_mut() {
                let now = index
                    .get(*hash, *object, key)
                    .expect("a record put is there");
                if now != *l {
                    touched.insert(region_of(*hash));
                    *l = now;
                }
            }
            let dirty = index.take_dirty();
            assert_eq!(
                dirty,
                touched.into_iter().collect::<Vec<_>>(),
                "seed {seed}: {keys} keys"
            );
            assert_eq!(index.dirty_count(), 0, "seed {seed}");
            type Listed = (u64, Vec<u8>, u32, u32, u32);
            let mut by_region: HashMap<usize, Vec<Listed>> = HashMap::new();
            for ((object, key), (hash, l)) in &model {
                by_region.entry(region_of(*hash)).or_default().push((
                    *object,
                    key.clone(),
                    l.file,
                    l.offset,
                    l.len,
                ));
            }
            let mut listed = 0;
            for region in 0..REGIONS {
                let mut got = Vec::new();
                index.region_entries(region, |e| {
                    got.push((
                        e.object,
                        e.key.to_vec(),
                        e.loc.file,
                        e.loc.offset,
                        e.loc.len,
                    ))
                });
                listed += got.len();
                got.sort();
                let mut want = by_region.remove(&region).unwrap_or_default();
                want.sort();
                assert_eq!(got, want, "seed {seed}: {keys} keys, region {region}");
            }
            assert_eq!(listed, model.len(), "seed {seed}");
        }
        assert!(
            index.slot_count() > REGIONS,
            "the last round outgrew the regions"
        );
    }

    /// A table outgrows the heap into maps of its own (huge pages when the
    /// host gives them), twice, and keeps every record through each move.
    #[test]
    fn a_large_table_moves_to_a_map_and_keeps_its_records() {
        let mut index = Index::default();
        let records = 60_000u64;
        let hash = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15) & !63;
        let mut was_mapped_at = None;
        for k in 0..records {
            index.put(hash(k), 1, &k.to_le_bytes(), loc(k as u32));
            if was_mapped_at.is_none() && matches!(index.slots, SlotArray::Mapped(_)) {
                was_mapped_at = Some(k);
            }
        }
        let mapped_at = was_mapped_at.expect("a table of 2 MiB or more is mapped");
        assert!(index.slots.len() * SLOT_BYTES >= 4 * HUGE_SLOTS_BYTES);
        assert!(
            mapped_at > 0 && (mapped_at as usize) * 4 <= HUGE_SLOTS_BYTES / SLOT_BYTES * 3,
            "small tables stay on the heap (mapped at {mapped_at})"
        );
        for k in (0..records).step_by(2) {
            assert_eq!(
                index.remove(hash(k), 1, &k.to_le_bytes()),
                Some(loc(k as u32))
            );
        }
        for k in 0..records {
            let want = (k % 2 == 1).then(|| loc(k as u32));
            assert_eq!(index.get(hash(k), 1, &k.to_le_bytes()), want, "record {k}");
        }
        assert_eq!(index.len() as u64, records / 2);
    }
}
