//! The pipeline threads' real-time priority (`engine::sys::enter_realtime`,
//! `realtime_section`).
//! A test binary of its own: the priority is set for the whole process.

/// Linux's `SCHED_RESET_ON_FORK`, as `sched_getscheduler` reports it.
const RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// The calling thread's policy, with the reset-on-fork flag.
fn policy() -> libc::c_int {
    // SAFETY: pid 0 is the calling thread; the call reads nothing of ours.
    unsafe { libc::sched_getscheduler(0) }
}

/// Whether this process may take SCHED_RR priority 1 at all (root,
/// CAP_SYS_NICE or RLIMIT_RTPRIO), found out on a thread of its own.
fn permitted() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: a valid sched_param; pid 0 is this throwaway thread.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) == 0 }
    })
    .join()
    .unwrap()
}

/// On a thread of its own (real-time first with `entered`): its policy
/// inside a `realtime_section`, then after it.
fn section_policies(entered: bool) -> (libc::c_int, libc::c_int) {
    std::thread::spawn(move || {
        if entered {
            engine::sys::enter_realtime();
        }
        let section = engine::sys::realtime_section();
        let inside = policy();
        drop(section);
        (inside, policy())
    })
    .join()
    .unwrap()
}

#[test]
fn threads_enter_the_priority_set_and_the_threads_they_start_do_not() {
    // None set: entering changes nothing.
    std::thread::spawn(|| {
        let section = engine::sys::realtime_section();
        assert_eq!(policy(), libc::SCHED_OTHER);
        drop(section);
        engine::sys::enter_realtime();
        assert_eq!(policy(), libc::SCHED_OTHER);
    })
    .join()
    .unwrap();

    engine::sys::set_realtime_priority(1);
    let permitted = permitted();
    eprintln!("SCHED_RR permitted here: {permitted}");
    let (entered, started) = std::thread::spawn(|| {
        engine::sys::enter_realtime();
        let started = std::thread::spawn(policy).join().unwrap();
        (policy(), started)
    })
    .join()
    .unwrap();
    if permitted {
        assert_eq!(entered, libc::SCHED_RR | RESET_ON_FORK);
        let mut param = libc::sched_param { sched_priority: 0 };
        // Priority 1, as set (read on a thread that enters again).
        let priority = std::thread::spawn(move || {
            engine::sys::enter_realtime();
            // SAFETY: a valid sched_param to fill; pid 0 is this thread.
            assert_eq!(unsafe { libc::sched_getparam(0, &mut param) }, 0);
            param.sched_priority
        })
        .join()
        .unwrap();
        assert_eq!(priority, 1);
    } else {
        // Refused (DMK0007W): the thread runs on at normal priority.
        assert_eq!(entered, libc::SCHED_OTHER);
    }
    assert_eq!(
        started,
        libc::SCHED_OTHER,
        "a thread started by one that entered"
    );
    // The main test thread never entered.
    assert_eq!(policy(), libc::SCHED_OTHER);

    // A section (a checkpoint holding a shard): real-time while it lives,
    // back at normal scheduling once dropped.
    let (inside, after) = section_policies(false);
    match permitted {
        true => assert_eq!(inside, libc::SCHED_RR | RESET_ON_FORK),
        false => assert_eq!(inside, libc::SCHED_OTHER),
    }
    assert_eq!(
        after & !RESET_ON_FORK,
        libc::SCHED_OTHER,
        "after the section"
    );

    // On a thread already real-time, a section leaves it so.
    let (inside, after) = section_policies(true);
    if permitted {
        assert_eq!(inside, libc::SCHED_RR | RESET_ON_FORK);
        assert_eq!(
            after,
            libc::SCHED_RR | RESET_ON_FORK,
            "a real-time thread after a section"
        );
    }
}
