//! Sync-check: proves that a replica equals its source (issue 5).
//!
//! Both sides hash each object into a BLAKE3 Merkle tree over key buckets
//! (`digest`); the trees are compared from the root down, only into the
//! nodes that differ, down to the keys of the buckets that differ.

mod compare;
mod digest;
mod probe;
mod protocol;
mod service;

pub use compare::{
    check, show_key, CheckError, CheckOptions, Mismatch, MismatchKind, Progress, Report,
};
pub use digest::{
    bucket_bits, bucket_of, record_digest, record_order, valid_bucket_bits, Hash, ObjectDigest,
    FANOUT, FANOUT_BITS, MAX_BUCKET_BITS, MIN_BUCKET_BITS,
};
pub use probe::{ProbeLog, ProbeOutcome};
pub use protocol::{
    BucketRecord, MessageError, Reply, Request, CHECK_HEADER_BYTES, CHECK_PAYLOAD_BYTES_MAX,
};
pub use service::{CheckService, LocalPeer, Peer, PeerError, Session, TcpPeer};
