//! The io_uring driver. Operations queued since the last `wait` are submitted
//! together with the wait itself: one `io_uring_enter` per round.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::{Completion, Driver, IoKind, Op, Token};

/// user_data of cancellation requests (never an operation id).
const CANCEL_BIT: u64 = 1 << 63;
const RING_ENTRIES: u32 = 64;

pub struct UringDriver {
    ring: IoUring,
    /// In flight, by user_data. The buffers stay here, untouched, until the
    /// kernel reports completion: their heap memory does not move with them.
    ops: HashMap<u64, (Token, Op)>,
    next_id: u64,
}

impl std::fmt::Debug for UringDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDriver")
            .field("in_flight", &self.ops.len())
            .finish_non_exhaustive()
    }
}

fn disabled_setting() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) => format!("kernel.io_uring_disabled = {}", v.trim()),
        Err(_) => "kernel.io_uring_disabled not present".into(),
    }
}

impl UringDriver {
    /// Sets up a ring and proves it works with a no-op round trip. The error
    /// says why not (setup refused, seccomp, a kernel older than 5.11).
    pub fn probe() -> Result<UringDriver, String> {
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|e| format!("io_uring_setup failed: {e}; {}", disabled_setting()))?;
        if !ring.params().is_feature_ext_arg() {
            return Err("the kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11 or later)".into());
        }
        let mut driver = UringDriver {
            ring,
            ops: HashMap::new(),
            next_id: 0,
        };
        let nop = opcode::Nop::new().build().user_data(CANCEL_BIT);
        driver.push(&nop);
        driver
            .ring
            .submit_and_wait(1)
            .map_err(|e| format!("io_uring_enter failed: {e}"))?;
        let result = driver.ring.completion().next().map(|cqe| cqe.result());
        match result {
            Some(res) if res >= 0 => Ok(driver),
            Some(res) => Err(format!(
                "a no-op failed: {}",
                io::Error::from_raw_os_error(-res)
            )),
            None => Err("a no-op did not complete".into()),
        }
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed points at memory owned by `self.ops`
            // (or nothing), which stays put until its completion is reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // Queue full: hand what is queued to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::warn!("DMK0004W io_uring submit failed, retrying: {e}");
                std::thread::yield_now();
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (id, res) in cqes {
            if id & CANCEL_BIT != 0 {
                continue;
            }
            let Some((token, mut op)) = self.ops.remove(&id) else {
                continue;
            };
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                if let Op::Read { buf, .. } = &mut op {
                    // SAFETY: the kernel wrote `res` bytes into the spare
                    // capacity this read was given.
                    unsafe { buf.set_len(buf.len() + res as usize) };
                }
                Ok(res as usize)
            };
            out.push(Completion {
                token,
                result,
                buf: op.into_buf(),
            });
        }
    }
}

impl Driver for UringDriver {
    fn kind(&self) -> IoKind {
        IoKind::Uring
    }

    fn submit(&mut self, token: Token, mut op: Op) {
        let id = self.next_id;
        self.next_id = (self.next_id + 1) & !CANCEL_BIT;
        let entry = match &mut op {
            Op::Send { fd, buf, from } => {
                let rest = &buf[*from..];
                opcode::Send::new(types::Fd(*fd), rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            Op::Read { fd, buf } => {
                let spare = buf.spare_capacity_mut();
                assert!(!spare.is_empty(), "a read needs spare capacity");
                opcode::Read::new(
                    types::Fd(*fd),
                    spare.as_mut_ptr().cast(),
                    spare.len().min(u32::MAX as usize) as u32,
                )
                .offset(u64::MAX)
                .build()
            }
        };
        self.ops.insert(id, (token, op));
        self.push(&entry.user_data(id));
    }

    fn wait(&mut self, timeout: Duration, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.reap(out);
        let want = if out.len() > before { 0 } else { 1 };
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.reap(out);
        Ok(())
    }

    fn cancel_all(&mut self, out: &mut Vec<Completion>) {
        let ids: Vec<u64> = self.ops.keys().copied().collect();
        for id in ids {
            let cancel = opcode::AsyncCancel::new(id)
                .build()
                .user_data(id | CANCEL_BIT);
            self.push(&cancel);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.ops.is_empty() && Instant::now() < deadline {
            let before = out.len();
            if let Err(e) = self.wait(Duration::from_millis(100), out) {
                tracing::warn!("DMK0004W io_uring wait during cancel failed: {e}");
            }
            for c in &mut out[before..] {
                c.result = Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
        }
        if !self.ops.is_empty() {
            // The kernel may still write into these buffers: never free them.
            tracing::warn!(
                "DMK0005W {} io_uring operations did not finish cancelling; their buffers are leaked",
                self.ops.len()
            );
            for (_, (_, op)) in self.ops.drain() {
                std::mem::forget(op);
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.ops.len()
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        let mut discard = Vec::new();
        self.cancel_all(&mut discard);
    }
}
