//! One journal entry: its types, the value an application appends, the
//! zero-copy view a reader gets back, and the byte layout between the two.
//!
//! Layout (all integers little-endian; see docs/format.md):
//!
//! ```text
//!  0 frame_bytes u32   header + key + images, without padding; 0 = not yet published
//!  4 crc32c      u32   CRC32C of bytes [8, frame_bytes)
//!  8 sequence    u64   strictly increasing per journal, no gaps
//! 16 timestamp   u64   nanoseconds since the Unix epoch
//! 24 commit_cycle u64  0 = outside commitment control
//! 32 object_id   u64
//! 40 journal_code u8   b'R' record, b'C' commit control, b'F' object, b'J' journal
//! 41 entry_type [u8;2] e.g. b"PT"
//! 43 flags       u8    bit 0: a before image is present
//! 44 key_bytes   u16
//! 46 reserved    u16   must be 0
//! 48 after_bytes u32
//! 52 before_bytes u32  must be 0 unless flag bit 0
//! 56 key, after image, before image, then zero padding to a multiple of 8
//! ```
//!
//! The length word is written last, with release ordering: a reader that sees a
//! non-zero length sees the whole entry. Decoding never trusts a length before
//! checking it against the limits and the bytes actually present.

use crate::limits::{
    ENTRY_ALIGN_BYTES, ENTRY_BYTES_MAX, ENTRY_HEADER_BYTES, IMAGE_BYTES_MAX, KEY_BYTES_MAX,
    OBJECT_NAME_BYTES_MAX,
};

const FLAG_BEFORE: u8 = 1;

/// What an entry records. The journal code and two-letter type follow the IBM i
/// convention (`R-PT`, `C-CM`, ...), so dumps read familiar to operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryType {
    /// R-PT: a record was inserted; after image is the record.
    RecordPut,
    /// R-UP: a record was updated; after image, optional before image.
    RecordUpdate,
    /// R-DL: a record was deleted; optional before image.
    RecordDelete,
    /// C-SC: a commit cycle started.
    CommitStart,
    /// C-CM: a commit cycle committed.
    Commit,
    /// C-RB: a commit cycle rolled back.
    Rollback,
    /// F-CR: an object was created; key holds its name.
    ObjectCreate,
    /// F-DO: an object was dropped.
    ObjectDrop,
    /// F-CL: an object's records were all removed.
    ObjectClear,
    /// F-RN: an object was renamed; key holds the new name, before image the old.
    ObjectRename,
    /// J-NR: the journal continues in the next segment.
    NextSegment,
    /// S-CK: a sync-check probe (changes nothing): the replica notes the
    /// record `key` of `object_id` as it is at this point of the ordered
    /// apply stream; with no object and no key, a barrier that waits for
    /// everything before it (docs/format.md, decisions.md 24).
    CheckProbe,
}

const TYPES: [(EntryType, u8, [u8; 2]); 12] = [
    (EntryType::RecordPut, b'R', *b"PT"),
    (EntryType::RecordUpdate, b'R', *b"UP"),
    (EntryType::RecordDelete, b'R', *b"DL"),
    (EntryType::CommitStart, b'C', *b"SC"),
    (EntryType::Commit, b'C', *b"CM"),
    (EntryType::Rollback, b'C', *b"RB"),
    (EntryType::ObjectCreate, b'F', *b"CR"),
    (EntryType::ObjectDrop, b'F', *b"DO"),
    (EntryType::ObjectClear, b'F', *b"CL"),
    (EntryType::ObjectRename, b'F', *b"RN"),
    (EntryType::NextSegment, b'J', *b"NR"),
    (EntryType::CheckProbe, b'S', *b"CK"),
];

/// An entry type's three code bytes as one word (below 2^24).
const fn type_key(code: u8, ty: [u8; 2]) -> u32 {
    (code as u32) << 16 | (ty[0] as u32) << 8 | ty[1] as u32
}

const fn type_slot(key: u32, magic: u32) -> usize {
    (key.wrapping_mul(magic) >> 28) as usize
}

/// A multiplier that sends the twelve types to distinct slots of sixteen,
/// found when compiling: the first of the odd multipliers 0x9E3779B9^n that
/// does (a new type that collides makes the search go on; one that no
/// multiplier separates fails the build).
const TYPE_MAGIC: u32 = {
    const GOLDEN: u32 = 0x9E37_79B9;
    let mut magic = GOLDEN;
    let mut tries = 0;
    'search: loop {
        tries += 1;
        assert!(tries < 10_000, "no multiplier separates the entry types");
        let mut taken = [false; 16];
        let mut i = 0;
        while i < TYPES.len() {
            let slot = type_slot(type_key(TYPES[i].1, TYPES[i].2), magic);
            if taken[slot] {
                magic = magic.wrapping_mul(GOLDEN) | 1;
                continue 'search;
            }
            taken[slot] = true;
            i += 1;
        }
        break magic;
    }
};

/// Each type at its slot with its key; empty slots hold a key that no three
/// bytes make.
const TYPE_SLOTS: [(u32, EntryType); 16] = {
    let mut slots = [(u32::MAX, EntryType::RecordPut); 16];
    let mut i = 0;
    while i < TYPES.len() {
        let key = type_key(TYPES[i].1, TYPES[i].2);
        slots[type_slot(key, TYPE_MAGIC)] = (key, TYPES[i].0);
        i += 1;
    }
    slots
};

impl EntryType {
    pub const ALL: [EntryType; 12] = [
        EntryType::RecordPut,
        EntryType::RecordUpdate,
        EntryType::RecordDelete,
        EntryType::CommitStart,
        EntryType::Commit,
        EntryType::Rollback,
        EntryType::ObjectCreate,
        EntryType::ObjectDrop,
        EntryType::ObjectClear,
        EntryType::ObjectRename,
        EntryType::NextSegment,
        EntryType::CheckProbe,
    ];

    fn codes(self) -> (u8, [u8; 2]) {
        let (_, code, ty) = TYPES[self as usize];
        (code, ty)
    }

    /// The one-letter journal code: `R`, `C`, `F`, `J` or `S`.
    pub fn journal_code(self) -> char {
        self.codes().0 as char
    }

    /// `R-PT`, `C-CM`, ...
    pub fn label(self) -> &'static str {
        [
            "R-PT", "R-UP", "R-DL", "C-SC", "C-CM", "C-RB", "F-CR", "F-DO", "F-CL", "F-RN", "J-NR",
            "S-CK",
        ][self as usize]
    }

    /// The type named by a journal code and two-letter type. Every decode
    /// and every `entry_type()` call lands here, so it is one multiply, one
    /// load and one compare: the three bytes hash into a 16-slot table in
    /// which the twelve types do not collide (a `match` compiled to a jump
    /// table whose mispredictions cost 1-3% of a whole replication's CPU).
    #[inline]
    pub fn from_codes(code: u8, ty: [u8; 2]) -> Option<EntryType> {
        let key = type_key(code, ty);
        let (stored, entry_type) = TYPE_SLOTS[type_slot(key, TYPE_MAGIC)];
        (stored == key).then_some(entry_type)
    }

    #[inline]
    pub fn is_record(self) -> bool {
        matches!(
            self,
            EntryType::RecordPut | EntryType::RecordUpdate | EntryType::RecordDelete
        )
    }

    #[inline]
    pub fn is_object(self) -> bool {
        matches!(
            self,
            EntryType::ObjectCreate
                | EntryType::ObjectDrop
                | EntryType::ObjectClear
                | EntryType::ObjectRename
        )
    }

    #[inline]
    pub fn is_commit_control(self) -> bool {
        matches!(
            self,
            EntryType::CommitStart | EntryType::Commit | EntryType::Rollback
        )
    }
}

/// An entry as an application hands it to the journal; the journal adds the
/// sequence number and timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewEntry<'a> {
    pub entry_type: EntryType,
    pub commit_cycle: u64,
    pub object_id: u64,
    pub key: &'a [u8],
    pub after: &'a [u8],
    pub before: Option<&'a [u8]>,
}

impl NewEntry<'static> {
    /// J-NR, which only the journal writes (`validate` refuses it from
    /// applications); public so tools and tests can name it.
    pub const NEXT_SEGMENT: NewEntry<'static> = NewEntry {
        entry_type: EntryType::NextSegment,
        commit_cycle: 0,
        object_id: 0,
        key: &[],
        after: &[],
        before: None,
    };
}

impl<'a> NewEntry<'a> {
    fn new(entry_type: EntryType, object_id: u64, key: &'a [u8], after: &'a [u8]) -> Self {
        NewEntry {
            entry_type,
            commit_cycle: 0,
            object_id,
            key,
            after,
            before: None,
        }
    }

    pub fn put(object_id: u64, key: &'a [u8], after: &'a [u8]) -> Self {
        Self::new(EntryType::RecordPut, object_id, key, after)
    }

    pub fn update(
        object_id: u64,
        key: &'a [u8],
        after: &'a [u8],
        before: Option<&'a [u8]>,
    ) -> Self {
        NewEntry {
            before,
            ..Self::new(EntryType::RecordUpdate, object_id, key, after)
        }
    }

    pub fn delete(object_id: u64, key: &'a [u8], before: Option<&'a [u8]>) -> Self {
        NewEntry {
            before,
            ..Self::new(EntryType::RecordDelete, object_id, key, &[])
        }
    }

    pub fn commit_start(cycle: u64) -> Self {
        Self::new(EntryType::CommitStart, 0, &[], &[]).in_cycle(cycle)
    }

    pub fn commit(cycle: u64) -> Self {
        Self::new(EntryType::Commit, 0, &[], &[]).in_cycle(cycle)
    }

    pub fn rollback(cycle: u64) -> Self {
        Self::new(EntryType::Rollback, 0, &[], &[]).in_cycle(cycle)
    }

    pub fn create_object(object_id: u64, name: &'a str) -> Self {
        Self::new(EntryType::ObjectCreate, object_id, name.as_bytes(), &[])
    }

    /// A sync-check probe of one record, or with object 0 and no key a
    /// barrier.
    pub fn check_probe(object_id: u64, key: &'a [u8]) -> Self {
        Self::new(EntryType::CheckProbe, object_id, key, &[])
    }

    pub fn drop_object(object_id: u64) -> Self {
        Self::new(EntryType::ObjectDrop, object_id, &[], &[])
    }

    pub fn clear_object(object_id: u64) -> Self {
        Self::new(EntryType::ObjectClear, object_id, &[], &[])
    }

    pub fn rename_object(object_id: u64, new_name: &'a str) -> Self {
        Self::new(EntryType::ObjectRename, object_id, new_name.as_bytes(), &[])
    }

    /// The same entry under commitment control cycle `cycle`.
    pub fn in_cycle(self, cycle: u64) -> Self {
        NewEntry {
            commit_cycle: cycle,
            ..self
        }
    }

    /// Bytes this entry occupies without padding.
    pub fn frame_bytes(&self) -> usize {
        ENTRY_HEADER_BYTES + self.key.len() + self.after.len() + self.before.map_or(0, <[u8]>::len)
    }

    /// Bytes this entry occupies in a segment, padding included.
    pub fn padded_bytes(&self) -> usize {
        align_up(self.frame_bytes())
    }

    /// A durability policy forces entries that end a unit of work: commits,
    /// rollbacks and anything written outside commitment control.
    pub fn is_commit_point(&self) -> bool {
        match self.entry_type {
            EntryType::Commit | EntryType::Rollback => true,
            EntryType::CommitStart | EntryType::NextSegment => false,
            _ => self.commit_cycle == 0,
        }
    }

    /// Checks the limits and the per-type shape. Called before any space is claimed.
    pub fn validate(&self) -> Result<(), EntryError> {
        let too_large = |what, got: usize, max| EntryError::TooLarge { what, got, max };
        if self.key.len() > KEY_BYTES_MAX {
            return Err(too_large("key", self.key.len(), KEY_BYTES_MAX));
        }
        if self.after.len() > IMAGE_BYTES_MAX {
            return Err(too_large("after image", self.after.len(), IMAGE_BYTES_MAX));
        }
        if let Some(before) = self.before {
            if before.len() > IMAGE_BYTES_MAX {
                return Err(too_large("before image", before.len(), IMAGE_BYTES_MAX));
            }
        }
        let shape = |detail| EntryError::Shape {
            entry_type: self.entry_type.label(),
            detail,
        };
        match self.entry_type {
            EntryType::NextSegment => Err(shape("J-NR is written by the journal itself")),
            EntryType::ObjectCreate | EntryType::ObjectRename => {
                if self.key.is_empty() || self.key.len() > OBJECT_NAME_BYTES_MAX {
                    return Err(too_large(
                        "object name",
                        self.key.len(),
                        OBJECT_NAME_BYTES_MAX,
                    ));
                }
                if std::str::from_utf8(self.key).is_err() {
                    return Err(shape("object name is not UTF-8"));
                }
                Ok(())
            }
            EntryType::CommitStart | EntryType::Commit | EntryType::Rollback
                if self.commit_cycle == 0 =>
            {
                Err(shape("commit control needs a commit cycle id other than 0"))
            }
            EntryType::CheckProbe if self.commit_cycle != 0 => {
                Err(shape("a probe is outside commitment control (cycle 0)"))
            }
            EntryType::CheckProbe if !self.after.is_empty() || self.before.is_some() => {
                Err(shape("a probe carries no image"))
            }
            _ => Ok(()),
        }
    }
}

/// Why an entry was refused before it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("HAD0105E entry refused: {what} is {got} bytes, the limit is {max}")]
    TooLarge {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("HAD0106E entry refused: {entry_type}: {detail}")]
    Shape {
        entry_type: &'static str,
        detail: &'static str,
    },
}

/// Rounds `n` up to the entry alignment.
pub const fn align_up(n: usize) -> usize {
    (n + ENTRY_ALIGN_BYTES - 1) & !(ENTRY_ALIGN_BYTES - 1)
}

fn header_bytes(
    entry: &NewEntry<'_>,
    sequence: u64,
    timestamp_ns: u64,
) -> [u8; ENTRY_HEADER_BYTES] {
    let mut h = [0u8; ENTRY_HEADER_BYTES];
    let before_bytes = entry.before.map_or(0, <[u8]>::len);
    let (code, ty) = entry.entry_type.codes();
    h[0..4].copy_from_slice(&(entry.frame_bytes() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&sequence.to_le_bytes());
    h[16..24].copy_from_slice(&timestamp_ns.to_le_bytes());
    h[24..32].copy_from_slice(&entry.commit_cycle.to_le_bytes());
    h[32..40].copy_from_slice(&entry.object_id.to_le_bytes());
    h[40] = code;
    h[41..43].copy_from_slice(&ty);
    h[43] = if entry.before.is_some() {
        FLAG_BEFORE
    } else {
        0
    };
    h[44..46].copy_from_slice(&(entry.key.len() as u16).to_le_bytes());
    h[48..52].copy_from_slice(&(entry.after.len() as u32).to_le_bytes());
    h[52..56].copy_from_slice(&(before_bytes as u32).to_le_bytes());
    h
}

/// Writes `entry` at `dst` in full except its length word (bytes 0..4), which
/// stays as it is so the caller can publish it last. Returns the frame length to
/// publish.
///
/// # Safety
/// `dst` must be 8-byte aligned and valid for writes of `entry.padded_bytes()`
/// bytes that no other thread reads or writes until the length is published.
pub(crate) unsafe fn write_unpublished(
    dst: *mut u8,
    entry: &NewEntry<'_>,
    sequence: u64,
    timestamp_ns: u64,
) -> u32 {
    let header = header_bytes(entry, sequence, timestamp_ns);
    let before = entry.before.unwrap_or(&[]);
    let frame_bytes = entry.frame_bytes();
    // SAFETY: the caller guarantees `dst..dst+padded_bytes` is ours alone; the
    // pieces are laid end to end inside `frame_bytes <= padded_bytes`, and the
    // slice we checksum covers only bytes we just wrote.
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr().add(4), dst.add(4), ENTRY_HEADER_BYTES - 4);
        let mut at = dst.add(ENTRY_HEADER_BYTES);
        for piece in [entry.key, entry.after, before] {
            std::ptr::copy_nonoverlapping(piece.as_ptr(), at, piece.len());
            at = at.add(piece.len());
        }
        // One checksum call over the bytes just written (hot in L1) is
        // measurably cheaper than one call per piece for small entries.
        let crc = crate::checksum::crc32c(std::slice::from_raw_parts(dst.add(8), frame_bytes - 8));
        std::ptr::copy_nonoverlapping(crc.to_le_bytes().as_ptr(), dst.add(4), 4);
    }
    entry.frame_bytes() as u32
}

/// Encodes `entry` into `out` (cleared first), length word included, padded.
/// Used by tests, tools and fuzzing; the writer encodes straight into the map.
pub fn encode_to_vec(entry: &NewEntry<'_>, sequence: u64, timestamp_ns: u64, out: &mut Vec<u8>) {
    out.clear();
    out.resize(entry.padded_bytes(), 0);
    // SAFETY: `out` is exactly `padded_bytes` long and exclusively borrowed; Vec
    // storage of u8 is only byte aligned, which `write_unpublished` tolerates
    // because it copies bytes and never forms wider references.
    let len = unsafe { write_unpublished(out.as_mut_ptr(), entry, sequence, timestamp_ns) };
    out[0..4].copy_from_slice(&len.to_le_bytes());
}

/// Why bytes did not decode as an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("no entry published here (length word is 0)")]
    Unpublished,
    #[error("entry needs {needed} bytes but only {available} remain")]
    Truncated { needed: usize, available: usize },
    #[error("length word {frame_bytes} is outside {min}..={max}")]
    BadLength {
        frame_bytes: u32,
        min: usize,
        max: usize,
    },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("unknown entry type {code:#04x} {ty:?}")]
    UnknownType { code: u8, ty: [u8; 2] },
    #[error("inconsistent entry header: {detail}")]
    BadHeader { detail: &'static str },
}

/// The little-endian word at `at`. Always inlined: left to the compiler,
/// `checked_len` called it out of line for each of its fields, at every
/// entry the sender scrapes (decisions.md 100).
#[inline(always)]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// As `u32_at`.
#[inline(always)]
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and fully validates the entry at the start of `buf` (which may hold
/// more bytes after it). Checks the length against the limits before anything
/// else, then the checksum, then the header's internal consistency.
///
/// Inlined, with the checks out of line: an `Entry` returned through memory
/// from a call was read back before its stores had reached the cache, a
/// stall at every entry (decisions.md 99).
#[inline]
pub fn decode(buf: &[u8]) -> Result<Entry<'_>, DecodeError> {
    let len = checked_len(buf)?;
    Ok(Entry { bytes: &buf[..len] })
}

/// `decode`'s checks: the length of the valid entry at the start of `buf`.
fn checked_len(buf: &[u8]) -> Result<usize, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated {
            needed: 4,
            available: buf.len(),
        });
    }
    let frame_bytes = u32_at(buf, 0);
    if frame_bytes == 0 {
        return Err(DecodeError::Unpublished);
    }
    let len = frame_bytes as usize;
    if !(ENTRY_HEADER_BYTES..=ENTRY_BYTES_MAX).contains(&len) {
        return Err(DecodeError::BadLength {
            frame_bytes,
            min: ENTRY_HEADER_BYTES,
            max: ENTRY_BYTES_MAX,
        });
    }
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            needed: len,
            available: buf.len(),
        });
    }
    let bytes = &buf[..len];
    let stored = u32_at(bytes, 4);
    let computed = crate::checksum::crc32c(&bytes[8..]);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch { stored, computed });
    }
    let code = bytes[40];
    let ty = [bytes[41], bytes[42]];
    if EntryType::from_codes(code, ty).is_none() {
        return Err(DecodeError::UnknownType { code, ty });
    }
    let flags = bytes[43];
    let key = u16::from_le_bytes([bytes[44], bytes[45]]) as usize;
    let after = u32_at(bytes, 48) as usize;
    let before = u32_at(bytes, 52) as usize;
    let bad = |detail| Err(DecodeError::BadHeader { detail });
    if flags & !FLAG_BEFORE != 0 || bytes[46] != 0 || bytes[47] != 0 {
        return bad("reserved bits set");
    }
    if flags & FLAG_BEFORE == 0 && before != 0 {
        return bad("before image length without the before-image flag");
    }
    if key > KEY_BYTES_MAX || after > IMAGE_BYTES_MAX || before > IMAGE_BYTES_MAX {
        return bad("a field is longer than its limit");
    }
    if ENTRY_HEADER_BYTES + key + after + before != len {
        return bad("field lengths do not add up to the length word");
    }
    Ok(len)
}

/// Decodes an entry that this process already validated with `decode`: checks
/// only what keeps accessors in bounds (length and field sizes), not the
/// checksum. A wrong offset yields an error or a structurally sound entry,
/// never a panic or an out-of-bounds read. Inlined, as `decode`.
#[inline]
pub fn decode_validated(buf: &[u8]) -> Result<Entry<'_>, DecodeError> {
    let frame_bytes = u32_at(buf.get(..4).ok_or(DecodeError::Unpublished)?, 0) as usize;
    if !(ENTRY_HEADER_BYTES..=ENTRY_BYTES_MAX).contains(&frame_bytes) || buf.len() < frame_bytes {
        return Err(DecodeError::BadHeader {
            detail: "not a validated entry",
        });
    }
    let bytes = &buf[..frame_bytes];
    let fields = ENTRY_HEADER_BYTES
        + u16::from_le_bytes([bytes[44], bytes[45]]) as usize
        + u32_at(bytes, 48) as usize
        + u32_at(bytes, 52) as usize;
    if fields != frame_bytes || EntryType::from_codes(bytes[40], [bytes[41], bytes[42]]).is_none() {
        return Err(DecodeError::BadHeader {
            detail: "not a validated entry",
        });
    }
    Ok(Entry { bytes })
}

/// A validated entry, borrowed from wherever its bytes live (usually a segment
/// map). Accessors read the bytes in place; nothing is copied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    bytes: &'a [u8],
}

impl<'a> Entry<'a> {
    /// An entry this crate's cursor decoded (`decode`) at exactly these
    /// bytes before: nothing is checked again.
    #[inline]
    pub(crate) fn validated(bytes: &'a [u8]) -> Entry<'a> {
        debug_assert!(decode_validated(bytes).is_ok_and(|e| e.bytes.len() == bytes.len()));
        Entry { bytes }
    }
    /// The entry at the start of `buf` (which may hold more after it),
    /// where this crate decoded one before: cut at the length its first
    /// word gives, nothing checked again.
    #[inline]
    pub(crate) fn validated_at(buf: &'a [u8]) -> Entry<'a> {
        Entry::validated(&buf[..u32_at(buf, 0) as usize])
    }
    #[inline]
    pub fn sequence(&self) -> u64 {
        u64_at(self.bytes, 8)
    }
    #[inline]
    pub fn timestamp_ns(&self) -> u64 {
        u64_at(self.bytes, 16)
    }
    #[inline]
    pub fn commit_cycle(&self) -> u64 {
        u64_at(self.bytes, 24)
    }
    #[inline]
    pub fn object_id(&self) -> u64 {
        u64_at(self.bytes, 32)
    }
    #[inline]
    pub fn entry_type(&self) -> EntryType {
        // Validated by `decode`.
        EntryType::from_codes(self.bytes[40], [self.bytes[41], self.bytes[42]])
            .expect("entry type validated at decode")
    }
    #[inline]
    fn key_bytes(&self) -> usize {
        u16::from_le_bytes([self.bytes[44], self.bytes[45]]) as usize
    }
    #[inline]
    fn after_bytes(&self) -> usize {
        u32_at(self.bytes, 48) as usize
    }
    #[inline]
    pub fn key(&self) -> &'a [u8] {
        &self.bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + self.key_bytes()]
    }
    #[inline]
    pub fn after(&self) -> &'a [u8] {
        let start = ENTRY_HEADER_BYTES + self.key_bytes();
        &self.bytes[start..start + self.after_bytes()]
    }
    #[inline]
    pub fn before(&self) -> Option<&'a [u8]> {
        (self.bytes[43] & FLAG_BEFORE != 0)
            .then(|| &self.bytes[ENTRY_HEADER_BYTES + self.key_bytes() + self.after_bytes()..])
    }
    /// The object name carried by F-CR and F-RN entries.
    pub fn object_name(&self) -> Option<&'a str> {
        matches!(
            self.entry_type(),
            EntryType::ObjectCreate | EntryType::ObjectRename
        )
        .then(|| std::str::from_utf8(self.key()).ok())
        .flatten()
    }
    /// The entry's bytes without padding, length word included.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn padded_bytes(&self) -> usize {
        align_up(self.bytes.len())
    }
    /// The entry as the value that produced it.
    pub fn to_new_entry(&self) -> NewEntry<'a> {
        NewEntry {
            entry_type: self.entry_type(),
            commit_cycle: self.commit_cycle(),
            object_id: self.object_id(),
            key: self.key(),
            after: self.after(),
            before: self.before(),
        }
    }
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("sequence", &self.sequence())
            .field("type", &self.entry_type().label())
            .field("commit_cycle", &self.commit_cycle())
            .field("object_id", &self.object_id())
            .field("key_bytes", &self.key().len())
            .field("after_bytes", &self.after().len())
            .field("before_bytes", &self.before().map(<[u8]>::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_roundtrip(entry: NewEntry<'_>) {
        entry.validate().unwrap();
        let mut buf = Vec::new();
        encode_to_vec(&entry, 42, 7, &mut buf);
        assert_eq!(buf.len() % ENTRY_ALIGN_BYTES, 0);
        let decoded = decode(&buf).unwrap();
        assert_eq!(decoded.sequence(), 42);
        assert_eq!(decoded.timestamp_ns(), 7);
        assert_eq!(decoded.to_new_entry(), entry);
    }

    #[test]
    fn every_type_roundtrips() {
        check_roundtrip(NewEntry::put(3, b"k", b"after"));
        check_roundtrip(NewEntry::update(3, b"k", b"new", Some(b"old")));
        check_roundtrip(NewEntry::update(3, b"k", b"new", None));
        check_roundtrip(NewEntry::delete(3, b"k", Some(b"old")).in_cycle(9));
        check_roundtrip(NewEntry::commit_start(9));
        check_roundtrip(NewEntry::commit(9));
        check_roundtrip(NewEntry::rollback(9));
        check_roundtrip(NewEntry::create_object(3, "LIB/ORDERS"));
        check_roundtrip(NewEntry::rename_object(3, "LIB/ORDERS2"));
        check_roundtrip(NewEntry::drop_object(3));
        check_roundtrip(NewEntry::clear_object(3));
        check_roundtrip(NewEntry::update(3, b"", b"", Some(b"")));
    }

    #[test]
    fn every_type_has_distinct_codes_in_table_order() {
        for (i, (t, _, _)) in TYPES.iter().enumerate() {
            assert_eq!(*t as usize, i);
            assert_eq!(EntryType::ALL[i], *t);
            let (code, ty) = t.codes();
            assert_eq!(EntryType::from_codes(code, ty), Some(*t));
            assert_eq!(
                t.label(),
                format!("{}-{}", code as char, std::str::from_utf8(&ty).unwrap())
            );
        }
    }

    #[test]
    fn only_the_twelve_code_triples_name_a_type() {
        let mut named = 0;
        for code in 0..=255u8 {
            for t0 in 0..=255u8 {
                for t1 in 0..=255u8 {
                    let expected = TYPES
                        .iter()
                        .find(|(_, c, ty)| (*c, *ty) == (code, [t0, t1]))
                        .map(|(t, _, _)| *t);
                    assert_eq!(
                        EntryType::from_codes(code, [t0, t1]),
                        expected,
                        "{code:#04x} {t0:#04x} {t1:#04x}"
                    );
                    named += usize::from(expected.is_some());
                }
            }
        }
        assert_eq!(named, TYPES.len());
    }

    #[test]
    fn limits_are_enforced_before_writing() {
        let big = vec![0u8; IMAGE_BYTES_MAX + 1];
        assert!(matches!(
            NewEntry::put(1, b"k", &big).validate(),
            Err(EntryError::TooLarge {
                what: "after image",
                ..
            })
        ));
        let key = vec![0u8; KEY_BYTES_MAX + 1];
        assert!(NewEntry::put(1, &key, b"").validate().is_err());
        assert!(NewEntry::commit(0).validate().is_err());
        assert!(NewEntry::create_object(1, "").validate().is_err());
        let max_key = vec![1u8; KEY_BYTES_MAX];
        let max_img = vec![2u8; IMAGE_BYTES_MAX];
        let largest = NewEntry::update(1, &max_key, &max_img, Some(&max_img));
        largest.validate().unwrap();
        assert_eq!(largest.frame_bytes(), ENTRY_BYTES_MAX);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_to_vec(
            &NewEntry::update(5, b"key", b"after", Some(b"before")),
            1,
            2,
            &mut buf,
        );
        let frame = decode(&buf).unwrap().as_bytes().len();
        for bit in 0..frame * 8 {
            let mut copy = buf.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&copy).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn lengths_are_checked_before_use() {
        let mut buf = vec![0u8; 64];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf), Err(DecodeError::BadLength { .. })));
        buf[0..4].copy_from_slice(&60u32.to_le_bytes());
        assert!(matches!(
            decode(&buf[..59]),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(decode(&[0u8; 8]), Err(DecodeError::Unpublished));
    }
}
