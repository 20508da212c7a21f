//! Criterion benches of the journal hot paths at a size that runs in seconds;
//! `journalbench` produces the full-size figures of docs/PERFORMANCE.md.

use std::time::Duration;

use apply::{AppliedPosition, Assembler, TxnBatch};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::frame::{Codec, FrameDecoder, FrameEncoder};
use engine::journal::entry::{decode, encode_to_vec};
use engine::journal::{Durability, Entry, NewEntry};
use scraper::{ScrapeOptions, Scraper};

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
    // What a sender's producer does with them: each batch (the product's
    // frame limits) encoded as an uncompressed frame.
    group.bench_function("1M-entries-framed", |b| {
        let mut encoder = FrameEncoder::new(Codec::None).unwrap();
        let mut out = Vec::new();
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let started = std::time::Instant::now();
                    let mut scraper = Scraper::open(dir.path(), ScrapeOptions::default()).unwrap();
                    let mut start = 1;
                    loop {
                        let batch = scraper.next_batch(Duration::ZERO).unwrap();
                        if batch.is_empty() {
                            break started.elapsed();
                        }
                        let next = batch.next_sequence();
                        out.clear();
                        encoder
                            .encode(1, start, next, batch.iter(), &mut out)
                            .unwrap();
                        start = next;
                    }
                })
                .sum()
        })
    });
    group.finish();
}

/// Entries encoded one after another, as a journal segment or a frame
/// holds them.
#[derive(Default)]
struct Encoded {
    bytes: Vec<u8>,
    at: Vec<usize>,
    one: Vec<u8>,
}

impl Encoded {
    fn push(&mut self, entry: &NewEntry<'_>, sequence: u64, timestamp_ns: u64) {
        self.at.push(self.bytes.len());
        encode_to_vec(entry, sequence, timestamp_ns, &mut self.one);
        self.bytes.extend_from_slice(&self.one);
    }

    fn entries(&self) -> Vec<Entry<'_>> {
        self.at
            .iter()
            .map(|&i| decode(&self.bytes[i..]).unwrap())
            .collect()
    }
}

/// A sender's frame: 4096 entries of 100-byte images (the product's frame
/// size) encoded uncompressed, against copying the same bytes once; and
/// the same frame decoded and read as the backup does.
fn frame(c: &mut Criterion) {
    const FRAME_ENTRIES: u64 = 4096;
    let image = [7u8; 100];
    let mut encoded = Encoded::default();
    for sequence in 1..=FRAME_ENTRIES {
        let key = sequence.to_be_bytes();
        encoded.push(&NewEntry::put(1, &key, &image), sequence, 0);
    }
    let entries = encoded.entries();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(encoded.bytes.len() as u64));
    let mut encoder = FrameEncoder::new(Codec::None).unwrap();
    let mut out = Vec::new();
    group.bench_function("encode-4096x100B", |b| {
        b.iter(|| {
            encoder
                .encode(7, 1, FRAME_ENTRIES + 1, entries.iter().copied(), &mut out)
                .unwrap()
        })
    });
    let mut copy = Vec::new();
    group.bench_function("memcpy-same-bytes", |b| {
        b.iter(|| {
            copy.clear();
            copy.extend_from_slice(std::hint::black_box(&encoded.bytes));
        })
    });
    // The backup's side: every check of the same frame, then each entry's
    // sequence and key read as apply's assembler reads them.
    encoder
        .encode(7, 1, FRAME_ENTRIES + 1, entries.iter().copied(), &mut out)
        .unwrap();
    let mut decoder = FrameDecoder::new().unwrap();
    group.bench_function("decode-4096x100B", |b| {
        b.iter(|| {
            let decoded = decoder.decode(&out).unwrap();
            decoded
                .entries()
                .map(|e| e.sequence() + e.key().len() as u64)
                .sum::<u64>()
        })
    });
    group.finish();
}

/// Apply's staging reader after the decode: 10 000 transactions of ten
/// changes (16-byte keys, 100-byte images, a fifth updates and a tenth
/// deletes, as replbench's default) and their commits through the
/// assembler, into batches of 16 Ki changes handed on and cleared as
/// `apply::run`'s read loop does.
fn assemble(c: &mut Criterion) {
    const TXNS: u64 = 10_000;
    let image = [7u8; 100];
    let mut encoded = Encoded::default();
    let mut sequence = 0;
    for cycle in 1..=TXNS {
        for i in 0..10u64 {
            sequence += 1;
            let key = [(cycle * 10 + i).to_be_bytes(), [0; 8]].concat();
            let entry = match i {
                0 => NewEntry::delete(1 + i % 4, &key, None),
                1 | 2 => NewEntry::update(1 + i % 4, &key, &image, None),
                _ => NewEntry::put(1 + i % 4, &key, &image),
            };
            encoded.push(&entry.in_cycle(cycle), sequence, sequence);
        }
        sequence += 1;
        encoded.push(&NewEntry::commit(cycle), sequence, sequence);
    }
    let entries = encoded.entries();
    let mut group = c.benchmark_group("assemble");
    group
        .throughput(Throughput::Elements(entries.len() as u64))
        .sample_size(20);
    let (mut batch, mut handed) = (TxnBatch::new(), TxnBatch::new());
    group.bench_function("100k-changes-10-per-txn", |b| {
        b.iter(|| {
            let mut assembler = Assembler::new(&AppliedPosition::default());
            let mut txns = 0;
            for entry in &entries {
                assembler.push(0, entry, &mut batch).unwrap();
                if batch.op_count() >= 16 * 1024 {
                    batch.swap_committed(&mut handed);
                    txns += handed.len();
                    handed.clear();
                }
            }
            txns += batch.len();
            batch.clear();
            assert_eq!(txns as u64, TXNS);
        })
    });
    group.finish();
}

/// CRC-32C over header- and entry-sized buffers (52, 150, 300 bytes)
/// starting at each of the eight alignments in turn: `engine::checksum`
/// against the `crc32c` crate it replaces for short buffers (decisions.md
/// 54), sums independent of each other and (chained) each continuing the
/// last, which measures one sum's latency (decisions.md 65); and 4 KiB
/// and 512 KiB (a frame's size), where the engine folds in 512-bit
/// registers if the CPU can (decisions.md 90).
fn checksum(c: &mut Criterion) {
    let bytes: Vec<u8> = (0..320u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut group = c.benchmark_group("checksum");
    for len in [52, 150, 300] {
        group.throughput(Throughput::Bytes(8 * len as u64));
        group.bench_function(format!("engine-8x{len}B"), |b| {
            b.iter(|| {
                (0..8).fold(0, |acc, start| {
                    acc ^ engine::checksum::crc32c(std::hint::black_box(&bytes[start..start + len]))
                })
            })
        });
        group.bench_function(format!("engine-chained-8x{len}B"), |b| {
            b.iter(|| {
                (0..8).fold(0, |acc, start| {
                    engine::checksum::crc32c_append(
                        acc,
                        std::hint::black_box(&bytes[start..start + len]),
                    )
                })
            })
        });
        group.bench_function(format!("crate-8x{len}B"), |b| {
            b.iter(|| {
                (0..8).fold(0, |acc, start| {
                    acc ^ crc32c::crc32c(std::hint::black_box(&bytes[start..start + len]))
                })
            })
        });
    }
    // Frame bodies and checkpoint blocks: the folding path where the CPU
    // has it (decisions.md 90) against the crate's three streams.
    let long: Vec<u8> = (0..(512u32 << 10) + 64)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    for len in [4 << 10, 512 << 10] {
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("engine-{}KiB", len >> 10), |b| {
            b.iter(|| engine::checksum::crc32c(std::hint::black_box(&long[1..1 + len])))
        });
        group.bench_function(format!("crate-{}KiB", len >> 10), |b| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(&long[1..1 + len])))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = append, scrape, frame, assemble, checksum
}
criterion_main!(benches);
