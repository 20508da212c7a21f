//! A staging store's doorbell: how its reader (apply, in another process)
//! sleeps until the receiver appends a frame instead of looking again every
//! millisecond (decisions.md 70). A small file in the staging directory,
//! mapped shared by both processes: an epoch word, a process-shared futex,
//! and a flag the reader raises before it sleeps. The receiver rings after
//! each append, and makes a system call only when the flag is raised; the
//! journal's segments wake the scraper the same way (`journal::segment`,
//! decisions.md 4).
//!
//! No wake-up is lost: the reader reads the epoch and raises the flag
//! (`prepare`) before it looks for a frame once more, and sleeps only if
//! the epoch is still what it read (`sys::ring` says why that suffices).
//!
//! Only a hint: a doorbell that cannot be made or mapped leaves the reader
//! looking every `idle_wait`, as before.
//!
//! A third word counts the receiver's rotations, so that a reader at the
//! end of its segment looks for a successor's file only when one may have
//! been begun (and every `LIST_EVERY` in any case), not at every look for
//! a frame (decisions.md 112).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use memmap2::MmapRaw;

/// The doorbell's file name in a staging directory.
const DOORBELL_FILE: &str = "doorbell";
const FILE_BYTES: u64 = 4096;
const EPOCH_AT: usize = 0;
const WAITING_AT: usize = 4;
const ROTATIONS_AT: usize = 8;

#[derive(Debug)]
pub(crate) struct Doorbell {
    map: MmapRaw,
}

impl Doorbell {
    /// The receiver's side: makes the file when it is missing.
    pub(crate) fn create(dir: &Path) -> std::io::Result<Doorbell> {
        Doorbell::map(dir, true)
    }

    /// The reader's side: `NotFound` until a receiver has made it.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Doorbell> {
        Doorbell::map(dir, false)
    }

    fn map(dir: &Path, create: bool) -> std::io::Result<Doorbell> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(dir.join(DOORBELL_FILE))?;
        if !create && file.metadata()?.len() < FILE_BYTES {
            // Being made by the receiver right now: looked at next time.
            return Err(std::io::ErrorKind::NotFound.into());
        }
        if create {
            // Its block allocated, not only its length set: a store to a
            // mapped page with no block behind it on a full disk is a
            // SIGBUS, not an error. A no-op for a file made before.
            crate::sys::preallocate(&file, FILE_BYTES)?;
        }
        Ok(Doorbell {
            map: MmapRaw::map_raw(&file)?,
        })
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= self.map.len());
        // SAFETY: in bounds and 4-byte aligned (the map is page aligned);
        // the map lives as long as `self`, and every access to these words,
        // in either process, is atomic.
        unsafe { AtomicU32::from_ptr(self.map.as_mut_ptr().add(at).cast()) }
    }

    /// After an append: wakes a reader that said it sleeps, once.
    pub(crate) fn ring(&self) {
        crate::sys::ring(self.word(EPOCH_AT), self.word(WAITING_AT));
    }

    /// After a rotation has begun the next segment's file.
    pub(crate) fn rotated(&self) {
        self.word(ROTATIONS_AT)
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Rotations so far (wrapping): the reader looks for a successor's
    /// file when this has changed since its last look.
    pub(crate) fn rotations(&self) -> u32 {
        self.word(ROTATIONS_AT)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Before the reader's last look: the epoch to `wait` on.
    pub(crate) fn prepare(&self) -> u32 {
        crate::sys::raise_waiting(self.word(EPOCH_AT), self.word(WAITING_AT))
    }

    /// Sleeps until a ring after `prepare` returned `seen`, or `timeout`.
    pub(crate) fn wait(&self, seen: u32, timeout: Duration) {
        crate::sys::futex_wait(self.word(EPOCH_AT), seen, timeout);
    }
}
