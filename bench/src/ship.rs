//! Shipping figures: journal to durably staged on the backup, over loopback,
//! sender and receiver in this process (their own threads, the real code
//! paths and sockets); and the raw-TCP baseline that moves the same bytes
//! with plain writes and reads.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::replbench::stages::record_lag;
use engine::journal::{Durability, Journal, JournalOptions, NewEntry, PositionFile};
use engine::trace::{monotonic_ns, StageClock, StageEvent};
use ship::config::Config;
use ship::receiver::ReceiverStatus;
use ship::sender::SenderStatus;

/// Key and image sizes that make each entry exactly 100 bytes on the journal
/// (56-byte header + 8-byte key + 36-byte image; 104 with padding).
pub const KEY_BYTES: usize = 8;
pub const IMAGE_BYTES: usize = 36;

/// Fills a fresh journal in `dir` with `entries` 100-byte entries; returns
/// the position after the last.
pub fn fill_journal(dir: &Path, entries: u64) -> anyhow::Result<u64> {
    let journal = Journal::open(
        dir,
        JournalOptions {
            durability: Durability::None,
            ..JournalOptions::default()
        },
    )?;
    journal.append(&NewEntry::create_object(1, "BENCH"))?;
    let mut w = journal.appender();
    let image = engine::workload::image(1, 0, IMAGE_BYTES);
    let mut batch_keys: Vec<[u8; KEY_BYTES]> = Vec::with_capacity(1000);
    let mut i = 0;
    while i < entries {
        let n = (entries - i).min(1000);
        batch_keys.clear();
        batch_keys.extend((i..i + n).map(u64::to_le_bytes));
        let batch: Vec<NewEntry<'_>> = batch_keys
            .iter()
            .map(|k| NewEntry::put(1, k, &image))
            .collect();
        w.append_batch(&batch)?;
        i += n;
    }
    journal.flush()?;
    Ok(journal.next_sequence())
}

/// A configuration for a pair in `root` (journal in `root/journal`) staging
/// under `staging`.
pub fn config(root: &Path, staging: &Path, compression: &str, io: &str) -> anyhow::Result<Config> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let text = format!(
        "group = \"BENCH\"\n[primary]\nnode = \"p\"\njournal = \"journal\"\n\
         [backup]\nnode = \"b\"\nlisten = \"127.0.0.1:{port}\"\nstaging = \"{}\"\n\
         [transport]\nio = \"{io}\"\ncompression = \"{compression}\"\n\
         frame_entries = 16384\nframe_bytes = \"4MiB\"\nwindow = \"64MiB\"\n",
        staging.display()
    );
    let path = root.join("pair.toml");
    std::fs::write(&path, text)?;
    Ok(Config::load(&path)?)
}

/// A running pair (receiver and sender threads) until dropped.
#[derive(Debug)]
pub struct RunningPair {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    pub received: Arc<ReceiverStatus>,
    pub sent: Arc<SenderStatus>,
}

impl RunningPair {
    /// Starts a receiver and a sender; with `clocks`, their stage clocks
    /// record (when frames were sent, when syncs made them durable).
    pub fn start(config: &Config, clocks: bool) -> RunningPair {
        let stop = Arc::new(AtomicBool::new(false));
        let clock = || match clocks {
            true => StageClock::recording(),
            false => StageClock::default(),
        };
        let received = Arc::new(ReceiverStatus {
            staged_at: clock(),
            ..ReceiverStatus::default()
        });
        let sent = Arc::new(SenderStatus {
            scraped_at: clock(),
            sent_at: clock(),
            ..SenderStatus::default()
        });
        let mut threads = Vec::new();
        {
            let (config, stop, status) = (config.clone(), Arc::clone(&stop), Arc::clone(&received));
            threads.push(
                std::thread::Builder::new()
                    .name("receiver".into())
                    .spawn(move || ship::receiver::run(&config, &stop, &status))
                    .expect("spawn the receiver thread"),
            );
        }
        // Wait until the receiver listens, so the sender's first connect works.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !received.listening.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        {
            let (config, stop, status) = (config.clone(), Arc::clone(&stop), Arc::clone(&sent));
            threads.push(
                std::thread::Builder::new()
                    .name("sender".into())
                    .spawn(move || ship::sender::run(&config, &stop, &status))
                    .expect("spawn the sender thread"),
            );
        }
        RunningPair {
            stop,
            threads,
            received,
            sent,
        }
    }

    /// Waits until everything below `position` is durably staged.
    pub fn wait_durable(&self, position: u64, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.received.durable.load(Ordering::Relaxed) < position {
            anyhow::ensure!(
                start.elapsed() < limit,
                "staged {} of {position} in {limit:?}",
                self.received.durable.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("pair thread panicked")?;
        }
        Ok(())
    }
}

/// One shipping run: a pre-filled journal of `entries` shipped and staged.
#[derive(Clone, Copy, Debug)]
pub struct ShipFigure {
    pub entries: u64,
    pub journal_bytes: u64,
    pub staged_bytes: u64,
    pub secs: f64,
}

impl ShipFigure {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.secs
    }
}

/// Bytes of the frames staged in `dir` (segments made ahead end in zeros,
/// so file sizes overstate it): read back through a `StagingReader`.
fn staged_frame_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut reader = engine::staging::StagingReader::open(dir, 1)?;
    let (mut bytes, mut frame) = (0u64, Vec::new());
    while reader.next(&mut frame)?.is_some() {
        bytes += frame.len() as u64;
    }
    Ok(bytes)
}

/// Ships the journal in `root/journal` (filled by `fill_journal`, ending at
/// `end`) to a fresh staging store, from sender start to durably staged.
pub fn ship(
    root: &Path,
    staging: &Path,
    end: u64,
    compression: &str,
    io: &str,
) -> anyhow::Result<ShipFigure> {
    let _ = std::fs::remove_dir_all(staging);
    let _ = std::fs::remove_file(root.join("journal").join("acked-b.pos"));
    let config = config(root, staging, compression, io)?;
    let start = Instant::now();
    let pair = RunningPair::start(&config, false);
    pair.wait_durable(end, Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    pair.stop()?;
    Ok(ShipFigure {
        entries: end - 1,
        journal_bytes: published_bytes(&root.join("journal"))?,
        staged_bytes: staged_frame_bytes(&config.staging_dir())?,
        secs,
    })
}

/// Bytes of published entries in the journal (segments are preallocated,
/// so file sizes overstate it): read through the scraper.
pub fn published_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut scraper = scraper::Scraper::open(dir, scraper::ScrapeOptions::default())?;
    let mut bytes = 0u64;
    loop {
        let batch = scraper.next_batch(Duration::ZERO)?;
        if batch.is_empty() {
            return Ok(bytes);
        }
        bytes += batch.iter().map(|e| e.padded_bytes() as u64).sum::<u64>();
    }
}

/// The raw baseline: the journal's published entry bytes sent over one
/// loopback TCP connection with plain 1 MiB writes, read with plain reads
/// and discarded. Returns the seconds it took.
pub fn raw_tcp(root: &Path) -> anyhow::Result<f64> {
    Ok(raw_tcp_journal(&root.join("journal"), usize::MAX)?.1)
}

/// `raw_tcp` for the journal in `dir`, of its first `limit` bytes at most
/// (the payload is held in memory): (bytes sent, seconds).
pub fn raw_tcp_journal(dir: &Path, limit: usize) -> anyhow::Result<(u64, f64)> {
    let mut payload = Vec::new();
    let mut scraper = scraper::Scraper::open(dir, scraper::ScrapeOptions::default())?;
    while payload.len() < limit {
        let batch = scraper.next_batch(Duration::ZERO)?;
        if batch.is_empty() {
            break;
        }
        for e in batch.iter() {
            payload.extend_from_slice(e.as_bytes());
            payload.resize(payload.len().next_multiple_of(8), 0);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let total = payload.len();
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(address)?;
    for chunk in payload.chunks(1 << 20) {
        s.write_all(chunk)?;
    }
    drop(s);
    let got = reader.join().expect("reader panicked")?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(got == total, "raw baseline moved {got} of {total} bytes");
    Ok((total as u64, secs))
}

/// Append-to-staged latency at an offered rate: a writer appends
/// `rate_per_sec` entries per second in 1 ms batches for `warmup`, then
/// for `duration` measured; each batch's latency is from its append to the
/// first sync that covers it. As in production's steady state, the writer
/// purges what the backup acknowledged and staging is purged as an apply
/// that keeps up would let it (once a second: apply's default checkpoint
/// interval until decisions.md 94 made it 3 s, kept here so that the
/// figures compare across sessions), so both sides reuse their segments'
/// files (decisions.md 34, 35); staging segments are the journal's size
/// (64 MiB), so the run rotates through several.
pub fn latency(
    root: &Path,
    staging: &Path,
    rate_per_sec: u64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LatencyFigure> {
    let journal = Journal::open(
        root.join("journal"),
        JournalOptions {
            durability: Durability::None,
            ..JournalOptions::default()
        },
    )?;
    journal.append(&NewEntry::create_object(1, "BENCH"))?;
    let mut config = config(root, staging, "none", "auto")?;
    config.backup.segment_bytes = 64 << 20;
    // The pair's stage clocks note when each frame went to the socket and
    // when each sync made frames durable, on the threads that did it (a
    // thread polling the positions would wake ~10 000 times a second on
    // the two cores it measures, and add its polling interval).
    let pair = RunningPair::start(&config, true);
    pair.wait_durable(journal.next_sequence(), Duration::from_secs(30))?;
    let events = |clock: &StageClock| clock.take().0;
    events(&pair.received.staged_at);
    events(&pair.sent.sent_at);
    events(&pair.sent.scraped_at);
    let mut applied =
        PositionFile::open_path(config.staging_dir().join(ship::receiver::APPLIED_FILE))?;
    let mut from = None;
    let per_batch = (rate_per_sec / 1000).max(1);
    let image = engine::workload::image(2, 0, IMAGE_BYTES);
    let mut w = journal.appender();
    let mut appended: Vec<StageEvent> = Vec::new();
    let start = Instant::now();
    let mut tick = 0u64;
    let mut keys: Vec<[u8; 8]> = Vec::new();
    while start.elapsed() < warmup + duration {
        // Sleep, not spin: on 2 cores a spinning writer would take a core
        // from the pair it is measuring.
        let due = start + Duration::from_millis(tick);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        keys.clear();
        keys.extend((0..per_batch).map(|i| (tick * per_batch + i).to_le_bytes()));
        let batch: Vec<NewEntry<'_>> = keys.iter().map(|k| NewEntry::put(1, k, &image)).collect();
        let range = w.append_batch(&batch)?;
        if start.elapsed() >= warmup {
            from.get_or_insert(range.start);
            appended.push(StageEvent {
                lane: 0,
                position: range.end,
                time_ns: monotonic_ns(),
            });
        }
        tick += 1;
        if tick.is_multiple_of(1000) {
            applied.store(pair.received.durable.load(Ordering::Relaxed))?;
        }
    }
    let from = from.unwrap_or(journal.next_sequence());
    pair.wait_durable(journal.next_sequence(), Duration::from_secs(30))?;
    let (staged_seen, sent_seen, scraped_seen) = (
        events(&pair.received.staged_at),
        events(&pair.sent.sent_at),
        events(&pair.sent.scraped_at),
    );
    pair.stop()?;
    let lag = |passed: &[StageEvent]| -> anyhow::Result<hdrhistogram::Histogram<u64>> {
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
        record_lag(&mut histogram, from, &appended, passed)?;
        Ok(histogram)
    };
    Ok(LatencyFigure {
        staged: lag(&staged_seen)?,
        sent: lag(&sent_seen)?,
        scraped: lag(&scraped_seen)?,
    })
}

/// Append-to-stage latencies of one run, in microseconds.
#[derive(Debug)]
pub struct LatencyFigure {
    /// Until the sender's scraper took the entry from the journal.
    pub scraped: hdrhistogram::Histogram<u64>,
    /// Until the frame holding the entry was handed to the socket.
    pub sent: hdrhistogram::Histogram<u64>,
    /// Until the backup had it durably staged.
    pub staged: hdrhistogram::Histogram<u64>,
}
