//! The fallback driver: `poll(2)`, then non-blocking `send` or `read` on
//! the descriptors that are ready.

use std::io;
use std::time::{Duration, Instant};

use super::{Completion, Driver, IoKind, Op, Token};

#[derive(Debug, Default)]
pub struct PlainDriver {
    pending: Vec<(Token, Op)>,
}

impl PlainDriver {
    pub fn new() -> PlainDriver {
        PlainDriver::default()
    }
}

/// Performs `op` once it is ready; `None` if it would block after all.
fn perform(op: &mut Op) -> Option<io::Result<usize>> {
    loop {
        let n = match op {
            Op::Send { fd, buf, from } => {
                let rest = &buf[*from..];
                // SAFETY: sends from a live slice of `rest.len()` bytes.
                unsafe {
                    libc::send(
                        *fd,
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                }
            }
            Op::Read { fd, buf } => {
                let spare = buf.spare_capacity_mut();
                // SAFETY: reads into the vector's spare capacity, which is
                // allocated and ours; poll said it is readable, so this does
                // not block.
                let n = unsafe { libc::read(*fd, spare.as_mut_ptr().cast(), spare.len()) };
                if n > 0 {
                    // SAFETY: the kernel initialised `n` bytes past the length.
                    unsafe { buf.set_len(buf.len() + n as usize) };
                }
                n
            }
        };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return None,
            _ => return Some(Err(error)),
        }
    }
}

impl Driver for PlainDriver {
    fn kind(&self) -> IoKind {
        IoKind::Plain
    }

    fn submit(&mut self, token: Token, op: Op) {
        if let Op::Read { buf, .. } = &op {
            assert!(buf.capacity() > buf.len(), "a read needs spare capacity");
        }
        self.pending.push((token, op));
    }

    fn wait(&mut self, timeout: Duration, out: &mut Vec<Completion>) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut polls = Vec::with_capacity(self.pending.len());
        loop {
            polls.clear();
            polls.extend(self.pending.iter().map(|(_, op)| libc::pollfd {
                fd: op.fd(),
                events: match op {
                    Op::Send { .. } => libc::POLLOUT,
                    Op::Read { .. } => libc::POLLIN,
                },
                revents: 0,
            }));
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `polls` is a live array of `polls.len()` pollfd structs.
            let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as _, millis) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            let before = out.len();
            // Back to front so removal keeps the indices of what is left.
            for index in (0..polls.len()).rev() {
                if polls[index].revents == 0 {
                    continue;
                }
                if let Some(result) = perform(&mut self.pending[index].1) {
                    let (token, op) = self.pending.remove(index);
                    out.push(Completion {
                        token,
                        result,
                        buf: op.into_buf(),
                    });
                }
            }
            if out.len() > before || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    fn cancel_all(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.pending.drain(..).map(|(token, op)| Completion {
            token,
            result: Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            buf: op.into_buf(),
        }));
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}
