//! Measurements of the journal and scraper, shared by the `journalbench`
//! figures tool, the README demo and the criterion benches.
//!
//! Every figure is taken on the same workload: puts of a 16-byte key and a
//! 100-byte image (176 bytes in the journal), in commit cycles of
//! `CYCLE_ENTRIES` records closed by a commit entry, so "group commit" syncs
//! once per cycle and thread. Baselines (memcpy of the same bytes) are
//! measured in the same run so figures read as fractions of memory speed.

pub mod apply;
pub mod redb_store;
pub mod replbench;
pub mod ship;

/// A temporary directory in `dir`, or in the system's temp dir.
pub fn tempdir_in(dir: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    Ok(match dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    })
}

use std::path::Path;
use std::time::{Duration, Instant};

use engine::journal::{list_segments, Durability, Journal, JournalOptions, NewEntry};
use engine::workload;
use scraper::{ScrapeOptions, Scraper};

/// Records per commit cycle in the append workload.
pub const CYCLE_ENTRIES: u64 = 1000;
/// Pause between opening the journal and the first latency sample.
pub const LATENCY_SETTLE: Duration = Duration::from_millis(250);
/// Image size of the standard workload.
pub const IMAGE_BYTES: usize = 100;

/// What one append run did.
#[derive(Debug, Clone, Copy)]
pub struct AppendFigure {
    pub entries: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl AppendFigure {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn options(durability: Durability) -> JournalOptions {
    JournalOptions {
        durability,
        ..JournalOptions::default()
    }
}

/// Appends `entries` records (plus one commit per cycle) from `threads`
/// threads into a new journal in `dir`. `progress` is called now and then with
/// the number of records appended so far.
pub fn append(
    dir: &Path,
    durability: Durability,
    threads: u64,
    entries: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<AppendFigure> {
    let journal = Journal::open(dir, options(durability))?;
    journal.append(&NewEntry::create_object(1, "BENCH/T"))?;
    let done = std::sync::atomic::AtomicU64::new(0);
    let per_thread = entries / threads;
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (journal, done) = (&journal, &done);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut w = journal.appender();
                    let after = workload::image(t, 0, IMAGE_BYTES);
                    let mut cycle = t << 40;
                    for i in 0..per_thread {
                        if i % CYCLE_ENTRIES == 0 {
                            cycle += 1;
                        }
                        let key = workload::key(t, i);
                        w.append(&NewEntry::put(1, &key, &after).in_cycle(cycle))?;
                        if (i + 1) % CYCLE_ENTRIES == 0 {
                            w.append(&NewEntry::commit(cycle))?;
                            let total =
                                done.fetch_add(CYCLE_ENTRIES, std::sync::atomic::Ordering::Relaxed);
                            if t == 0 && total % (CYCLE_ENTRIES * 256) < CYCLE_ENTRIES * threads {
                                progress(total + CYCLE_ENTRIES);
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("append thread panicked")?;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let appended = per_thread * threads;
    progress(appended);
    Ok(AppendFigure {
        entries: appended,
        bytes: appended * NewEntry::put(1, &[0; 16], &[0; IMAGE_BYTES]).padded_bytes() as u64,
        elapsed,
    })
}

/// What one scrape run did.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeFigure {
    pub entries: u64,
    /// Journal bytes read (entries, padding included).
    pub bytes: u64,
    pub elapsed: Duration,
    /// memcpy of the same segment bytes out of the same maps, same run.
    pub memcpy_elapsed: Duration,
}

impl ScrapeFigure {
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
    pub fn memcpy_bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.memcpy_elapsed.as_secs_f64()
    }
}

/// Scrapes the whole journal in `dir` (already in page cache) and copies the
/// same bytes with memcpy as a baseline.
pub fn scrape(dir: &Path, progress: &dyn Fn(u64)) -> anyhow::Result<ScrapeFigure> {
    let mut scraper = Scraper::open(dir, ScrapeOptions::default())?;
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut checksum = 0u64;
    let started = Instant::now();
    loop {
        let batch = scraper.next_batch(Duration::ZERO)?;
        if batch.is_empty() {
            break;
        }
        for entry in batch.iter() {
            // Touch what a sender would: the header fields and the bytes.
            checksum = checksum
                .wrapping_add(entry.sequence() ^ entry.object_id() ^ entry.as_bytes().len() as u64);
            bytes += entry.padded_bytes() as u64;
        }
        entries += batch.len() as u64;
        if entries % (1 << 20) < batch.len() as u64 {
            progress(entries);
        }
    }
    let elapsed = started.elapsed();
    progress(entries);
    std::hint::black_box(checksum);
    let memcpy_elapsed = memcpy_segments(dir, bytes)?;
    Ok(ScrapeFigure {
        entries,
        bytes,
        elapsed,
        memcpy_elapsed,
    })
}

/// Time to memcpy the first `bytes` bytes of entries out of the segment maps
/// into a reused 4 MiB buffer: the memory-speed ceiling for a scrape.
fn memcpy_segments(dir: &Path, mut bytes: u64) -> anyhow::Result<Duration> {
    let maps = list_segments(dir)?
        .into_iter()
        .map(|(_, path)| {
            let file = std::fs::File::open(&path)?;
            // SAFETY: read-only map of a segment nobody writes during the bench.
            Ok(unsafe { memmap2::Mmap::map(&file)? })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut buffer = vec![0u8; 4 << 20];
    let started = Instant::now();
    for map in &maps {
        let source = &map[4096.min(map.len())..];
        for chunk in source.chunks(buffer.len()) {
            if bytes == 0 {
                break;
            }
            let n = chunk.len().min(bytes as usize);
            buffer[..n].copy_from_slice(&chunk[..n]);
            std::hint::black_box(&buffer);
            bytes -= n as u64;
        }
    }
    Ok(started.elapsed())
}

/// Append-to-scrape latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct LatencyFigure {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One writer appends `samples` entries at `rate_per_sec`; a scraper thread
/// follows the tail and records now minus each entry's journal timestamp.
/// Sampling starts `LATENCY_SETTLE` after the journal opens: opening prepares
/// the next segment in the background (a 64 MiB zero-fill that takes a core
/// for tens of milliseconds), a start-up cost, not the steady state measured.
pub fn latency(dir: &Path, samples: u64, rate_per_sec: u64) -> anyhow::Result<LatencyFigure> {
    let journal = Journal::open(dir, options(Durability::None))?;
    journal.append(&NewEntry::create_object(1, "BENCH/T"))?;
    std::thread::sleep(LATENCY_SETTLE);
    let start_from = journal.next_sequence();
    let empty = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let histogram = std::thread::scope(|s| -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        let reader = s.spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
            let mut h = empty;
            let mut scraper = Scraper::open(
                dir,
                ScrapeOptions {
                    from_sequence: start_from,
                    ..ScrapeOptions::default()
                },
            )?;
            let mut seen = 0;
            while seen < samples {
                let batch = scraper.next_batch(Duration::from_millis(100))?;
                let now = unix_ns();
                for entry in batch.iter() {
                    h.saturating_record(now.saturating_sub(entry.timestamp_ns()).max(1));
                }
                seen += batch.len() as u64;
            }
            Ok(h)
        });
        let mut w = journal.appender();
        let after = workload::image(0, 0, IMAGE_BYTES);
        let interval = Duration::from_nanos(1_000_000_000 / rate_per_sec.max(1));
        let started = Instant::now();
        for i in 0..samples {
            let due = started + interval * i as u32;
            while Instant::now() < due {
                std::thread::sleep(due - Instant::now());
            }
            w.append(&NewEntry::put(1, &workload::key(0, i), &after))?;
        }
        reader.join().expect("latency reader panicked")
    })?;
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(LatencyFigure {
        samples: histogram.len(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64 / 1000.0,
    })
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Median of `values` (which must not be empty): the middle one, or the
/// mean of the two middle ones for an even count.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n % 2 {
        1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smoke size of every measurement, so the benchmarks never rot.
    #[test]
    fn measurements_run_at_smoke_size() {
        let dir = tempfile::tempdir().unwrap();
        let appended = append(dir.path(), Durability::None, 2, 20_000, &|_| {}).unwrap();
        assert_eq!(appended.entries, 20_000);
        let scraped = scrape(dir.path(), &|_| {}).unwrap();
        // Records, their commits and the object create.
        assert_eq!(scraped.entries, 20_000 + 20 + 1);
        assert!(scraped.memcpy_elapsed > Duration::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let group = append(
            dir.path(),
            Durability::GroupCommit {
                max_delay: Duration::from_micros(100),
            },
            2,
            4_000,
            &|_| {},
        )
        .unwrap();
        assert_eq!(group.entries, 4_000);
        let dir = tempfile::tempdir().unwrap();
        let lat = latency(dir.path(), 200, 20_000).unwrap();
        assert_eq!(lat.samples, 200);
        assert!(lat.p50_us <= lat.p99_us && lat.p99_us <= lat.max_us);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 8.0]), 3.0);
        assert_eq!(median(&mut [5.0]), 5.0);
    }

    /// The apply workload gives the same replica in every store applybench
    /// compares, so the figures compare the same work.
    #[test]
    fn apply_baselines_end_in_the_same_state_as_replica_tables() {
        use std::sync::Arc;
        let root = tempfile::tempdir().unwrap();
        let workload = apply::Workload {
            entries: 20_000,
            txn_entries: 10,
            key_space: 5_000,
            keys: apply::Keys::Zipf,
            image_bytes: 100,
        };
        let input = apply::batches(&workload, 7);
        let stores: Vec<Arc<dyn ::apply::Store>> = vec![
            Arc::new(::apply::ReplicaTables::open(root.path().join("tables")).unwrap()),
            Arc::new(::apply::SqliteStore::open(root.path().join("replica.db")).unwrap()),
            Arc::new(redb_store::RedbStore::create(&root.path().join("replica.redb")).unwrap()),
        ];
        let mut states = Vec::new();
        for store in stores {
            apply::apply(store.clone(), &input, 2).unwrap();
            let contents = ::apply::contents(&*store).unwrap();
            assert!(contents.values().map(|(_, r)| r.len()).sum::<usize>() > 1000);
            states.push(contents);
        }
        assert!(states[0] == states[1], "SQLite differs from replica tables");
        assert!(states[0] == states[2], "redb differs from replica tables");
    }

    #[test]
    fn shipping_measurements_run_at_smoke_size() {
        let root = tempfile::tempdir().unwrap();
        let end = ship::fill_journal(&root.path().join("journal"), 20_000).unwrap();
        assert_eq!(end, 20_002);
        for (compression, io) in [("none", "uring"), ("zstd:1", "plain")] {
            if io == "uring" && engine::transport::UringDriver::probe().is_err() {
                continue;
            }
            let staging = root.path().join("staging");
            let figure = ship::ship(root.path(), &staging, end, compression, io).unwrap();
            assert_eq!(figure.entries, 20_001);
            assert_eq!(figure.journal_bytes, 20_000 * 104 + 64);
            assert!(figure.staged_bytes > 0);
        }
        assert!(ship::raw_tcp(root.path()).unwrap() > 0.0);
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        let figure = ship::latency(
            root.path(),
            &staging,
            20_000,
            Duration::from_millis(100),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(figure.staged.len() >= 2_000);
        assert!(figure.sent.value_at_quantile(0.5) <= figure.staged.value_at_quantile(0.5));
    }
}
