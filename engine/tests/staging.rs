//! The staging store: frames staged in order without gaps or duplicates,
//! durable across reopen, torn tails truncated, damage refused, a disk budget
//! that pushes back, purge after apply, and fsync failure poisoning.

mod common;

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{assert_none_cached, dir_that_drops_cached_pages, resident_mib};
use engine::frame::{Codec, FrameEncoder};
use engine::journal::entry::{decode, encode_to_vec};
use engine::journal::{NewEntry, SyncFile};
use engine::staging::{Appended, Staging, StagingError, StagingOptions, StagingReader};

/// A frame of `count` entries with sequences `first..`, then position `next`.
fn frame(first: u64, count: u64, next: u64) -> Vec<u8> {
    frame_from(first, first, count, next)
}

/// As `frame`, covering positions from `start` (entries before `first` skipped).
fn frame_from(start: u64, first: u64, count: u64, next: u64) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut out = Vec::new();
            let image = vec![(first + i) as u8; 100];
            encode_to_vec(
                &NewEntry::put(1, &(first + i).to_le_bytes(), &image),
                first + i,
                0,
                &mut out,
            );
            out
        })
        .collect();
    let mut out = Vec::new();
    FrameEncoder::new(Codec::None)
        .unwrap()
        .encode(
            1,
            start,
            next,
            encoded.iter().map(|e| decode(e).unwrap()),
            &mut out,
        )
        .unwrap();
    out
}

/// Frames covering sequences 1.., ten entries each.
fn frames(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| frame(1 + 10 * i, 10, 11 + 10 * i)).collect()
}

fn small() -> StagingOptions {
    StagingOptions {
        segment_bytes: 8 * 1024,
        ..StagingOptions::default()
    }
}

#[test]
fn staged_frames_survive_reopen_in_order_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let all = frames(30);
    {
        let (mut staging, recovery) = Staging::open(dir.path(), small()).unwrap();
        assert_eq!(recovery.staged_position, 1);
        for f in &all[..20] {
            assert!(matches!(
                staging.append(f).unwrap(),
                Appended::Staged { .. }
            ));
        }
        // A resend after a reconnect: ignored.
        assert_eq!(staging.append(&all[19]).unwrap(), Appended::AlreadyStaged);
        assert_eq!(staging.durable_position(), 1);
        assert_eq!(staging.sync().unwrap(), 201);
    }
    let (mut staging, recovery) = Staging::open(dir.path(), small()).unwrap();
    assert_eq!(recovery.staged_position, 201);
    assert_eq!(recovery.truncated_bytes, 0);
    for f in &all[20..] {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(staging.read_all().unwrap(), all);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() > 3,
        "expected rotation"
    );
}

#[test]
fn a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut staging, _) = Staging::open(dir.path(), small()).unwrap();
    staging.append(&frame(1, 5, 6)).unwrap();
    let err = staging.append(&frame(10, 5, 15)).unwrap_err();
    assert!(
        matches!(
            err,
            StagingError::Gap {
                first: 10,
                staged: 6
            }
        ),
        "{err}"
    );
    // A frame overlapping what is staged is refused: it would stage 4 and 5 twice.
    let err = staging.append(&frame(4, 5, 9)).unwrap_err();
    assert!(
        matches!(err, StagingError::Overlap { staged: 6, .. }),
        "{err}"
    );
    // One that starts at the staged position is taken, even when selection
    // skipped its first positions.
    assert!(matches!(
        staging.append(&frame_from(6, 8, 2, 12)).unwrap(),
        Appended::Staged {
            staged_position: 12
        }
    ));
    // An empty frame moves the position (everything in it was filtered).
    assert!(matches!(
        staging.append(&frame_from(12, 12, 0, 20)).unwrap(),
        Appended::Staged {
            staged_position: 20
        }
    ));
}

#[test]
fn a_torn_tail_is_truncated_at_every_byte_and_damage_before_it_is_refused() {
    let template = tempfile::tempdir().unwrap();
    let all = frames(4);
    {
        let (mut staging, _) = Staging::open(template.path(), StagingOptions::default()).unwrap();
        for f in &all {
            staging.append(f).unwrap();
        }
        staging.sync().unwrap();
    }
    let path = template.path().join(format!("{:020}.stg", 1));
    let original = std::fs::read(&path).unwrap();
    let last_start = original.len() - all[3].len();
    for cut in last_start..original.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:020}.stg", 1)), &original[..cut]).unwrap();
        let (staging, recovery) = Staging::open(dir.path(), StagingOptions::default()).unwrap();
        assert_eq!(recovery.staged_position, 31, "cut at {cut}");
        assert_eq!(recovery.truncated_bytes as usize, cut - last_start);
        assert_eq!(staging.read_all().unwrap(), all[..3]);
    }
    // A flipped byte in the second frame, with valid frames after it.
    let dir = tempfile::tempdir().unwrap();
    let mut damaged = original.clone();
    let second = 16 + all[0].len();
    damaged[second + 100] ^= 0x40;
    std::fs::write(dir.path().join(format!("{:020}.stg", 1)), &damaged).unwrap();
    let err = Staging::open(dir.path(), StagingOptions::default()).unwrap_err();
    assert!(
        matches!(err, StagingError::Corrupt { offset, .. } if offset as usize == second),
        "{err}"
    );
}

/// A store of 4 KiB segments in a 16 KiB budget.
fn tight_budget(dir: &std::path::Path) -> Staging {
    let options = StagingOptions {
        segment_bytes: 4 * 1024,
        budget_bytes: 16 * 1024,
        ..StagingOptions::default()
    };
    Staging::open(dir, options).unwrap().0
}

/// Appends `all` until the store refuses one: how many it took, and why it
/// refused. With `wait_ahead`, each append waits for the segment made ahead.
fn append_until_refused(
    staging: &mut Staging,
    all: &[Vec<u8>],
    wait_ahead: bool,
) -> (usize, StagingError) {
    let mut staged = 0;
    loop {
        if wait_ahead {
            staging.await_prepared_segment();
        }
        match staging.append(&all[staged]) {
            Ok(_) => staged += 1,
            Err(err) => return (staged, err),
        }
    }
}

#[test]
fn the_budget_pushes_back_until_apply_purges() {
    let dir = tempfile::tempdir().unwrap();
    let all = frames(40);
    let mut staging = tight_budget(dir.path());
    let (staged, err) = append_until_refused(&mut staging, &all, false);
    assert!(err.to_string().starts_with("HAX0012E"), "{err}");
    assert!(staging.held_bytes() <= 16 * 1024);
    staging.sync().unwrap();
    // Apply has passed half of what is staged: purge frees room.
    let applied = 1 + 10 * (staged as u64 / 2);
    assert!(staging.purge_through(applied).unwrap() > 0);
    staging.append(&all[staged]).unwrap();
    assert!(staging.read_all().unwrap().last() == Some(&all[staged]));
}

#[derive(Debug)]
struct FailingSync(AtomicUsize);

impl SyncFile for FailingSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.0.fetch_add(1, Ordering::SeqCst) >= 1 {
            return Err(io::Error::other("injected EIO"));
        }
        file.sync_data()
    }
}

#[test]
fn a_failed_fsync_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let options = StagingOptions {
        syncer: Arc::new(FailingSync(AtomicUsize::new(0))),
        ..StagingOptions::default()
    };
    let (mut staging, _) = Staging::open(dir.path(), options).unwrap();
    let all = frames(3);
    staging.append(&all[0]).unwrap();
    assert_eq!(staging.sync().unwrap(), 11);
    staging.append(&all[1]).unwrap();
    assert!(matches!(
        staging.sync(),
        Err(StagingError::SyncFailed { .. })
    ));
    assert_eq!(
        staging.durable_position(),
        11,
        "a failed sync must not advance the durable position"
    );
    assert!(matches!(
        staging.append(&all[2]),
        Err(StagingError::Poisoned { .. })
    ));
}

#[test]
fn a_segment_torn_at_creation_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let all = frames(5);
    {
        let (mut staging, _) = Staging::open(dir.path(), StagingOptions::default()).unwrap();
        for f in &all[..4] {
            staging.append(f).unwrap();
        }
        staging.sync().unwrap();
    }
    // A rotation created the next segment and crashed before its header was
    // durable: a 3-byte file named at the staged position (41).
    std::fs::write(dir.path().join(format!("{:020}.stg", 41)), b"REP").unwrap();
    let (mut staging, recovery) = Staging::open(dir.path(), StagingOptions::default()).unwrap();
    assert_eq!((recovery.frames, recovery.staged_position), (0, 41));
    staging.append(&all[4]).unwrap();
    staging.sync().unwrap();
    assert_eq!(staging.read_all().unwrap(), all);
}

/// Everything a reader hands out until it says "nothing more yet".
fn read_available(reader: &mut StagingReader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while reader.next(&mut buf).unwrap().is_some() {
        out.push(buf.clone());
    }
    out
}

#[test]
fn a_reader_follows_the_store_across_segments_while_it_is_written() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(60);
    // The store does not exist yet: nothing to read, no error.
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert!(read_available(&mut reader).is_empty());
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut seen = Vec::new();
    for (i, f) in all.iter().enumerate() {
        staging.append(f).unwrap();
        if i % 7 == 0 {
            seen.extend(read_available(&mut reader));
        }
    }
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all);
    assert_eq!(reader.position(), 601);
    assert!(
        std::fs::read_dir(&dir).unwrap().count() > 3,
        "expected rotation"
    );
}

/// A store in `<root>/staging` (one segment) holding `all[..staged]`,
/// synced.
fn one_segment_store(
    root: &std::path::Path,
    all: &[Vec<u8>],
    staged: usize,
) -> (std::path::PathBuf, Staging) {
    let dir = root.join("staging");
    let staging = staged_store(&dir, &all[..staged], StagingOptions::default());
    (dir, staging)
}

/// A store in `dir` with `frames` appended and synced.
fn staged_store(dir: &std::path::Path, frames: &[Vec<u8>], options: StagingOptions) -> Staging {
    let (mut staging, _) = Staging::open(dir, options).unwrap();
    for f in frames {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    staging
}

#[test]
fn a_reader_waits_for_a_frame_being_written_and_starts_mid_store() {
    let root = tempfile::tempdir().unwrap();
    let all = frames(5);
    let (dir, staging) = one_segment_store(root.path(), &all, 4);
    drop(staging);
    // Write the fifth frame a piece at a time, as a receiver would be seen
    // mid-write by another process.
    let segment = dir.join(format!("{:020}.stg", 1));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    // From position 25: the frame holding 21..31 is the first handed out.
    let mut reader = StagingReader::open(&dir, 25).unwrap();
    assert_eq!(read_available(&mut reader), all[2..4]);
    let last = &all[4];
    for piece in last.chunks(last.len() / 5 + 1) {
        assert!(read_available(&mut reader).is_empty());
        std::io::Write::write_all(&mut file, piece).unwrap();
    }
    assert_eq!(read_available(&mut reader), all[4..]);
}

#[test]
fn a_reader_refuses_purged_positions_and_damage_in_a_finished_segment() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(40);
    let mut staging = staged_store(&dir, &all, small());
    assert!(staging.purge_through(200).unwrap() > 0);
    let err = StagingReader::open(&dir, 1).unwrap_err();
    assert!(err.to_string().starts_with("HAX0009E"), "{err}");
    let mut reader = StagingReader::open(&dir, 201).unwrap();
    assert_eq!(read_available(&mut reader), all[20..]);

    // Flip a byte in the body of the first frame of a segment that is not
    // the newest: the reader stops there and names it.
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let damaged = &segments[0];
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[16 + 80] ^= 0x10;
    std::fs::write(damaged, &bytes).unwrap();
    let start: u64 = damaged
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut reader = StagingReader::open(&dir, start).unwrap();
    let err = reader.next(&mut Vec::new()).unwrap_err();
    assert!(
        err.to_string().starts_with("HAX0002E")
            && err.to_string().contains(&damaged.display().to_string()),
        "{err}"
    );
}

/// The start position a segment file is named by.
fn start_of(path: &std::path::Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// The segment files in `dir`, oldest first, with their lengths: those
/// under their names and those a rotation began and the next sync names
/// (`*.stg-next`).
fn segment_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "stg" || e == "stg-next"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect();
    out.sort();
    out
}

/// Files in `dir` whose name ends in `.<extension>`.
fn files_ending(dir: &std::path::Path, extension: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == extension)
        })
        .count()
}

/// Segments made ahead and purged files kept for reuse.
fn spare_files(dir: &std::path::Path) -> usize {
    files_ending(dir, "stg-spare")
}

#[test]
fn segments_made_ahead_are_begun_at_rotation_and_their_zero_ends_read_as_nothing_yet() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(40);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    let mut seen = Vec::new();
    for f in &all[..20] {
        assert!(staging.await_prepared_segment(), "a segment is made ahead");
        staging.append(f).unwrap();
        seen.extend(read_available(&mut reader));
    }
    staging.sync().unwrap();
    assert_eq!(
        seen,
        all[..20],
        "zeros after the last frame read as nothing yet"
    );
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "expected rotation: {files:?}");
    assert_eq!(
        files.last().unwrap().1,
        8 * 1024,
        "the active segment was made ahead, full length"
    );
    // Finished segments keep their made-ahead length: a whole run of
    // frames up to the successor's name, then zeros (no cut at rotation,
    // decisions.md 111).
    let mut next_frame = 0;
    for (i, (path, len)) in files[..files.len() - 1].iter().enumerate() {
        if i > 0 {
            // The first grew by appends until a segment made ahead was ready.
            assert_eq!(*len, 8 * 1024, "{} keeps its length", path.display());
        }
        let successor = start_of(&files[i + 1].0);
        let bytes = std::fs::read(path).unwrap();
        let mut at = 16;
        // Frame k covers positions 1 + 10k .. 11 + 10k.
        while 1 + 10 * next_frame as u64 != successor {
            let frame = &all[next_frame];
            assert_eq!(
                &bytes[at..at + frame.len()],
                &frame[..],
                "{}",
                path.display()
            );
            at += frame.len();
            next_frame += 1;
        }
        assert!(
            bytes[at..].iter().all(|b| *b == 0),
            "{} holds only zeros after its frames",
            path.display()
        );
    }
    assert!(staging.held_bytes() >= files.iter().map(|(_, len)| len).sum::<u64>() + 8 * 1024);
    assert!(staging.await_prepared_segment());
    assert_eq!(spare_files(&dir), 1);
    drop(staging);
    assert_eq!(
        spare_files(&dir),
        0,
        "closing removes the segment made ahead"
    );

    // Reopened: the zero end is no torn tail; appends go on after the last frame.
    let (mut staging, recovery) = Staging::open(&dir, small()).unwrap();
    assert_eq!(
        (recovery.staged_position, recovery.truncated_bytes),
        (201, 0)
    );
    for f in &all[20..30] {
        assert!(staging.await_prepared_segment());
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(staging.read_all().unwrap(), all[..30]);
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all[..30]);
    drop(staging);

    // A torn frame written into the zero end (half of the next frame): cut
    // off, and the store goes on from there.
    let (active, len) = segment_files(&dir).pop().unwrap();
    let start: u64 = active
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = (start as usize - 1) / 10;
    let end: u64 = 16 + all[first..30].iter().map(|f| f.len() as u64).sum::<u64>();
    assert!(end < len, "the last segment was made ahead: {end} of {len}");
    let torn = &all[30][..all[30].len() / 2];
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(&active).unwrap(),
        torn,
        end,
    )
    .unwrap();
    let (mut staging, recovery) = Staging::open(&dir, small()).unwrap();
    assert_eq!(
        (recovery.staged_position, recovery.truncated_bytes),
        (301, len - end)
    );
    assert_eq!(std::fs::metadata(&active).unwrap().len(), end);
    for f in &all[30..] {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(staging.read_all().unwrap(), all);
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all);
}

#[test]
fn a_full_budget_gives_up_the_segment_made_ahead_before_refusing_frames() {
    let dir = tempfile::tempdir().unwrap();
    let all = frames(40);
    let mut staging = tight_budget(dir.path());
    let (staged, err) = append_until_refused(&mut staging, &all, true);
    assert!(err.to_string().starts_with("HAX0012E"), "{err}");
    assert_eq!(spare_files(dir.path()), 0, "given up for frames");
    let on_disk: u64 = segment_files(dir.path()).iter().map(|(_, len)| len).sum();
    assert!(on_disk <= 16 * 1024 && staging.held_bytes() <= 16 * 1024);
    assert!(
        on_disk + all[staged].len() as u64 > 16 * 1024 - 4 * 1024,
        "refused while a whole segment's room was left: {on_disk} bytes held"
    );
}

#[test]
fn a_reader_refuses_a_damaged_frame_that_a_whole_frame_follows_in_the_newest_segment() {
    let root = tempfile::tempdir().unwrap();
    let all = frames(5);
    let (dir, staging) = one_segment_store(root.path(), &all, 5);
    let segment = dir.join(format!("{:020}.stg", 1));
    let third = 16 + all[0].len() + all[1].len();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[third + 100] ^= 0x01;
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(&segment).unwrap(),
        &bytes[third + 100..third + 101],
        (third + 100) as u64,
    )
    .unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    let mut buf = Vec::new();
    assert!(reader.next(&mut buf).unwrap().is_some());
    assert!(reader.next(&mut buf).unwrap().is_some());
    let err = reader.next(&mut buf).unwrap_err();
    assert!(
        matches!(&err, StagingError::Corrupt { offset, .. } if *offset as usize == third),
        "{err}"
    );
    // Damage in the last frame has nothing after it: a write in progress,
    // as far as a reader can tell, so it waits.
    let last = bytes.len() - all[4].len();
    bytes[third + 100] ^= 0x01;
    bytes[last + 100] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all[..4]);
    drop(staging);
}

/// Damage at the end of a segment the reader took for a write in progress
/// (nothing after it, no later segment when it looked) is reported once a
/// later segment appears, though the reader lists the directory at most
/// every 20 ms while nothing comes: the report waits that long, no longer.
#[test]
fn damage_taken_for_a_write_in_progress_is_reported_once_a_later_segment_appears() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(40);
    drop(staged_store(&dir, &all, small()));
    let segments = segment_files(&dir);
    assert!(segments.len() >= 3, "{segments:?}");
    // The first segment's last frame damaged; the later segments set aside.
    let (first, first_len) = &segments[0];
    let frames_in_first = first_frame_of(&segments[1].0);
    let last = *first_len as usize - all[frames_in_first - 1].len();
    let mut bytes = std::fs::read(first).unwrap();
    bytes[last + 100] ^= 0x01;
    std::fs::write(first, &bytes).unwrap();
    let aside = root.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for (path, _) in &segments[1..] {
        std::fs::rename(path, aside.join(path.file_name().unwrap())).unwrap();
    }
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all[..frames_in_first - 1]);

    for (path, _) in &segments[1..] {
        std::fs::rename(aside.join(path.file_name().unwrap()), path).unwrap();
    }
    let asked = std::time::Instant::now();
    let err = loop {
        match reader.next(&mut Vec::new()) {
            Ok(None) => {
                assert!(
                    asked.elapsed() < std::time::Duration::from_secs(10),
                    "no damage reported 10 s after a later segment appeared"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(Some(_)) => panic!("a damaged frame handed out"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(&err, StagingError::Corrupt { path, offset, .. }
            if path == first && *offset as usize == last),
        "{err}"
    );
    assert!(err.to_string().starts_with("HAX0002E"), "{err}");
}

/// The index of the frame that begins a segment named `start` in `frames(n)`.
fn first_frame_of(segment: &std::path::Path) -> usize {
    let start: u64 = segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (start as usize - 1) / 10
}

#[test]
fn purged_segments_files_are_reused_under_a_lagging_reader_and_their_old_frames_read_as_the_end() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(400);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    let mut seen = Vec::new();
    // Which name first had each inode: a segment whose inode an earlier
    // segment had is a reused file.
    let mut first_name = std::collections::HashMap::new();
    let mut reused = 0;
    let mut staged = 0;
    let (active, end) = loop {
        assert!(staged < all.len(), "no reused segment with two frames");
        staging.await_prepared_segment();
        staging.append(&all[staged]).unwrap();
        staged += 1;
        staging.sync().unwrap();
        // The reader lags now and then, so it is sometimes parked at the
        // end of a segment that is purged and reused underneath it; apply
        // (here: the reader) decides what is purged.
        if staged % 3 != 0 {
            seen.extend(read_available(&mut reader));
        }
        staging.purge_through(reader.position()).unwrap();
        let (active, len) = segment_files(&dir).pop().unwrap();
        let inode = std::fs::metadata(&active).unwrap().ino();
        let first = first_name.entry(inode).or_insert_with(|| active.clone());
        let is_reused = *first != active;
        if is_reused && staged - first_frame_of(&active) == 1 {
            reused += 1;
        }
        let end: u64 = 16
            + all[first_frame_of(&active)..staged]
                .iter()
                .map(|f| f.len() as u64)
                .sum::<u64>();
        let old = std::fs::read(&active).unwrap()[end as usize..].to_vec();
        if reused >= 3
            && is_reused
            && staged - first_frame_of(&active) >= 2
            && old.iter().any(|&b| b != 0)
        {
            assert_eq!(len, 8 * 1024, "a reused segment is made full length");
            break (active, end);
        }
    };
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all[..staged], "frames read once each, in order");
    let kept = first_frame_of(&segment_files(&dir)[0].0);
    assert_eq!(staging.read_all().unwrap(), all[kept..staged]);
    drop(staging);

    // Reopened: the old frames after the last one are no torn tail, and
    // the file keeps its length (appends overwrite them).
    let len = std::fs::metadata(&active).unwrap().len();
    let (mut staging, recovery) = Staging::open(&dir, small()).unwrap();
    assert_eq!(
        (recovery.staged_position, recovery.truncated_bytes),
        (1 + 10 * staged as u64, 0)
    );
    assert_eq!(std::fs::metadata(&active).unwrap().len(), len);
    staging.append(&all[staged]).unwrap();
    staging.sync().unwrap();
    staged += 1;
    assert_eq!(staging.read_all().unwrap(), all[kept..staged]);
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all[..staged]);
    drop(staging);

    // A torn frame written over the old frames: cut off as a torn tail.
    let end = end + all[staged - 1].len() as u64;
    let torn = &all[staged][..all[staged].len() / 2];
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(&active).unwrap(),
        torn,
        end,
    )
    .unwrap();
    let (staging, recovery) = Staging::open(&dir, small()).unwrap();
    assert_eq!(
        (recovery.staged_position, recovery.truncated_bytes),
        (1 + 10 * staged as u64, len - end)
    );
    assert_eq!(staging.read_all().unwrap(), all[kept..staged]);
    drop(staging);

    // Damage in the reused segment's first frame, with its own frames
    // after it: refused, not taken for the end.
    let mut bytes = std::fs::read(&active).unwrap();
    bytes[16 + 60] ^= 0x08;
    std::fs::write(&active, &bytes).unwrap();
    let err = Staging::open(&dir, small()).unwrap_err();
    assert!(
        matches!(err, StagingError::Corrupt { offset: 16, .. }),
        "{err}"
    );
}

/// Where the first hole of `path` begins (its length when it has none).
fn first_hole(path: &std::path::Path) -> u64 {
    use std::os::fd::AsRawFd;
    let file = File::open(path).unwrap();
    // SAFETY: lseek on a valid, owned file descriptor.
    let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert!(at >= 0, "SEEK_HOLE on {}", path.display());
    at as u64
}

/// New segments made ahead are zero-filled while apply keeps within a
/// segment of the staged end, and only allocated once it is further
/// behind (the backlog, not the fill, is then what entries wait for).
#[test]
fn new_segments_are_zero_filled_only_while_apply_keeps_up() {
    let root = tempfile::tempdir().unwrap();
    // Only a filesystem that reports allocated, unwritten blocks as a
    // hole (ext4, XFS) tells the two kinds of segment apart.
    let probe = root.path().join("probe");
    let file = File::create(&probe).unwrap();
    // SAFETY: fallocate on a valid, owned file descriptor.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, 0, 1 << 16) };
    if rc != 0 || first_hole(&probe) != 0 {
        eprintln!("skipped: this filesystem does not report unwritten blocks as holes");
        return;
    }
    let dir = root.path().join("staging");
    let options = StagingOptions {
        segment_bytes: 1 << 16,
        ..StagingOptions::default()
    };
    let (mut staging, _) = Staging::open(&dir, options).unwrap();
    let mut filled = Vec::new();
    for f in frames(400) {
        assert!(staging.await_prepared_segment());
        staging.append(&f).unwrap();
        let files = segment_files(&dir);
        let (active, len) = files.last().unwrap();
        if files.len() >= 2 && filled.len() < files.len() - 1 {
            // Just rotated: nothing purged, so apply is as far behind as
            // the segments held.
            filled.push(first_hole(active) >= *len);
        }
    }
    assert!(filled.len() >= 4, "expected rotations: {filled:?}");
    // The 2nd and 3rd segments were made while one and two were held; the
    // rest while three or more were.
    assert_eq!(filled[..2], [true, true], "{filled:?}");
    assert!(filled[2..].iter().all(|f| !f), "{filled:?}");
}

/// Inode numbers of the store's segment made ahead and files kept for
/// reuse (`*.stg-spare`).
fn spare_inodes(dir: &std::path::Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "stg-spare"))
        .map(|p| std::fs::metadata(p).unwrap().ino())
        .collect();
    out.sort();
    out
}

/// `reserve_segments` files are made at open, whole and written (no
/// hole), and the first rotations take them instead of new files; as many
/// as the budget has room for, none without `prepare_segments`.
#[test]
fn segments_reserved_at_open_are_the_first_rotations_files() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let segment_bytes = 1 << 16;
    let options = |reserve_segments, budget_bytes, prepare_segments| StagingOptions {
        segment_bytes,
        budget_bytes,
        prepare_segments,
        reserve_segments,
        ..StagingOptions::default()
    };
    let dir = root.path().join("reserved");
    let (mut staging, _) = Staging::open(&dir, options(3, 64 << 30, true)).unwrap();
    assert!(staging.await_prepared_segment());
    let reserved = spare_inodes(&dir);
    // Three made; the next segment made ahead is one of them.
    assert_eq!(reserved.len(), 3, "{reserved:?}");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "stg-spare") {
            assert_eq!(std::fs::metadata(&path).unwrap().len(), segment_bytes);
            assert!(
                first_hole(&path) >= segment_bytes,
                "{} has a hole",
                path.display()
            );
        }
    }
    let mut rotated_into = Vec::new();
    for f in frames(400) {
        assert!(staging.await_prepared_segment());
        staging.append(&f).unwrap();
        let files = segment_files(&dir);
        if files.len() > rotated_into.len() + 1 {
            let ino = std::fs::metadata(&files.last().unwrap().0).unwrap().ino();
            rotated_into.push(ino);
        }
    }
    assert!(
        rotated_into.len() >= 4,
        "expected rotations: {rotated_into:?}"
    );
    assert!(
        rotated_into[..3].iter().all(|ino| reserved.contains(ino)),
        "the first three rotations' files {rotated_into:?} are the reserved {reserved:?}"
    );
    assert!(!reserved.contains(&rotated_into[3]), "then a new file");
    drop(staging);

    // Without the option, or with the budget full, fewer or none.
    let dir = root.path().join("unreserved");
    let (staging, _) = Staging::open(&dir, options(0, 64 << 30, true)).unwrap();
    assert!(staging.await_prepared_segment());
    assert_eq!(spare_files(&dir), 1, "only the segment made ahead");
    drop(staging);
    let dir = root.path().join("tight");
    let (staging, _) = Staging::open(&dir, options(3, 5 * segment_bytes, true)).unwrap();
    assert!(staging.await_prepared_segment());
    assert_eq!(
        spare_files(&dir),
        2,
        "room for two beside the active segment grown and the one made ahead"
    );
    drop(staging);
    let dir = root.path().join("unprepared");
    let _staging = Staging::open(&dir, options(3, 64 << 30, false)).unwrap();
    assert_eq!(spare_files(&dir), 0);
}

/// Frames of 500 entries (about 80 KB), covering sequences 1...
fn large_frames(n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| frame(1 + 500 * i, 500, 501 + 500 * i))
        .collect()
}

#[test]
fn a_reader_gives_back_the_pages_it_has_left_behind() {
    let Some(root) = dir_that_drops_cached_pages() else {
        return;
    };
    // One segment of about 48 MB, synced, all of it cached.
    let all = large_frames(600);
    let (dir, staging) = one_segment_store(root.path(), &all, all.len());
    let (segment, _) = segment_files(&dir).pop().unwrap();
    let before = resident_mib(&segment);
    assert!(before.iter().all(|r| *r), "just written: {before:?}");
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader).len(), all.len());
    let after = resident_mib(&segment);
    // What lies 32 MiB or more behind the reader is given back; its last
    // 32 MiB stay (their frames may not be durable yet when read).
    let behind = after.len() - 33;
    assert!(
        after[..behind - 8].iter().all(|r| !*r),
        "pages far behind the reader are still cached: {after:?}"
    );
    assert!(
        after[after.len() - 30..].iter().all(|r| *r),
        "pages near the reader were dropped: {after:?}"
    );
    // Given back is not lost: a reader from the start reads them all
    // again, from the disk.
    let mut again = StagingReader::open(&dir, 1).unwrap();
    assert!(
        read_available(&mut again) == all,
        "frames read again differ"
    );
    drop(staging);
}

#[test]
fn a_reader_gives_back_each_segment_it_has_finished() {
    let Some(root) = dir_that_drops_cached_pages() else {
        return;
    };
    let dir = root.path().join("staging");
    let (mut staging, _) = Staging::open(
        &dir,
        StagingOptions {
            segment_bytes: 4 << 20,
            ..StagingOptions::default()
        },
    )
    .unwrap();
    let all = large_frames(200);
    for f in &all {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    let segments = segment_files(&dir);
    assert!(segments.len() >= 3, "expected rotation: {segments:?}");
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader).len(), all.len());
    let (last, finished) = segments.split_last().unwrap();
    for (path, _) in finished {
        assert_none_cached(path);
    }
    // The one being read (and written) stays.
    assert!(resident_mib(&last.0)[0]);
}

/// Bytes the calling thread has had read from storage for it
/// (`/proc/thread-self/io`), or `None` where the kernel does not count them.
fn thread_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|n| n.trim().parse().ok())
}

/// `dir_that_drops_cached_pages`, where the kernel also counts the calling
/// thread's disk reads, or `None` (with a note).
fn dir_where_disk_reads_show() -> Option<tempfile::TempDir> {
    let root = dir_that_drops_cached_pages()?;
    if thread_read_bytes().is_none() {
        eprintln!("skipped: this kernel does not count a thread's reads");
        return None;
    }
    Some(root)
}

#[test]
fn appends_into_a_segments_made_ahead_length_read_nothing_from_the_disk() {
    let Some(root) = dir_where_disk_reads_show() else {
        return;
    };
    let dir = root.path().join("staging");
    let path = made_ahead_segment(&dir);
    let (mut staging, _) = Staging::open(&dir, made_ahead_options()).unwrap();
    drop_all_cached(&path);

    let all = large_frames(40);
    let before = thread_read_bytes().unwrap();
    for f in &all {
        staging.append(f).unwrap();
    }
    let read = thread_read_bytes().unwrap() - before;
    // The first append starts inside a page that is not cached: that one
    // page is read. Each later one starts in the page the one before
    // wrote whole.
    assert!(
        read <= 4096,
        "{} appends had {read} bytes read from the disk",
        all.len()
    );
    staging.sync().unwrap();
    drop(staging);
    let (staging, recovery) = Staging::open(&dir, made_ahead_options()).unwrap();
    assert_eq!(recovery.frames as usize, all.len());
    assert_eq!(staging.read_all().unwrap(), all);
}

/// A store's first segment made ahead, as the receiver finds one: its
/// header, then 8 MiB of zeros written to the disk (a reused file's
/// earlier frames would do the same).
fn made_ahead_segment(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{:020}.stg", 1));
    let mut bytes = vec![0u8; 16];
    bytes[..8].copy_from_slice(&engine::staging::STAGING_MAGIC);
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    bytes.resize(8 << 20, 0);
    std::fs::write(&path, &bytes).unwrap();
    path
}

fn made_ahead_options() -> StagingOptions {
    StagingOptions {
        segment_bytes: 8 << 20,
        prepare_segments: false,
        ..StagingOptions::default()
    }
}

/// Stages `frames` into the made-ahead store at `dir`, syncs and closes it.
fn stage_and_close(dir: &std::path::Path, frames: &[Vec<u8>]) {
    let (mut staging, _) = Staging::open(dir, made_ahead_options()).unwrap();
    for f in frames {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
}

/// Makes `path` durable and drops every page of it from the cache.
fn drop_all_cached(path: &std::path::Path) {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    engine::sys::drop_cached(&file, 0, 0).unwrap();
    assert!(resident_mib(path).iter().all(|r| !*r), "dropped first");
}

#[test]
fn a_reader_reads_from_the_disk_only_the_frames_it_hands_out() {
    let Some(root) = dir_where_disk_reads_show() else {
        return;
    };
    let dir = root.path().join("staging");
    let path = made_ahead_segment(&dir);
    let all = large_frames(10);
    stage_and_close(&dir, &all);
    drop_all_cached(&path);
    let end = 16 + all.iter().map(Vec::len).sum::<usize>() as u64;
    let before = thread_read_bytes().unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all);
    assert!(read_available(&mut reader).is_empty());
    let read = thread_read_bytes().unwrap() - before;
    // The frames' pages, and the one after the last where the reader looks
    // for the next frame; nothing read ahead into the zeros beyond.
    assert!(
        read <= end.next_multiple_of(4096) + 4096,
        "{read} bytes read from the disk for frames ending at {end}"
    );
}

#[test]
fn a_torn_append_into_a_made_ahead_length_is_truncated_and_the_store_goes_on() {
    let template = tempfile::tempdir().unwrap();
    let dir = template.path().join("staging");
    let path = made_ahead_segment(&dir);
    let all = large_frames(4);
    stage_and_close(&dir, &all);
    let original = std::fs::read(&path).unwrap();
    assert_eq!(original.len(), 8 << 20, "still its made-ahead length");
    let end = 16 + all.iter().map(Vec::len).sum::<usize>();
    assert!(
        original[end..].iter().all(|b| *b == 0),
        "zeros after the frames"
    );
    let last_start = end - all[3].len();
    // The last append cut short anywhere: its first bytes, then the zeros
    // that were there before (the page's zeros after it never written).
    for cut in (last_start..end).step_by(all[3].len() / 7) {
        let copy = tempfile::tempdir().unwrap();
        let mut bytes = original[..cut].to_vec();
        bytes.resize(original.len(), 0);
        std::fs::write(copy.path().join(format!("{:020}.stg", 1)), &bytes).unwrap();
        let (mut staging, recovery) = Staging::open(copy.path(), made_ahead_options()).unwrap();
        assert_eq!(recovery.staged_position, 1501, "cut at {cut}");
        assert_eq!(staging.read_all().unwrap(), all[..3], "cut at {cut}");
        // Staging again what was lost continues the store.
        staging.append(&all[3]).unwrap();
        staging.sync().unwrap();
        drop(staging);
        let (staging, recovery) = Staging::open(copy.path(), made_ahead_options()).unwrap();
        assert_eq!(recovery.staged_position, 2001, "cut at {cut}");
        assert_eq!(staging.read_all().unwrap(), all, "cut at {cut}");
    }
}

#[test]
fn a_segment_being_made_ahead_is_reported_not_ready_until_it_is_made() {
    let root = tempfile::tempdir().unwrap();
    // A quarter GiB to zero-fill and sync: not made in the moment after
    // opening (dropping the store gives the fill up).
    let (staging, _) = Staging::open(root.path().join("large"), StagingOptions::default()).unwrap();
    assert!(
        !staging.prepared_segment_ready(),
        "the first segment made ahead is still being zero-filled"
    );
    drop(staging);
    let (staging, _) = Staging::open(root.path().join("small"), small()).unwrap();
    assert!(staging.await_prepared_segment(), "a segment is made ahead");
    assert!(staging.prepared_segment_ready());
    let (staging, _) = Staging::open(
        root.path().join("none"),
        StagingOptions {
            prepare_segments: false,
            ..small()
        },
    )
    .unwrap();
    assert!(
        !staging.await_prepared_segment() && staging.prepared_segment_ready(),
        "nothing made ahead: ready at once"
    );
}

#[test]
fn a_reader_asleep_on_the_doorbell_wakes_when_a_frame_is_staged() {
    use std::time::{Duration, Instant};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    std::fs::create_dir_all(&dir).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(reader.prepare_wait(), None, "no receiver, no doorbell yet");
    let all = frames(3);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    staging.append(&all[0]).unwrap();
    assert_eq!(read_available(&mut reader), all[..1]);
    // Staged between saying it sleeps and sleeping: the sleep ends at once.
    let seen = reader
        .prepare_wait()
        .expect("the receiver made its doorbell");
    staging.append(&all[1]).unwrap();
    let began = Instant::now();
    reader.wait(seen, Duration::from_secs(60));
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "a frame staged after prepare_wait did not end the wait"
    );
    assert_eq!(read_available(&mut reader), all[1..2]);
    // Staged by another thread while the reader sleeps.
    let seen = reader.prepare_wait().unwrap();
    let last = all[2].clone();
    let receiver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        staging.append(&last).unwrap();
        staging
    });
    let began = Instant::now();
    reader.wait(seen, Duration::from_secs(60));
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "a frame staged while the reader slept did not wake it"
    );
    drop(receiver.join().unwrap());
    assert_eq!(read_available(&mut reader), all[2..]);
}

/// A full disk fails an append with HAX0001E naming what it was writing;
/// nothing staged before is lost, and once there is room the same frame
/// is taken (as when the primary resends it), whether the disk filled
/// within a segment or just as the next one was made.
#[test]
fn a_full_disk_fails_appends_until_there_is_room_and_loses_nothing_staged() {
    let all = frames(6000);
    for at_a_new_segment in [false, true] {
        let Some(fs) = testkit::SmallFs::mount(8 << 20) else {
            return;
        };
        let dir = fs.path().join("staging");
        let ballast = fs.path().join("ballast");
        let options = || StagingOptions {
            segment_bytes: 256 << 10,
            // Segments made on the append path, so the disk can be filled
            // just before one.
            prepare_segments: !at_a_new_segment,
            ..StagingOptions::default()
        };
        let (mut staging, _) = Staging::open(&dir, options()).unwrap();
        let mut staged = 0;
        if at_a_new_segment {
            // Up to the frame that begins the second segment, then the disk
            // filled to its last page.
            let mut held = 16;
            while held + all[staged].len() <= 256 << 10 {
                staging.append(&all[staged]).unwrap();
                held += all[staged].len();
                staged += 1;
            }
            let mut fill = File::create(&ballast).unwrap();
            while io::Write::write_all(&mut fill, &[1u8; 4096]).is_ok() {}
        } else {
            std::fs::write(&ballast, vec![1u8; 2 << 20]).unwrap();
        }
        let err = loop {
            match staging.append(&all[staged]) {
                Ok(_) => staged += 1,
                Err(err) => break err,
            }
        };
        assert!(err.is_disk_full(), "{err}");
        let text = err.to_string();
        let writing = match at_a_new_segment {
            true => "write staging segment header",
            false => "write staging segment",
        };
        assert!(
            text.starts_with("HAX0001E")
                && text.contains(writing)
                && text.contains("No space left"),
            "{text}"
        );
        staging.sync().unwrap();
        let mut reader = StagingReader::open(&dir, 1).unwrap();
        assert_eq!(read_available(&mut reader), all[..staged]);

        std::fs::remove_file(&ballast).unwrap();
        for f in &all[staged..staged + 200] {
            staging
                .append(f)
                .unwrap_or_else(|e| panic!("after room: {e}"));
        }
        staging.sync().unwrap();
        assert_eq!(read_available(&mut reader), all[staged..staged + 200]);
        drop(staging);
        let (staging, _) = Staging::open(&dir, options()).unwrap();
        assert_eq!(staging.staged_position(), 11 + 10 * (staged as u64 + 199));
        let mut reader = StagingReader::open(&dir, 1).unwrap();
        assert_eq!(read_available(&mut reader), all[..staged + 200]);
    }
}

/// An append cut short (a full disk) leaves what it wrote past the
/// segment's frames; the store moves on without it (the retry writes over
/// it, or a rotation cuts it off), so a finished segment holds its frames
/// only and reads back whole, and reopening finds nothing torn.
#[test]
fn a_segment_finished_after_an_append_cut_short_holds_only_its_frames() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(40);
    let options = || StagingOptions {
        segment_bytes: 16 << 10,
        prepare_segments: false,
        ..StagingOptions::default()
    };
    let (mut staging, _) = Staging::open(&dir, options()).unwrap();
    // The first segment (grown by appends) up to the frame that does not
    // fit it, then the bytes of a cut-short append past its frames.
    let mut held = 16;
    let mut staged = 0;
    while held + all[staged].len() <= 16 << 10 {
        staging.append(&all[staged]).unwrap();
        held += all[staged].len();
        staged += 1;
    }
    let (first, len) = segment_files(&dir)[0].clone();
    assert_eq!(len, held as u64);
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(&first).unwrap(),
        &all[staged][..1000],
        len,
    )
    .unwrap();
    // The next frame begins the second segment.
    for f in &all[staged..] {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(std::fs::metadata(&first).unwrap().len(), held as u64);
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all);
    drop(staging);
    let (staging, recovery) = Staging::open(&dir, options()).unwrap();
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(staging.staged_position(), 401);
}

/// A segment that could not be made ahead (the disk has less room than a
/// segment) is given up at the next append and its file removed; the
/// segment being written goes on growing by appends rather than giving way
/// at each frame to a new one (each with a new try that fails).
#[test]
fn a_segment_that_could_not_be_made_ahead_does_not_start_a_segment_per_frame() {
    let Some(fs) = testkit::SmallFs::mount(4 << 20) else {
        return;
    };
    let dir = fs.path().join("staging");
    // Room for a few hundred KiB: less than a segment.
    let mut fill = File::create(fs.path().join("ballast")).unwrap();
    io::Write::write_all(&mut fill, &vec![1u8; (4 << 20) - (384 << 10)]).unwrap();
    let (mut staging, _) = Staging::open(
        &dir,
        StagingOptions {
            segment_bytes: 1 << 20,
            ..StagingOptions::default()
        },
    )
    .unwrap();
    assert!(
        staging.await_prepared_segment(),
        "a segment was begun ahead"
    );
    let all = frames(100);
    for f in &all {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(segment_files(&dir).len(), 1, "{:?}", segment_files(&dir));
    assert_eq!(spare_files(&dir), 0);
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all);
}

/// The doorbell's page is allocated when the store makes it: an append
/// that fits the segment's last page rings it on a disk full since, where
/// a store to a mapped page with nothing behind it would be a SIGBUS
/// (the whole test binary dies without the allocation).
#[test]
fn ringing_the_doorbell_on_a_full_disk_is_not_a_fault() {
    let Some(fs) = testkit::SmallFs::mount(1 << 20) else {
        return;
    };
    let dir = fs.path().join("staging");
    let (mut staging, _) = Staging::open(
        &dir,
        StagingOptions {
            prepare_segments: false,
            ..StagingOptions::default()
        },
    )
    .unwrap();
    let mut fill = File::create(fs.path().join("ballast")).unwrap();
    while io::Write::write_all(&mut fill, &[1u8; 4096]).is_ok() {}
    // Into the segment's first page, allocated with its header.
    let small = frame(1, 1, 2);
    assert!(16 + small.len() <= 4096);
    staging.append(&small).unwrap();
    staging.sync().unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), [small]);
}

/// A purge's removal shrinks a file from its end before the unlink
/// (`sys::remove_paced`, decisions.md 109); a crash in between leaves a
/// purged segment cut short under its name. Reopening passes it by, a
/// reader from the applied position never goes there, and the next purge
/// removes it.
#[test]
fn a_purged_segment_left_cut_short_by_a_crash_is_passed_by_and_purged_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(40);
    let options = StagingOptions {
        prepare_segments: false,
        ..small()
    };
    drop(staged_store(&dir, &all, options.clone()));
    // Apply is past the first two segments: the purge would remove them.
    let segments = segment_files(&dir);
    assert!(segments.len() > 3, "{segments:?}");
    let start_of = |path: &std::path::Path| -> u64 {
        path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
    };
    let applied = start_of(&segments[2].0);
    // The crash: the first one's removal cut short halfway through.
    let (cut, len) = &segments[0];
    File::options()
        .write(true)
        .open(cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let (mut staging, recovery) = Staging::open(&dir, options).unwrap();
    assert_eq!(recovery.staged_position, 401);
    assert_eq!(recovery.truncated_bytes, 0);
    let mut reader = StagingReader::open(&dir, applied).unwrap();
    let from = all.iter().position(|f| {
        engine::frame::FrameHeader::decode(f)
            .unwrap()
            .start_position
            == applied
    });
    assert_eq!(read_available(&mut reader), all[from.unwrap()..]);
    assert!(staging.purge_through(applied).unwrap() > 0);
    let left = segment_files(&dir);
    assert!(!left.iter().any(|(p, _)| p == cut), "{left:?}");
    assert_eq!(start_of(&left[0].0), applied);
}

/// Finished segments keep their unused end (decisions.md 111): a reused
/// file's earlier frames after its last frame are passed by, at the
/// successor its last frame's end names, by a reader from the oldest
/// position, by `read_all` and by reopening, which finds nothing torn.
#[test]
fn finished_segments_keep_a_reused_files_earlier_frames_after_their_own_and_read_whole() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    // Frames of 1 to 61 entries (up to 8 KiB, more than the page an
    // append pads with zeros), so a reused file's frames end elsewhere than
    // its earlier ones did and its old ones show past the new ones' page.
    let mut starts = vec![1u64];
    let mut all = Vec::new();
    for i in 0..1000u64 {
        let (start, count) = (*starts.last().unwrap(), 1 + i * 7 % 61);
        all.push(frame(start, count, start + count));
        starts.push(start + count);
    }
    let index_of = |position: u64| starts.iter().position(|s| *s == position).unwrap();
    let options = || StagingOptions {
        segment_bytes: 64 << 10,
        ..small()
    };
    let (mut staging, _) = Staging::open(&dir, options()).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    let mut staged = 0;
    // Finished segments with earlier frames (non-zero bytes) after their own.
    let with_old_frames = |dir: &std::path::Path| {
        let files = segment_files(dir);
        let mut count = 0;
        for (i, (path, _)) in files[..files.len().saturating_sub(1)].iter().enumerate() {
            let own = index_of(start_of(path))..index_of(start_of(&files[i + 1].0));
            let end = 16 + all[own].iter().map(|f| f.len()).sum::<usize>();
            if std::fs::read(path).unwrap()[end..].iter().any(|b| *b != 0) {
                count += 1;
            }
        }
        count
    };
    while with_old_frames(&dir) < 2 {
        assert!(
            staged < all.len(),
            "no finished segments with earlier frames"
        );
        staging.await_prepared_segment();
        staging.append(&all[staged]).unwrap();
        staged += 1;
        staging.sync().unwrap();
        read_available(&mut reader);
        // Purged only up to two segments behind, so finished reused
        // segments stay.
        let files = segment_files(&dir);
        if files.len() > 4 {
            staging
                .purge_through(start_of(&files[files.len() - 3].0))
                .unwrap();
        }
    }
    let kept = index_of(start_of(&segment_files(&dir)[0].0));
    assert_eq!(staging.read_all().unwrap(), all[kept..staged]);
    drop(staging);

    let (mut staging, recovery) = Staging::open(&dir, options()).unwrap();
    assert_eq!(
        (recovery.staged_position, recovery.truncated_bytes),
        (starts[staged], 0)
    );
    assert_eq!(staging.read_all().unwrap(), all[kept..staged]);
    let mut from_oldest = StagingReader::open(&dir, starts[kept]).unwrap();
    assert_eq!(read_available(&mut from_oldest), all[kept..staged]);
    for f in &all[staged..staged + 20] {
        staging.await_prepared_segment();
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(read_available(&mut from_oldest), all[staged..staged + 20]);
    assert_eq!(staging.read_all().unwrap(), all[kept..staged + 20]);
}

/// Counts `fdatasync` calls, and those made while a segment a rotation
/// began was still unnamed (`*.stg-next` in the directory).
#[derive(Debug)]
struct WatchingSync {
    dir: std::path::PathBuf,
    calls: AtomicUsize,
    while_unnamed: AtomicUsize,
}

impl SyncFile for WatchingSync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if unnamed_files(&self.dir) > 0 {
            self.while_unnamed.fetch_add(1, Ordering::Relaxed);
        }
        file.sync_data()
    }
}

/// Segments a rotation began that no sync has named yet.
fn unnamed_files(dir: &std::path::Path) -> usize {
    files_ending(dir, "stg-next")
}

/// A rotation waits for no disk (decisions.md 112): it syncs nothing and
/// begins the next segment under a name of its own, which a reader finds
/// at once; the next sync makes the segments durable and only then names
/// them.
#[test]
fn a_rotation_syncs_nothing_and_the_sync_after_it_names_the_segment_it_began() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    let syncer = Arc::new(WatchingSync {
        dir: dir.clone(),
        calls: AtomicUsize::new(0),
        while_unnamed: AtomicUsize::new(0),
    });
    let options = StagingOptions {
        syncer: syncer.clone(),
        ..small()
    };
    let (mut staging, _) = Staging::open(&dir, options).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    let all = frames(40);
    let mut seen = Vec::new();
    for f in &all[..20] {
        assert!(staging.await_prepared_segment());
        let before = syncer.calls.load(Ordering::Relaxed);
        staging.append(f).unwrap();
        assert_eq!(
            syncer.calls.load(Ordering::Relaxed),
            before,
            "an append synced (a rotation's sync on the session thread)"
        );
        seen.extend(read_available(&mut reader));
    }
    assert_eq!(seen, all[..20], "read across segments not yet named");
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "expected rotations: {files:?}");
    assert!(
        files[1..]
            .iter()
            .all(|(p, _)| p.extension().unwrap() == "stg-next"),
        "segments begun since the last sync are unnamed: {files:?}"
    );
    // The oldest segment stays while its successor is unnamed: a crash
    // would leave the store without the segment its position is in.
    assert_eq!(staging.purge_through(u64::MAX).unwrap(), 0);

    let calls = syncer.calls.load(Ordering::Relaxed);
    let while_unnamed = syncer.while_unnamed.load(Ordering::Relaxed);
    assert_eq!(staging.sync().unwrap(), 201);
    let synced = syncer.calls.load(Ordering::Relaxed) - calls;
    assert!(synced >= files.len() - 1, "{synced} syncs for {files:?}");
    assert_eq!(
        syncer.while_unnamed.load(Ordering::Relaxed) - while_unnamed,
        synced,
        "every segment synced before any was named"
    );
    assert_eq!(unnamed_files(&dir), 0, "the sync named them");
    assert!(staging.purge_through(start_of(&files[2].0)).unwrap() > 0);
    for f in &all[20..] {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all);
}

/// A receiver stopped after a rotation and before the sync that would have
/// named the segment it began. Killed, its frames are all there: opening
/// names the segment (HAX0025I) and nothing is sent again. After a power
/// loss that took the old segment's unsynced tail, the frames before the
/// unnamed segment do not reach it: opening removes it (HAX0024I), and the
/// store goes on from the end of the old segment's frames, where the
/// primary sends again (nothing past it was acknowledged).
#[test]
fn a_segment_begun_but_never_named_is_named_at_open_or_removed_when_a_hole_precedes_it() {
    for tail_lost in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("staging");
        let all = frames(60);
        let (mut staging, _) = Staging::open(&dir, small()).unwrap();
        let mut staged = 0;
        while segment_files(&dir).len() < 2 {
            assert!(staging.await_prepared_segment());
            staging.append(&all[staged]).unwrap();
            staged += 1;
        }
        staging.sync().unwrap();
        let durable = staging.durable_position();
        // Into the next segment, unsynced.
        while unnamed_files(&dir) == 0 {
            assert!(staging.await_prepared_segment());
            staging.append(&all[staged]).unwrap();
            staged += 1;
        }
        for f in &all[staged..staged + 3] {
            staging.append(f).unwrap();
        }
        staged += 3;
        drop(staging);
        let files = segment_files(&dir);
        let (old, unnamed_start) = (&files[1].0, start_of(&files[2].0));
        if tail_lost {
            // The old segment's last frame lost: cut inside it.
            let last = &all[(unnamed_start as usize - 1) / 10 - 1];
            let end = 16
                + all[(start_of(old) as usize - 1) / 10..(unnamed_start as usize - 1) / 10]
                    .iter()
                    .map(|f| f.len())
                    .sum::<usize>();
            let cut = end - last.len() / 2;
            let file = File::options().write(true).open(old).unwrap();
            file.set_len(cut as u64).unwrap();
        }

        let (mut staging, recovery) = Staging::open(&dir, small()).unwrap();
        assert_eq!(unnamed_files(&dir), 0, "named or removed at open");
        assert!(recovery.staged_position >= durable);
        let expected = match tail_lost {
            false => 1 + 10 * staged as u64,
            true => unnamed_start - 10,
        };
        assert_eq!(recovery.staged_position, expected, "tail lost: {tail_lost}");
        assert_eq!(
            segment_files(&dir).len(),
            if tail_lost { 2 } else { 3 },
            "{:?}",
            segment_files(&dir)
        );
        let resend_from = (expected as usize - 1) / 10;
        for f in &all[resend_from..] {
            staging.append(f).unwrap();
        }
        staging.sync().unwrap();
        assert_eq!(staging.read_all().unwrap(), all);
        let mut reader = StagingReader::open(&dir, 1).unwrap();
        assert_eq!(read_available(&mut reader), all);
    }
}

/// A reader that has the receiver's doorbell looks for a successor's file
/// only when the receiver has rotated since its last look (or every 20 ms):
/// each rotation counts, so it finds every successor at once, named or not
/// yet named, while the files are looked for only at rotations.
#[test]
fn a_reader_with_the_doorbell_finds_each_successor_as_soon_as_it_is_begun() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(80);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert!(reader.prepare_wait().is_some(), "the doorbell is there");
    let mut seen = Vec::new();
    for (i, f) in all.iter().enumerate() {
        assert!(staging.await_prepared_segment());
        staging.append(f).unwrap();
        if i % 9 == 4 {
            // Every few frames the successors are named; the rest are
            // read while unnamed.
            staging.sync().unwrap();
        }
        seen.extend(read_available(&mut reader));
        assert_eq!(seen, all[..=i], "frame {i} not read at once");
    }
    assert!(segment_files(&dir).len() > 6, "expected rotations");
}

/// A reader with the doorbell that falls several segments behind finds
/// each successor as it reaches it: the rotation count it saw on moving on
/// already counts the later rotations, so it is not the mark to wait for
/// (apply stopped with a false HAX0002E when it was).
#[test]
fn a_reader_with_the_doorbell_several_segments_behind_reads_through_them_all() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(80);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert!(reader.prepare_wait().is_some(), "the doorbell is there");
    let mut staged = 0;
    // Caught up at the end of the first segment, having looked for its
    // successor and found none.
    for f in &all[..3] {
        assert!(staging.await_prepared_segment());
        staging.append(f).unwrap();
        staged += 1;
    }
    let mut seen = read_available(&mut reader);
    assert_eq!(seen, all[..staged]);
    // Then four rotations while it sleeps, the segments named.
    let before = segment_files(&dir).len();
    while segment_files(&dir).len() < before + 4 {
        assert!(staging.await_prepared_segment());
        staging.append(&all[staged]).unwrap();
        staged += 1;
    }
    staging.sync().unwrap();
    seen.extend(read_available(&mut reader));
    assert_eq!(seen, all[..staged], "read through every segment at once");
}

/// Two rotations between two syncs, then a power loss in the sync that
/// would have named both, after the later name reached the disk and before
/// the earlier did: the named segment after an unnamed one goes (its
/// frames are sent again), so the store never claims frames with a hole
/// before them; the unnamed one, whose predecessor's frames reach it, is
/// named.
#[test]
fn a_named_segment_after_one_never_named_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("staging");
    let all = frames(80);
    let (mut staging, _) = Staging::open(&dir, small()).unwrap();
    let mut staged = 0;
    while segment_files(&dir).len() < 2 {
        assert!(staging.await_prepared_segment());
        staging.append(&all[staged]).unwrap();
        staged += 1;
    }
    staging.sync().unwrap();
    while unnamed_files(&dir) < 2 {
        assert!(staging.await_prepared_segment());
        staging.append(&all[staged]).unwrap();
        staged += 1;
    }
    drop(staging);
    let later = segment_files(&dir).pop().unwrap().0;
    assert_eq!(later.extension().unwrap(), "stg-next");
    let later_start = start_of(&later);
    std::fs::rename(&later, later.with_extension("stg")).unwrap();

    let (mut staging, recovery) = Staging::open(&dir, small()).unwrap();
    assert_eq!(unnamed_files(&dir), 0);
    let files = segment_files(&dir);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().all(|(p, _)| start_of(p) < later_start));
    assert_eq!(recovery.staged_position, later_start);
    let resend_from = (later_start as usize - 1) / 10;
    for f in &all[resend_from..] {
        staging.append(f).unwrap();
    }
    staging.sync().unwrap();
    assert_eq!(staging.read_all().unwrap(), all);
    let mut reader = StagingReader::open(&dir, 1).unwrap();
    assert_eq!(read_available(&mut reader), all);
}
