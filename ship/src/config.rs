//! The replication pair's configuration: one small TOML file read by both
//! the sender (primary node) and the receiver (backup node).
//!
//! ```toml
//! group = "PAYROLL"
//!
//! [primary]
//! node = "prod1"
//! journal = "/var/lib/repl/journal"   # relative paths are relative to this file
//! journal_name = "J1"                 # default "main"
//! connect = "10.0.0.2:7400"           # default: the backup's listen address
//! realtime_priority = 0               # 1-99: the sender's threads that move entries
//!                                     # run at this SCHED_RR priority (needs
//!                                     # CAP_SYS_NICE or RLIMIT_RTPRIO); 0: normal
//!
//! [backup]
//! node = "dr1"
//! listen = "0.0.0.0:7400"
//! staging = "/var/lib/repl/staging"
//! budget = "64GiB"                    # staging disk budget
//! segment = "256MiB"                  # staging segment size
//! prepare_segments = true             # make the next segment ahead (data-only syncs):
//!                                     # a purged segment's file reused, else a new
//!                                     # one zero-filled (each byte written twice)
//! reserve_segments = 0                # segments made (zero-filled) at open for the
//!                                     # first rotations, as a backup that has run a
//!                                     # while keeps purged ones to reuse; at most 4
//! realtime_priority = 0               # as [primary]'s, for replrecv and replapply
//!
//! [transport]
//! io = "auto"                         # auto | uring | plain
//! compression = "none"                # none | zstd | zstd:<level>
//! window = "256MiB"                   # most bytes sent and not yet acknowledged
//!                                     # (catch-ups ran faster and used less CPU
//!                                     # with 256 than with 64 MiB: decisions.md 101)
//! linger_us = 500                     # most a small frame waits for earlier ones'
//!                                     # acknowledgement, gathering what is appended
//!                                     # meanwhile (fewer, larger frames at high rates;
//!                                     # none waits with nothing in flight); 0: never
//!                                     # (every small frame goes alone: on 2 cores
//!                                     # far behind at high rates, decisions.md 98)
//!
//! [apply]                             # replapply, on the backup node
//! store = "tables"                    # tables (replica tables) | sqlite
//! replica = "/var/lib/repl/replica"   # the replica's directory (sqlite: replica.db
//!                                     # in it); default: <staging>/<group>.replica
//! workers = 2
//! stripes = 1024
//! checkpoint_ms = 3000                # bounds replay after a crash; a large
//!                                     # index spaces them further (at most a
//!                                     # third of the time taking it: HAD0228I)
//! expected_records = 0                # size the index for this many records at
//!                                     # open (~128 bytes each), so apply does not
//!                                     # grow it on the way there; 0: grow as needed
//! reserve_data = "0"                  # replica tables' data files made at open
//!                                     # (allocated, cached) for apply to write
//!                                     # before it makes new ones, and the most
//!                                     # emptied space kept for reuse (at least
//!                                     # 512MiB); 0: files made as apply needs them
//! journals = ["J1"]                   # the group's journals, in a fixed order
//!                                     # (default: [primary.journal_name])
//! merge_wait_ms = 20                  # most an idle journal holds the others
//! spill = "64MiB"                     # most one open transaction holds in memory;
//!                                     # larger ones are read back from staging
//! check_listen = "0.0.0.0:7401"       # serve sync-check (replcheck) here; default: off
//! ```
//!
//! Every error names the file, the line and column, and the key (CSI0001E).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::frame::Codec;
use engine::journal::retention::valid_node_name;
use engine::transport::IoMode;
use serde::Deserialize;
use toml::Spanned;

/// A configuration error, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CSI0001E {file}:{line}:{column}: key `{key}`: {detail}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        detail: String,
    },
    #[error("CSI0002E cannot read configuration file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    group: Spanned<String>,
    primary: RawPrimary,
    backup: RawBackup,
    #[serde(default)]
    transport: RawTransport,
    #[serde(default)]
    apply: RawApply,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrimary {
    node: Spanned<String>,
    journal: Spanned<String>,
    journal_name: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    realtime_priority: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    node: Spanned<String>,
    listen: Spanned<String>,
    staging: Spanned<String>,
    budget: Option<Spanned<String>>,
    segment: Option<Spanned<String>>,
    prepare_segments: Option<bool>,
    reserve_segments: Option<Spanned<u64>>,
    realtime_priority: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    io: Option<Spanned<String>>,
    compression: Option<Spanned<String>>,
    window: Option<Spanned<String>>,
    frame_bytes: Option<Spanned<String>>,
    frame_entries: Option<Spanned<u64>>,
    heartbeat_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    reconnect_max_ms: Option<Spanned<u64>>,
    linger_us: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApply {
    store: Option<Spanned<String>>,
    replica: Option<Spanned<String>>,
    workers: Option<Spanned<u64>>,
    stripes: Option<Spanned<u64>>,
    checkpoint_ms: Option<Spanned<u64>>,
    expected_records: Option<Spanned<u64>>,
    reserve_data: Option<Spanned<String>>,
    journals: Option<Spanned<Vec<String>>>,
    merge_wait_ms: Option<Spanned<u64>>,
    spill: Option<Spanned<String>>,
    check_listen: Option<Spanned<String>>,
}

/// The primary node's part.
#[derive(Clone, Debug)]
pub struct Primary {
    pub node: String,
    pub journal: PathBuf,
    pub journal_name: String,
    pub connect: SocketAddr,
    /// The sender's pipeline threads' `SCHED_RR` priority; 0: normal
    /// (decisions.md 87).
    pub realtime_priority: u8,
}

/// The backup node's part.
#[derive(Clone, Debug)]
pub struct Backup {
    pub node: String,
    pub listen: SocketAddr,
    /// The staging root; this journal stages in `staging/<group>/<journal_name>`.
    pub staging: PathBuf,
    pub budget_bytes: u64,
    pub segment_bytes: u64,
    /// Staging makes its next segment ahead, zero-filled (decisions.md 31).
    pub prepare_segments: bool,
    /// Segments staging makes at open for its first rotations
    /// (decisions.md 83).
    pub reserve_segments: usize,
    /// The receiver's and apply's pipeline threads' `SCHED_RR` priority;
    /// 0: normal (decisions.md 87).
    pub realtime_priority: u8,
}

/// How the two talk.
#[derive(Clone, Debug)]
pub struct Transport {
    pub io: IoMode,
    pub codec: Codec,
    pub window_bytes: u64,
    pub frame_bytes: usize,
    pub frame_entries: usize,
    pub heartbeat: Duration,
    pub timeout: Duration,
    pub reconnect_max: Duration,
    /// Most a small frame waits for earlier frames' acknowledgement
    /// (`ScrapeOptions::linger`).
    pub linger: Duration,
}

/// `[transport] linger_us` when the file does not set it (decisions.md 58,
/// 96, 98).
pub const DEFAULT_LINGER_US: u64 = 500;

/// `[transport] window` when the file does not set it (decisions.md 101).
pub const DEFAULT_WINDOW_BYTES: u64 = 256 << 20;

/// Which store holds the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Replica tables (the default, built for apply speed).
    Tables,
    /// One SQLite database, `replica.db` in the replica directory.
    Sqlite,
}

/// How replapply applies the group on the backup.
#[derive(Clone, Debug)]
pub struct Apply {
    pub store: StoreKind,
    /// The replica's directory.
    pub replica: PathBuf,
    pub workers: usize,
    pub stripes: usize,
    pub checkpoint: Duration,
    /// Records the replica tables' index is sized for at open (0: as many
    /// as it holds; it grows as apply adds more).
    pub expected_records: usize,
    /// Bytes of replica tables' data files made at open (0: none).
    pub reserve_data_bytes: u64,
    /// The group's journals in their fixed order (the applied position is
    /// kept per index): each stages in `staging/<group>/<name>`.
    pub journals: Vec<String>,
    pub merge_wait: Duration,
    /// Keys and images one open transaction may hold in apply's memory.
    pub spill_bytes: u64,
    /// Where the replica's sync-check service listens (`None`: no service).
    pub check_listen: Option<SocketAddr>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub group: String,
    pub primary: Primary,
    pub backup: Backup,
    pub transport: Transport,
    pub apply: Apply,
}

impl Config {
    /// This journal's staging directory on the backup.
    pub fn staging_dir(&self) -> PathBuf {
        self.journal_staging_dir(&self.primary.journal_name)
    }

    /// The staging directory of the group's journal `name` on the backup.
    pub fn journal_staging_dir(&self, name: &str) -> PathBuf {
        self.backup.staging.join(&self.group).join(name)
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(file, &text)
    }

    /// Parses `text` as if read from `file` (paths resolve against its directory).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, key: &str, detail: String| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                column,
                key: key.to_owned(),
                detail,
            }
        };
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), "", e.message().to_owned()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // Spanned<T> shows up in the path as a private field: drop it.
            let key = e
                .path()
                .to_string()
                .split('.')
                .filter(|part| !part.starts_with("$__"))
                .collect::<Vec<_>>()
                .join(".");
            let inner = e.into_inner();
            at(
                inner.span().unwrap_or(0..0),
                &key,
                inner.message().to_owned(),
            )
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let path = |s: &Spanned<String>, key: &str| -> Result<PathBuf, ConfigError> {
            if s.get_ref().is_empty() {
                return Err(at(s.span(), key, "a path is required".into()));
            }
            Ok(base.join(s.get_ref()))
        };
        let name = |s: &Spanned<String>, key: &str| -> Result<String, ConfigError> {
            if !valid_node_name(s.get_ref()) {
                return Err(at(
                    s.span(),
                    key,
                    format!("{:?} is not a name: use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with .)", s.get_ref()),
                ));
            }
            Ok(s.get_ref().clone())
        };
        let address = |s: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
            s.get_ref()
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    at(
                        s.span(),
                        key,
                        format!("{:?} is not a host:port address", s.get_ref()),
                    )
                })
        };
        let bytes = |s: &Option<Spanned<String>>, key: &str, default: u64, min: u64, max: u64| {
            let Some(s) = s else { return Ok(default) };
            match parse_bytes(s.get_ref()) {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                Some(n) => Err(at(
                    s.span(),
                    key,
                    format!("{n} bytes is out of range ({min}..={max})"),
                )),
                None => Err(at(
                    s.span(),
                    key,
                    format!("{:?} is not a size (e.g. 512KiB, 64MiB, 2GiB)", s.get_ref()),
                )),
            }
        };
        let millis = |s: &Option<Spanned<u64>>, key: &str, default: u64, min: u64, max: u64| {
            let Some(s) = s else {
                return Ok(Duration::from_millis(default));
            };
            let v = *s.get_ref();
            if (min..=max).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(at(
                    s.span(),
                    key,
                    format!("{v} is out of range ({min}..={max})"),
                ))
            }
        };

        let group = name(&raw.group, "group")?;
        let primary_node = name(&raw.primary.node, "primary.node")?;
        let backup_node = name(&raw.backup.node, "backup.node")?;
        if primary_node == backup_node {
            return Err(at(
                raw.backup.node.span(),
                "backup.node",
                "the backup node must differ from the primary node".into(),
            ));
        }
        let journal_name = match &raw.primary.journal_name {
            Some(s) => name(s, "primary.journal_name")?,
            None => "main".to_owned(),
        };
        let listen = address(&raw.backup.listen, "backup.listen")?;
        let connect = match &raw.primary.connect {
            Some(s) => address(s, "primary.connect")?,
            None => listen,
        };
        let t = &raw.transport;
        let io = match &t.io {
            None => IoMode::Auto,
            Some(s) => match s.get_ref().as_str() {
                "auto" => IoMode::Auto,
                "uring" => IoMode::Uring,
                "plain" => IoMode::Plain,
                other => {
                    return Err(at(
                        s.span(),
                        "transport.io",
                        format!("{other:?} is not one of auto, uring, plain"),
                    ))
                }
            },
        };
        let codec = match &t.compression {
            None => Codec::None,
            Some(s) => parse_codec(s.get_ref()).ok_or_else(|| {
                at(
                    s.span(),
                    "transport.compression",
                    format!("{:?} is not one of none, zstd, zstd:<1..=22>", s.get_ref()),
                )
            })?,
        };
        let frame_entries = match &t.frame_entries {
            None => 4096,
            Some(s) => {
                let v = *s.get_ref();
                if !(1..=engine::limits::SCRAPE_BATCH_ENTRIES_MAX as u64).contains(&v) {
                    return Err(at(
                        s.span(),
                        "transport.frame_entries",
                        format!(
                            "{v} is out of range (1..={})",
                            engine::limits::SCRAPE_BATCH_ENTRIES_MAX
                        ),
                    ));
                }
                v as usize
            }
        };
        let frame_bytes = bytes(
            &t.frame_bytes,
            "transport.frame_bytes",
            1 << 20,
            4096,
            engine::limits::SCRAPE_BATCH_BYTES_MAX as u64,
        )? as usize;
        let window_bytes = bytes(
            &t.window,
            "transport.window",
            DEFAULT_WINDOW_BYTES,
            1 << 20,
            1 << 40,
        )?;
        if window_bytes < 2 * (frame_bytes as u64 + engine::limits::ENTRY_BYTES_MAX as u64) {
            return Err(at(
                t.window.as_ref().map_or(0..0, |s| s.span()),
                "transport.window",
                format!("{window_bytes} bytes must hold at least two frames of transport.frame_bytes ({frame_bytes}) plus an entry"),
            ));
        }
        let a = &raw.apply;
        let count = |s: &Option<Spanned<u64>>, key: &str, default: u64, min: u64, max: u64| {
            let Some(s) = s else {
                return Ok(default as usize);
            };
            let v = *s.get_ref();
            if (min..=max).contains(&v) {
                Ok(v as usize)
            } else {
                Err(at(
                    s.span(),
                    key,
                    format!("{v} is out of range ({min}..={max})"),
                ))
            }
        };
        let journals = match &a.journals {
            None => vec![journal_name.clone()],
            Some(list) => {
                let mut names: Vec<String> = Vec::new();
                for n in list.get_ref() {
                    if !valid_node_name(n) || names.contains(n) {
                        return Err(at(
                            list.span(),
                            "apply.journals",
                            format!("{n:?} is not a name or is listed twice: use distinct names of 1 to 64 of A-Z a-z 0-9 . _ -"),
                        ));
                    }
                    names.push(n.clone());
                }
                if names.is_empty() {
                    return Err(at(
                        list.span(),
                        "apply.journals",
                        "name at least one journal".into(),
                    ));
                }
                names
            }
        };
        let staging = path(&raw.backup.staging, "backup.staging")?;
        let store = match &a.store {
            None => StoreKind::Tables,
            Some(s) => match s.get_ref().as_str() {
                "tables" => StoreKind::Tables,
                "sqlite" => StoreKind::Sqlite,
                other => {
                    return Err(at(
                        s.span(),
                        "apply.store",
                        format!("{other:?} is not one of tables, sqlite"),
                    ))
                }
            },
        };
        let apply = Apply {
            store,
            replica: match &a.replica {
                Some(s) => path(s, "apply.replica")?,
                None => staging.join(format!("{group}.replica")),
            },
            workers: count(&a.workers, "apply.workers", 2, 1, 64)?,
            stripes: count(&a.stripes, "apply.stripes", 1024, 1, 1 << 20)?,
            checkpoint: millis(&a.checkpoint_ms, "apply.checkpoint_ms", 3000, 10, 3_600_000)?,
            expected_records: count(&a.expected_records, "apply.expected_records", 0, 0, 1 << 32)?,
            reserve_data_bytes: bytes(&a.reserve_data, "apply.reserve_data", 0, 0, 1 << 40)?,
            journals,
            merge_wait: millis(&a.merge_wait_ms, "apply.merge_wait_ms", 20, 0, 600_000)?,
            spill_bytes: bytes(&a.spill, "apply.spill", 64 << 20, 4096, 1 << 40)?,
            check_listen: match &a.check_listen {
                Some(s) => Some(address(s, "apply.check_listen")?),
                None => None,
            },
        };
        Ok(Config {
            file: file.to_owned(),
            apply,
            group,
            primary: Primary {
                node: primary_node,
                journal: path(&raw.primary.journal, "primary.journal")?,
                journal_name,
                connect,
                realtime_priority: count(
                    &raw.primary.realtime_priority,
                    "primary.realtime_priority",
                    0,
                    0,
                    99,
                )? as u8,
            },
            backup: Backup {
                node: backup_node,
                listen,
                staging,
                budget_bytes: bytes(
                    &raw.backup.budget,
                    "backup.budget",
                    64 << 30,
                    64 << 20,
                    u64::MAX,
                )?,
                segment_bytes: bytes(
                    &raw.backup.segment,
                    "backup.segment",
                    256 << 20,
                    1 << 20,
                    16 << 30,
                )?,
                prepare_segments: raw.backup.prepare_segments.unwrap_or(true),
                reserve_segments: count(
                    &raw.backup.reserve_segments,
                    "backup.reserve_segments",
                    0,
                    0,
                    engine::staging::KEPT_FILES as u64,
                )?,
                realtime_priority: count(
                    &raw.backup.realtime_priority,
                    "backup.realtime_priority",
                    0,
                    0,
                    99,
                )? as u8,
            },
            transport: Transport {
                io,
                codec,
                window_bytes,
                frame_bytes,
                frame_entries,
                heartbeat: millis(&t.heartbeat_ms, "transport.heartbeat_ms", 1000, 10, 60_000)?,
                timeout: millis(&t.timeout_ms, "transport.timeout_ms", 10_000, 100, 600_000)?,
                reconnect_max: millis(
                    &t.reconnect_max_ms,
                    "transport.reconnect_max_ms",
                    5000,
                    10,
                    600_000,
                )?,
                linger: Duration::from_micros(count(
                    &t.linger_us,
                    "transport.linger_us",
                    DEFAULT_LINGER_US,
                    0,
                    100_000,
                )? as u64),
            },
        })
    }
}

/// "123", "64KiB", "64MiB", "2GiB", "1TiB" (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// "none", "zstd" (level 1), "zstd:<level>".
pub fn parse_codec(text: &str) -> Option<Codec> {
    match text {
        "none" => Some(Codec::None),
        "zstd" => Some(Codec::Zstd { level: 1 }),
        _ => {
            let level: i32 = text.strip_prefix("zstd:")?.parse().ok()?;
            (1..=22).contains(&level).then_some(Codec::Zstd { level })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
group = "PAYROLL"

[primary]
node = "prod1"
journal = "journal"

[backup]
node = "dr1"
listen = "127.0.0.1:7400"
staging = "/var/staging"

[transport]
compression = "zstd:3"
window = "32MiB"
"#;

    fn err(text: &str) -> String {
        Config::parse(Path::new("/etc/repl/pair.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_file_resolves_with_defaults() {
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), GOOD).unwrap();
        assert_eq!(c.primary.journal, Path::new("/etc/repl/journal"));
        assert_eq!(c.backup.staging, Path::new("/var/staging"));
        assert_eq!(c.staging_dir(), Path::new("/var/staging/PAYROLL/main"));
        assert_eq!(c.primary.connect, c.backup.listen);
        assert_eq!(c.transport.codec, Codec::Zstd { level: 3 });
        assert_eq!(c.transport.window_bytes, 32 << 20);
        assert_eq!(c.transport.io, IoMode::Auto);
        assert_eq!(c.apply.replica, Path::new("/var/staging/PAYROLL.replica"));
        assert_eq!(c.apply.journals, ["main"]);
        assert_eq!(c.apply.workers, 2);
        assert_eq!(c.apply.spill_bytes, 64 << 20);
        assert!(c.backup.prepare_segments);
        assert_eq!(c.transport.linger, Duration::from_micros(DEFAULT_LINGER_US));
        let unset = Config::parse(
            Path::new("/etc/repl/pair.toml"),
            &GOOD.replace("window = \"32MiB\"", ""),
        )
        .unwrap();
        assert_eq!(unset.transport.window_bytes, DEFAULT_WINDOW_BYTES);
        let lingers = GOOD.replace("window = \"32MiB\"", "window = \"32MiB\"\nlinger_us = 250");
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), &lingers).unwrap();
        assert_eq!(c.transport.linger, Duration::from_micros(250));
        let e = err(&GOOD.replace(
            "window = \"32MiB\"",
            "window = \"32MiB\"\nlinger_us = 200000",
        ));
        assert!(
            e.contains("key `transport.linger_us`") && e.contains("out of range"),
            "{e}"
        );
        let off = GOOD.replace("[backup]\n", "[backup]\nprepare_segments = false\n");
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), &off).unwrap();
        assert!(!c.backup.prepare_segments);
        let e = err(&GOOD.replace("[backup]\n", "[backup]\nprepare_segments = \"yes\"\n"));
        assert!(
            e.contains(":9:20: key `backup.prepare_segments`") && e.contains("invalid type"),
            "{e}"
        );
        assert_eq!(c.backup.reserve_segments, 0);
        let reserved = GOOD.replace("[backup]\n", "[backup]\nreserve_segments = 3\n");
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), &reserved).unwrap();
        assert_eq!(c.backup.reserve_segments, 3);
        let e = err(&GOOD.replace("[backup]\n", "[backup]\nreserve_segments = 5\n"));
        assert!(
            e.contains("key `backup.reserve_segments`") && e.contains("5 is out of range (0..=4)"),
            "{e}"
        );
    }

    #[test]
    fn realtime_priorities_are_per_node_and_checked() {
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), GOOD).unwrap();
        assert_eq!(
            (c.primary.realtime_priority, c.backup.realtime_priority),
            (0, 0)
        );
        let set = GOOD
            .replace("[primary]\n", "[primary]\nrealtime_priority = 2\n")
            .replace("[backup]\n", "[backup]\nrealtime_priority = 99\n");
        let c = Config::parse(Path::new("/etc/repl/pair.toml"), &set).unwrap();
        assert_eq!(
            (c.primary.realtime_priority, c.backup.realtime_priority),
            (2, 99)
        );
        let e = err(&GOOD.replace("[backup]\n", "[backup]\nrealtime_priority = 100\n"));
        assert!(
            e.contains(":9:21: key `backup.realtime_priority`")
                && e.contains("100 is out of range (0..=99)"),
            "{e}"
        );
        let e = err(&GOOD.replace("[primary]\n", "[primary]\nrealtime_priority = -1\n"));
        assert!(e.contains("key `primary.realtime_priority`"), "{e}");
    }

    #[test]
    fn the_apply_section_is_checked() {
        let with = |apply: &str| format!("{GOOD}\n[apply]\n{apply}\n");
        let c = Config::parse(
            Path::new("/etc/repl/pair.toml"),
            &with("replica = \"rep\"\nworkers = 1\njournals = [\"J1\", \"J2\"]\nspill = \"1MiB\""),
        )
        .unwrap();
        assert_eq!(c.apply.spill_bytes, 1 << 20);
        assert_eq!(c.apply.check_listen, None);
        assert_eq!(c.apply.expected_records, 0);
        assert_eq!(c.apply.replica, Path::new("/etc/repl/rep"));
        assert_eq!(c.apply.journals, ["J1", "J2"]);
        assert_eq!(
            c.journal_staging_dir("J2"),
            Path::new("/var/staging/PAYROLL/J2")
        );
        let e = err(&with("workers = 0"));
        assert!(e.contains(":18:11: key `apply.workers`"), "{e}");
        let e = err(&with("journals = [\"J1\", \"J1\"]"));
        assert!(
            e.contains("key `apply.journals`") && e.contains("twice"),
            "{e}"
        );
        let e = err(&with("journals = []"));
        assert!(e.contains("key `apply.journals`"), "{e}");
        let e = err(&with("store = \"oracle\""));
        assert!(
            e.contains("key `apply.store`") && e.contains("tables, sqlite"),
            "{e}"
        );
        let e = err(&with("spill = \"12\""));
        assert!(e.contains("key `apply.spill`"), "{e}");
        let e = err(&with("check_listen = \"nowhere\""));
        assert!(e.contains("key `apply.check_listen`"), "{e}");
        let c = Config::parse(
            Path::new("t.toml"),
            &with("check_listen = \"127.0.0.1:7401\""),
        )
        .unwrap();
        assert_eq!(
            c.apply.check_listen,
            Some("127.0.0.1:7401".parse().unwrap())
        );
        let e = err(&with("colour = 1"));
        assert!(e.contains("key `apply.colour`"), "{e}");
        let c = Config::parse(Path::new("t.toml"), &with("expected_records = 2000000")).unwrap();
        assert_eq!(c.apply.expected_records, 2_000_000);
        let e = err(&with("expected_records = 9000000000"));
        assert!(
            e.contains("key `apply.expected_records`") && e.contains("out of range"),
            "{e}"
        );
        assert_eq!(c.apply.reserve_data_bytes, 0);
        let c = Config::parse(Path::new("t.toml"), &with("reserve_data = \"1GiB\"")).unwrap();
        assert_eq!(c.apply.reserve_data_bytes, 1 << 30);
        let e = err(&with("reserve_data = \"a lot\""));
        assert!(
            e.contains("key `apply.reserve_data`") && e.contains("not a size"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err(&GOOD.replace("\"127.0.0.1:7400\"", "\"nowhere\""));
        assert!(
            e.starts_with("CSI0001E /etc/repl/pair.toml:10:10: key `backup.listen`"),
            "{e}"
        );
        let e = err(&GOOD.replace("window = \"32MiB\"", "window = \"lots\""));
        assert!(e.contains(":15:10: key `transport.window`"), "{e}");
        let e = err(&GOOD.replace("[backup]\n", "[backup]\ncolour = 1\n"));
        assert!(
            e.contains(":9:1: key `backup.colour`") && e.contains("unknown field"),
            "{e}"
        );
        let e = err(&GOOD.replace("node = \"dr1\"\n", ""));
        assert!(
            e.contains("key `backup`") && e.contains("missing field `node`"),
            "{e}"
        );
        let e = err(&GOOD.replace("window = \"32MiB\"", "window = 32"));
        assert!(
            e.contains(":15:10: key `transport.window`") && e.contains("invalid type"),
            "{e}"
        );
        let e = err(&GOOD.replace("\"dr1\"", "\"prod1\""));
        assert!(
            e.contains("key `backup.node`") && e.contains("must differ"),
            "{e}"
        );
        let e = err(&GOOD.replace("\"PAYROLL\"", "\"../x\""));
        assert!(e.contains(":2:9: key `group`"), "{e}");
        let e = err("group = [");
        assert!(e.starts_with("CSI0001E /etc/repl/pair.toml:1:"), "{e}");
        let e = err(&GOOD.replace("zstd:3", "zstd:99"));
        assert!(e.contains("key `transport.compression`"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("10 GB"), Some(10_000_000_000));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("1XB"), None);
        assert_eq!(parse_bytes("99999999999TiB"), None);
    }
}
