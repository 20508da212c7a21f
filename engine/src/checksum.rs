//! CRC-32C (Castagnoli): the checksum of every format here (journal entries
//! and segment headers, frames, protocol messages, replica records).
//!
//! Most of what is checked is short: an entry or a record of 100-200 bytes,
//! a header of 44-52. For those the `crc32c` crate's hardware path spends
//! more on getting to 8-byte alignment (a byte at a time on each side, three
//! cycles a byte) and on its call than on the words themselves, so short
//! buffers are summed here a word at a time from unaligned loads, with the
//! last 0-7 bytes in at most three steps (decisions.md 54), and from 72
//! bytes as three streams side by side (decisions.md 65). Longer buffers
//! (frame bodies, checkpoint blocks) are folded in 512-bit registers where
//! the CPU has AVX-512 and VPCLMULQDQ (decisions.md 90), and go to the
//! crate elsewhere, whose three interleaved streams win from about 1 KiB.

/// Buffers shorter than this are summed word by word here; longer ones
/// folded (`WIDE_MIN`) or by the crate's interleaved streams (crossover
/// measured between 512 bytes and 1 KiB: decisions.md 54).
const SHORT_MAX: usize = 768;

/// Short buffers from this length are summed as three interleaved streams
/// joined by carry-less multiplication; shorter ones in one chain
/// (decisions.md 65).
const THREE_STREAMS_MIN: usize = 72;

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
        if bytes.len() >= THREE_STREAMS_MIN && std::is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has SSE 4.2 and PCLMULQDQ, checked just above.
            return unsafe { x86::append_three(crc, bytes) };
        }
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { x86::append_short(crc, bytes) };
    }
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= WIDE_MIN
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("vpclmulqdq")
        && std::is_x86_feature_detected!("sse4.2")
        && std::is_x86_feature_detected!("pclmulqdq")
    {
        // SAFETY: the CPU has every feature `append_wide` enables, checked
        // just above.
        return unsafe { x86::append_wide(crc, bytes) };
    }
    crc32c::crc32c_append(crc, bytes)
}

/// Buffers from this length are folded 256 bytes a step by carry-less
/// multiplication over 512-bit registers where the CPU can (decisions.md
/// 90): at `SHORT_MAX`, the registers' first 256 bytes and two steps.
const WIDE_MIN: usize = SHORT_MAX;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m512i, _mm512_castsi128_si512, _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32,
        _mm512_loadu_si512, _mm512_mask_blend_epi64, _mm512_set_epi64, _mm512_ternarylogic_epi64,
        _mm512_xor_si512, _mm_clmulepi64_si128, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64,
        _mm_crc32_u8, _mm_cvtsi128_si64, _mm_cvtsi32_si128, _mm_cvtsi64_si128, _mm_extract_epi64,
        _mm_xor_si128,
    };

    /// The CRC-32C polynomial, bit-reflected (its x^0..x^31 terms).
    const POLY: u32 = 0x82F6_3B78;

    /// x^m mod P, bit-reflected (bit 31 - j holds x^j's coefficient).
    const fn x_pow_mod(m: u32) -> u32 {
        let mut value = 1u32 << 31;
        let mut i = 0;
        while i < m {
            value = (value >> 1) ^ if value & 1 == 1 { POLY } else { 0 };
            i += 1;
        }
        value
    }

    /// Words per stream a short buffer can have (`SHORT_MAX` / 24).
    const MAX_STREAM_WORDS: usize = super::SHORT_MAX / 24;

    /// `SHIFT[n]`: the multiplier that moves a sum past `8 * n` zero bytes
    /// (see `shift`), for every stream length and twice it.
    const SHIFT: [u32; 2 * MAX_STREAM_WORDS + 1] = {
        let mut table = [0u32; 2 * MAX_STREAM_WORDS + 1];
        let mut n = 1;
        while n < table.len() {
            table[n] = x_pow_mod(64 * n as u32 - 33);
            n += 1;
        }
        table
    };

    /// The sum `sum` becomes after `8 * words` zero bytes: s(x) x^(64 words)
    /// mod P. The carry-less product of two reflected 32-bit values is
    /// s(x) k(x) x in the reflected 64-bit order, and the CRC instruction
    /// on it from zero multiplies by x^32 and reduces, so k = x^(64 words
    /// - 33) mod P.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    fn shift(sum: u64, words: usize) -> u64 {
        let product = _mm_clmulepi64_si128(
            _mm_cvtsi64_si128(sum as i64),
            _mm_cvtsi64_si128(i64::from(SHIFT[words])),
            0,
        );
        _mm_crc32_u64(0, _mm_cvtsi128_si64(product) as u64)
    }

    /// Three equal runs of whole words summed side by side (the CRC
    /// instruction takes three cycles but can start one a cycle), the
    /// first from `crc` and the others from zero; CRC being linear, the
    /// sum of the whole is the first's moved past the other two, xor the
    /// second's moved past the third, xor the third's. The rest as in
    /// `append_short`.
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    pub(super) unsafe fn append_three(crc: u32, bytes: &[u8]) -> u32 {
        let words = bytes.len() / 24;
        debug_assert!((1..=MAX_STREAM_WORDS).contains(&words));
        let (streams, rest) = bytes.split_at(24 * words);
        let (first, others) = streams.split_at(8 * words);
        let (second, third) = others.split_at(8 * words);
        let word = |run: &[u8], i: usize| {
            u64::from_le_bytes(run[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        };
        let (mut a, mut b, mut c) = (u64::from(!crc), 0u64, 0u64);
        for i in 0..words {
            a = _mm_crc32_u64(a, word(first, i));
            b = _mm_crc32_u64(b, word(second, i));
            c = _mm_crc32_u64(c, word(third, i));
        }
        let sum = shift(a, 2 * words) ^ shift(b, words) ^ c;
        // SAFETY: the caller's CPU has SSE 4.2 (this function's own
        // requirement).
        unsafe { append_words(sum, rest) }
    }

    /// The multipliers that move a 16-byte block's sum `bits` further on,
    /// as one 128-bit lane: for its first eight bytes (the higher powers,
    /// in the reflected order) x^(bits + 64 - 33) mod P, for its last eight
    /// x^(bits - 33) mod P (the 33 as in `shift`).
    const fn fold_lane(bits: u32) -> [i64; 2] {
        [
            x_pow_mod(bits + 64 - 33) as i64,
            x_pow_mod(bits - 33) as i64,
        ]
    }

    /// Every lane moved on by the same multipliers (see `fold_lane`).
    #[target_feature(enable = "avx512f")]
    fn every_lane([first, last]: [i64; 2]) -> __m512i {
        _mm512_set_epi64(last, first, last, first, last, first, last, first)
    }

    /// The multipliers `append_wide` uses, computed at build time: one
    /// step (256 bytes), one register (64 bytes), and a register's first
    /// three blocks to its last (48, 32 and 16 bytes).
    const BY_STEP: [i64; 2] = fold_lane(256 * 8);
    const BY_REGISTER: [i64; 2] = fold_lane(64 * 8);
    const BY_48: [i64; 2] = fold_lane(48 * 8);
    const BY_32: [i64; 2] = fold_lane(32 * 8);
    const BY_16: [i64; 2] = fold_lane(16 * 8);

    /// `blocks`' sums moved on by the multipliers `k` (see `fold_lane`),
    /// xor `next`: a block's sum is linear in its bytes, so the product of
    /// each half with its power mod P (under 96 bits, a block's width) sums
    /// the same as the block would at the later place.
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold(blocks: __m512i, k: __m512i, next: __m512i) -> __m512i {
        let first = _mm512_clmulepi64_epi128(blocks, k, 0x00);
        let last = _mm512_clmulepi64_epi128(blocks, k, 0x11);
        // a ^ b ^ c
        _mm512_ternarylogic_epi64(first, last, next, 0x96)
    }

    /// Long buffers: four 512-bit registers of sixteen 16-byte blocks, each
    /// block's sum moved on 256 bytes a step and xored into the block
    /// there; then the registers into one, its four blocks into the last,
    /// and that block summed by the CRC instruction from zero (the sum of
    /// everything before it is in it). The rest word by word.
    #[target_feature(enable = "sse4.2,pclmulqdq,avx512f,vpclmulqdq")]
    pub(super) unsafe fn append_wide(crc: u32, bytes: &[u8]) -> u32 {
        debug_assert!(bytes.len() >= 256);
        let load = |at: usize| -> __m512i {
            let chunk = &bytes[at..at + 64];
            // SAFETY: `chunk` is 64 readable bytes; the load needs no
            // alignment.
            unsafe { _mm512_loadu_si512(chunk.as_ptr().cast()) }
        };
        // The running sum enters as the first four bytes xored with it.
        let seed = _mm512_castsi128_si512(_mm_cvtsi32_si128(!crc as i32));
        let mut x = [
            _mm512_xor_si512(load(0), seed),
            load(64),
            load(128),
            load(192),
        ];
        let mut at = 256;
        let step = every_lane(BY_STEP);
        while at + 256 <= bytes.len() {
            for (i, reg) in x.iter_mut().enumerate() {
                *reg = fold(*reg, step, load(at + 64 * i));
            }
            at += 256;
        }
        let one = every_lane(BY_REGISTER);
        let mut acc = fold(fold(fold(x[0], one, x[1]), one, x[2]), one, x[3]);
        while at + 64 <= bytes.len() {
            acc = fold(acc, one, load(at));
            at += 64;
        }
        // The first three blocks moved on to the last (by 48, 32 and 16
        // bytes), which stays as it is.
        let ([a, b], [c, d], [e, f]) = (BY_48, BY_32, BY_16);
        let into_last = _mm512_set_epi64(0, 0, f, e, d, c, b, a);
        let moved = fold(acc, into_last, _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0));
        let all = _mm512_mask_blend_epi64(0b1100_0000, moved, acc);
        let last = _mm_xor_si128(
            _mm_xor_si128(
                _mm512_extracti32x4_epi32(all, 0),
                _mm512_extracti32x4_epi32(all, 1),
            ),
            _mm_xor_si128(
                _mm512_extracti32x4_epi32(all, 2),
                _mm512_extracti32x4_epi32(all, 3),
            ),
        );
        let sum = _mm_crc32_u64(0, _mm_extract_epi64(last, 0) as u64);
        let sum = _mm_crc32_u64(sum, _mm_extract_epi64(last, 1) as u64);
        // SAFETY: the caller's CPU has SSE 4.2 (this function's own
        // requirement).
        unsafe { append_words(sum, &bytes[at..]) }
    }

    /// Word by word from wherever `bytes` starts (x86 loads need no
    /// alignment), then the tail as 4, 2 and 1 bytes.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn append_short(crc: u32, bytes: &[u8]) -> u32 {
        // SAFETY: the caller's CPU has SSE 4.2.
        unsafe { append_words(u64::from(!crc), bytes) }
    }

    /// Continues the running (uninverted) `sum` over `bytes` and returns
    /// the finished checksum.
    #[target_feature(enable = "sse4.2")]
    unsafe fn append_words(mut sum: u64, bytes: &[u8]) -> u32 {
        let mut words = bytes.chunks_exact(8);
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

    /// Long buffers: every count of 256-byte steps, 64-byte blocks and
    /// trailing bytes up to a few steps, at alignments across a 64-byte
    /// line, each continuing a sum of its own.
    #[test]
    fn long_buffers_sum_as_the_crate_does() {
        let bytes: Vec<u8> = (0..4200u32)
            .map(|i| i.wrapping_mul(2_246_822_519).to_le_bytes()[2])
            .collect();
        for start in [0, 1, 7, 8, 31, 63] {
            for len in (WIDE_MIN..=4096)
                .step_by(13)
                .chain([WIDE_MIN, 1024, 1025, 4096])
            {
                let part = &bytes[start..start + len];
                let seed = (len as u32).wrapping_mul(0x9E37_79B9);
                assert_eq!(
                    crc32c_append(seed, part),
                    crc32c::crc32c_append(seed, part),
                    "start {start}, length {len}"
                );
            }
        }
    }

    #[test]
    fn appending_continues_a_sum() {
        let bytes: Vec<u8> = (0..1500u32).map(|i| (i * 31 + 7) as u8).collect();
        let whole = crc32c(&bytes);
        for cut in [0, 1, 7, 8, 100, 767, 768, 1300, 1400, 1499, 1500] {
            let (head, tail) = bytes.split_at(cut);
            assert_eq!(crc32c_append(crc32c(head), tail), whole, "cut at {cut}");
        }
    }
}
