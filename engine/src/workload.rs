//! Deterministic workload data: keys and images derived from a few integers,
//! so a process that writes them and another that checks them agree without
//! sharing anything but the parameters. Used by `repljrn load`, the demo, the
//! benchmarks and crash tests.

/// Fills `out` with bytes determined by `(tag, index)`; cheap (xorshift).
pub fn fill_image(tag: u64, index: u64, out: &mut [u8]) {
    let mut x =
        (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// The image for `(tag, index)` of `len` bytes.
pub fn image(tag: u64, index: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    fill_image(tag, index, &mut out);
    out
}

/// A 16-byte key naming `(tag, index)`; sorts by tag, then index.
pub fn key(tag: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&tag.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The `(tag, index)` a `key` names, if it is one.
pub fn parse_key(key: &[u8]) -> Option<(u64, u64)> {
    let k: [u8; 16] = key.try_into().ok()?;
    Some((
        u64::from_be_bytes(k[..8].try_into().unwrap()),
        u64::from_be_bytes(k[8..].try_into().unwrap()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_distinct() {
        assert_eq!(image(1, 2, 100), image(1, 2, 100));
        assert_ne!(image(1, 2, 100), image(1, 3, 100));
        assert_ne!(image(1, 2, 100), image(2, 2, 100));
        assert_eq!(image(1, 2, 13), image(1, 2, 100)[..13]);
        assert_eq!(parse_key(&key(7, 9)), Some((7, 9)));
    }
}
