//! Fuzzes the replica tables' checkpoint decoders: a replica of a few
//! records whose checkpoint lists a whole index and a delta after it
//! (decisions.md 75). One of the three files (by the first byte) is cut at
//! a point the input chooses and the rest of the input put in its place;
//! with an even first byte the header's length and checksum are made to
//! match (for an index file, the checkpoint's listing of it too), so the
//! decoder past the checksums is reached. Opening must never panic: it
//! refuses with an error, or opens tables whose every record reads back
//! or fails with an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use apply::{AppliedPosition, Op, OpKind, ReplicaTables, Store, TxnBatch, TxnMeta};
use libfuzzer_sys::fuzz_target;

/// Header: magic (8), body length (8), body checksum (4).
const HEADER_BYTES: usize = 20;

/// Bytes of the checkpoint's listing of an index file (number 8, delta 1,
/// bytes 8, checksum 4), the last two at its end, whole index first.
const LISTING_BYTES: usize = 21;

/// The files fuzzed: the checkpoint, then the index files it lists.
const FILES: [&str; 3] = [
    "checkpoint",
    "index-0000000000000001",
    "index-0000000000000002",
];

/// A replica made once: its directory (kept for the whole run).
fn template() -> &'static PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let tables = ReplicaTables::open(&dir).unwrap();
        let mut batch = TxnBatch::new();
        let meta = |commit_sequence| TxnMeta {
            journal: 0,
            commit_sequence,
            resume_from: commit_sequence + 1,
            commit_time_ns: 0,
        };
        let op = |kind, key: &'static [u8], value: &'static [u8]| Op {
            kind,
            object_id: 1,
            sequence: 1,
            key,
            value,
        };
        batch.push(meta(1), [op(OpKind::Create, b"T", b"")]);
        batch.push(
            meta(2),
            [op(OpKind::Put, b"a", b"1"), op(OpKind::Put, b"b", b"22")],
        );
        batch.push(meta(3), [op(OpKind::Put, &[b'k'; 40], b"long key")]);
        let mut position = AppliedPosition::new(1);
        for (i, txn) in batch.iter().enumerate() {
            tables.apply(&txn).unwrap();
            position.advance(&txn.meta());
            // The whole index after the first two, a delta after the last.
            if i >= 1 {
                tables.checkpoint(&position).unwrap();
            }
        }
        assert!(
            FILES.iter().all(|f| dir.join(f).exists()),
            "the template is not a whole index and a delta"
        );
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, tail)) = rest.split_first() else {
        return;
    };
    let template_dir = template();
    let target = (mode / 2 % 3) as usize;
    let mut bytes = std::fs::read(template_dir.join(FILES[target])).unwrap();
    let at = (HEADER_BYTES + cut as usize * 2).min(bytes.len());
    bytes.truncate(at);
    bytes.extend_from_slice(&tail[..tail.len().min(64 * 1024)]);
    let mut root = std::fs::read(template_dir.join(FILES[0])).unwrap();
    if mode % 2 == 0 && bytes.len() >= HEADER_BYTES {
        let crc = fix_header(&mut bytes);
        if target > 0 {
            let listing = root.len() - (3 - target) * LISTING_BYTES;
            root[listing + 9..listing + 17].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            root[listing + 17..listing + 21].copy_from_slice(&crc.to_le_bytes());
            fix_header(&mut root);
        }
    }
    // A directory of its own (opening deletes data and index files the
    // checkpoint does not list), the template's other files linked into it.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(template_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("data-") || (name.starts_with("index-") && name != FILES[target]) {
            std::fs::hard_link(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    match target {
        0 => std::fs::write(dir.path().join(FILES[0]), &bytes).unwrap(),
        _ => {
            std::fs::write(dir.path().join(FILES[target]), &bytes).unwrap();
            std::fs::write(dir.path().join(FILES[0]), &root).unwrap();
        }
    }
    if let Ok(tables) = ReplicaTables::open(dir.path()) {
        let _ = apply::contents(&tables);
        let _ = tables.mixed_until();
    }
});

/// Makes the header's body length and checksum match the body; returns the
/// checksum.
fn fix_header(bytes: &mut [u8]) -> u32 {
    let body_len = (bytes.len() - HEADER_BYTES) as u64;
    let crc = crc32c::crc32c(&bytes[HEADER_BYTES..]);
    bytes[8..16].copy_from_slice(&body_len.to_le_bytes());
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    crc
}
