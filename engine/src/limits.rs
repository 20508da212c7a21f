//! Every size limit of the engine, in one place.
//!
//! A limit exists so that nothing grows without bound and so that a length read
//! from disk or network can be refused before anything is allocated for it. The
//! relations between limits are checked at compile time below; change a number
//! here and the build tells you which other number must move with it.

/// Largest key of a record entry, in bytes (also bounded by the `u16` on disk).
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest after or before image of one entry, in bytes.
pub const IMAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest object name, in bytes of UTF-8.
pub const OBJECT_NAME_BYTES_MAX: usize = 128;
/// Fixed part of every journal entry, in bytes.
pub const ENTRY_HEADER_BYTES: usize = 56;
/// Largest entry: header, key, after image and before image.
pub const ENTRY_BYTES_MAX: usize = ENTRY_HEADER_BYTES + KEY_BYTES_MAX + 2 * IMAGE_BYTES_MAX;
/// Every entry starts at a multiple of this many bytes.
pub const ENTRY_ALIGN_BYTES: usize = 8;

/// Fixed part of every segment file.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Largest object catalog that a segment carries after its header.
pub const CATALOG_BYTES_MAX: usize = 256 * 1024;
/// Most objects one journal may name at once.
pub const OBJECTS_MAX: usize = 4096;
/// Smallest segment file accepted by the writer.
pub const SEGMENT_BYTES_MIN: usize = 1024 * 1024;
/// Largest segment file (offsets inside a segment are 32-bit).
pub const SEGMENT_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Segment size when the caller does not choose one.
pub const SEGMENT_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Bytes one `append_batch` call may claim in one piece; larger batches are split.
pub const APPEND_BATCH_BYTES_MAX: usize = SEGMENT_BYTES_MIN / 4;

/// Largest batch a scraper yields, in entries and bytes, unless configured lower.
pub const SCRAPE_BATCH_ENTRIES_MAX: usize = 64 * 1024;
pub const SCRAPE_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(ENTRY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(ENTRY_HEADER_BYTES.is_multiple_of(ENTRY_ALIGN_BYTES));
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(ENTRY_ALIGN_BYTES));
const _: () = assert!(OBJECTS_MAX * 16 <= CATALOG_BYTES_MAX);
// A fresh segment always has room for its catalog and at least two of the largest entries.
const _: () = assert!(
    SEGMENT_HEADER_BYTES + CATALOG_BYTES_MAX + 2 * ENTRY_BYTES_MAX + ENTRY_HEADER_BYTES
        <= SEGMENT_BYTES_MIN
);
// A batch claim fits a fresh segment even with the catalog at its largest.
const _: () = assert!(
    APPEND_BATCH_BYTES_MAX + ENTRY_BYTES_MAX + SEGMENT_HEADER_BYTES + CATALOG_BYTES_MAX
        <= SEGMENT_BYTES_MIN
);
// Claims overshoot a segment by at most a batch per appender; 32-bit offsets keep headroom.
const _: () = assert!(SEGMENT_BYTES_MAX <= (u32::MAX as usize) / 2);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);

/// Fixed part of every frame.
pub const FRAME_HEADER_BYTES: usize = 48;
/// Most entries one frame carries.
pub const FRAME_ENTRIES_MAX: usize = SCRAPE_BATCH_ENTRIES_MAX;
/// Largest archived (uncompressed) frame body: the largest scrape batch plus
/// one more entry (a batch closes after the entry that crosses its byte
/// limit), its offsets table and rkyv's fixed part.
pub const FRAME_RAW_BYTES_MAX: usize =
    SCRAPE_BATCH_BYTES_MAX + ENTRY_BYTES_MAX + 4 * FRAME_ENTRIES_MAX + 4096;
/// Largest stored frame body: zstd's worst case for the largest raw body.
pub const FRAME_BODY_BYTES_MAX: usize = FRAME_RAW_BYTES_MAX + FRAME_RAW_BYTES_MAX / 128 + 4096;

const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(16)); // keeps the body 16-aligned for rkyv
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
