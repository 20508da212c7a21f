//! Digests of an object's records: a BLAKE3 Merkle tree over key buckets.
//!
//! A record's bucket is the low `bits` bits of its record hash
//! (`record_hash(object, key)`), the same on both sides. A leaf is the BLAKE3
//! hash of its bucket's records in (`record_order(hash)`, key) order: the
//! bit-reversed hash, the order the replica tables' index keeps its slots in
//! (decisions.md 32). Each record is framed as
//! `[key len u32][value len u32][key][value]` (little-endian): a defined
//! order inside the bucket makes the digest independent of the order records
//! were inserted in or are stored in, and hashing a bucket as one stream
//! lets BLAKE3 use its SIMD lanes (decisions.md 24). An inner node is the BLAKE3
//! hash of its 16 children's hashes; `bits` is a multiple of 4, so the tree
//! has `bits / 4` levels above the leaves and one root.

use super::protocol::BucketRecord;
use crate::store::{Store, StoreError};

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// Children per inner node, as a power of two.
pub const FANOUT_BITS: u32 = 4;
/// Children per inner node.
pub const FANOUT: usize = 1 << FANOUT_BITS;
/// Fewest and most bucket bits: 256 leaves to 16 M leaves.
pub const MIN_BUCKET_BITS: u32 = 8;
pub const MAX_BUCKET_BITS: u32 = 24;
/// Records per leaf the bucket count aims at: a leaf of about a thousand
/// 100-byte records is ~120 KiB, which BLAKE3 hashes 16 chunks at a time
/// all through; a leaf of a hundred leaves it a tail of a few chunks hashed
/// a few lanes wide (decisions.md 32).
const LEAF_RECORDS: u64 = 1024;

/// Bucket bits for an object of `records` records: about `LEAF_RECORDS`
/// per leaf, a multiple of `FANOUT_BITS`.
pub fn bucket_bits(records: u64) -> u32 {
    let leaves = (records / LEAF_RECORDS).max(1);
    let log2 = 63 - leaves.leading_zeros();
    (((log2 + FANOUT_BITS / 2) / FANOUT_BITS) * FANOUT_BITS).clamp(MIN_BUCKET_BITS, MAX_BUCKET_BITS)
}

/// Whether `bits` is a bucket count both sides accept.
pub fn valid_bucket_bits(bits: u32) -> bool {
    (MIN_BUCKET_BITS..=MAX_BUCKET_BITS).contains(&bits) && bits.is_multiple_of(FANOUT_BITS)
}

/// The bucket of a record with hash `hash`.
pub fn bucket_of(hash: u64, bits: u32) -> u64 {
    hash & ((1u64 << bits) - 1)
}

/// The order of records within a bucket (then by key, for equal hashes):
/// the record hash with its bits reversed. Sorting by it sorts by bucket
/// too, for every bucket count, since a bucket is the hash's low bits.
pub fn record_order(hash: u64) -> u64 {
    hash.reverse_bits()
}

/// Appends one record's framing to `out`.
fn frame_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// The digest of one record (the unit of a bucket's key list).
pub fn record_digest(key: &[u8], value: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(&(value.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

/// The key lists of `buckets` (ascending) of `object_id`: each record's
/// bucket, key and digest, sorted by (bucket, key). What both sides of a
/// check exchange for the buckets whose leaves differ.
pub fn bucket_records(
    store: &dyn Store,
    object_id: u64,
    bits: u32,
    buckets: &[u64],
) -> Result<Vec<BucketRecord>, StoreError> {
    let mut records = Vec::new();
    store.visit_buckets(object_id, bits, Some(buckets), &mut |hash, key, value| {
        let bucket = bucket_of(hash, bits);
        // A store gives only these buckets; the check costs nothing.
        if buckets.binary_search(&bucket).is_ok() {
            records.push(BucketRecord {
                bucket,
                key: key.to_vec(),
                digest: record_digest(key, value),
            });
        }
    })?;
    records.sort_unstable_by(|a, b| (a.bucket, &a.key).cmp(&(b.bucket, &b.key)));
    Ok(records)
}

/// An object's Merkle tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDigest {
    pub bits: u32,
    /// Records hashed, and their key and value bytes.
    pub records: u64,
    pub bytes: u64,
    /// `levels[0]` are the leaves, the last level is the root alone.
    levels: Vec<Vec<Hash>>,
}

impl ObjectDigest {
    /// Hashes every record of `object_id` in `store` into `2^bits` buckets.
    pub fn compute(
        store: &dyn Store,
        object_id: u64,
        bits: u32,
    ) -> Result<ObjectDigest, StoreError> {
        assert!(valid_bucket_bits(bits), "bucket bits {bits}");
        let mut leaves = LeafHasher::new(bits);
        let mut broken = None;
        store.visit_buckets(object_id, bits, None, &mut |hash, key, value| {
            if broken.is_none() {
                broken = leaves.push(hash, key, value).err();
            }
        })?;
        if let Some(bucket) = broken {
            return Err(StoreError::Database(format!(
                "SCI0120E the store gave the records of bucket {bucket} of object {object_id} apart or out of order; the digest would be wrong"
            )));
        }
        Ok(leaves.finish())
    }

    /// Levels above the leaves (the root's depth).
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    pub fn root(&self) -> Hash {
        self.levels.last().expect("a root")[0]
    }

    /// The children of node `index` at `depth` (0 is the root): 16 nodes
    /// at `depth + 1`, or `None` if there is no such node or it is a leaf.
    pub fn children(&self, depth: usize, index: u64) -> Option<&[Hash]> {
        if depth >= self.depth() {
            return None;
        }
        let below = &self.levels[self.depth() - depth - 1];
        let start = usize::try_from(index).ok()?.checked_mul(FANOUT)?;
        below.get(start..start + FANOUT)
    }

    /// The leaf of `bucket`.
    pub fn leaf(&self, bucket: u64) -> Option<&Hash> {
        self.levels[0].get(usize::try_from(bucket).ok()?)
    }
}

/// Builds the leaves from records that come bucket by bucket, in
/// (`record_order`, key) order within one.
#[derive(Debug)]
struct LeafHasher {
    bits: u32,
    leaves: Vec<Hash>,
    done: Vec<u64>,
    current: Option<u64>,
    /// The last record's hash, and where its key sits in `stream`.
    last: (u64, usize, usize),
    /// The current bucket's framed records.
    stream: Vec<u8>,
    count: u64,
    bytes: u64,
}

impl LeafHasher {
    fn new(bits: u32) -> LeafHasher {
        let n = 1usize << bits;
        LeafHasher {
            bits,
            leaves: vec![*blake3::hash(b"").as_bytes(); n],
            done: vec![0; n.div_ceil(64)],
            current: None,
            last: (0, 0, 0),
            stream: Vec::new(),
            count: 0,
            bytes: 0,
        }
    }

    /// Takes the next record (`hash` is its record hash); refuses, with
    /// the bucket, a bucket seen before or a record out of order.
    fn push(&mut self, hash: u64, key: &[u8], value: &[u8]) -> Result<(), u64> {
        let bucket = bucket_of(hash, self.bits);
        if self.current != Some(bucket) {
            self.close();
            let (word, bit) = ((bucket / 64) as usize, bucket % 64);
            if self.done[word] & (1 << bit) != 0 {
                return Err(bucket);
            }
            self.done[word] |= 1 << bit;
            self.current = Some(bucket);
        } else {
            let (last_hash, at, len) = self.last;
            if (record_order(last_hash), &self.stream[at..at + len]) >= (record_order(hash), key) {
                return Err(bucket);
            }
        }
        self.last = (hash, self.stream.len() + 8, key.len());
        frame_record(&mut self.stream, key, value);
        self.count += 1;
        self.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }

    /// Hashes the current bucket's records.
    fn close(&mut self) {
        let Some(bucket) = self.current.take() else {
            return;
        };
        self.leaves[bucket as usize] = *blake3::hash(&self.stream).as_bytes();
        self.stream.clear();
    }

    fn finish(mut self) -> ObjectDigest {
        self.close();
        let mut levels = vec![self.leaves];
        while levels.last().expect("leaves").len() > 1 {
            let up = levels
                .last()
                .expect("a level")
                .chunks(FANOUT)
                .map(|children| {
                    let mut hasher = blake3::Hasher::new();
                    for c in children {
                        hasher.update(c);
                    }
                    *hasher.finalize().as_bytes()
                })
                .collect();
            levels.push(up);
        }
        ObjectDigest {
            bits: self.bits,
            records: self.count,
            bytes: self.bytes,
            levels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bits_aim_at_a_thousand_records_per_leaf() {
        assert_eq!(bucket_bits(0), 8);
        assert_eq!(bucket_bits(1_000_000), 8);
        assert_eq!(bucket_bits(10_000_000), 12);
        assert_eq!(bucket_bits(100_000_000), 16);
        assert_eq!(bucket_bits(u64::MAX), 24);
        for r in [0, 1, 5000, 1 << 20, 1 << 30, u64::MAX] {
            assert!(valid_bucket_bits(bucket_bits(r)));
        }
    }

    #[test]
    fn a_bucket_given_apart_or_out_of_order_is_refused() {
        let mut h = LeafHasher::new(8);
        h.push(3, b"a", b"1").unwrap();
        h.push(3 + 256, b"a", b"1").unwrap();
        h.push(3 + 256, b"b", b"1").unwrap();
        assert_eq!(h.push(3 + 256, b"b", b"1"), Err(3), "a key twice");
        assert_eq!(h.push(3, b"z", b"1"), Err(3), "hash going back");
        h.push(4, b"b", b"1").unwrap();
        assert_eq!(h.push(3 + 512, b"c", b"1"), Err(3), "bucket 3 again");
    }

    #[test]
    fn a_leaf_hashes_content_and_framing() {
        let digest = |records: &[(u64, &[u8], &[u8])]| {
            let mut h = LeafHasher::new(8);
            for (hash, k, v) in records {
                h.push(7 | (hash.reverse_bits() & !0xff), k, v).unwrap();
            }
            h.finish()
        };
        let a = digest(&[(1, b"k1", b"v1"), (2, b"k2", b"v2")]);
        assert_eq!(a, digest(&[(1, b"k1", b"v1"), (2, b"k2", b"v2")]));
        assert_ne!(
            a.root(),
            digest(&[(1, b"k1", b"v1"), (2, b"k2", b"v3")]).root()
        );
        // Framing: moving a byte from key to value changes the digest.
        assert_ne!(
            a.root(),
            digest(&[(1, b"k", b"1v1"), (2, b"k2", b"v2")]).root()
        );
        assert_eq!(a.depth(), 2);
        assert_eq!(a.children(0, 0).unwrap().len(), FANOUT);
        assert!(a.children(2, 0).is_none());
        assert!(a.children(1, 16).is_none());
    }
}
