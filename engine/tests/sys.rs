//! The thin wrappers over Linux calls (`engine::sys`) whose effect a test
//! can see.

mod common;

use std::fs::File;

use common::resident_pages;

#[test]
fn cache_in_brings_every_page_of_an_allocated_file_into_the_cache() {
    let len = 3u64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    engine::sys::preallocate(&file, len).unwrap();
    if resident_pages(&path).iter().any(|r| *r) {
        // tmpfs, say: allocating a file puts its pages in memory.
        eprintln!("skipped: this filesystem caches a file's pages as it allocates them");
        return;
    }
    engine::sys::cache_in(&file, len);
    let resident = resident_pages(&path);
    let missing = resident.iter().filter(|r| !**r).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} pages not cached",
        resident.len()
    );
}
