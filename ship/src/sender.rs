//! The sender (primary node): connects to the backup, learns where to resume,
//! scrapes the journal from there and streams frames, within a window of
//! bytes not yet acknowledged. Reconnects with backoff after any failure.
//!
//! Threads per session: the producer (scrape, encode into a frame buffer)
//! and the I/O loop (one driver: frame sends on the data connection, control
//! reads and sends, a waker the producer uses). Frames go from one to the
//! other through a bounded channel; the window bounds the bytes queued, in
//! flight and unacknowledged together.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::frame::FrameEncoder;
use engine::journal::{list_segments, AckRecord, MappedSegment};
use engine::protocol::{Control, PROTOCOL_VERSION};
use engine::trace::StageClock;
use engine::transport::{open_driver, Completion, Driver, Op, Waker};
use parking_lot::{Condvar, Mutex};
use scraper::{ScrapeOptions, Scraper};

use crate::config::Config;
use crate::link::{read_control, take_messages, write_control, Backoff, ControlOut};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

const T_DATA: u64 = 1;
const T_CONTROL_READ: u64 = 2;
const T_CONTROL_SEND: u64 = 3;
const T_WAKE: u64 = 4;

/// Positions the sender reports (for progress lines and tests).
#[derive(Debug, Default)]
pub struct SenderStatus {
    /// The backup has durably staged everything below this.
    pub acked: AtomicU64,
    /// Frames up to this position have been handed to the socket.
    pub sent: AtomicU64,
    /// When each scraped batch was taken from the journal (replbench).
    pub scraped_at: StageClock,
    /// When each frame was wholly handed to the socket (replbench).
    pub sent_at: StageClock,
    /// Sessions opened so far (each one scraping from its resume position).
    pub sessions: AtomicU64,
}

/// How a session ended without an error.
enum End {
    Stopped,
    /// The backup refused a frame and asked for the stream again from here.
    Resend,
}

/// A frame on its way to the socket.
struct Outgoing {
    buf: Vec<u8>,
    next: u64,
}

/// Shared between a session's producer and its I/O loop.
struct Shared {
    stop: AtomicBool,
    in_flight: InFlight,
    pool: Mutex<Vec<Vec<u8>>>,
    waker: Waker,
}

/// Bytes encoded and not yet acknowledged: the producer adds a frame's,
/// the I/O loop takes off what an acknowledgement covers.
#[derive(Default)]
struct InFlight {
    bytes: Mutex<u64>,
    acked: Condvar,
}

impl InFlight {
    fn add(&self, bytes: u64) {
        *self.bytes.lock() += bytes;
    }

    fn acknowledge(&self, bytes: u64) {
        let mut in_flight = self.bytes.lock();
        *in_flight = in_flight.saturating_sub(bytes);
        self.acked.notify_all();
    }

    /// Wakes every wait, so a stopping session's producer looks at `stop`.
    fn wake(&self) {
        self.acked.notify_all();
    }

    /// Waits while `window` bytes or more are in flight, until `stop` is set.
    fn wait_below(&self, window: u64, stop: &AtomicBool) {
        let mut in_flight = self.bytes.lock();
        while *in_flight >= window && !stop.load(Ordering::Relaxed) {
            self.acked
                .wait_for(&mut in_flight, Duration::from_millis(100));
        }
    }

    /// Nagle's hold for a small frame (decisions.md 58): waits until
    /// nothing is in flight, at most `linger`, and says whether anything was.
    fn hold(&self, linger: Duration) -> bool {
        let deadline = Instant::now() + linger;
        let mut in_flight = self.bytes.lock();
        let held = *in_flight > 0;
        while *in_flight > 0 && !self.acked.wait_until(&mut in_flight, deadline).timed_out() {}
        held
    }
}

/// Runs the sender until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool, status: &SenderStatus) -> anyhow::Result<()> {
    let journal = &config.primary.journal;
    let mut backoff = Backoff::new(config.transport.reconnect_max);
    tracing::info!(
        "DMK0020I sender {} for group {} journal {} ({}) → backup {} at {}",
        config.primary.node,
        config.group,
        config.primary.journal_name,
        journal.display(),
        config.backup.node,
        config.primary.connect
    );
    engine::sys::set_realtime_priority(config.primary.realtime_priority);
    engine::sys::enter_realtime();
    while !stop.load(Ordering::Relaxed) {
        let acked_before = status.acked.load(Ordering::Relaxed);
        match session(config, stop, status) {
            Ok(End::Stopped) => break,
            Ok(End::Resend) => backoff.reset(),
            Err(e) => {
                if status.acked.load(Ordering::Relaxed) > acked_before {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    "DMK0021W session with backup {} at {} ended: {}; reconnecting in {} ms",
                    config.backup.node,
                    config.primary.connect,
                    engine::report::describe(&e),
                    delay.as_millis()
                );
                sleep_unless(stop, delay);
            }
        }
    }
    tracing::info!("DMK0029I sender stopped");
    Ok(())
}

fn sleep_unless(stop: &AtomicBool, delay: Duration) {
    let until = Instant::now() + delay;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// The journal's id, from its first segment's header (read through the
/// journal's own segment opener: the header only, not the segment).
fn journal_id(dir: &Path) -> anyhow::Result<u64> {
    let segments = list_segments(dir)
        .with_context(|| format!("DMK0022E cannot list journal {}", dir.display()))?;
    let (_, path) = segments
        .first()
        .with_context(|| format!("DMK0022E journal {} has no segments yet", dir.display()))?;
    let segment = MappedSegment::open(path, false)
        .map_err(|e| anyhow::anyhow!("DMK0022E journal segment {}: {e}", path.display()))?;
    Ok(segment.header().journal_id)
}

fn connect(config: &Config) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&config.primary.connect, HANDSHAKE_TIMEOUT)
        .with_context(|| format!("DMK0023E cannot connect to {}", config.primary.connect))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn session(config: &Config, stop: &AtomicBool, status: &SenderStatus) -> anyhow::Result<End> {
    let journal_dir = &config.primary.journal;
    let journal_id = journal_id(journal_dir)?;
    let mut acks = AckRecord::open(journal_dir, &config.backup.node)?;

    let mut control = connect(config)?;
    write_control(
        &mut control,
        &Control::Hello {
            protocol: PROTOCOL_VERSION,
            group: config.group.clone(),
            primary: config.primary.node.clone(),
            backup: config.backup.node.clone(),
            journal: config.primary.journal_name.clone(),
            journal_id,
        },
    )?;
    let mut control_in = Vec::new();
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (session_id, resume) = match read_control(&mut control, &mut control_in, deadline)? {
        Control::Welcome {
            protocol,
            backup,
            session,
            resume,
        } => {
            if protocol != PROTOCOL_VERSION || backup != config.backup.node {
                bail!("DMK0104E the backup answered as {backup:?} protocol {protocol}; expected {:?} protocol {PROTOCOL_VERSION}", config.backup.node);
            }
            (session, resume)
        }
        Control::Refused { reason } => bail!("the backup refused the session: {reason}"),
        other => bail!("DMK0105E expected a welcome, got {other:?}"),
    };
    let mut data = connect(config)?;
    write_control(
        &mut data,
        &Control::DataHello {
            session: session_id,
        },
    )?;
    control.set_read_timeout(None)?;

    // The backup holds everything below `resume` durably: that is an ack,
    // and the exact place to continue (no gap, no duplicate).
    if resume < acks.position() {
        tracing::warn!(
            "DMK0024W backup {} resumes at {resume}, below its last acknowledged position {}: it lost staged data; resending from {resume}",
            config.backup.node,
            acks.position()
        );
    }
    acks.reset(resume)?;
    status.acked.store(resume, Ordering::Relaxed);
    status.sent.store(resume, Ordering::Relaxed);
    tracing::info!(
        "DMK0025I session {session_id:#x} with backup {} open; resuming at position {resume}",
        config.backup.node
    );

    let scraper = Scraper::open(
        journal_dir,
        ScrapeOptions {
            from_sequence: resume,
            batch_entries_max: config.transport.frame_entries,
            batch_bytes_max: config.transport.frame_bytes,
            linger: config.transport.linger,
            ..ScrapeOptions::default()
        },
    )?;
    let shared = Shared {
        stop: AtomicBool::new(false),
        in_flight: InFlight::default(),
        pool: Mutex::new(Vec::new()),
        waker: Waker::new()?,
    };
    let (tx, rx) = mpsc::sync_channel::<Outgoing>(4);
    let mut driver = open_driver(config.transport.io)?;
    status.sessions.fetch_add(1, Ordering::Relaxed);
    std::thread::scope(|scope| {
        let producer = std::thread::Builder::new()
            .name("produce".into())
            .spawn_scoped(scope, || {
                engine::sys::enter_realtime();
                let result = produce(config, scraper, journal_id, &shared, tx, status);
                shared.waker.wake();
                result
            })?;
        let mut io = SessionIo {
            config,
            shared: &shared,
            driver: &mut *driver,
            acks: &mut acks,
            status,
            data: &data,
            control: &control,
            control_in,
            control_out: ControlOut::new(control.as_raw_fd(), T_CONTROL_SEND),
            unacked: VecDeque::new(),
            sending: None,
            held: false,
        };
        let result = io.run(stop, &rx);
        shared.stop.store(true, Ordering::Relaxed);
        shared.in_flight.wake();
        drop(rx);
        let mut cancelled = Vec::new();
        driver.cancel_all(&mut cancelled);
        let produced = producer.join().expect("producer thread panicked");
        match (result, produced) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(end), Ok(())) => Ok(end),
        }
    })
}

/// Scrapes and encodes frames until the session stops.
fn produce(
    config: &Config,
    mut scraper: Scraper,
    journal_id: u64,
    shared: &Shared,
    tx: SyncSender<Outgoing>,
    status: &SenderStatus,
) -> anyhow::Result<()> {
    let mut encoder = FrameEncoder::new(config.transport.codec)?;
    let window = config.transport.window_bytes;
    while !shared.stop.load(Ordering::Relaxed) {
        shared.in_flight.wait_below(window, &shared.stop);
        let start = scraper.next_sequence();
        let batch = scraper.next_batch_held(Duration::from_millis(100), &mut |linger| {
            shared.in_flight.hold(linger)
        })?;
        let next = batch.next_sequence();
        if next == start {
            continue;
        }
        status.scraped_at.reached(0, next);
        let mut buf = shared.pool.lock().pop().unwrap_or_default();
        encoder.encode(journal_id, start, next, batch.iter(), &mut buf)?;
        shared.in_flight.add(buf.len() as u64);
        if tx.send(Outgoing { buf, next }).is_err() {
            break;
        }
        shared.waker.wake();
    }
    Ok(())
}

struct SessionIo<'a> {
    config: &'a Config,
    shared: &'a Shared,
    driver: &'a mut dyn Driver,
    acks: &'a mut AckRecord,
    status: &'a SenderStatus,
    data: &'a TcpStream,
    control: &'a TcpStream,
    control_in: Vec<u8>,
    control_out: ControlOut,
    /// Frames sent (or being sent) and not acknowledged: (next position, bytes).
    unacked: VecDeque<(u64, u64)>,
    /// The frame on the socket: (its next position, bytes sent so far).
    sending: Option<(u64, usize)>,
    held: bool,
}

impl SessionIo<'_> {
    fn run(&mut self, stop: &AtomicBool, rx: &Receiver<Outgoing>) -> anyhow::Result<End> {
        let heartbeat = self.config.transport.heartbeat;
        let timeout = self.config.transport.timeout;
        let mut last_heard = Instant::now();
        let mut next_heartbeat = Instant::now();
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        let mut progress_from = (Instant::now(), self.status.acked.load(Ordering::Relaxed));
        let mut read_buf = Vec::with_capacity(64 * 1024);
        read_buf.extend_from_slice(&self.control_in);
        self.control_in.clear();
        let control_fd = self.control.as_raw_fd();
        self.driver.submit(
            T_CONTROL_READ,
            Op::Read {
                fd: control_fd,
                buf: Vec::with_capacity(64 * 1024),
            },
        );
        self.driver
            .submit(T_WAKE, self.shared.waker.wake_op(Vec::new()));
        // Messages that arrived with the welcome.
        if let Some(end) = self.take_messages(&mut read_buf, &mut last_heard)? {
            return Ok(end);
        }
        let mut completions = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                self.control_out.push(
                    &Control::Bye {
                        reason: "sender stopping".into(),
                    },
                    self.driver,
                );
                self.control_out.flush(self.driver);
                return Ok(End::Stopped);
            }
            if self.sending.is_none() {
                match rx.try_recv() {
                    Ok(out) => self.start_send(out),
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => {
                        bail!("the producer stopped")
                    }
                }
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                let position = self.status.sent.load(Ordering::Relaxed);
                self.control_out
                    .push(&Control::Heartbeat { position }, self.driver);
                next_heartbeat = now + heartbeat;
            }
            if now >= next_progress {
                let acked = self.status.acked.load(Ordering::Relaxed);
                let rate = (acked - progress_from.1) as f64
                    / progress_from.0.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    "DMK0030I sent through {}, backup {} acknowledged through {acked} ({rate:.0} positions/s)",
                    self.status.sent.load(Ordering::Relaxed),
                    self.config.backup.node
                );
                progress_from = (Instant::now(), acked);
                next_progress = now + PROGRESS_EVERY;
            }
            if last_heard.elapsed() > timeout {
                bail!(
                    "DMK0026E nothing heard from the backup for {} ms",
                    timeout.as_millis()
                );
            }
            let wait = next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            self.driver.wait(wait, &mut completions)?;
            for Completion { token, result, buf } in completions.drain(..) {
                match token {
                    T_DATA => self.sent(result, buf)?,
                    T_CONTROL_READ => {
                        let n = result.context("reading the control connection")?;
                        if n == 0 {
                            bail!("DMK0027E the backup closed the control connection");
                        }
                        let mut buf = buf;
                        read_buf.extend_from_slice(&buf);
                        buf.clear();
                        if let Some(end) = self.take_messages(&mut read_buf, &mut last_heard)? {
                            return Ok(end);
                        }
                        self.driver.submit(
                            T_CONTROL_READ,
                            Op::Read {
                                fd: control_fd,
                                buf,
                            },
                        );
                    }
                    T_CONTROL_SEND => self
                        .control_out
                        .complete(result, buf, self.driver)
                        .context("sending on the control connection")?,
                    T_WAKE => {
                        result.context("waker")?;
                        self.driver.submit(T_WAKE, self.shared.waker.wake_op(buf));
                    }
                    _ => unreachable!("unknown token {token}"),
                }
            }
        }
    }

    fn start_send(&mut self, out: Outgoing) {
        self.unacked.push_back((out.next, out.buf.len() as u64));
        self.sending = Some((out.next, 0));
        self.driver.submit(
            T_DATA,
            Op::Send {
                fd: self.data.as_raw_fd(),
                buf: out.buf,
                from: 0,
            },
        );
    }

    fn sent(&mut self, result: std::io::Result<usize>, buf: Vec<u8>) -> anyhow::Result<()> {
        let n = result.context("sending on the data connection")?;
        let (next, from) = self.sending.take().expect("a data send was in flight");
        let from = from + n;
        if from < buf.len() {
            self.sending = Some((next, from));
            self.driver.submit(
                T_DATA,
                Op::Send {
                    fd: self.data.as_raw_fd(),
                    buf,
                    from,
                },
            );
            return Ok(());
        }
        self.status.sent.store(next, Ordering::Relaxed);
        self.status.sent_at.reached(0, next);
        self.shared.pool.lock().push(buf);
        Ok(())
    }

    /// Handles every complete control message in `buf`.
    fn take_messages(
        &mut self,
        buf: &mut Vec<u8>,
        last_heard: &mut Instant,
    ) -> anyhow::Result<Option<End>> {
        take_messages(buf, |message| {
            *last_heard = Instant::now();
            match message {
                Control::Ack { position } => self.acked(position)?,
                Control::Heartbeat { .. } => {}
                Control::Held { position, reason } => {
                    if !self.held {
                        tracing::warn!(
                            "DMK0031W backup {} is holding the primary back at position {position}: {reason}",
                            self.config.backup.node
                        );
                        self.held = true;
                    }
                }
                Control::Resend { from, reason } => {
                    tracing::warn!(
                        "DMK0032W backup {} refused a frame and asks for everything from position {from} again: {reason}",
                        self.config.backup.node
                    );
                    return Ok(Some(End::Resend));
                }
                Control::Bye { reason } => {
                    bail!("DMK0028W the backup ended the session: {reason}")
                }
                other => bail!("DMK0105E unexpected {other:?}"),
            }
            Ok(None)
        })
    }

    fn acked(&mut self, position: u64) -> anyhow::Result<()> {
        if self.held {
            tracing::info!(
                "DMK0033I backup {} is accepting frames again",
                self.config.backup.node
            );
            self.held = false;
        }
        self.acks.store(position)?;
        self.status.acked.fetch_max(position, Ordering::Relaxed);
        let mut freed = 0;
        while let Some(&(next, bytes)) = self.unacked.front() {
            if next > position {
                break;
            }
            freed += bytes;
            self.unacked.pop_front();
        }
        if freed > 0 {
            self.shared.in_flight.acknowledge(freed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledges `bytes` after `after`, from another thread.
    fn ack_later(in_flight: &std::sync::Arc<InFlight>, after: Duration, bytes: u64) {
        let in_flight = std::sync::Arc::clone(in_flight);
        std::thread::spawn(move || {
            std::thread::sleep(after);
            in_flight.acknowledge(bytes);
        });
    }

    #[test]
    fn a_hold_with_nothing_in_flight_returns_at_once_and_says_so() {
        let in_flight = InFlight::default();
        let start = Instant::now();
        assert!(!in_flight.hold(Duration::from_secs(60)));
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// Holds with 100 bytes in flight while `acks` (after how long, how
    /// many bytes) arrive from another thread; how long the hold took.
    fn hold_with(linger: Duration, acks: &[(Duration, u64)]) -> Duration {
        let in_flight = std::sync::Arc::new(InFlight::default());
        in_flight.add(100);
        let start = Instant::now();
        for &(after, bytes) in acks {
            ack_later(&in_flight, after, bytes);
        }
        assert!(in_flight.hold(linger), "bytes were in flight");
        start.elapsed()
    }

    #[test]
    fn a_hold_ends_when_everything_in_flight_is_acknowledged() {
        // A first acknowledgement leaves bytes in flight: the hold goes on.
        let acks = [
            (Duration::from_millis(20), 60),
            (Duration::from_millis(80), 40),
        ];
        let waited = hold_with(Duration::from_secs(60), &acks);
        assert!(
            (Duration::from_millis(80)..Duration::from_secs(10)).contains(&waited),
            "a hold of linger 60 s ended after {waited:?}, the last acknowledgement came after 80 ms"
        );
    }

    #[test]
    fn a_hold_waits_no_longer_than_its_linger() {
        // Should the hold ignore its linger, this ends it, and the timing fails.
        let waited = hold_with(Duration::from_millis(50), &[(Duration::from_secs(20), 100)]);
        assert!(
            (Duration::from_millis(50)..Duration::from_secs(10)).contains(&waited),
            "a hold of linger 50 ms ended after {waited:?}"
        );
    }

    #[test]
    fn the_window_wait_ends_below_the_window_or_at_stop() {
        let in_flight = std::sync::Arc::new(InFlight::default());
        let stop = AtomicBool::new(false);
        in_flight.add(100);
        ack_later(&in_flight, Duration::from_millis(30), 50);
        let start = Instant::now();
        in_flight.wait_below(100, &stop);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(*in_flight.bytes.lock(), 50);
        // At stop it returns with the window still full; should it not,
        // this ends the wait, and the timing fails.
        ack_later(&in_flight, Duration::from_secs(20), 50);
        stop.store(true, Ordering::Relaxed);
        let start = Instant::now();
        in_flight.wait_below(50, &stop);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
