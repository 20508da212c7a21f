//! CRC-32C (Castagnoli): the checksum of every format here (journal entries
//! and segment headers, frames, protocol messages, replica records).
//!
//! Most of what is checked is short: an entry or a record of 100-200 bytes,
//! a header of 44-52. For those the `crc32c` crate's hardware path spends
//! more on getting to 8-byte alignment (a byte at a time on each side, three
//! cycles a byte) and on its call than on the words themselves, so short
//! buffers are summed here a word at a time from unaligned loads, with the
//! last 0-7 bytes in at most three steps (decisions.md 54). Longer buffers
//! (frame bodies, checkpoint blocks) go to the crate, whose three
//! interleaved streams win from about 1 KiB.

/// Buffers shorter than this are summed word by word here; longer ones by
/// the crate's interleaved streams (crossover measured between 512 bytes and
/// 1 KiB: decisions.md 54).
const SHORT_MAX: usize = 768;

/// The CRC-32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// The CRC-32C of the bytes `crc` was computed over followed by `bytes`.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() < SHORT_MAX && std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { x86::append_short(crc, bytes) };
    }
    crc32c::crc32c_append(crc, bytes)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

    /// Word by word from wherever `bytes` starts (x86 loads need no
    /// alignment), then the tail as 4, 2 and 1 bytes.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn append_short(crc: u32, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
        let mut sum = u64::from(!crc);
        for word in &mut words {
            sum = _mm_crc32_u64(sum, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut sum = sum as u32;
        let mut tail = words.remainder();
        if let Some((four, rest)) = tail.split_first_chunk::<4>() {
            sum = _mm_crc32_u32(sum, u32::from_le_bytes(*four));
            tail = rest;
        }
        if let Some((two, rest)) = tail.split_first_chunk::<2>() {
            sum = _mm_crc32_u16(sum, u16::from_le_bytes(*two));
            tail = rest;
        }
        if let Some(&last) = tail.first() {
            sum = _mm_crc32_u8(sum, last);
        }
        !sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_value_is_castagnolis() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn every_length_and_alignment_sums_as_the_crate_does() {
        let bytes: Vec<u8> = (0..2 * SHORT_MAX + 16)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        for start in 0..8 {
            for len in 0..=2 * SHORT_MAX {
                let part = &bytes[start..start + len];
                assert_eq!(
                    crc32c(part),
                    crc32c::crc32c(part),
                    "start {start}, length {len}"
                );
            }
        }
    }

    #[test]
    fn appending_continues_a_sum() {
        let bytes: Vec<u8> = (0..1500u32).map(|i| (i * 31 + 7) as u8).collect();
        let whole = crc32c(&bytes);
        for cut in [0, 1, 7, 8, 100, 767, 768, 1499, 1500] {
            let (head, tail) = bytes.split_at(cut);
            assert_eq!(crc32c_append(crc32c(head), tail), whole, "cut at {cut}");
        }
    }
}
