//! The checker: compares the source's tables with a replica, object by
//! object, from the Merkle roots down to the keys, and confirms each
//! difference with probes pinned in the journal (decisions.md 24).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scraper::ObjectSelector;

use super::digest::{bucket_bits, bucket_records, Hash, ObjectDigest, FANOUT};
use super::probe::ProbeOutcome;
use super::protocol::{BucketRecord, Reply, Request};
use super::service::{Peer, PeerError};
use crate::source::{JournaledStore, SourceError};
use crate::store::{Store, StoreError};

/// Inner nodes asked for in one `Nodes` request (their children fill at
/// most 2 MiB).
const NODES_PER_REQUEST: usize = 4096;
/// Buckets asked for in one `Buckets` request.
const BUCKETS_PER_REQUEST: usize = 65536;
/// Records probed at once.
const PROBES_PER_ROUND: usize = 10_000;

/// How a check runs.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// The index of the source's journal in the replica's group.
    pub journal: u32,
    /// Journal a correction for every difference found.
    pub repair: bool,
    /// How long the replica may take to apply up to a probe.
    pub probe_timeout: Duration,
    /// The objects compared, by name on each side (a group with several
    /// journals checks each source's own objects).
    pub objects: ObjectSelector,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            journal: 0,
            repair: false,
            probe_timeout: Duration::from_secs(60),
            objects: ObjectSelector::all(),
        }
    }
}

/// How a record or object differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MismatchKind {
    /// The source has the record, the replica does not.
    MissingOnReplica,
    /// The replica has a record the source does not.
    ExtraOnReplica,
    /// Both have the record, with different images.
    ImageDiffers,
    ObjectMissingOnReplica,
    ObjectExtraOnReplica,
    ObjectNameDiffers,
}

impl MismatchKind {
    /// A difference of a whole object (its existence or name), not of one
    /// record.
    pub fn is_object_level(self) -> bool {
        matches!(
            self,
            MismatchKind::ObjectMissingOnReplica
                | MismatchKind::ObjectExtraOnReplica
                | MismatchKind::ObjectNameDiffers
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            MismatchKind::MissingOnReplica => "missing on replica",
            MismatchKind::ExtraOnReplica => "extra on replica",
            MismatchKind::ImageDiffers => "image differs",
            MismatchKind::ObjectMissingOnReplica => "object missing on replica",
            MismatchKind::ObjectExtraOnReplica => "object extra on replica",
            MismatchKind::ObjectNameDiffers => "object name differs",
        }
    }
}

/// One confirmed difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub object_id: u64,
    /// The object's name on the source (on the replica for an extra one).
    pub object: String,
    /// The record's key (empty for object-level differences).
    pub key: Vec<u8>,
    pub kind: MismatchKind,
    /// The sequence of the journaled correction, when repaired.
    pub repair_sequence: Option<u64>,
}

/// What a check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Objects compared, and the source's records and their key and value
    /// bytes hashed.
    pub objects: u64,
    pub records: u64,
    pub bytes: u64,
    /// Confirmed differences, by object and key.
    pub mismatches: Vec<Mismatch>,
    /// Records whose digests differed but that the probes found equal:
    /// changes in flight while the trees were hashed.
    pub in_flight: u64,
    /// Corrections journaled (`CheckOptions::repair`).
    pub repaired: u64,
    /// Bytes sent and received between checker and replica.
    pub exchanged_bytes: u64,
    /// The journal sequence of the barrier the check started at.
    pub position: u64,
    pub duration: Duration,
}

impl Report {
    pub fn is_equal(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Where a long check is (for a progress display).
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// Hashing object `index` of `of` on both sides.
    Hashing {
        object: &'a str,
        records: u64,
        index: usize,
        of: usize,
    },
    /// Confirming `candidates` differing records with probes.
    Confirming { object: &'a str, candidates: usize },
}

/// A progress line: "hashing object X (2/4); 1200 records checked so far".
impl std::fmt::Display for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Hashing {
                object,
                records,
                index,
                of,
            } => write!(
                f,
                "hashing object {object} ({}/{of}); {records} records checked so far",
                index + 1
            ),
            Progress::Confirming { object, candidates } => write!(
                f,
                "object {object}: confirming {candidates} differing record(s) with probes"
            ),
        }
    }
}

/// Why a check could not finish.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("SCI0105E source store: {0}")]
    Source(#[from] SourceError),
    #[error("SCI0105E source store: {0}")]
    Store(#[from] StoreError),
    #[error("SCI0104E the replica answered {request} with {got}")]
    Unexpected { request: &'static str, got: String },
}

fn reply_error(request: &'static str, reply: Reply) -> CheckError {
    match reply {
        Reply::Error { message } => PeerError::Replica(message).into(),
        other => CheckError::Unexpected {
            request,
            got: format!("{other:?}").chars().take(200).collect(),
        },
    }
}

/// Sends a request that has one reply.
fn call_one(peer: &mut dyn Peer, request: &Request) -> Result<Reply, CheckError> {
    let mut replies = peer.call(request)?;
    match replies.len() {
        1 => Ok(replies.pop().expect("one reply")),
        n => Err(CheckError::Unexpected {
            request: "a request",
            got: format!("{n} replies"),
        }),
    }
}

/// Compares `source` with the replica behind `peer`.
///
/// A barrier probe is journaled first and the check waits until the
/// replica has applied it, so the replica is at least as far as the source
/// was. Both sides then hash each object; trees that differ are descended
/// to the buckets that differ and their key lists compared. Each differing
/// record is then probed: an S-CK entry journaled with what the source
/// holds for it at that point, which the replica's apply evaluates at the
/// same point of its ordered stream. Only a record the probe still finds
/// different is reported, so changes in flight are never false alarms.
pub fn check(
    source: &JournaledStore,
    peer: &mut dyn Peer,
    options: &CheckOptions,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Report, CheckError> {
    let started = Instant::now();
    let mut report = Report {
        position: barrier(source, peer, options)?,
        ..Report::default()
    };
    tracing::info!(
        "SCI0001I sync-check of {} started at journal sequence {}",
        source.journal_dir().display(),
        report.position
    );
    let objects = object_differences(source, peer, options, &mut report)?;
    for (index, (&object_id, name)) in objects.iter().enumerate() {
        progress(&Progress::Hashing {
            object: name,
            records: report.records,
            index,
            of: objects.len(),
        });
        let candidates = object_candidates(source.store(), peer, object_id, &mut report)?;
        report.objects += 1;
        if candidates.is_empty() {
            continue;
        }
        progress(&Progress::Confirming {
            object: name,
            candidates: candidates.len(),
        });
        confirm(
            source,
            peer,
            options,
            object_id,
            name,
            &candidates,
            &mut report,
        )?;
    }
    if options.repair {
        repair(source, &mut report)?;
    }
    report.exchanged_bytes = peer.exchanged();
    report.duration = started.elapsed();
    if report.is_equal() {
        tracing::info!(
            "SCI0002I sync-check: replica equals source: {} objects, {} records in {:.1} s",
            report.objects,
            report.records,
            report.duration.as_secs_f64()
        );
    } else {
        tracing::warn!(
            "SCI0003W sync-check: {} difference(s) between source and replica ({} objects, {} records checked)",
            report.mismatches.len(),
            report.objects,
            report.records
        );
    }
    Ok(report)
}

/// Journals a barrier and waits until the replica has applied it; returns
/// its sequence.
fn barrier(
    source: &JournaledStore,
    peer: &mut dyn Peer,
    options: &CheckOptions,
) -> Result<u64, CheckError> {
    let (sequence, _) = source.probe(&[(0, b"")])?[0];
    let outcomes = probe_replica(peer, options, &[sequence])?;
    match outcomes.as_slice() {
        [ProbeOutcome::Reached] => Ok(sequence),
        other => Err(CheckError::Unexpected {
            request: "a barrier",
            got: format!("{other:?}"),
        }),
    }
}

fn probe_replica(
    peer: &mut dyn Peer,
    options: &CheckOptions,
    sequences: &[u64],
) -> Result<Vec<ProbeOutcome>, CheckError> {
    let timeout_ms = options.probe_timeout.as_millis().min(u32::MAX as u128) as u32;
    match call_one(
        peer,
        &Request::Probes {
            journal: options.journal,
            timeout_ms,
            sequences: sequences.to_vec(),
        },
    )? {
        Reply::Probes { outcomes } if outcomes.len() == sequences.len() => Ok(outcomes),
        other => Err(reply_error("Probes", other)),
    }
}

fn replica_objects(peer: &mut dyn Peer) -> Result<BTreeMap<u64, String>, CheckError> {
    match call_one(peer, &Request::Objects)? {
        Reply::Objects { objects } => Ok(objects.into_iter().collect()),
        other => Err(reply_error("Objects", other)),
    }
}

/// Compares the object lists; returns the objects both sides have.
/// An object-level difference is reported only if it is still there after
/// a second barrier (object changes in flight settle by then).
fn object_differences(
    source: &JournaledStore,
    peer: &mut dyn Peer,
    options: &CheckOptions,
    report: &mut Report,
) -> Result<BTreeMap<u64, String>, CheckError> {
    let differences = |peer: &mut dyn Peer| -> Result<_, CheckError> {
        let ours: BTreeMap<u64, String> = source
            .store()
            .objects()?
            .into_iter()
            .filter(|o| options.objects.selects(&o.name))
            .map(|o| (o.object_id, o.name))
            .collect();
        let mut theirs = replica_objects(peer)?;
        theirs.retain(|_, name| options.objects.selects(name));
        let mut found = Vec::new();
        for (id, name) in &ours {
            match theirs.get(id) {
                None => found.push((*id, name.clone(), MismatchKind::ObjectMissingOnReplica)),
                Some(n) if n != name => {
                    found.push((*id, name.clone(), MismatchKind::ObjectNameDiffers))
                }
                Some(_) => {}
            }
        }
        for (id, name) in &theirs {
            if !ours.contains_key(id) {
                found.push((*id, name.clone(), MismatchKind::ObjectExtraOnReplica));
            }
        }
        let both = ours
            .into_iter()
            .filter(|(id, _)| theirs.contains_key(id))
            .collect::<BTreeMap<_, _>>();
        Ok((found, both))
    };
    let (first, mut both) = differences(peer)?;
    if !first.is_empty() {
        barrier(source, peer, options)?;
        let (second, now) = differences(peer)?;
        both = now;
        for d in second.into_iter().filter(|d| first.contains(d)) {
            report.mismatches.push(Mismatch {
                object_id: d.0,
                object: d.1,
                key: Vec::new(),
                kind: d.2,
                repair_sequence: None,
            });
        }
    }
    Ok(both)
}

/// A record whose digests differ: (key, source's, replica's).
type Candidate = (Vec<u8>, Option<Hash>, Option<Hash>);

/// Hashes `object_id` on both sides and returns the records whose digests
/// differ.
fn object_candidates(
    store: &dyn Store,
    peer: &mut dyn Peer,
    object_id: u64,
    report: &mut Report,
) -> Result<Vec<Candidate>, CheckError> {
    let bits = bucket_bits(store.record_count(object_id)?);
    let ours = ObjectDigest::compute(store, object_id, bits)?;
    report.records += ours.records;
    report.bytes += ours.bytes;
    let root = match call_one(
        peer,
        &Request::Digest {
            object: object_id,
            bits,
        },
    )? {
        Reply::Digest { root, .. } => root,
        other => return Err(reply_error("Digest", other)),
    };
    if root == ours.root() {
        return Ok(Vec::new());
    }
    // Down the tree, level by level, only into nodes that differ.
    let mut differing = vec![0u64];
    for depth in 0..ours.depth() {
        let mut below = Vec::new();
        for indexes in differing.chunks(NODES_PER_REQUEST) {
            let hashes = match call_one(
                peer,
                &Request::Nodes {
                    object: object_id,
                    depth: depth as u32,
                    indexes: indexes.to_vec(),
                },
            )? {
                Reply::Nodes { hashes } if hashes.len() == indexes.len() * FANOUT => hashes,
                other => return Err(reply_error("Nodes", other)),
            };
            for (j, &i) in indexes.iter().enumerate() {
                let mine = ours.children(depth, i).expect("an inner node");
                let theirs = &hashes[j * FANOUT..(j + 1) * FANOUT];
                below.extend(
                    (0..FANOUT as u64)
                        .filter(|&c| mine[c as usize] != theirs[c as usize])
                        .map(|c| i * FANOUT as u64 + c),
                );
            }
        }
        differing = below;
    }
    // The differing buckets' key lists, both sides.
    let mut theirs = Vec::new();
    for buckets in differing.chunks(BUCKETS_PER_REQUEST) {
        for reply in peer.call(&Request::Buckets {
            object: object_id,
            bits,
            buckets: buckets.to_vec(),
        })? {
            match reply {
                Reply::Records { records, .. } => theirs.extend(records),
                other => return Err(reply_error("Buckets", other)),
            }
        }
    }
    let mine = bucket_records(store, object_id, bits, &differing)?;
    theirs.sort_unstable_by(|a, b| (a.bucket, &a.key).cmp(&(b.bucket, &b.key)));
    Ok(differing_records(mine, theirs))
}

/// Merges two key lists sorted by (bucket, key) into the records that
/// differ.
fn differing_records(mine: Vec<BucketRecord>, theirs: Vec<BucketRecord>) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut theirs = theirs.into_iter().peekable();
    for m in mine {
        while let Some(t) = theirs.next_if(|t| (t.bucket, &t.key) < (m.bucket, &m.key)) {
            out.push((t.key, None, Some(t.digest)));
        }
        match theirs.next_if(|t| (t.bucket, &t.key) == (m.bucket, &m.key)) {
            Some(t) if t.digest == m.digest => {}
            Some(t) => out.push((m.key, Some(m.digest), Some(t.digest))),
            None => out.push((m.key, Some(m.digest), None)),
        }
    }
    out.extend(theirs.map(|t| (t.key, None, Some(t.digest))));
    out
}

/// Probes each candidate; those still different are mismatches.
fn confirm(
    source: &JournaledStore,
    peer: &mut dyn Peer,
    options: &CheckOptions,
    object_id: u64,
    name: &str,
    candidates: &[Candidate],
    report: &mut Report,
) -> Result<(), CheckError> {
    for round in candidates.chunks(PROBES_PER_ROUND) {
        let records: Vec<(u64, &[u8])> = round
            .iter()
            .map(|(key, _, _)| (object_id, key.as_slice()))
            .collect();
        let ours = source.probe(&records)?;
        let sequences: Vec<u64> = ours.iter().map(|&(s, _)| s).collect();
        let theirs = probe_replica(peer, options, &sequences)?;
        for (((key, _, _), (_, mine)), their) in round.iter().zip(&ours).zip(&theirs) {
            let kind = match (mine, their) {
                (a, b) if a == b => {
                    report.in_flight += 1;
                    continue;
                }
                (ProbeOutcome::Present(_), ProbeOutcome::Absent) => MismatchKind::MissingOnReplica,
                (ProbeOutcome::Absent, ProbeOutcome::Present(_)) => MismatchKind::ExtraOnReplica,
                (ProbeOutcome::Present(_), ProbeOutcome::Present(_)) => MismatchKind::ImageDiffers,
                (a, b) => {
                    return Err(CheckError::Unexpected {
                        request: "a record probe",
                        got: format!("{b:?} (source: {a:?})"),
                    })
                }
            };
            report.mismatches.push(Mismatch {
                object_id,
                object: name.to_owned(),
                key: key.clone(),
                kind,
                repair_sequence: None,
            });
        }
    }
    Ok(())
}

/// Journals the source's record for every record-level mismatch: an
/// ordinary R-PT or R-DL, applied on the replica in order with everything
/// else. Object-level differences are left to the operator.
fn repair(source: &JournaledStore, report: &mut Report) -> Result<(), CheckError> {
    for m in &mut report.mismatches {
        if m.kind.is_object_level() {
            tracing::warn!(
                "SCI0131W object {} ({}): {}: not repaired by sync-check; recreate or drop it on the replica",
                m.object_id,
                m.object,
                m.kind.label()
            );
            continue;
        }
        let (sequence, put) = source.repair(m.object_id, &m.key)?;
        m.repair_sequence = Some(sequence);
        report.repaired += 1;
        tracing::info!(
            "SCI0130I repaired object {} ({}) key {}: {} journaled at sequence {sequence} ({})",
            m.object_id,
            m.object,
            show_key(&m.key),
            if put { "R-PT" } else { "R-DL" },
            m.kind.label()
        );
    }
    Ok(())
}

/// A key for messages: UTF-8 text as is, anything else in hex.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(bucket: u64, key: &str, d: u8) -> BucketRecord {
        BucketRecord {
            bucket,
            key: key.as_bytes().to_vec(),
            digest: [d; 32],
        }
    }

    #[test]
    fn merged_lists_give_each_kind_of_difference() {
        let mine = vec![
            rec(1, "a", 1),
            rec(1, "b", 2),
            rec(2, "c", 3),
            rec(3, "z", 9),
        ];
        let theirs = vec![
            rec(0, "q", 5),
            rec(1, "b", 7),
            rec(2, "c", 3),
            rec(2, "d", 4),
        ];
        let got = differing_records(mine, theirs);
        let keys: Vec<(&[u8], bool, bool)> = got
            .iter()
            .map(|(k, m, t)| (k.as_slice(), m.is_some(), t.is_some()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (&b"q"[..], false, true),
                (b"a", true, false),
                (b"b", true, true),
                (b"d", false, true),
                (b"z", true, false),
            ]
        );
    }
}
