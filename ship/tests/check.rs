//! replcheck across real processes: a source store written through its
//! journal, replsend, replrecv and replapply (with its check service), then
//! replcheck: equal; after the replica is damaged, the differences named
//! (text and JSON, exit status 1); after --repair, equal again.

mod common;

use std::path::Path;
use std::process::Command;

use apply::{JournaledStore, Op, OpKind, ReplicaTables, SourceOptions, Store, TxnBatch, TxnMeta};
use common::*;

const CHECK: &str = env!("CARGO_BIN_EXE_replcheck");
const RECORDS: u64 = 20_000;

fn key(i: u64) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value of {i} ").repeat(6).into_bytes()
}

/// Runs replcheck; returns its exit status and stdout.
fn replcheck(pair: &Pair, port: u16, extra: &[&str]) -> (i32, String) {
    let out = Command::new(CHECK)
        .arg("--journal")
        .arg(pair.journal())
        .arg("--tables")
        .arg(pair.root.path().join("source"))
        .args(["--replica", &format!("127.0.0.1:{port}")])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "replcheck {extra:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// Changes the replica behind replapply's back (it must be stopped).
fn damage(replica: &Path, changed: u64, missing: u64) {
    let tables = ReplicaTables::open(replica).unwrap();
    let position = tables.applied_position();
    let mut batch = TxnBatch::new();
    let other = b"not what the source has".to_vec();
    let (changed, missing) = (key(changed), key(missing));
    batch.push(
        TxnMeta {
            journal: 0,
            commit_sequence: position.journal(0).applied,
            resume_from: position.journal(0).resume_from,
            commit_time_ns: 0,
        },
        [
            Op {
                kind: OpKind::Put,
                object_id: 1,
                sequence: 0,
                key: &changed,
                value: &other,
            },
            Op {
                kind: OpKind::Delete,
                object_id: 1,
                sequence: 0,
                key: &missing,
                value: &[],
            },
        ],
    );
    tables.apply(&batch.get(0)).unwrap();
    tables.checkpoint(&position).unwrap();
}

#[test]
fn replcheck_finds_names_and_repairs_differences_across_processes() {
    let seed = seed("replcheck");
    let mut rng = Rng(seed);
    let pair = Pair::new("auto", None, "", "");
    let port = free_port();
    pair.add_config(&format!(
        "\n[apply]\ncheckpoint_ms = 50\ncheck_listen = \"127.0.0.1:{port}\"\n"
    ));
    {
        let tables = Box::new(ReplicaTables::open(pair.root.path().join("source")).unwrap());
        let options = SourceOptions {
            journal: journal_options(),
            checkpoint_every: None,
        };
        let (source, _) = JournaledStore::open(&pair.journal(), options, tables).unwrap();
        source.create_object(1, "ORDERS").unwrap();
        for start in (0..RECORDS).step_by(1000) {
            let mut txn = source.begin().unwrap();
            for i in start..start + 1000 {
                txn.put(1, &key(i), &value(i)).unwrap();
            }
            txn.commit().unwrap();
        }
        source.checkpoint().unwrap();
    }
    let _recv = Proc::start(RECV, "replrecv", &pair.config);
    let _send = Proc::start(SEND, "replsend", &pair.config);
    let mut apply = Proc::start(APPLY, "replapply", &pair.config);

    let (status, json) = replcheck(&pair, port, &["--json"]);
    assert_eq!(status, 0, "equal stores: {json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["equal"], true);
    assert_eq!(report["records"], RECORDS);

    let changed = rng.below(RECORDS);
    let missing = (changed + 1 + rng.below(RECORDS - 1)) % RECORDS;
    terminate(&mut apply);
    damage(&pair.replica(), changed, missing);
    let mut apply = Proc::start(APPLY, "replapply", &pair.config);

    let (status, text) = replcheck(&pair, port, &[]);
    assert_eq!(status, 1, "seed {seed}: {text}");
    assert!(
        text.contains("SCI0003W 2 difference(s)"),
        "seed {seed}: {text}"
    );
    let line = |k: u64, kind: &str| {
        format!(
            "object 1 (ORDERS) key {:?}: {kind}",
            String::from_utf8(key(k)).unwrap()
        )
    };
    assert!(
        text.contains(&line(changed, "image differs")),
        "seed {seed}: {text}"
    );
    assert!(
        text.contains(&line(missing, "missing on replica")),
        "seed {seed}: {text}"
    );

    let (status, json) = replcheck(&pair, port, &["--repair", "--json"]);
    assert_eq!(status, 1, "the repairing check still reports what it found");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["repaired"], 2, "{json}");
    let (status, text) = replcheck(&pair, port, &[]);
    assert_eq!(status, 0, "seed {seed}: after repair: {text}");
    assert!(text.contains("SCI0002I replica equals source"));
    terminate(&mut apply);
}
