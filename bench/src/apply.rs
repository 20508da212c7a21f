//! Apply figures: committed transactions into a store, with 1 and 2 workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apply::{ApplyOptions, Op, OpKind, ParallelApply, Store, TxnBatch, TxnMeta};

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Every key of the key space equally likely.
    Uniform,
    /// P(key k) proportional to 1/(k+1) (Zipf with s = 1, drawn as
    /// floor(n^u) - 1 for uniform u): a few keys take most updates.
    Zipf,
}

/// A workload: `entries` puts of `image_bytes`-byte images over `key_space`
/// keys of one object, in transactions of `txn_entries`.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub entries: u64,
    pub txn_entries: u64,
    pub key_space: u64,
    pub keys: Keys,
    pub image_bytes: usize,
}

/// Transactions of `workload` in batches of about 64 k entries, the first
/// batch creating the object.
pub fn batches(w: &Workload, seed: u64) -> Vec<TxnBatch> {
    let mut x = seed | 1;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut image = vec![0u8; w.image_bytes];
    let mut out = Vec::new();
    let mut batch = TxnBatch::new();
    let mut sequence = 1;
    let meta = |commit_sequence: u64| TxnMeta {
        journal: 0,
        commit_sequence,
        resume_from: commit_sequence + 1,
        commit_time_ns: 0,
    };
    batch.push(
        meta(sequence),
        [Op {
            kind: OpKind::Create,
            object_id: 1,
            sequence,
            key: b"BENCH",
            value: &[],
        }],
    );
    let mut done = 0;
    let mut keys: Vec<[u8; 16]> = Vec::new();
    while done < w.entries {
        let n = w.txn_entries.min(w.entries - done);
        keys.clear();
        for _ in 0..n {
            let k = match w.keys {
                Keys::Uniform => rand() % w.key_space,
                Keys::Zipf => {
                    let u = (rand() >> 11) as f64 / (1u64 << 53) as f64;
                    ((w.key_space as f64).powf(u) as u64).saturating_sub(1) % w.key_space
                }
            };
            keys.push(engine::workload::key(1, k));
        }
        engine::workload::fill_image(1, done, &mut image);
        let first = sequence + 1;
        sequence += n + 1;
        let ops = keys.iter().enumerate().map(|(i, k)| Op {
            kind: OpKind::Put,
            object_id: 1,
            sequence: first + i as u64,
            key: k,
            value: &image,
        });
        batch.push(meta(sequence), ops);
        done += n;
        if batch.op_count() >= 64 * 1024 {
            out.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Applies `batches` to `store` with `workers` workers; the time from the
/// first submit until everything is applied (no checkpoint).
pub fn apply(
    store: Arc<dyn Store>,
    batches: &[TxnBatch],
    workers: usize,
) -> anyhow::Result<Duration> {
    let mut apply = ParallelApply::new(
        store,
        &ApplyOptions {
            workers,
            ..ApplyOptions::default()
        },
    );
    let start = Instant::now();
    for b in batches {
        apply.submit(b)?;
    }
    apply.finish()?;
    Ok(start.elapsed())
}
