//! Criterion benches of the journal hot paths at a size that runs in seconds;
//! `journalbench` produces the full-size figures of docs/PERFORMANCE.md.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::journal::Durability;

const ENTRIES: u64 = 1_000_000;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .throughput(Throughput::Elements(ENTRIES))
        .sample_size(10);
    for threads in [1, 2] {
        group.bench_function(format!("{threads}-thread-none"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let dir = tempfile::tempdir().unwrap();
                        bench::append(dir.path(), Durability::None, threads, ENTRIES, &|_| {})
                            .unwrap()
                            .elapsed
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

fn scrape(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    bench::append(dir.path(), Durability::None, 1, ENTRIES, &|_| {}).unwrap();
    let mut group = c.benchmark_group("scrape");
    group
        .throughput(Throughput::Bytes(ENTRIES * 176))
        .sample_size(10);
    group.bench_function("1M-entries", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| bench::scrape(dir.path(), &|_| {}).unwrap().elapsed)
                .sum()
        })
    });
    group.bench_function("memcpy-same-bytes", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| bench::scrape(dir.path(), &|_| {}).unwrap().memcpy_elapsed)
                .sum()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = append, scrape
}
criterion_main!(benches);
