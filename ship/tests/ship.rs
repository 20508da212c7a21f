//! Shipping across real processes on loopback: a journal written here
//! appears, byte for byte, in the backup's staging store; with both socket
//! drivers; through SIGKILLs of either side; with a full staging store.

mod common;

use std::time::Duration;

use common::*;

fn ship_everything(io: &str) {
    let pair = Pair::new(io, None, "", "");
    let journal = open_journal(&pair);
    write(&journal, 30_000, 30_000, Duration::ZERO, 1);
    let _recv = Proc::start(RECV, "replrecv", &pair.config);
    let send = Proc::start(SEND, "replsend", &pair.config);
    // Appended while shipping, too.
    write(&journal, 30_000, 3000, Duration::from_millis(10), 2);
    wait_acked(&pair, &journal, Duration::from_secs(60));
    drop(send);
    assert_staging_equals_journal(&pair);
}

#[test]
fn a_journal_arrives_byte_for_byte_over_plain_sockets() {
    ship_everything("plain");
}

#[test]
fn a_journal_arrives_byte_for_byte_over_io_uring() {
    if engine::transport::UringDriver::probe().is_err() {
        eprintln!("io_uring is not available here: skipped (the plain test covers the path)");
        return;
    }
    ship_everything("uring");
}

#[test]
fn sigkill_of_sender_or_receiver_at_random_points_loses_and_duplicates_nothing() {
    for io in ["plain", "auto"] {
        let seed = seed(&format!("sigkill[{io}]"));
        let mut rng = Rng(seed | 1);
        let pair = Pair::new(io, None, "", "");
        let journal = open_journal(&pair);
        let mut recv = Proc::start(RECV, "replrecv", &pair.config);
        let mut send = Proc::start(SEND, "replsend", &pair.config);
        std::thread::scope(|s| {
            let writer = s.spawn(|| write(&journal, 150_000, 2000, Duration::from_millis(8), 3));
            for kill in 0..8 {
                std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
                let receiver = rng.below(2) == 0;
                eprintln!(
                    "kill {kill}: SIGKILL {}",
                    if receiver { "receiver" } else { "sender" }
                );
                if receiver {
                    recv.kill();
                    std::thread::sleep(Duration::from_millis(rng.below(200)));
                    recv = Proc::start(RECV, "replrecv", &pair.config);
                } else {
                    send.kill();
                    std::thread::sleep(Duration::from_millis(rng.below(200)));
                    send = Proc::start(SEND, "replsend", &pair.config);
                }
            }
            writer.join().unwrap();
        });
        wait_acked(&pair, &journal, Duration::from_secs(60));
        send.kill();
        recv.kill();
        assert_staging_equals_journal(&pair);
    }
}

#[test]
fn a_full_staging_store_holds_the_primary_back_until_apply_frees_space() {
    // A 64 MiB budget (the smallest allowed) and 1 MiB staging segments.
    let pair = Pair::new("auto", None, "", "budget = \"64MiB\"\n");
    let journal = open_journal(&pair);
    // About 100 MiB of entries: more than the budget.
    write(&journal, 600_000, 600_000, Duration::ZERO, 4);
    let recv = Proc::start(RECV, "replrecv", &pair.config);
    let send = Proc::start(SEND, "replsend", &pair.config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    wait_held(&send, &recv, deadline);
    let held_at = settled_acks(&pair, deadline);
    assert!(held_at < journal.next_sequence());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pair.acked(), held_at, "nothing acknowledged while held");
    let held_bytes: u64 = std::fs::read_dir(pair.staging())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        held_bytes <= 64 << 20,
        "staging holds {held_bytes} bytes, over its budget"
    );

    // Apply (a later issue) records what it has applied; staging purges below it.
    let mut applied =
        engine::journal::PositionFile::open_path(pair.staging().join("applied.pos")).unwrap();
    applied.store(held_at).unwrap();
    wait_acked(&pair, &journal, Duration::from_secs(60));
    assert!(
        send.log().contains("DMK0033I"),
        "the sender says when the backup accepts again"
    );
    assert!(recv.log().contains("HAX0020I"), "segments were purged");
    drop(send);
    drop(recv);
    assert_staged_is_the_journals_tail(&pair);
}

/// Waits until the sender says it is held back (DMK0031W) and the
/// receiver that it holds it (DMK0054W).
fn wait_held(send: &Proc, recv: &Proc, deadline: std::time::Instant) {
    while !(send.log().contains("DMK0031W") && recv.log().contains("DMK0054W")) {
        assert!(
            std::time::Instant::now() < deadline,
            "never held back: {}",
            recv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The acknowledged position once it stops moving while the primary is
/// held back: a group commit begun before the hold may still finish and be
/// acked (it never settles if the receiver goes on accepting frames).
fn settled_acks(pair: &Pair, deadline: std::time::Instant) -> u64 {
    let mut held_at = pair.acked();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = pair.acked();
        if now == held_at {
            return held_at;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "acks never settled while held"
        );
        held_at = now;
    }
}

/// What is left staged (purged below apply's position) is exactly the
/// journal's tail, in order.
fn assert_staged_is_the_journals_tail(pair: &Pair) {
    let staged = staged_entries_from(pair);
    let all = journal_entries(&pair.journal());
    assert!(!staged.is_empty());
    assert_eq!(staged[..], all[all.len() - staged.len()..]);
}

/// A backup whose staging disk fills up (its budget larger than the disk)
/// holds the primary back as a full budget does (DMK0054W naming the
/// failed append, HAX0001E, no space; the session goes on), nothing past
/// what is staged is acknowledged, and once apply's position lets staging
/// purge, the rest arrives, in order.
#[test]
fn a_full_staging_disk_holds_the_primary_back_until_space_is_freed() {
    let Some(fs) = testkit::SmallFs::mount(48 << 20) else {
        return;
    };
    let pair = Pair::new("auto", None, "", "");
    std::fs::create_dir_all(pair.staging().parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(fs.path(), pair.staging()).unwrap();
    // Made before the disk fills, as replapply makes it when it starts:
    // written in place from then on, it needs no new space.
    let mut applied =
        engine::journal::PositionFile::open_path(pair.staging().join("applied.pos")).unwrap();
    let journal = open_journal(&pair);
    // About 100 MiB of entries: twice the disk.
    write(&journal, 600_000, 600_000, Duration::ZERO, 4);
    let recv = Proc::start(RECV, "replrecv", &pair.config);
    let send = Proc::start(SEND, "replsend", &pair.config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    wait_held(&send, &recv, deadline);
    let log = recv.log();
    let held = log.lines().find(|l| l.contains("DMK0054W")).unwrap();
    assert!(
        held.contains("HAX0001E") && held.contains("No space left"),
        "{held}"
    );
    let held_at = settled_acks(&pair, deadline);
    assert!(held_at > 1 && held_at < journal.next_sequence());
    // Everything acknowledged is staged.
    let mut reader = engine::staging::StagingReader::open(pair.staging(), 1).unwrap();
    while reader.next(&mut Vec::new()).unwrap().is_some() {}
    assert!(
        reader.position() >= held_at,
        "acknowledged up to {held_at}, staged up to {}",
        reader.position()
    );

    applied.store(held_at).unwrap();
    wait_acked(&pair, &journal, Duration::from_secs(60));
    let log = recv.log();
    assert!(log.contains("HAX0020I"), "segments were purged");
    assert!(
        log.contains("DMK0053I"),
        "the receiver says it receives again"
    );
    assert!(!log.contains("DMK0051W"), "a session ended: {log}");
    drop(send);
    drop(recv);
    assert_staged_is_the_journals_tail(&pair);
}

/// Staged entries when the store no longer starts at position 1.
fn staged_entries_from(pair: &Pair) -> Vec<Vec<u8>> {
    use engine::staging::{Staging, StagingOptions};
    let (staging, _) = Staging::open(pair.staging(), StagingOptions::default()).unwrap();
    let mut decoder = engine::frame::FrameDecoder::new().unwrap();
    let mut out = Vec::new();
    for frame in staging.read_all().unwrap() {
        out.extend(
            decoder
                .decode(&frame)
                .unwrap()
                .entries()
                .map(|e| e.as_bytes().to_vec()),
        );
    }
    out
}

#[test]
fn a_bad_configuration_is_named_and_the_process_exits() {
    let pair = Pair::new("auto", None, "", "");
    let text = std::fs::read_to_string(&pair.config).unwrap();
    std::fs::write(&pair.config, text.replace("io = \"auto\"", "io = \"fast\"")).unwrap();
    for binary in [SEND, RECV] {
        let out = std::process::Command::new(binary)
            .arg("--config")
            .arg(&pair.config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("CSI0001E")
                && stderr.contains("pair.toml:")
                && stderr.contains("key `transport.io`"),
            "{stderr}"
        );
    }
}

/// A seccomp filter that fails io_uring_setup with EPERM, as a locked-down
/// container would; installed in the child between fork and exec.
fn block_io_uring() -> std::io::Result<()> {
    const IO_URING_SETUP: u32 = 425; // the same number on every architecture
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == io_uring_setup: next, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a filter program that outlives the call; runs in
    // the forked child before exec, where only async-signal-safe calls are
    // allowed (prctl is a plain system call).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, 2, &program as *const libc::sock_fprog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn where_seccomp_blocks_io_uring_both_sides_fall_back_to_plain_sockets() {
    use std::os::unix::process::CommandExt;
    let pair = Pair::new("auto", None, "", "");
    let journal = open_journal(&pair);
    write(&journal, 20_000, 20_000, Duration::ZERO, 7);
    let blocked = |c: &mut std::process::Command| {
        // SAFETY: the hook only calls prctl (see block_io_uring).
        unsafe { c.pre_exec(block_io_uring) };
    };
    let recv = Proc::start_with(RECV, "replrecv", &pair.config, blocked);
    let send = Proc::start_with(SEND, "replsend", &pair.config, blocked);
    wait_acked(&pair, &journal, Duration::from_secs(60));
    for (name, log) in [("sender", send.log()), ("receiver", recv.log())] {
        assert!(
            log.contains("DMK0002W io_uring is not available")
                && log.contains("using plain sockets"),
            "{name} did not report the fallback:\n{log}"
        );
    }
    drop(send);
    drop(recv);
    assert_staging_equals_journal(&pair);
}
