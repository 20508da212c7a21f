//! Socket I/O for the data and control channels, through one small
//! completion-based interface with two implementations:
//!
//! - `UringDriver`: io_uring (the `io-uring` crate). Every operation queued
//!   since the last wait goes to the kernel in one `io_uring_enter`, which
//!   also waits for the first completion: one system call per round of
//!   sends, reads and wake-ups, never one per entry or frame.
//! - `PlainDriver`: `poll(2)` then non-blocking `send`/`read`, for kernels
//!   where io_uring is missing, disabled (`kernel.io_uring_disabled`) or
//!   blocked by seccomp. `open_driver` detects that at start-up, logs
//!   DMK0002W and falls back.
//!
//! The caller owns the protocol; a driver only moves bytes. Buffers are
//! handed over with the operation and returned with its completion, so
//! memory the kernel may write into is never reachable from safe code.
//!
//! Rule for callers: at most one send and one read in flight per descriptor
//! (two sends on one stream could interleave their partial writes).

mod plain;
mod uring;

use std::fmt::Debug;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub use plain::PlainDriver;
pub use uring::UringDriver;

/// The caller's name for an operation, returned with its completion.
pub type Token = u64;

/// One socket operation.
#[derive(Debug)]
pub enum Op {
    /// Send `buf[from..]` on a stream socket (no SIGPIPE). Completes with the
    /// number of bytes sent, which may be fewer.
    Send {
        fd: RawFd,
        buf: Vec<u8>,
        from: usize,
    },
    /// Read into the spare capacity of `buf` (it must have some). Completes
    /// with the number of bytes read, 0 at end of stream; `buf`'s length has
    /// grown by that much.
    Read { fd: RawFd, buf: Vec<u8> },
}

impl Op {
    fn fd(&self) -> RawFd {
        match self {
            Op::Send { fd, .. } | Op::Read { fd, .. } => *fd,
        }
    }
    fn into_buf(self) -> Vec<u8> {
        match self {
            Op::Send { buf, .. } | Op::Read { buf, .. } => buf,
        }
    }
}

/// A finished operation and its buffer.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub result: io::Result<usize>,
    pub buf: Vec<u8>,
}

/// Which implementation a driver is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Uring,
    Plain,
}

/// What the configuration asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring when the kernel allows it, plain sockets otherwise.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Plain sockets.
    Plain,
}

/// A completion-based socket driver.
pub trait Driver: Send + Debug {
    fn kind(&self) -> IoKind;
    /// Queues `op`; it starts no later than the next `wait`.
    fn submit(&mut self, token: Token, op: Op);
    /// Starts queued operations and waits until at least one completes or
    /// `timeout` passes; appends every completion to `out`.
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Cancels everything in flight and waits for it; buffers come back in `out`.
    fn cancel_all(&mut self, out: &mut Vec<Completion>);
    /// Operations submitted and not yet completed.
    fn in_flight(&self) -> usize;
}

/// Why no driver could be opened.
#[derive(Debug, thiserror::Error)]
#[error("DMK0003E io_uring was required (io = \"uring\") but is not available: {0}")]
pub struct UringUnavailable(pub String);

/// Opens the driver `mode` asks for. With `Auto`, io_uring is probed (ring
/// set-up, a no-op round trip) and plain sockets are used if that fails,
/// with DMK0002W naming why.
pub fn open_driver(mode: IoMode) -> Result<Box<dyn Driver>, UringUnavailable> {
    match mode {
        IoMode::Plain => Ok(Box::new(PlainDriver::new())),
        IoMode::Uring => Ok(Box::new(UringDriver::probe().map_err(UringUnavailable)?)),
        IoMode::Auto => {
            // Probed once per process: the answer does not change, and the
            // message is logged once.
            static UNAVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            if *UNAVAILABLE.get().unwrap_or(&false) {
                return Ok(Box::new(PlainDriver::new()));
            }
            match UringDriver::probe() {
                Ok(driver) => {
                    UNAVAILABLE.get_or_init(|| {
                        tracing::info!("DMK0001I socket I/O through io_uring");
                        false
                    });
                    Ok(Box::new(driver))
                }
                Err(reason) => {
                    UNAVAILABLE.get_or_init(|| {
                        tracing::warn!(
                            "DMK0002W io_uring is not available ({reason}); using plain sockets"
                        );
                        true
                    });
                    Ok(Box::new(PlainDriver::new()))
                }
            }
        }
    }
}

/// Wakes a thread blocked in `Driver::wait` from another thread: keep a
/// `wake_op` read in flight on the driver; `wake` completes it.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd })
    }

    pub fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to our eventfd. A
        // full counter (EAGAIN) means a wake-up is already pending.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// The read to keep in flight: it completes after `wake`.
    pub fn wake_op(&self, buf: Vec<u8>) -> Op {
        let mut buf = buf;
        buf.clear();
        buf.reserve_exact(8);
        Op::Read {
            fd: self.fd.as_raw_fd(),
            buf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn drivers() -> Vec<Box<dyn Driver>> {
        let mut out: Vec<Box<dyn Driver>> = vec![Box::new(PlainDriver::new())];
        match UringDriver::probe() {
            Ok(d) => out.push(Box::new(d)),
            Err(e) => eprintln!("io_uring not available here ({e}); testing plain only"),
        }
        out
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn sends_and_reads_move_every_byte_in_order() {
        for mut driver in drivers() {
            let (a, mut b) = pair();
            let data: Vec<u8> = (0..8 << 20)
                .map(|i: u32| (i * 7 + i / 4096) as u8)
                .collect();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                b.read_to_end(&mut got).unwrap();
                got
            });
            let mut from = 0;
            driver.submit(
                1,
                Op::Send {
                    fd: a.as_raw_fd(),
                    buf: data.clone(),
                    from,
                },
            );
            let mut done = Vec::new();
            loop {
                driver.wait(Duration::from_secs(5), &mut done).unwrap();
                let Some(c) = done.pop() else { continue };
                from += c.result.unwrap();
                if from == data.len() {
                    break;
                }
                driver.submit(
                    1,
                    Op::Send {
                        fd: a.as_raw_fd(),
                        buf: c.buf,
                        from,
                    },
                );
            }
            drop(a);
            assert!(reader.join().unwrap() == data, "{:?}", driver.kind());
        }
    }

    #[test]
    fn reads_complete_with_what_arrived_and_zero_at_the_end() {
        for mut driver in drivers() {
            let (a, mut b) = pair();
            driver.submit(
                7,
                Op::Read {
                    fd: a.as_raw_fd(),
                    buf: Vec::with_capacity(100),
                },
            );
            let mut done = Vec::new();
            driver.wait(Duration::from_millis(20), &mut done).unwrap();
            assert!(done.is_empty(), "nothing sent yet");
            b.write_all(b"hello").unwrap();
            while done.is_empty() {
                driver.wait(Duration::from_secs(5), &mut done).unwrap();
            }
            let c = done.pop().unwrap();
            assert_eq!(
                (c.token, c.result.unwrap(), &c.buf[..]),
                (7, 5, &b"hello"[..])
            );
            drop(b);
            driver.submit(
                8,
                Op::Read {
                    fd: a.as_raw_fd(),
                    buf: c.buf,
                },
            );
            while done.is_empty() {
                driver.wait(Duration::from_secs(5), &mut done).unwrap();
            }
            assert_eq!(done.pop().unwrap().result.unwrap(), 0);
        }
    }

    #[test]
    fn a_waker_interrupts_a_wait_and_cancel_returns_buffers() {
        for mut driver in drivers() {
            let waker = std::sync::Arc::new(Waker::new().unwrap());
            driver.submit(1, waker.wake_op(Vec::new()));
            let (a, _b) = pair();
            driver.submit(
                2,
                Op::Read {
                    fd: a.as_raw_fd(),
                    buf: Vec::with_capacity(10),
                },
            );
            let w = waker.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                w.wake();
            });
            let mut done = Vec::new();
            let start = std::time::Instant::now();
            while done.is_empty() {
                driver.wait(Duration::from_secs(10), &mut done).unwrap();
            }
            assert!(start.elapsed() < Duration::from_secs(5));
            assert_eq!(done[0].token, 1);
            t.join().unwrap();
            assert_eq!(driver.in_flight(), 1);
            let mut cancelled = Vec::new();
            driver.cancel_all(&mut cancelled);
            assert_eq!(driver.in_flight(), 0);
            assert_eq!(cancelled.len(), 1);
            assert_eq!(cancelled[0].token, 2);
            assert_eq!(cancelled[0].buf.capacity(), 10);
        }
    }
}
