//! Deterministic workload data: keys and images derived from a few integers,
//! so a process that writes them and another that checks them agree without
//! sharing anything but the parameters. Used by `repljrn load`, the demo, the
//! benchmarks and crash tests.

/// Fills `out` with bytes determined by `(tag, index)`; cheap: each 8-byte
/// piece is the splitmix64 finalizer of the pair and its place, so pieces
/// are made independently of one another (and several at once). A serial
/// xorshift, each piece from the one before, took a tenth of replbench's
/// writer (decisions.md 107).
pub fn fill_image(tag: u64, index: u64, out: &mut [u8]) {
    let seed = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ 0x2545_F491_4F6C_DD1D;
    let piece = |i: usize| {
        let mut z = seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let whole = out.len() / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for (i, chunk) in (&mut chunks).enumerate() {
        chunk.copy_from_slice(&piece(i).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&piece(whole).to_le_bytes()[..n]);
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
