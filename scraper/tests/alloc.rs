//! The scraper's steady state allocates nothing per entry: a counting global
//! allocator watches a thread scrape 200,000 entries in batches.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::journal::{Durability, Journal, JournalOptions, NewEntry};
use scraper::{ObjectSelector, ScrapeOptions, Scraper};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local!(static COUNTING: Cell<bool> = const { Cell::new(false) });

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn scrape_counting(selector: ObjectSelector) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    // One large segment: segment switches open files (and allocate) by design.
    let options = JournalOptions {
        durability: Durability::None,
        ..JournalOptions::default()
    };
    let journal = Journal::open(dir.path(), options).unwrap();
    journal.append(&NewEntry::create_object(1, "A/T")).unwrap();
    journal.append(&NewEntry::create_object(2, "B/T")).unwrap();
    let mut w = journal.appender();
    let after = [7u8; 100];
    for i in 0..200_000u64 {
        w.append(&NewEntry::put(1 + i % 2, &i.to_le_bytes(), &after))
            .unwrap();
    }
    let mut scraper = Scraper::open(
        dir.path(),
        ScrapeOptions {
            selector,
            batch_entries_max: 1000,
            ..ScrapeOptions::default()
        },
    )
    .unwrap();
    // Warm up: the first batch sizes the selection cache.
    let _ = scraper.next_batch(Duration::ZERO).unwrap().len();
    COUNTING.with(|c| c.set(true));
    let mut entries = 0u64;
    let mut checksum = 0u64;
    loop {
        let batch = scraper.next_batch(Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        for e in batch.iter() {
            checksum = checksum.wrapping_add(e.sequence() ^ e.after()[0] as u64);
            entries += 1;
        }
    }
    COUNTING.with(|c| c.set(false));
    assert!(checksum != 0);
    (entries, ALLOCATIONS.swap(0, Ordering::Relaxed))
}

#[test]
fn scraping_allocates_nothing_per_entry() {
    let (entries, allocations) = scrape_counting(ObjectSelector::all());
    assert!(entries > 190_000, "scraped {entries}");
    assert_eq!(
        allocations, 0,
        "{allocations} allocations while scraping {entries} entries"
    );
    let (entries, allocations) = scrape_counting(ObjectSelector::new(&["A/*"], &[]).unwrap());
    assert!(entries > 90_000, "scraped {entries}");
    assert_eq!(
        allocations, 0,
        "{allocations} allocations while scraping {entries} selected entries"
    );
}
