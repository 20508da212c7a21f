//! Frames: how a batch of journal entries travels and is staged.
//!
//! A frame is a fixed 48-byte header and a body. The body is an rkyv archive
//! of `FrameBody` (journal id, positions, an offsets table, and the entries in
//! their journal format), compressed as a whole with zstd when the codec asks.
//! Layout in docs/format.md.
//!
//! Design constraints:
//! - Entries are not re-serialized: their journal bytes (already checksummed,
//!   8-aligned) are copied as one run into the archive. Copies on the sending
//!   side: the batch's entries gathered into one buffer (they may be
//!   scattered by object selection, and rkyv archives one slice), then rkyv
//!   writing them into the archive, which for the uncompressed codec is the
//!   frame buffer itself, right after the header (so the socket sends it as
//!   is); with zstd, the archive is compressed and the result copied behind
//!   the header. On the receiving side: the socket read, then the body copied
//!   into a 16-aligned buffer for rkyv (or decompressed into it), and the
//!   staging write of the received bytes.
//! - `frame` does no I/O.
//! - Decoding trusts nothing: length caps before any allocation, the header
//!   and body checksums, decompression bounded by the declared size, rkyv's
//!   checked `access`, then every entry's structure and sequence order.

mod codec;
mod header;

pub use codec::{
    ArchivedFrameBody, CheckedBody, DecodedFrame, FrameBody, FrameDecoder, FrameEncoder,
};
pub use header::{Codec, FrameHeader, FRAME_MAGIC, FRAME_VERSION};

/// Why a frame was refused. Every variant is a reason to ask for a resend;
/// none of a refused frame is ever staged or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("HAD0301E frame refused: {0}")]
    Header(&'static str),
    #[error("HAD0302E frame refused: {what} is {got} bytes, the limit is {max}")]
    TooLarge {
        what: &'static str,
        got: usize,
        max: usize,
    },
    #[error("HAD0303E frame refused: body checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BodyChecksum { stored: u32, computed: u32 },
    #[error("HAD0304E frame refused: decompression failed or did not yield the declared {declared} bytes: {detail}")]
    Decompress { declared: usize, detail: String },
    #[error("HAD0305E frame refused: body is not a valid archive: {0}")]
    Archive(String),
    #[error("HAD0306E frame refused: entry {index}: {detail}")]
    Entry { index: usize, detail: String },
    #[error("HAD0307E frame could not be encoded: {0}")]
    Encode(String),
}
