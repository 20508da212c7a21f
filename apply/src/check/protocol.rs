//! Sync-check messages between the checker (with the source) and the
//! replica's check service (docs/protocol.md, "Sync-check").
//!
//! The framing is the control channel's: a 12-byte header
//! `[payload_bytes u32][kind u8][reserved 3 × 0][crc32c u32]` (the CRC over
//! bytes 4..8 and the payload) and a payload of little-endian fields. Byte
//! strings are a u32 length and the bytes, lists a u32 count and the items;
//! every count is checked against the bytes left before anything is
//! allocated for it, and a payload must be consumed exactly.

use super::digest::Hash;
use super::probe::ProbeOutcome;

pub const CHECK_HEADER_BYTES: usize = engine::protocol::CONTROL_HEADER_BYTES;
/// Largest payload: bucket record lists come in several replies of at most
/// `RECORDS_REPLY_BYTES`, so this bounds only what a peer may make us buffer.
pub const CHECK_PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// Target size of one `Records` reply.
pub const RECORDS_REPLY_BYTES: usize = 1 << 20;
/// Longest key or object name in a message (the journal's own limits are
/// lower).
const BYTES_MAX: usize = 1 << 16;

/// Checker to service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The replica's objects.
    Objects,
    /// Hash `object` into `2^bits` buckets; the service keeps the tree for
    /// `Nodes`.
    Digest { object: u64, bits: u32 },
    /// The 16 children of each node `indexes` at `depth` (0 = the root) of
    /// the tree of the last `Digest` of `object`.
    Nodes {
        object: u64,
        depth: u32,
        indexes: Vec<u64>,
    },
    /// The records of `buckets` (key and `record_digest`), by bucket then
    /// key, in `Records` replies until one says it is the last.
    Buckets {
        object: u64,
        bits: u32,
        buckets: Vec<u64>,
    },
    /// What the replica held at the probes `sequences` of journal
    /// `journal`; waits up to `timeout_ms` for apply to reach them.
    Probes {
        journal: u32,
        timeout_ms: u32,
        sequences: Vec<u64>,
    },
}

/// One record of a bucket list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRecord {
    pub bucket: u64,
    pub key: Vec<u8>,
    pub digest: Hash,
}

/// Service to checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Objects {
        objects: Vec<(u64, String)>,
    },
    Digest {
        records: u64,
        bytes: u64,
        root: Hash,
    },
    Nodes {
        hashes: Vec<Hash>,
    },
    Records {
        records: Vec<BucketRecord>,
        last: bool,
    },
    Probes {
        outcomes: Vec<ProbeOutcome>,
    },
    /// The request failed; the text carries its message ID.
    Error {
        message: String,
    },
}

/// Why a sync-check message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SCI0102E sync-check message refused: {0}")]
pub struct MessageError(pub String);

fn bad<T>(detail: impl Into<String>) -> Result<T, MessageError> {
    Err(MessageError(detail.into()))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn hash(&mut self, h: &Hash) {
        self.0.extend_from_slice(h);
    }
    fn u64s(&mut self, v: &[u64]) {
        self.u32(v.len() as u32);
        for &x in v {
            self.u64(x);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.buf.len() < n {
            return bad(format!("payload ends early (needs {n} more bytes)"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn hash(&mut self) -> Result<Hash, MessageError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], MessageError> {
        let n = self.u32()? as usize;
        if n > BYTES_MAX {
            return bad(format!(
                "a byte string of {n} bytes, the limit is {BYTES_MAX}"
            ));
        }
        self.take(n)
    }
    /// A list count, checked against the bytes left (`min` per item).
    fn count(&mut self, min: usize) -> Result<usize, MessageError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.buf.len() {
            return bad(format!("a list of {n} items does not fit in the payload"));
        }
        Ok(n)
    }
    fn u64s(&mut self) -> Result<Vec<u64>, MessageError> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn bits(&mut self) -> Result<u32, MessageError> {
        let bits = self.u32()?;
        if !super::digest::valid_bucket_bits(bits) {
            return bad(format!(
                "bucket bits {bits} is not a multiple of 4 in 8..=24"
            ));
        }
        Ok(bits)
    }
}

/// Frames the payload `body` writes with kind `kind` onto `out`.
fn frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Writer<'_>)) {
    engine::protocol::frame(out, kind, |out| body(&mut Writer(out)));
}

/// Decodes the message at the front of `buf` with `read` (given its kind),
/// which must consume the whole payload; `None` if `buf` holds only part of
/// one.
fn decode_one<T>(
    buf: &[u8],
    read: impl FnOnce(u8, &mut Reader<'_>) -> Result<T, MessageError>,
) -> Result<Option<(T, usize)>, MessageError> {
    let Some(framed) =
        engine::protocol::unframe(buf, CHECK_PAYLOAD_BYTES_MAX).map_err(MessageError)?
    else {
        return Ok(None);
    };
    let mut r = Reader {
        buf: framed.payload,
    };
    let message = read(framed.kind, &mut r)?;
    if !r.buf.is_empty() {
        return bad(format!("{} bytes left over after the payload", r.buf.len()));
    }
    Ok(Some((message, framed.used)))
}

impl Request {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Objects => frame(out, 1, |_| {}),
            Request::Digest { object, bits } => frame(out, 2, |w| {
                w.u64(*object);
                w.u32(*bits);
            }),
            Request::Nodes {
                object,
                depth,
                indexes,
            } => frame(out, 3, |w| {
                w.u64(*object);
                w.u32(*depth);
                w.u64s(indexes);
            }),
            Request::Buckets {
                object,
                bits,
                buckets,
            } => frame(out, 4, |w| {
                w.u64(*object);
                w.u32(*bits);
                w.u64s(buckets);
            }),
            Request::Probes {
                journal,
                timeout_ms,
                sequences,
            } => frame(out, 5, |w| {
                w.u32(*journal);
                w.u32(*timeout_ms);
                w.u64s(sequences);
            }),
        }
    }

    /// One request off the front of `buf`, with the bytes it took; `None`
    /// if `buf` holds only part of one.
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, MessageError> {
        decode_one(buf, |kind, r| {
            Ok(match kind {
                1 => Request::Objects,
                2 => Request::Digest {
                    object: r.u64()?,
                    bits: r.bits()?,
                },
                3 => Request::Nodes {
                    object: r.u64()?,
                    depth: r.u32()?,
                    indexes: r.u64s()?,
                },
                4 => Request::Buckets {
                    object: r.u64()?,
                    bits: r.bits()?,
                    buckets: r.u64s()?,
                },
                5 => Request::Probes {
                    journal: r.u32()?,
                    timeout_ms: r.u32()?,
                    sequences: r.u64s()?,
                },
                other => return bad(format!("unknown request kind {other}")),
            })
        })
    }
}

impl Reply {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Objects { objects } => frame(out, 65, |w| {
                w.u32(objects.len() as u32);
                for (id, name) in objects {
                    w.u64(*id);
                    w.bytes(name.as_bytes());
                }
            }),
            Reply::Digest {
                records,
                bytes,
                root,
            } => frame(out, 66, |w| {
                w.u64(*records);
                w.u64(*bytes);
                w.hash(root);
            }),
            Reply::Nodes { hashes } => frame(out, 67, |w| {
                w.u32(hashes.len() as u32);
                hashes.iter().for_each(|h| w.hash(h));
            }),
            Reply::Records { records, last } => frame(out, 68, |w| {
                w.u8(u8::from(*last));
                w.u32(records.len() as u32);
                for r in records {
                    w.u64(r.bucket);
                    w.bytes(&r.key);
                    w.hash(&r.digest);
                }
            }),
            Reply::Probes { outcomes } => frame(out, 69, |w| {
                w.u32(outcomes.len() as u32);
                for o in outcomes {
                    match o {
                        ProbeOutcome::Absent => w.u8(0),
                        ProbeOutcome::Present(h) => {
                            w.u8(1);
                            w.hash(h);
                        }
                        ProbeOutcome::Reached => w.u8(2),
                    }
                }
            }),
            Reply::Error { message } => frame(out, 70, |w| w.bytes(message.as_bytes())),
        }
    }

    /// One reply off the front of `buf`, with the bytes it took; `None` if
    /// `buf` holds only part of one.
    pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, MessageError> {
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|_| MessageError("text is not UTF-8".into()))
        };
        decode_one(buf, |kind, r| {
            Ok(match kind {
                65 => {
                    let n = r.count(12)?;
                    let objects = (0..n)
                        .map(|_| Ok((r.u64()?, text(r.bytes()?)?)))
                        .collect::<Result<_, MessageError>>()?;
                    Reply::Objects { objects }
                }
                66 => Reply::Digest {
                    records: r.u64()?,
                    bytes: r.u64()?,
                    root: r.hash()?,
                },
                67 => {
                    let n = r.count(32)?;
                    Reply::Nodes {
                        hashes: (0..n).map(|_| r.hash()).collect::<Result<_, _>>()?,
                    }
                }
                68 => {
                    let last = match r.u8()? {
                        0 => false,
                        1 => true,
                        other => return bad(format!("last flag {other}")),
                    };
                    let n = r.count(44)?;
                    let records = (0..n)
                        .map(|_| {
                            Ok(BucketRecord {
                                bucket: r.u64()?,
                                key: r.bytes()?.to_vec(),
                                digest: r.hash()?,
                            })
                        })
                        .collect::<Result<_, MessageError>>()?;
                    Reply::Records { records, last }
                }
                69 => {
                    let n = r.count(1)?;
                    let outcomes = (0..n)
                        .map(|_| match r.u8()? {
                            0 => Ok(ProbeOutcome::Absent),
                            1 => Ok(ProbeOutcome::Present(r.hash()?)),
                            2 => Ok(ProbeOutcome::Reached),
                            other => bad(format!("probe outcome tag {other}")),
                        })
                        .collect::<Result<_, MessageError>>()?;
                    Reply::Probes { outcomes }
                }
                70 => Reply::Error {
                    message: text(r.bytes()?)?,
                },
                other => return bad(format!("unknown reply kind {other}")),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Objects,
            Request::Digest {
                object: 7,
                bits: 16,
            },
            Request::Nodes {
                object: 7,
                depth: 2,
                indexes: vec![0, 5, 255],
            },
            Request::Buckets {
                object: 7,
                bits: 8,
                buckets: vec![1, 2],
            },
            Request::Probes {
                journal: 1,
                timeout_ms: 5000,
                sequences: vec![10, 11],
            },
        ]
    }

    fn replies() -> Vec<Reply> {
        vec![
            Reply::Objects {
                objects: vec![(1, "ORDERS".into()), (2, "".into())],
            },
            Reply::Digest {
                records: 5,
                bytes: 500,
                root: [7; 32],
            },
            Reply::Nodes {
                hashes: vec![[1; 32], [2; 32]],
            },
            Reply::Records {
                records: vec![BucketRecord {
                    bucket: 3,
                    key: b"k".to_vec(),
                    digest: [9; 32],
                }],
                last: true,
            },
            Reply::Probes {
                outcomes: vec![
                    ProbeOutcome::Absent,
                    ProbeOutcome::Present([4; 32]),
                    ProbeOutcome::Reached,
                ],
            },
            Reply::Error {
                message: "SCI0121E no".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_damage_is_refused() {
        let mut all = Vec::new();
        for r in requests() {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(Request::decode(&buf).unwrap(), Some((r, buf.len())));
            assert_eq!(Request::decode(&buf[..buf.len() - 1]).unwrap(), None);
            all.push((buf, true));
        }
        for r in replies() {
            let mut buf = Vec::new();
            r.encode(&mut buf);
            assert_eq!(Reply::decode(&buf).unwrap(), Some((r, buf.len())));
            all.push((buf, false));
        }
        for (buf, is_request) in all {
            for i in 0..buf.len() {
                let mut bad = buf.clone();
                bad[i] ^= 0x10;
                let refused = if is_request {
                    Request::decode(&bad).map(|m| m.is_none()).unwrap_or(true)
                } else {
                    Reply::decode(&bad).map(|m| m.is_none()).unwrap_or(true)
                };
                assert!(refused, "a flip at byte {i} was accepted");
            }
        }
    }

    #[test]
    fn lengths_are_checked_before_anything_is_allocated() {
        let mut buf = Vec::new();
        Reply::Nodes { hashes: vec![] }.encode(&mut buf);
        // Claim four billion hashes in a 4-byte payload (checksum fixed up).
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = engine::checksum::crc32c_append(engine::checksum::crc32c(&buf[4..8]), &buf[12..]);
        buf[8..12].copy_from_slice(&crc.to_le_bytes());
        let err = Reply::decode(&buf).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let mut huge = vec![0u8; 12];
        huge[0..4].copy_from_slice(&(CHECK_PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(Reply::decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("limit"));
    }
}
