//! The fixed frame header (all integers little-endian):
//!
//! ```text
//!  0 magic          [u8; 4] = "RPLF"
//!  4 version        u8      = 1
//!  5 codec          u8      0 none, 1 zstd
//!  6 flags          u16     must be 0
//!  8 body_bytes     u32     stored body length (after compression)
//! 12 raw_bytes      u32     archived body length (before compression)
//! 16 start_position u64     the sender's position before this frame
//! 24 next_sequence  u64     the sender's position after this frame
//! 32 entry_count    u32
//! 36 body_crc32c    u32     CRC32C of the stored body
//! 40 reserved       u32     must be 0
//! 44 header_crc32c  u32     CRC32C of bytes [0, 44)
//! ```

use super::FrameError;
use crate::limits::{
    FRAME_BODY_BYTES_MAX, FRAME_ENTRIES_MAX, FRAME_HEADER_BYTES, FRAME_RAW_BYTES_MAX,
};

pub const FRAME_MAGIC: [u8; 4] = *b"RPLF";
pub const FRAME_VERSION: u8 = 1;

/// How a frame body is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// The archive as is (best on loopback and fast LANs).
    None,
    /// zstd at this level (1..=22; 1 is the fast choice for WANs).
    Zstd { level: i32 },
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd { .. } => 1,
        }
    }
}

/// The header's fields, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub compressed: bool,
    pub body_bytes: u32,
    pub raw_bytes: u32,
    /// The sender's position before this frame. A frame covers the positions
    /// `start_position..next_sequence`; its entries are those of them that
    /// object selection kept (all of them when nothing is filtered).
    pub start_position: u64,
    /// The sender's position after this frame.
    pub next_sequence: u64,
    pub entry_count: u32,
    pub body_crc32c: u32,
}

impl FrameHeader {
    pub(crate) fn encode(&self, codec: Codec) -> [u8; FRAME_HEADER_BYTES] {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4] = FRAME_VERSION;
        h[5] = codec.id();
        h[8..12].copy_from_slice(&self.body_bytes.to_le_bytes());
        h[12..16].copy_from_slice(&self.raw_bytes.to_le_bytes());
        h[16..24].copy_from_slice(&self.start_position.to_le_bytes());
        h[24..32].copy_from_slice(&self.next_sequence.to_le_bytes());
        h[32..36].copy_from_slice(&self.entry_count.to_le_bytes());
        h[36..40].copy_from_slice(&self.body_crc32c.to_le_bytes());
        let crc = crate::checksum::crc32c(&h[0..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks a header read from the network or disk. Every length is checked
    /// against its cap here, before the caller allocates anything for it.
    pub fn decode(h: &[u8]) -> Result<FrameHeader, FrameError> {
        let bad = FrameError::Header;
        if h.len() < FRAME_HEADER_BYTES {
            return Err(bad("shorter than a frame header"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        if h[0..4] != FRAME_MAGIC {
            return Err(bad(
                "bad magic (not a frame, or out of step with the stream)",
            ));
        }
        if u32_at(44) != crate::checksum::crc32c(&h[0..44]) {
            return Err(bad("header checksum mismatch"));
        }
        if h[4] != FRAME_VERSION {
            return Err(bad("unsupported frame version"));
        }
        if h[5] > 1 || h[6] != 0 || h[7] != 0 || u32_at(40) != 0 {
            return Err(bad("unknown codec, flags or reserved bits"));
        }
        let header = FrameHeader {
            compressed: h[5] == 1,
            body_bytes: u32_at(8),
            raw_bytes: u32_at(12),
            start_position: u64_at(16),
            next_sequence: u64_at(24),
            entry_count: u32_at(32),
            body_crc32c: u32_at(36),
        };
        let too_large = |what, got: u32, max| FrameError::TooLarge {
            what,
            got: got as usize,
            max,
        };
        if header.body_bytes as usize > FRAME_BODY_BYTES_MAX {
            return Err(too_large("body", header.body_bytes, FRAME_BODY_BYTES_MAX));
        }
        if header.raw_bytes as usize > FRAME_RAW_BYTES_MAX {
            return Err(too_large(
                "declared uncompressed body",
                header.raw_bytes,
                FRAME_RAW_BYTES_MAX,
            ));
        }
        if header.entry_count as usize > FRAME_ENTRIES_MAX {
            return Err(bad("more entries than a frame may carry"));
        }
        if !header.compressed && header.raw_bytes != header.body_bytes {
            return Err(bad("uncompressed body with differing lengths"));
        }
        if header.start_position == 0
            || header.next_sequence
                < header
                    .start_position
                    .saturating_add(header.entry_count as u64)
        {
            return Err(bad(
                "positions cannot hold the entries (start 0, or next below start + count)",
            ));
        }
        Ok(header)
    }
}
