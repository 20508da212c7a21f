//! What both ends share: blocking handshake I/O, the control-message queue
//! of a running session, and reconnect backoff.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use engine::protocol::Control;
use engine::transport::{Driver, Op, Token};

/// Writes one control message (handshake only; sessions use `ControlOut`).
pub fn write_control(stream: &mut TcpStream, message: &Control) -> std::io::Result<()> {
    let mut buf = Vec::new();
    message.encode(&mut buf);
    stream.write_all(&buf)
}

/// Reads one control message before `deadline`. Bytes after it stay in `buf`.
pub fn read_control(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> anyhow::Result<Control> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((message, used)) = Control::decode(buf)? {
            buf.drain(..used);
            return Ok(message);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("DMK0102E no handshake message within the time allowed");
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                anyhow::bail!("DMK0102E no handshake message within the time allowed")
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            anyhow::bail!("DMK0103E the peer closed the connection during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Hands every complete control message at the front of `buf` to `each`, in
/// order, and removes them; stops early when `each` returns `Some` (the
/// session ends) or an error. A partial message stays for the next read.
pub fn take_messages<T>(
    buf: &mut Vec<u8>,
    mut each: impl FnMut(Control) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Option<T>> {
    let mut used = 0;
    let result = loop {
        let Some((message, n)) = Control::decode(&buf[used..])? else {
            break Ok(None);
        };
        used += n;
        match each(message) {
            Ok(None) => {}
            other => break other,
        }
    };
    buf.drain(..used);
    result
}

/// Outgoing control messages of a session: one send in flight, the rest
/// queued behind it.
#[derive(Debug)]
pub struct ControlOut {
    fd: std::os::fd::RawFd,
    token: Token,
    queued: Vec<u8>,
    spare: Vec<u8>,
    in_flight: bool,
}

impl ControlOut {
    pub fn new(fd: std::os::fd::RawFd, token: Token) -> ControlOut {
        ControlOut {
            fd,
            token,
            queued: Vec::new(),
            spare: Vec::new(),
            in_flight: false,
        }
    }

    pub fn push(&mut self, message: &Control, driver: &mut dyn Driver) {
        message.encode(&mut self.queued);
        self.start(driver);
    }

    fn start(&mut self, driver: &mut dyn Driver) {
        if self.queued.is_empty() || self.in_flight {
            return;
        }
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        std::mem::swap(&mut next, &mut self.queued);
        self.send(next, driver);
    }

    fn send(&mut self, buf: Vec<u8>, driver: &mut dyn Driver) {
        self.in_flight = true;
        driver.submit(
            self.token,
            Op::Send {
                fd: self.fd,
                buf,
                from: 0,
            },
        );
    }

    /// Handles the completion of our send: the rest of a short send goes
    /// again, then whatever was queued meanwhile.
    pub fn complete(
        &mut self,
        result: std::io::Result<usize>,
        mut buf: Vec<u8>,
        driver: &mut dyn Driver,
    ) -> std::io::Result<()> {
        self.in_flight = false;
        let sent = result?;
        if sent < buf.len() {
            buf.drain(..sent);
            self.send(buf, driver);
        } else {
            self.spare = buf;
            self.start(driver);
        }
        Ok(())
    }

    /// Nothing queued or in flight.
    pub fn idle(&self) -> bool {
        !self.in_flight && self.queued.is_empty()
    }

    /// Best effort at the end of a session: lets what is queued (a goodbye,
    /// a resend request) go out for up to half a second. Completions of
    /// other operations are dropped; the session is ending.
    pub fn flush(&mut self, driver: &mut dyn Driver) {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut completions = Vec::new();
        while !self.idle() && Instant::now() < deadline {
            if driver
                .wait(Duration::from_millis(50), &mut completions)
                .is_err()
            {
                return;
            }
            for c in completions.drain(..) {
                if c.token == self.token && self.complete(c.result, c.buf, driver).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reconnect delays: 100 ms doubling to a maximum, with jitter so a fleet of
/// senders does not reconnect in step.
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff { failures: 0, max }
    }
    pub fn reset(&mut self) {
        self.failures = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_millis(100)
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // 75% .. 125% of the base.
        base.mul_f64(0.75 + (nanos % 1000) as f64 / 2000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(1500) && late <= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
