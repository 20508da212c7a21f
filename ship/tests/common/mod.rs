//! Helpers for the cross-process shipping tests: a journal writer, the
//! sender and receiver as real processes, and the byte-for-byte comparison
//! of staging against the journal.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::frame::FrameDecoder;
use engine::journal::{read_position_file, Durability, Journal, JournalOptions, NewEntry};
use engine::limits::SEGMENT_BYTES_MIN;
use engine::staging::{Staging, StagingOptions};

#[allow(unused_imports)] // each test binary uses its own part
pub use testkit::{seed, Rng};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pair's directories and configuration file.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
}

impl Pair {
    /// `extra` is appended to the `[transport]` table; `backup_extra` to `[backup]`.
    pub fn new(io: &str, connect: Option<u16>, transport_extra: &str, backup_extra: &str) -> Pair {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let connect = connect.map_or(String::new(), |p| format!("connect = \"127.0.0.1:{p}\"\n"));
        let text = format!(
            "group = \"TEST\"\n\n[primary]\nnode = \"prim\"\njournal = \"journal\"\n{connect}\n\
             [backup]\nnode = \"back\"\nlisten = \"127.0.0.1:{port}\"\nstaging = \"staging\"\nsegment = \"1MiB\"\n{backup_extra}\n\
             [transport]\nio = \"{io}\"\nframe_entries = 700\nheartbeat_ms = 200\ntimeout_ms = 3000\nreconnect_max_ms = 300\n{transport_extra}\n"
        );
        let config = root.path().join("pair.toml");
        std::fs::write(&config, text).unwrap();
        Pair { root, config, port }
    }
    pub fn journal(&self) -> PathBuf {
        self.root.path().join("journal")
    }
    pub fn staging(&self) -> PathBuf {
        self.root.path().join("staging/TEST/main")
    }
    /// The replica tables' directory (the [apply] default).
    pub fn replica(&self) -> PathBuf {
        self.root.path().join("staging/TEST.replica")
    }
    /// Appends `text` (a whole table, e.g. "[apply]\n...") to the configuration.
    pub fn add_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(text);
        std::fs::write(&self.config, config).unwrap();
    }
    pub fn acked(&self) -> u64 {
        read_position_file(&self.journal().join("acked-back.pos")).unwrap_or(0)
    }
}

pub fn journal_options() -> JournalOptions {
    JournalOptions {
        segment_bytes: SEGMENT_BYTES_MIN,
        durability: Durability::None,
        background_preallocation: false,
        ..JournalOptions::default()
    }
}

/// Appends `count` entries of assorted sizes and kinds (puts, updates with
/// before images, deletes, commit cycles), `per_burst` at a time with
/// `pause` between bursts.
pub fn write(journal: &Journal, count: u64, per_burst: u64, pause: Duration, tag: u64) {
    let mut w = journal.appender();
    let mut rng = Rng(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut i = 0;
    while i < count {
        for _ in 0..per_burst.min(count - i) {
            let key = (tag << 40 | i).to_le_bytes();
            let image: Vec<u8> = (0..20 + rng.below(160)).map(|_| rng.next() as u8).collect();
            let cycle = 1 + i / 10;
            let entry = match i % 10 {
                0..=5 => NewEntry::put(1, &key, &image).in_cycle(cycle),
                6 | 7 => NewEntry::update(1, &key, &image, Some(&image[..10])).in_cycle(cycle),
                8 => NewEntry::delete(1, &key, Some(&image[..5])).in_cycle(cycle),
                _ => NewEntry::commit(cycle),
            };
            w.append(&entry).unwrap();
            i += 1;
        }
        std::thread::sleep(pause);
    }
}

pub fn open_journal(pair: &Pair) -> Journal {
    let journal = Journal::open(pair.journal(), journal_options()).unwrap();
    if journal.next_sequence() == 1 {
        journal
            .append(&NewEntry::create_object(1, "ORDERS"))
            .unwrap();
    }
    journal
}

/// A replsend or replrecv process whose stderr is kept.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    name: &'static str,
}

impl Proc {
    pub fn start(binary: &'static str, name: &'static str, config: &Path) -> Proc {
        Proc::start_with(binary, name, config, |_| {})
    }

    pub fn start_with(
        binary: &'static str,
        name: &'static str,
        config: &Path,
        tweak: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut command);
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Proc { child, log, name }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

pub const SEND: &str = env!("CARGO_BIN_EXE_replsend");
pub const RECV: &str = env!("CARGO_BIN_EXE_replrecv");
pub const APPLY: &str = env!("CARGO_BIN_EXE_replapply");

/// The source's state: the journal applied by the serial reference.
pub fn source_state(journal: &Path) -> apply::Contents {
    let mut replica = apply::SerialReplica::new();
    for e in journal_entries(journal) {
        replica
            .apply(&engine::journal::decode(&e).unwrap())
            .unwrap();
    }
    replica.contents()
}

/// Asks a process to stop (SIGTERM) and waits for a clean exit.
pub fn terminate(proc: &mut Proc) {
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(proc.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{} exited with {status}", proc.name);
}

/// Waits until apply has recorded `target` as its applied position.
pub fn wait_applied(pair: &Pair, target: u64, limit: Duration) {
    let start = Instant::now();
    let file = pair.staging().join(apply::APPLIED_FILE);
    while read_position_file(&file).unwrap_or(0) < target {
        assert!(
            start.elapsed() < limit,
            "applied {:?} of {target} after {limit:?}",
            read_position_file(&file)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the backup has acknowledged everything the journal holds.
pub fn wait_acked(pair: &Pair, journal: &Journal, limit: Duration) {
    let target = journal.next_sequence();
    let start = Instant::now();
    while pair.acked() < target {
        assert!(
            start.elapsed() < limit,
            "acknowledged {} of {target} after {limit:?}",
            pair.acked()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every entry of the journal, as bytes, in order.
pub fn journal_entries(dir: &Path) -> Vec<Vec<u8>> {
    engine::journal::read_entries(dir, 1).unwrap()
}

/// Every entry staged, as bytes, in order; every frame checked again, and
/// the frames' positions contiguous from 1.
pub fn staged_entries(dir: &Path) -> Vec<Vec<u8>> {
    let (staging, _) = Staging::open(dir, StagingOptions::default()).unwrap();
    let mut decoder = FrameDecoder::new().unwrap();
    let mut out = Vec::new();
    let mut position = 1;
    for frame in staging.read_all().unwrap() {
        let decoded = decoder.decode(&frame).unwrap();
        assert_eq!(
            decoded.header.start_position, position,
            "staged frames are contiguous"
        );
        position = decoded.header.next_sequence;
        out.extend(decoded.entries().map(|e| e.as_bytes().to_vec()));
    }
    out
}

/// Staging equals the journal: every entry once, in order, byte for byte.
#[track_caller]
pub fn assert_staging_equals_journal(pair: &Pair) {
    let journal = journal_entries(&pair.journal());
    let staged = staged_entries(&pair.staging());
    if let Some(i) = (0..journal.len().min(staged.len())).find(|i| journal[*i] != staged[*i]) {
        panic!(
            "entry {i} of {} differs between staging and the journal",
            journal.len()
        );
    }
    assert_eq!(staged.len(), journal.len(), "staged vs journal entry count");
}
