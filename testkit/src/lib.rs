//! Shared by the test suites of every crate: randomized tests take their
//! seed from `seed` (printed, so a failure can be replayed with `SEED=<n>`)
//! and draw from `Rng`; crash tests copy a directory as it stands with
//! `copy_dir`; full-disk tests write into a `SmallFs`.

/// A seed from `SEED` or the clock, printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    eprintln!("{test}: SEED={seed}");
    seed
}

/// splitmix64: a small deterministic generator; any seed (0 too) works.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // an endless stream, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (0 for `n` of 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Copies the files of directory `from` (not its subdirectories) into `to`:
/// the directory as a crash would leave it, when nothing is being written.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        std::fs::copy(item.path(), to.join(item.file_name())).unwrap();
    }
}

/// A temporary directory on a tmpfs of a given size, for tests of a full
/// disk: mounted when made, unmounted when dropped (a panicking test
/// unmounts it too).
#[derive(Debug)]
pub struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// A tmpfs of `bytes`, or `None` (with a note) where this process may
    /// not mount one (not root): CI runs as root.
    pub fn mount(bytes: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "skipped: cannot mount a tmpfs on {} (needs root)",
                dir.path().display()
            );
            return None;
        }
        Some(SmallFs { dir })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            eprintln!("could not unmount {}", self.dir.path().display());
        }
    }
}
