//! What a run asked of the disk, and what the disk gives.
//!
//! Every node's files live on one device here, so the pipeline's
//! throughput can be bounded by the bytes it must make durable rather than
//! by its CPU. A run counts the sectors written to the device holding its
//! directory over the timed window (every process's writes, as the kernel's
//! block statistics count them: the journal's write-back included in a
//! live run). The raw-disk baseline writes files sequentially, synced as
//! staging syncs its log: one stream, timed a piece at a time (a virtual
//! disk may take a first burst far faster than what follows), then four at
//! once, as the backup's writers go side by side. On the VM this was built
//! on the two differ several-fold: one synced stream waits on each sync's
//! latency, several keep the device busy.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes the dirty pages of the filesystem holding `dir` to its disk and
/// flushes the disk's cache (`syncfs`): a catch-up's backlog is on disk
/// before its window starts, as a production journal's is (replbench's
/// writers journal without syncs: decisions.md 67). Returns how long it
/// took.
pub fn sync_filesystem(dir: &Path) -> io::Result<Duration> {
    let started = Instant::now();
    let file = File::open(dir)?;
    // SAFETY: a plain syscall on a descriptor `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(started.elapsed())
}

/// The block device a directory is on, found through `/sys/dev/block`.
#[derive(Clone, Debug)]
pub struct Device {
    /// The kernel's name for it (`vda`, `nvme0n1p2`, ...).
    pub name: String,
    stat: PathBuf,
}

impl Device {
    /// The device holding `dir`, or `None` when it is not a block device
    /// (tmpfs, overlay, btrfs subvolumes: device numbers with no entry
    /// under `/sys/dev/block`).
    pub fn holding(dir: &Path) -> Option<Device> {
        let dev = std::fs::metadata(dir).ok()?.dev();
        let node = PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            libc::major(dev),
            libc::minor(dev)
        ));
        let stat = node.join("stat");
        if !stat.exists() {
            return None;
        }
        let name = std::fs::read_link(&node)
            .ok()
            .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| node.display().to_string());
        Some(Device { name, stat })
    }

    /// Bytes written to the device since boot.
    pub fn bytes_written(&self) -> io::Result<u64> {
        let text = std::fs::read_to_string(&self.stat)?;
        sectors_written(&text)
            .map(|sectors| sectors * SECTOR_BYTES)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: no sectors-written field in {text:?}",
                        self.stat.display()
                    ),
                )
            })
    }
}

/// `/sys/block/*/stat` counts in 512-byte sectors whatever the device's own.
const SECTOR_BYTES: u64 = 512;

/// The seventh field of a block device's `stat` line: sectors written
/// (Documentation/block/stat.rst).
fn sectors_written(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(6)?.parse().ok()
}

/// The disk's share of a run: what was written to its device over the
/// timed window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiskFigure {
    pub device: String,
    pub bytes_written: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Per record change applied.
    pub bytes_per_change: f64,
}

/// Counts a device's writes from `start` on.
#[derive(Debug)]
pub struct DiskWindow {
    device: Device,
    bytes: u64,
    started: Instant,
}

impl DiskWindow {
    /// Starts counting writes to the device holding `dir` (`None`: no block
    /// device found, or its statistics unreadable).
    pub fn start(dir: &Path) -> Option<DiskWindow> {
        let device = Device::holding(dir)?;
        let bytes = device.bytes_written().ok()?;
        Some(DiskWindow {
            device,
            bytes,
            started: Instant::now(),
        })
    }

    /// What was written since `start`, over `changes` record changes.
    pub fn finish(&self, changes: u64) -> io::Result<DiskFigure> {
        let seconds = self.started.elapsed().as_secs_f64();
        let bytes_written = self.device.bytes_written()?.saturating_sub(self.bytes);
        Ok(DiskFigure {
            device: self.device.name.clone(),
            bytes_written,
            seconds,
            mb_per_s: bytes_written as f64 / seconds.max(1e-9) / 1e6,
            bytes_per_change: bytes_written as f64 / changes.max(1) as f64,
        })
    }
}

/// The raw-disk baseline's pieces: each is timed on its own.
pub const PIECE_BYTES: u64 = 256 << 20;
/// Written per `pwrite`.
const WRITE_BYTES: usize = 1 << 20;
/// Synced after this many bytes, as staging's group commit syncs a few
/// MiB at a time under load.
const SYNC_BYTES: u64 = 8 << 20;
/// Streams at once in the baseline's second half: the backup writes
/// staging, data files and checkpoints side by side.
pub const PARALLEL_STREAMS: u64 = 4;

/// Files written sequentially, `fdatasync` every `SYNC_BYTES`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RawStreams {
    pub streams: u64,
    pub bytes: u64,
    pub mb_per_s: f64,
    /// With one stream: each `PIECE_BYTES` piece's rate, in order.
    pub pieces_mb_per_s: Vec<f64>,
    /// With one stream: the median of the later half of the pieces, once
    /// a first burst the disk may take is spent.
    pub later_half_mb_per_s: Option<f64>,
}

/// The raw-disk baseline: one synced stream, as staging writes its log,
/// then `PARALLEL_STREAMS` at once, as the backup's writers together.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RawDisk {
    pub one: RawStreams,
    pub parallel: RawStreams,
}

/// Writes `bytes` (whole pieces, at least one) as one stream, then again
/// as `PARALLEL_STREAMS`, into new files in `dir`, and removes them.
pub fn raw_write(dir: &Path, bytes: u64) -> io::Result<RawDisk> {
    raw_write_in(dir, bytes, PIECE_BYTES)
}

/// `raw_write` in pieces of `piece` bytes (small in tests).
fn raw_write_in(dir: &Path, bytes: u64, piece: u64) -> io::Result<RawDisk> {
    let pieces = bytes.div_ceil(piece).max(1);
    let one = raw_streams(dir, 1, pieces, piece)?;
    let per_stream = pieces.div_ceil(PARALLEL_STREAMS);
    let parallel = raw_streams(dir, PARALLEL_STREAMS, per_stream, piece)?;
    Ok(RawDisk { one, parallel })
}

/// `streams` files of `pieces` pieces each, written at once.
fn raw_streams(dir: &Path, streams: u64, pieces: u64, piece: u64) -> io::Result<RawStreams> {
    let paths: Vec<PathBuf> = (0..streams)
        .map(|i| dir.join(format!("raw-disk-baseline-{i}")))
        .collect();
    let files = paths
        .iter()
        .map(|path| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)?;
            engine::sys::preallocate(&file, pieces * piece)?;
            file.sync_all()?;
            Ok(file)
        })
        .collect::<io::Result<Vec<File>>>();
    let started = Instant::now();
    let written = files.and_then(|files| {
        std::thread::scope(|scope| {
            let writers: Vec<_> = files
                .iter()
                .map(|file| scope.spawn(move || write_pieces(file, pieces, piece)))
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().expect("a baseline writer panicked"))
                .collect::<io::Result<Vec<Vec<f64>>>>()
        })
    });
    let seconds = started.elapsed().as_secs_f64();
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    let mut rates = written?;
    let bytes = streams * pieces * piece;
    let pieces_mb_per_s = if streams == 1 {
        rates.remove(0)
    } else {
        Vec::new()
    };
    Ok(RawStreams {
        streams,
        bytes,
        mb_per_s: bytes as f64 / seconds.max(1e-9) / 1e6,
        later_half_mb_per_s: (!pieces_mb_per_s.is_empty()).then(|| later_half(&pieces_mb_per_s)),
        pieces_mb_per_s,
    })
}

/// Writes `pieces` pieces of `piece` bytes from the start of `file`, all
/// of it durable at the end; each piece's MB/s.
fn write_pieces(file: &File, pieces: u64, piece: u64) -> io::Result<Vec<f64>> {
    // Not zeros: a device or host that compresses or dedups would flatter
    // them. Each write differs in its first bytes.
    let mut block = vec![0u8; WRITE_BYTES];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for b in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes());
    }
    let mut rates = Vec::new();
    let mut at = 0u64;
    for _ in 0..pieces {
        let piece_started = Instant::now();
        let end = at + piece;
        while at < end {
            let n = (end - at).min(WRITE_BYTES as u64) as usize;
            block[..8].copy_from_slice(&at.to_le_bytes());
            file.write_all_at(&block[..n], at)?;
            at += n as u64;
            if at.is_multiple_of(SYNC_BYTES) || at == pieces * piece {
                file.sync_data()?;
            }
        }
        let secs = piece_started.elapsed().as_secs_f64();
        rates.push(piece as f64 / secs.max(1e-9) / 1e6);
    }
    Ok(rates)
}

/// The median of the later half of `rates`.
fn later_half(rates: &[f64]) -> f64 {
    let mut later = rates[rates.len() / 2..].to_vec();
    later.sort_by(f64::total_cmp);
    match later.len() {
        0 => 0.0,
        n if n % 2 == 1 => later[n / 2],
        n => (later[n / 2 - 1] + later[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_written_is_the_seventh_field() {
        let line = "  195872    20110 13460346   82093 15003520  5005170 2684739640 13296361        0  4163320 13483660        0        0        0        0   142436   105205\n";
        assert_eq!(sectors_written(line), Some(2_684_739_640));
        assert_eq!(sectors_written("1 2 3 4 5 6"), None);
        assert_eq!(sectors_written("1 2 3 4 5 6 x"), None);
    }

    #[test]
    fn later_half_is_the_median_of_the_later_half() {
        assert_eq!(later_half(&[1900.0, 1800.0, 300.0, 310.0, 290.0]), 300.0);
        assert_eq!(later_half(&[1900.0, 1800.0, 300.0, 320.0]), 310.0);
        assert_eq!(later_half(&[500.0]), 500.0);
    }

    #[test]
    fn the_baseline_writes_whole_pieces_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 1 << 20;
        let raw = raw_write_in(dir.path(), 3 * piece, piece).unwrap();
        assert_eq!(raw.one.bytes, 3 * piece);
        assert_eq!(raw.one.pieces_mb_per_s.len(), 3);
        assert!(raw.one.mb_per_s > 0.0 && raw.one.later_half_mb_per_s.unwrap() > 0.0);
        assert_eq!(raw.parallel.streams, PARALLEL_STREAMS);
        assert_eq!(raw.parallel.bytes, PARALLEL_STREAMS * piece);
        assert!(raw.parallel.pieces_mb_per_s.is_empty() && raw.parallel.mb_per_s > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_window_on_the_disk_of_a_directory_counts_what_was_written_there() {
        let dir = tempfile::tempdir().unwrap();
        let Some(window) = DiskWindow::start(dir.path()) else {
            eprintln!(
                "skipped: {} is on no block device with statistics",
                dir.path().display()
            );
            return;
        };
        let file = File::create(dir.path().join("f")).unwrap();
        file.write_all_at(&vec![7u8; 4 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let figure = window.finish(2).unwrap();
        assert!(
            figure.bytes_written >= 4 << 20,
            "4 MiB synced, {} bytes counted on {}",
            figure.bytes_written,
            figure.device
        );
        assert_eq!(figure.bytes_per_change, figure.bytes_written as f64 / 2.0);
    }
}
