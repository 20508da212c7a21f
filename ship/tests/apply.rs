//! The whole backup side across real processes: a writer appends here,
//! replsend ships, replrecv stages, replapply applies; the replica must end
//! equal to the source, also when apply is SIGKILLed at random points.

mod common;

use std::time::{Duration, Instant};

use apply::{ReplicaTables, SqliteStore, Store};
use common::*;
use engine::journal::NewEntry;

const APPLY_CONFIG: &str = "\n[apply]\ncheckpoint_ms = 50\n";

/// Stops apply cleanly and compares the replica with the source.
fn assert_replica_equals_source(pair: &Pair, mut apply: Proc) {
    terminate(&mut apply);
    let config = std::fs::read_to_string(&pair.config).unwrap();
    let replica: Box<dyn Store> = if config.contains("store = \"sqlite\"") {
        Box::new(SqliteStore::open(pair.replica().join(ship::apply::SQLITE_FILE)).unwrap())
    } else {
        Box::new(ReplicaTables::open(pair.replica()).unwrap())
    };
    let expected = source_state(&pair.journal());
    let actual = apply::contents(&*replica).unwrap();
    assert_eq!(actual.len(), expected.len(), "objects");
    for (id, (name, records)) in &expected {
        let (got_name, got) = &actual[id];
        assert_eq!(got_name, name, "object {id} name");
        assert_eq!(got.len(), records.len(), "object {id} record count");
        assert!(got == records, "object {id}: records differ");
    }
    assert!(replica.applied_position().journal(0).applied > 0);
}

#[test]
fn writer_sender_receiver_and_apply_end_with_the_replica_equal_to_the_source() {
    end_to_end(APPLY_CONFIG);
}

#[test]
fn the_same_end_to_end_into_the_sqlite_store() {
    end_to_end(&format!("{APPLY_CONFIG}store = \"sqlite\"\n"));
}

fn end_to_end(apply_config: &str) {
    let pair = Pair::new("auto", None, "", "");
    pair.add_config(apply_config);
    let journal = open_journal(&pair);
    let _recv = Proc::start(RECV, "replrecv", &pair.config);
    let _send = Proc::start(SEND, "replsend", &pair.config);
    let apply = Proc::start(APPLY, "replapply", &pair.config);
    write(&journal, 60_000, 3000, Duration::from_millis(5), 1);
    wait_acked(&pair, &journal, Duration::from_secs(60));
    wait_applied(&pair, journal.next_sequence(), Duration::from_secs(60));
    // The receiver purges what apply no longer needs.
    let first = pair.staging().join(format!("{:020}.stg", 1));
    let start = Instant::now();
    while first.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the first staging segment was never purged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_replica_equals_source(&pair, apply);
}

#[test]
fn sigkill_of_apply_at_random_points_loses_nothing_and_applies_nothing_twice() {
    sigkill_apply("tables", APPLY_CONFIG);
}

#[test]
fn sigkill_of_apply_into_sqlite_loses_nothing_and_applies_nothing_twice() {
    sigkill_apply("sqlite", &format!("{APPLY_CONFIG}store = \"sqlite\"\n"));
}

fn sigkill_apply(store: &str, apply_config: &str) {
    let seed = seed(&format!("sigkill_of_apply[{store}]"));
    let mut rng = Rng(seed | 1);
    let pair = Pair::new("auto", None, "", "");
    pair.add_config(apply_config);
    let journal = open_journal(&pair);
    let mut recv = Proc::start(RECV, "replrecv", &pair.config);
    let _send = Proc::start(SEND, "replsend", &pair.config);
    let mut apply = Proc::start(APPLY, "replapply", &pair.config);
    let mut logs = String::new();
    std::thread::scope(|s| {
        let writer = s.spawn(|| write(&journal, 150_000, 2000, Duration::from_millis(8), 3));
        for kill in 0..10 {
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            if kill == 0 {
                // The first incarnation is killed only once it has
                // checkpointed something applied, so some restart resumes
                // from a checkpoint even when a loaded machine starts apply
                // slowly. The file holds the resume position, 1 from the
                // first checkpoint on, even one with nothing applied.
                let file = pair.staging().join(apply::APPLIED_FILE);
                let start = Instant::now();
                while engine::journal::read_position_file(&file).unwrap_or(0) <= 1 {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "apply never checkpointed"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Now and then the receiver goes down with it.
            let receiver_too = rng.below(4) == 0;
            eprintln!(
                "kill {kill}: SIGKILL apply{}",
                if receiver_too { " and receiver" } else { "" }
            );
            apply.kill();
            logs.push_str(&apply.log());
            // A transaction left open across the next kill keeps replay's
            // start far back, so the replayed stretch holds committed
            // transactions and an object created once per kill: applied
            // twice, a create would be refused (HAD0202E, checked below).
            let long = 1_000_000 + kill;
            journal
                .append(&NewEntry::put(1, format!("long{kill}").as_bytes(), b"x").in_cycle(long))
                .unwrap();
            if kill > 0 {
                journal.append(&NewEntry::commit(long - 1)).unwrap();
            }
            journal
                .append(&NewEntry::create_object(100 + kill, &format!("K{kill}")))
                .unwrap();
            if receiver_too {
                recv.kill();
                recv = Proc::start(RECV, "replrecv", &pair.config);
            }
            std::thread::sleep(Duration::from_millis(rng.below(100)));
            apply = Proc::start(APPLY, "replapply", &pair.config);
        }
        writer.join().unwrap();
    });
    journal.append(&NewEntry::commit(1_000_009)).unwrap();
    wait_acked(&pair, &journal, Duration::from_secs(60));
    wait_applied(&pair, journal.next_sequence(), Duration::from_secs(60));
    let last_log = apply.log();
    assert_replica_equals_source(&pair, apply);
    logs.push_str(&last_log);
    assert!(
        !logs.contains("HAD020"),
        "apply refused a transaction:\n{logs}"
    );
    let resumed = logs
        .lines()
        .filter(|l| l.contains("HAD0223I") && !l.contains("applied 0,"))
        .count();
    assert!(resumed > 0, "no restart resumed from a checkpoint:\n{logs}");
}

/// A replica whose disk fills stops apply with an error naming the disk
/// (HAD0210E, no space; no checkpoint is taken past it: HAD0214E). Started
/// again once there is room, apply reopens the replica at its last
/// checkpoint, replays staging from there, and ends equal to the source.
#[test]
fn a_full_replica_disk_stops_apply_and_a_restart_with_room_loses_nothing() {
    let Some(fs) = testkit::SmallFs::mount(160 << 20) else {
        return;
    };
    let pair = Pair::new("auto", None, "", "");
    pair.add_config(APPLY_CONFIG);
    let on_small = fs.path().join("replica");
    std::fs::create_dir_all(&on_small).unwrap();
    std::fs::create_dir_all(pair.replica().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&on_small, pair.replica()).unwrap();
    // Room for about 40 MiB of replica; the workload needs about 60.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 120 << 20]).unwrap();
    let journal = open_journal(&pair);
    write(&journal, 600_000, 600_000, Duration::ZERO, 1);
    let _recv = Proc::start(RECV, "replrecv", &pair.config);
    let _send = Proc::start(SEND, "replsend", &pair.config);
    let mut apply = Proc::start(APPLY, "replapply", &pair.config);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !apply.log().contains("No space left") {
        assert!(Instant::now() < deadline, "the replica's disk never filled");
        std::thread::sleep(Duration::from_millis(50));
    }
    apply.kill();
    assert!(apply.log().contains("HAD0210E"), "{}", apply.log());

    std::fs::remove_file(&ballast).unwrap();
    let apply = Proc::start(APPLY, "replapply", &pair.config);
    wait_applied(&pair, journal.next_sequence(), Duration::from_secs(120));
    assert_replica_equals_source(&pair, apply);
}
