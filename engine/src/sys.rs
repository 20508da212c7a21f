//! Thin wrappers over the Linux calls the journal needs beyond `std`: space
//! preallocation, a process-shared futex, and the pipeline threads'
//! real-time priority.
//!
//! Each wrapper degrades to a no-op (or to a plain sleep) when the kernel refuses
//! the call, because every one of them is an optimisation, never a correctness
//! requirement, except `fallocate`, whose failure is reported.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Reserves `len` bytes of disk for `file` so later writes through a map cannot
/// fail for lack of space. Falls back to `set_len` where `fallocate` is unsupported.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid, owned file descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len),
        _ => Err(err),
    }
}

/// Writes `file`'s dirty pages in `offset..offset + len` to the disk and
/// waits for them (data only: `sync_file_range`, no metadata and no cache
/// flush; `fdatasync` afterwards makes it durable).
pub fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a valid, owned file descriptor; no memory
    // is passed.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `parts`, one after another, at `offset` (`pwritev`, continued
/// after a short write or an interrupt). `parts` is used up on the way.
pub fn write_all_vectored_at(
    file: &File,
    mut parts: &mut [io::IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        // SAFETY: pwritev on a valid, owned file descriptor; `IoSlice` is
        // ABI-compatible with `iovec` on Unix, and each points into a
        // slice borrowed for the call, which the kernel only reads.
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                parts.as_ptr().cast::<libc::iovec>(),
                parts.len().min(libc::UIO_MAXIOV as usize) as libc::c_int,
                offset as libc::off_t,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        offset += rc as u64;
        io::IoSlice::advance_slices(&mut parts, rc as usize);
    }
    Ok(())
}

/// Asks the kernel to drop `file`'s cached pages in `offset..offset + len`
/// (`len` 0: to the end): only a hint (`POSIX_FADV_DONTNEED`). Clean pages
/// go; dirty ones are only queued for write-back and stay, so nothing
/// unwritten is lost. The pages freed are what the next page-cache pages
/// are made of.
pub fn drop_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fadvise(file, offset, len, libc::POSIX_FADV_DONTNEED)
}

/// Brings `file`'s pages in `0..len` into the page cache, as read-ahead
/// does, without copying them anywhere (`readahead(2)`, in steps the
/// kernel takes whole at its default read-ahead size). Over allocated but
/// unwritten blocks (`preallocate`) the kernel reads nothing: it makes
/// zeroed pages. Only a hint, like the read-ahead it is: errors are not
/// reported and pages may be dropped again under memory pressure.
pub fn cache_in(file: &File, len: u64) {
    const STEP: u64 = 128 << 10;
    for offset in (0..len).step_by(STEP as usize) {
        // SAFETY: readahead on a valid, owned file descriptor; no memory is
        // passed.
        let _ = unsafe {
            libc::readahead(
                file.as_raw_fd(),
                offset as libc::off64_t,
                STEP.min(len - offset) as usize,
            )
        };
    }
}

/// Turns off the kernel's read-ahead for reads through `file` (this open
/// file only: `POSIX_FADV_RANDOM`); a read that misses the cache then
/// reads only the pages it asked for.
pub fn no_read_ahead(file: &File) -> io::Result<()> {
    fadvise(file, 0, 0, libc::POSIX_FADV_RANDOM)
}

fn fadvise(file: &File, offset: u64, len: u64, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: posix_fadvise on a valid, owned file descriptor; no memory is
    // passed.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            advice,
        )
    };
    // posix_fadvise returns the error number rather than setting errno.
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Zeros written per `pwrite` by `zero_fill`.
pub const ZERO_FILL_BYTES: usize = 1 << 20;

/// Whether `file` holds only zeros in `from..to` (read a piece at a time):
/// the unused end of a segment made ahead, or one whose creation was cut
/// short.
pub fn is_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; ZERO_FILL_BYTES];
    let mut at = from;
    while at < to {
        let n = (buf.len() as u64).min(to - at) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// How a `zero_fill` under way is told to change course.
#[derive(Debug, Default)]
pub struct ZeroFillControl {
    /// Someone waits for the fill: stop pausing.
    hurry: AtomicBool,
    /// Nobody will use the fill: stop (`Interrupted`).
    give_up: AtomicBool,
}

impl ZeroFillControl {
    /// Pause after each piece again (for the next fill).
    pub fn pace(&self) {
        self.hurry.store(false, Ordering::Relaxed);
    }
    pub fn hurry(&self) {
        self.hurry.store(true, Ordering::Relaxed);
    }
    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::Relaxed);
    }
}

/// Runs `piece(at, n)` over `from..to`, `ZERO_FILL_BYTES` at a time, each
/// piece followed by the pause `pause(n, took)` gives for it (unless
/// `control` says hurry); stops with `Interrupted` once `control` says give
/// up.
fn in_paced_pieces(
    from: u64,
    to: u64,
    control: Option<&ZeroFillControl>,
    mut pause: impl FnMut(u64, Duration) -> Duration,
    mut piece: impl FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = from;
    while at < to {
        if control.is_some_and(|c| c.give_up.load(Ordering::Relaxed)) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (ZERO_FILL_BYTES as u64).min(to - at);
        let began = Instant::now();
        piece(at, n)?;
        at += n;
        let wait = pause(n, began.elapsed());
        if !wait.is_zero() && !control.is_some_and(|c| c.hurry.load(Ordering::Relaxed)) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// A write-back of several files that should be over by a deadline: the
/// pauses between its pieces shrink as it falls behind, down to none
/// (decisions.md 89).
#[derive(Debug)]
pub struct WriteBackDeadline {
    deadline: Instant,
    /// Bytes still to write back (an upper bound: some may be clean).
    left: u64,
    /// Bytes written back so far, and the time that took, pauses aside.
    done: u64,
    busy: Duration,
}

impl WriteBackDeadline {
    /// `bytes` to write back by `deadline`.
    pub fn new(deadline: Instant, bytes: u64) -> WriteBackDeadline {
        WriteBackDeadline {
            deadline,
            left: bytes,
            done: 0,
            busy: Duration::ZERO,
        }
    }

    /// The pause after a piece of `n` bytes that took `took`: as long as
    /// the piece took (half the disk's time), or shorter where the time
    /// left before the deadline, less what the bytes left would take
    /// without pauses at the speed so far, does not allow that much a
    /// piece.
    fn pause(&mut self, n: u64, took: Duration) -> Duration {
        self.done += n;
        self.busy += took;
        self.left = self.left.saturating_sub(n);
        let per_byte = self.busy.as_secs_f64() / self.done as f64;
        let needed =
            Duration::try_from_secs_f64(self.left as f64 * per_byte).unwrap_or(Duration::MAX);
        let spare = self
            .deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(needed);
        let pieces = self.left.div_ceil(ZERO_FILL_BYTES as u64).max(1);
        (spare / pieces.min(u32::MAX as u64) as u32).min(took)
    }
}

/// Writes `file`'s dirty pages in `from..to` back a piece at a time with
/// pauses (`in_paced_pieces`), so the disk keeps half its time for others'
/// syncs (the staging store's), or what is left of that while `deadline`
/// comes too near; a `fdatasync` afterwards finds little left to write.
/// Only pacing: the caller's sync reports any write error.
pub fn paced_write_back(
    file: &File,
    from: u64,
    to: u64,
    mut deadline: Option<&mut WriteBackDeadline>,
) {
    let pause = |n, took| match deadline.as_deref_mut() {
        Some(deadline) => deadline.pause(n, took),
        None => took,
    };
    let _ = in_paced_pieces(from, to, None, pause, |at, n| {
        let _ = write_back(file, at, n);
        Ok(())
    });
}

/// Removes the file at `path` after shrinking it from its end a piece
/// (`ZERO_FILL_BYTES`) at a time, each piece followed by a pause as long
/// as it took. Freeing a whole segment's blocks at once, as an unlink
/// does, made the disk discard them in one go on a filesystem mounted
/// with `discard` (a 256 MiB staging segment: 93 ms), and every sync
/// queued behind it, the staging syncer's included (decisions.md 109).
/// For background threads (purges): the whole takes about twice as long
/// as the unlink alone.
pub fn remove_paced(path: &std::path::Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    in_paced_pieces(
        0,
        len,
        None,
        |_, took| took,
        |cut, n| file.set_len(len - cut - n),
    )?;
    drop(file);
    std::fs::remove_file(path)
}

/// How far a `zero_fill`'s zeros must reach before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillReach {
    /// The disk: written back a piece at a time with pauses, then synced,
    /// so a later `fdatasync` of the file has only its new data to write.
    Disk,
    /// The page cache only, at once: for a file nothing syncs (a journal
    /// with `Durability::None`). Zeros still dirty when later writes land
    /// on them never reach the disk at all; after a power loss the file may
    /// hold its earlier contents there, which recovery tells apart
    /// (decisions.md 44).
    Cache,
}

/// Writes zeros over `file`'s bytes `from..to`, a piece at a time. With
/// `FillReach::Disk`, each piece written back and followed by a pause
/// (`in_paced_pieces`; until `control` says hurry), then `fdatasync`. Later writes there overwrite allocated,
/// written, cached blocks: no page zeroing and no filesystem journal handle
/// on the writer's path, and a later `fdatasync` has only data to write
/// (decisions.md 30, 31). Returns `Interrupted` without syncing once
/// `control` says give up.
pub fn zero_fill(
    file: &File,
    from: u64,
    to: u64,
    control: &ZeroFillControl,
    reach: FillReach,
) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_FILL_BYTES];
    let to_disk = reach == FillReach::Disk;
    let pause = |_, took| match to_disk {
        true => took,
        false => Duration::ZERO,
    };
    in_paced_pieces(from, to, Some(control), pause, |at, n| {
        file.write_all_at(&zeros[..n as usize], at)?;
        if to_disk {
            // Written back piece by piece, so the disk never queues a whole
            // segment of zeros ahead of anyone's sync. Only pacing: where
            // the filesystem refuses it, the sync below still makes the
            // zeros durable and reports any write error.
            let _ = write_back(file, at, n);
        }
        Ok(())
    })?;
    if to_disk {
        file.sync_data()?;
    }
    Ok(())
}

/// Sleeps until `word` no longer holds `expected`, a wake arrives, or `timeout`
/// passes. Works across processes on a shared file mapping.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid aligned u32 for the duration of the call; the kernel
    // only reads it. Shared (non-private) futex so other processes' wakes reach us.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// The wake-up both the journal's segments and staging's doorbell use
/// (decisions.md 4, 70): a waiter raises `waiting` and reads `epoch`
/// before its last look (`raise_waiting`), then sleeps on `epoch` while it
/// still holds what it read (`futex_wait`); a writer, after it publishes,
/// lowers a raised flag, moves `epoch` and wakes every sleeper, once, so
/// the writes after it make no system call until a waiter raises the flag
/// again. No wake-up is lost: a write after the waiter's last look finds
/// the flag raised, unless another writer lowered it since, and that one
/// moved `epoch` past what the waiter read before waking.
#[inline]
pub fn ring(epoch: &AtomicU32, waiting: &AtomicU32) {
    if waiting.load(Ordering::SeqCst) != 0 && waiting.swap(0, Ordering::SeqCst) != 0 {
        epoch.fetch_add(1, Ordering::SeqCst);
        futex_wake_all(epoch);
    }
}

/// Before a waiter's last look: raises its flag and returns the epoch its
/// `futex_wait` then sleeps on (see `ring`).
#[inline]
pub fn raise_waiting(epoch: &AtomicU32, waiting: &AtomicU32) -> u32 {
    let seen = epoch.load(Ordering::SeqCst);
    waiting.store(1, Ordering::SeqCst);
    seen
}

/// Wakes every waiter sleeping on `word`.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid aligned u32; FUTEX_WAKE does not touch memory.
    let _ = unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// The real-time priority (`SCHED_RR`, 1-99) this process's threads that
/// move entries run at; 0: normal scheduling (decisions.md 87).
static REALTIME_PRIORITY: AtomicU8 = AtomicU8::new(0);
/// Whether `enter_realtime` has logged its outcome (once per process).
static REALTIME_TOLD: AtomicBool = AtomicBool::new(false);

/// Linux's `SCHED_RESET_ON_FORK` (not in the `libc` crate): threads and
/// processes the caller starts begin at normal priority.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// Sets the real-time priority `enter_realtime` puts threads at (the
/// daemons' `realtime_priority`; 0: none). Call before starting threads.
pub fn set_realtime_priority(priority: u8) {
    REALTIME_PRIORITY.store(priority.min(99), Ordering::Relaxed);
}

/// Puts the calling thread at the process's real-time priority, if one is
/// set: each thread an entry passes through on its way (the sender's
/// producer and I/O loop, the receiver's session (which receives and
/// stages), syncer and own thread (it purges under staging's lock),
/// apply's reader, loop and part threads) calls it first. Threads it starts
/// later begin at normal priority (`SCHED_RESET_ON_FORK`), so background
/// work (segment zero-fill, checkpoints, sync-check) never runs ahead of
/// the pipeline, except in a `realtime_section`. A refusal (no
/// `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low) is logged once (DMK0007W) and
/// the thread runs at normal priority: latency suffers, nothing else.
pub fn enter_realtime() {
    let priority = REALTIME_PRIORITY.load(Ordering::Relaxed);
    if priority == 0 {
        return;
    }
    let refused = set_scheduler(libc::SCHED_RR, priority).err();
    if REALTIME_TOLD.swap(true, Ordering::Relaxed) {
        return;
    }
    if let Some(error) = refused {
        tracing::warn!(
            "DMK0007W real-time priority {priority} refused ({error}); running at normal priority"
        );
    } else {
        tracing::info!("DMK0006I the threads that move entries run at real-time priority {priority} (SCHED_RR)");
    }
}

/// A stretch of a background thread at the process's real-time priority,
/// made by `realtime_section`; dropped, the thread is back at normal
/// scheduling.
#[derive(Debug)]
#[must_use = "the thread is real-time only while the section lives"]
pub struct RealtimeSection {
    entered: bool,
}

/// Puts a background thread (one `enter_realtime` leaves at normal
/// priority) at the real-time priority while it holds what the pipeline's
/// real-time threads wait for: a checkpoint taking a shard of the replica
/// tables, which apply's loop and part threads then wait to lock. At
/// normal priority such a thread is kept off both CPUs by the very
/// threads that wait for it (decisions.md 95). Nothing without a
/// real-time priority set, nor on a thread already at one (a pipeline
/// thread that checkpoints itself stays real-time after the section).
pub fn realtime_section() -> RealtimeSection {
    // SAFETY: pid 0 is the calling thread; the call reads nothing of ours.
    let policy = unsafe { libc::sched_getscheduler(0) } & !SCHED_RESET_ON_FORK;
    let entered = REALTIME_PRIORITY.load(Ordering::Relaxed) != 0
        && policy != libc::SCHED_RR
        && policy != libc::SCHED_FIFO;
    if entered {
        enter_realtime();
    }
    RealtimeSection { entered }
}

impl Drop for RealtimeSection {
    fn drop(&mut self) {
        if self.entered {
            // Always allowed: a thread may lower its own priority.
            let _ = set_scheduler(libc::SCHED_OTHER, 0);
        }
    }
}

/// Puts the calling thread under `policy` (`SCHED_RR`, `SCHED_FIFO`) at
/// real-time `priority`, reset on fork.
pub fn set_scheduler(policy: libc::c_int, priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread.
    match unsafe { libc::sched_setscheduler(0, policy | SCHED_RESET_ON_FORK, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_paced_removal_removes_the_file_whatever_its_size() {
        let dir = tempfile::tempdir().unwrap();
        for bytes in [0, 1, ZERO_FILL_BYTES as u64, 3 * ZERO_FILL_BYTES as u64 + 5] {
            let path = dir.path().join(format!("f{bytes}"));
            let file = File::create(&path).unwrap();
            file.set_len(bytes).unwrap();
            file.write_all_at(b"x", bytes.saturating_sub(1)).unwrap();
            drop(file);
            remove_paced(&path).unwrap();
            assert!(!path.exists(), "{bytes} bytes: still there");
        }
        let gone = remove_paced(&dir.path().join("never")).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_write_back_with_time_to_spare_pauses_as_long_as_each_piece_took() {
        let mut deadline =
            WriteBackDeadline::new(Instant::now() + Duration::from_secs(3600), 64 * MIB);
        let took = Duration::from_millis(4);
        assert_eq!(deadline.pause(MIB, took), took);
        assert_eq!(deadline.pause(MIB, took), took);
    }

    #[test]
    fn a_write_back_past_its_deadline_does_not_pause() {
        let mut deadline = WriteBackDeadline::new(Instant::now(), 64 * MIB);
        assert_eq!(
            deadline.pause(MIB, Duration::from_millis(4)),
            Duration::ZERO
        );
        // Nor when the bytes left would take longer than the time left.
        let mut deadline =
            WriteBackDeadline::new(Instant::now() + Duration::from_secs(10), 1025 * MIB);
        // 10 ms a MiB: the 1024 MiB left take 10.24 s.
        assert_eq!(
            deadline.pause(MIB, Duration::from_millis(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_write_back_near_its_deadline_spreads_the_spare_time_over_the_pieces_left() {
        let mut deadline =
            WriteBackDeadline::new(Instant::now() + Duration::from_secs(20), 1025 * MIB);
        // The 1024 MiB left take 10.24 s at 10 ms a MiB: 9.76 s spare over
        // 1024 pieces, 9.53 ms each (less the time this test takes: the
        // lower bound leaves it 1.5 s).
        let pause = deadline.pause(MIB, Duration::from_millis(10));
        assert!(
            pause > Duration::from_millis(8) && pause <= Duration::from_micros(9532),
            "{pause:?}"
        );
        // The last piece: nothing left to wait for but the piece's own share.
        let mut deadline = WriteBackDeadline::new(Instant::now() + Duration::from_secs(20), MIB);
        assert_eq!(
            deadline.pause(MIB, Duration::from_millis(10)),
            Duration::from_millis(10)
        );
    }
}
