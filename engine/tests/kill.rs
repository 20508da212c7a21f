//! A real writer process killed with SIGKILL while appending, again and again:
//! every entry it reported durable must be there after recovery, with its
//! content, and sequence numbers must stay gap-free across the restarts;
//! also while a backup's acknowledgements let the writer purge segments and
//! reuse their files.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Rng;
use engine::journal::{EntryType, Journal, JournalOptions};
use engine::workload;

#[derive(Debug, Clone, Copy)]
struct Ack {
    sequence: u64,
    tag: u64,
    index: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let sequence = parts.next()?.parse().ok()?;
    let tag = parts.next()?.parse().ok()?;
    let _thread: u64 = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    Some(Ack {
        sequence,
        tag,
        index,
    })
}

#[test]
fn sigkill_while_appending_loses_no_durable_entry() {
    sigkill_rounds("sigkill_while_appending", false);
}

#[test]
fn sigkill_while_appending_and_reusing_purged_segments_loses_no_durable_entry() {
    sigkill_rounds("sigkill_while_purging", true);
}

/// Eight rounds of a writer killed at a random point. With `purge`, a
/// backup's acknowledged position follows the writer's durable entries, so
/// its background thread purges segments and makes spares of their files:
/// what must be there is every durable entry from the oldest segment kept.
fn sigkill_rounds(name: &str, purge: bool) {
    let seed = common::seed(name);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let mut acks: Vec<Ack> = Vec::new();
    let mut backup = purge.then(|| engine::journal::AckRecord::open(dir.path(), "backup").unwrap());
    for round in 0..8u64 {
        let durability = ["group", "fsync"][(round % 2) as usize];
        let mut child = Command::new(env!("CARGO_BIN_EXE_repljrn"))
            .args([
                "load",
                dir.path().to_str().unwrap(),
                "--entries",
                "10000000",
                "--threads",
                "2",
            ])
            .args([
                "--durability",
                durability,
                "--tag",
                &round.to_string(),
                "--print-acks",
            ])
            .args([
                "--segment-bytes",
                &(1 << 20).to_string(),
                "--image-bytes",
                "300",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Purging needs rotations after the backup has acknowledged.
        let kill_after = if purge { 2000 } else { 20 } + rng.below(600);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        let mut seen = 0;
        while seen < kill_after && started.elapsed() < Duration::from_secs(30) {
            match lines.next() {
                Some(Ok(line)) => {
                    let ack = parse_ack(&line).unwrap_or_else(|| panic!("bad line {line:?}"));
                    if let Some(backup) = &mut backup {
                        backup.store(ack.sequence + 1).unwrap();
                    }
                    acks.push(ack);
                    seen += 1;
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
                               // Lines already written before the kill are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            acks.push(parse_ack(&line).unwrap());
        }
        child.wait().unwrap();
        assert!(seen > 0, "round {round}: the writer acknowledged nothing");

        let journal = Journal::open(
            dir.path(),
            JournalOptions {
                segment_bytes: 1 << 20,
                ..JournalOptions::default()
            },
        )
        .unwrap();
        let report = journal.recovery_report().clone();
        drop(journal);
        let oldest = engine::journal::list_segments(dir.path()).unwrap()[0].0;
        eprintln!("round {round}: the oldest segment kept begins at {oldest}");
        if purge && round == 7 {
            assert!(oldest > 1, "nothing was ever purged");
        }
        let all = common::read_all_from(dir.path(), oldest).unwrap();
        let by_sequence: HashMap<u64, &common::Owned> =
            all.iter().map(|e| (e.sequence, e)).collect();
        for ack in acks.iter().filter(|a| a.sequence >= oldest) {
            let entry = by_sequence.get(&ack.sequence).unwrap_or_else(|| {
                panic!(
                    "round {round} (SEED={seed}): acknowledged sequence {} lost; {report:?}",
                    ack.sequence
                )
            });
            assert_eq!(entry.entry_type, EntryType::RecordPut);
            assert_eq!(
                workload::parse_key(&entry.key),
                Some((ack.tag, ack.index)),
                "sequence {}",
                ack.sequence
            );
            assert_eq!(
                entry.after,
                workload::image(ack.tag, ack.index, 300),
                "sequence {}",
                ack.sequence
            );
        }
        // J-NR entries are hidden by the reader; between visible entries the
        // only gaps allowed are single J-NR sequence numbers at segment ends.
        for pair in all.windows(2) {
            assert!(
                pair[1].sequence - pair[0].sequence <= 2,
                "gap after sequence {}",
                pair[0].sequence
            );
        }
    }
}
