//! Fuzzes the replica tables' checkpoint decoder: the checkpoint of a
//! replica of a few records, cut at a point the input chooses and the rest
//! of the input put in its place; with an even first byte the header's
//! length and checksum are made to match, so the decoder past the checksum
//! is reached. Opening must never panic: it refuses with an error, or opens
//! tables whose every record reads back or fails with an error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use apply::{AppliedPosition, Op, OpKind, ReplicaTables, Store, TxnBatch, TxnMeta};
use libfuzzer_sys::fuzz_target;

/// Header: magic (8), body length (8), body checksum (4).
const HEADER_BYTES: usize = 20;

/// A replica made once: its directory (kept for the whole run) and its
/// checkpoint's bytes.
fn template() -> &'static (PathBuf, Vec<u8>) {
    static TEMPLATE: OnceLock<(PathBuf, Vec<u8>)> = OnceLock::new();
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
        for txn in batch.iter() {
            tables.apply(&txn).unwrap();
            position.advance(&txn.meta());
        }
        tables.checkpoint(&position).unwrap();
        let bytes = std::fs::read(dir.join("checkpoint")).unwrap();
        (dir, bytes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, tail)) = rest.split_first() else {
        return;
    };
    let (template_dir, template) = template();
    let mut bytes = template.clone();
    let at = (HEADER_BYTES + cut as usize * 2).min(bytes.len());
    bytes.truncate(at);
    bytes.extend_from_slice(&tail[..tail.len().min(64 * 1024)]);
    if mode % 2 == 0 && bytes.len() >= HEADER_BYTES {
        let body_len = (bytes.len() - HEADER_BYTES) as u64;
        let crc = crc32c::crc32c(&bytes[HEADER_BYTES..]);
        bytes[8..16].copy_from_slice(&body_len.to_le_bytes());
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    // A directory of its own (opening deletes data files the checkpoint
    // does not list), the template's data files linked into it.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(template_dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("data-") {
            std::fs::hard_link(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join("checkpoint"), &bytes).unwrap();
    if let Ok(tables) = ReplicaTables::open(dir.path()) {
        let _ = apply::contents(&tables);
        let _ = tables.mixed_until();
    }
});
