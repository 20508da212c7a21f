//! Shared by the apply tests: a seeded random journal (hot keys, large
//! transactions, rollbacks, interleaved cycles, object operations) and the
//! state comparison of a store against `SerialReplica`.
#![allow(dead_code)]

use apply::{SerialReplica, Store};
use engine::journal::entry::encode_to_vec;
use engine::journal::{decode, NewEntry};

#[allow(unused_imports)] // each test binary uses its own part
pub use testkit::{seed, Rng};

/// A random journal: encoded entries with sequences 1.., in journal order.
pub fn workload(seed: u64, entries: usize) -> Vec<Vec<u8>> {
    journal_workload(seed, entries, 0, |seq| 1_000 + seq)
}

/// As `workload`, with object ids from `object_base + 1` and entry
/// timestamps `time(sequence)`: several of these are the journals of a group.
pub fn journal_workload(
    seed: u64,
    entries: usize,
    object_base: u64,
    time: impl Fn(u64) -> u64,
) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut open: Vec<u64> = Vec::new();
    let mut next_cycle = 1;
    let names = ["A", "B", "C", "D"];
    let push = |out: &mut Vec<Vec<u8>>, e: NewEntry<'_>| {
        let mut buf = Vec::new();
        let seq = out.len() as u64 + 1;
        encode_to_vec(&e, seq, time(seq), &mut buf);
        out.push(buf);
    };
    push(&mut out, NewEntry::create_object(object_base + 1, "A"));
    push(&mut out, NewEntry::create_object(object_base + 2, "B"));
    while out.len() < entries {
        // Most changes go to open cycles when there are some.
        let cycle = if !open.is_empty() && rng.below(4) != 0 {
            open[rng.below(open.len() as u64) as usize]
        } else {
            0
        };
        let object = object_base + 1 + rng.below(3);
        // Hot keys: small numbers far more often than large ones.
        let spread = 1 + rng.below(64);
        let key = rng.below(spread).to_be_bytes();
        let image = rng.next().to_le_bytes().repeat(1 + rng.below(4) as usize);
        match rng.below(100) {
            0..=54 => push(
                &mut out,
                NewEntry::put(object, &key, &image).in_cycle(cycle),
            ),
            55..=64 => push(
                &mut out,
                NewEntry::delete(object, &key, None).in_cycle(cycle),
            ),
            65..=74 if open.len() < 4 => {
                push(&mut out, NewEntry::commit_start(next_cycle));
                open.push(next_cycle);
                next_cycle += 1;
            }
            75..=84 if !open.is_empty() => {
                let c = open.swap_remove(rng.below(open.len() as u64) as usize);
                push(&mut out, NewEntry::commit(c));
            }
            85..=89 if !open.is_empty() => {
                let c = open.swap_remove(rng.below(open.len() as u64) as usize);
                push(&mut out, NewEntry::rollback(c));
            }
            90 => {
                // A large transaction.
                let c = next_cycle;
                next_cycle += 1;
                push(&mut out, NewEntry::commit_start(c));
                for k in 0..300 + rng.below(700) {
                    let key = (k % 200).to_be_bytes();
                    push(&mut out, NewEntry::put(object, &key, &image).in_cycle(c));
                }
                push(&mut out, NewEntry::commit(c));
            }
            91..=92 => push(
                &mut out,
                NewEntry::create_object(object + rng.below(2), names[rng.below(4) as usize])
                    .in_cycle(cycle),
            ),
            93 => push(&mut out, NewEntry::drop_object(object).in_cycle(cycle)),
            94..=95 => push(&mut out, NewEntry::clear_object(object).in_cycle(cycle)),
            96 => push(
                &mut out,
                NewEntry::rename_object(object, names[rng.below(4) as usize]).in_cycle(cycle),
            ),
            _ => push(
                &mut out,
                NewEntry::put(object, &key, &image).in_cycle(cycle),
            ),
        }
    }
    out
}

pub type State = apply::Contents;

/// The serial reference's state after `entries` (refused transactions are
/// part of the semantics: their errors are ignored).
pub fn serial_state(entries: &[Vec<u8>]) -> State {
    let mut replica = SerialReplica::new();
    for e in entries {
        let _ = replica.apply(&decode(e).unwrap());
    }
    replica.contents()
}

pub fn store_state(store: &dyn Store) -> State {
    apply::contents(store).unwrap()
}
