//! The receiver (backup node): listens, answers a primary's handshake with
//! the position to resume from, checks every frame, stages it, and
//! acknowledges what a group commit made durable.
//!
//! Threads: the acceptor (this function's caller), one session at a time
//! (one driver: data reads, control reads and sends, a waker), and the syncer
//! (fdatasync of staging outside the staging lock; frames keep arriving
//! while it runs, and one sync covers all of them).
//!
//! A bad frame (any check of `FrameDecoder` or staging's order rules) is
//! never staged: the receiver logs it, sends Resend with the staged
//! position, and ends the session; the sender reconnects and resumes there.
//! When staging is full the receiver stops reading the data connection
//! (TCP pushes back on the primary), says Held once, and retries as apply
//! frees space.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::frame::{FrameDecoder, FrameHeader};
use engine::journal::read_position_file;
use engine::limits::FRAME_HEADER_BYTES;
use engine::protocol::{Control, PROTOCOL_VERSION};
use engine::staging::{Appended, Staging, StagingError, StagingOptions};
use engine::trace::StageClock;
use engine::transport::{open_driver, Completion, Driver, Op, Waker};
use parking_lot::{Condvar, Mutex};

use crate::config::Config;
use crate::link::{read_control, take_messages, write_control, ControlOut};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const FULL_RETRY: Duration = Duration::from_millis(100);
const PURGE_EVERY: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 4 << 20;

const T_DATA_READ: u64 = 1;
const T_CONTROL_READ: u64 = 2;
const T_CONTROL_SEND: u64 = 3;
const T_WAKE: u64 = 4;

/// The file apply writes its applied position to, in the staging
/// directory: segments wholly below it are purged.
pub use apply::APPLIED_FILE;
const IDENTITY_FILE: &str = "IDENTITY";

/// Positions the receiver reports (for tests and progress).
#[derive(Debug, Default)]
pub struct ReceiverStatus {
    /// Everything below this is durably staged (updated after every sync).
    pub durable: AtomicU64,
    /// When each sync made frames durable (replbench).
    pub staged_at: StageClock,
    /// Set once the listener is bound: senders can connect from then on.
    pub listening: AtomicBool,
    /// Set once the staging segment made ahead at start is ready (at once
    /// when none is made): a receiver in service, whose first session
    /// does not share the disk with that zero-fill. replbench's timed
    /// window starts after it.
    pub settled: AtomicBool,
}

/// State shared by the acceptor, the session and the syncers.
struct Shared {
    staging: Mutex<Staging>,
    /// Signalled when something is staged and not yet durable.
    staged_cv: Condvar,
    durable: AtomicU64,
    /// Syncs prepared (tickets handed out) and the position the last one
    /// covers: both changed only under `staging`.
    issued: AtomicU64,
    prepared: AtomicU64,
    /// Syncs complete in ticket order.
    turns: Turns,
    /// The running session's waker: the syncer wakes it after each sync.
    session_waker: Mutex<Option<Arc<Waker>>>,
    stop_syncer: AtomicBool,
    failed: Mutex<Option<String>>,
    status: Arc<ReceiverStatus>,
}

/// Syncer threads. With more than one, a frame staged while a sync runs
/// starts the next at once instead of waiting for it to end; two were
/// measured no faster (decisions.md 33), so one does it, and the ordering
/// below is what lets a session's start sync beside it safely.
const SYNCERS: usize = 1;

/// Runs the receiver until `stop` is set (or staging fails: the error).
pub fn run(config: &Config, stop: &AtomicBool, status: &Arc<ReceiverStatus>) -> anyhow::Result<()> {
    engine::sys::set_realtime_priority(config.backup.realtime_priority);
    engine::sys::enter_realtime();
    let dir = config.staging_dir();
    let (staging, recovery) = Staging::open(
        &dir,
        StagingOptions {
            segment_bytes: config.backup.segment_bytes,
            budget_bytes: config.backup.budget_bytes,
            prepare_segments: config.backup.prepare_segments,
            reserve_segments: config.backup.reserve_segments,
            ..StagingOptions::default()
        },
    )?;
    tracing::info!(
        "DMK0040I receiver {} for group {} journal {}: staging {} at position {} ({} frames in the last segment, {} torn bytes truncated)",
        config.backup.node,
        config.group,
        config.primary.journal_name,
        dir.display(),
        recovery.staged_position,
        recovery.frames,
        recovery.truncated_bytes
    );
    let listener = TcpListener::bind(config.backup.listen)
        .with_context(|| format!("DMK0041E cannot listen on {}", config.backup.listen))?;
    listener.set_nonblocking(true)?;
    tracing::info!("DMK0042I listening on {}", config.backup.listen);
    status.listening.store(true, Ordering::Relaxed);
    status
        .durable
        .store(staging.durable_position(), Ordering::Relaxed);
    let shared = Arc::new(Shared {
        durable: AtomicU64::new(staging.durable_position()),
        issued: AtomicU64::new(0),
        prepared: AtomicU64::new(staging.durable_position()),
        turns: Turns::default(),
        staging: Mutex::new(staging),
        staged_cv: Condvar::new(),
        session_waker: Mutex::new(None),
        stop_syncer: AtomicBool::new(false),
        failed: Mutex::new(None),
        status: Arc::clone(status),
    });
    let syncers = (0..SYNCERS)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("staging-sync".into())
                .spawn(move || {
                    engine::sys::enter_realtime();
                    sync_loop(&shared)
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let result = accept_loop(config, &dir, &listener, &shared, stop);
    shared.stop_syncer.store(true, Ordering::Relaxed);
    shared.staged_cv.notify_all();
    for syncer in syncers {
        syncer.join().expect("syncer panicked");
    }
    result
}

/// Prepares a sync of everything staged (holding `staging`, which the
/// caller locked), runs it without the lock, and completes it once every
/// sync prepared before it has; returns the durable position. A failure
/// poisons the store, and the syncs after it fail too.
///
/// Syncs complete in the order they were prepared: each covers the
/// segments written since the one before it, so its position may be
/// published only once every earlier sync has completed (an earlier one may
/// hold a segment since rotated away, which a later one does not sync).
fn sync_in_order(
    shared: &Shared,
    mut staging: parking_lot::MutexGuard<'_, Staging>,
) -> Result<u64, StagingError> {
    let pending = staging.prepare_sync()?;
    let ticket = shared.issued.fetch_add(1, Ordering::Relaxed);
    shared.prepared.store(pending.position(), Ordering::Relaxed);
    drop(staging);
    let outcome = pending.run();
    // Lock order: a turn, then `staging` (preparing takes `staging` alone).
    shared.turns.in_turn(ticket, || {
        // Named in turn: a segment's name is made durable only after every
        // segment before it is (an earlier sync may still hold one).
        let outcome = outcome.and_then(|()| pending.name_segments());
        let result = shared.staging.lock().complete_sync(pending, outcome);
        if let Ok(durable) = result {
            shared.durable.store(durable, Ordering::Relaxed);
            shared.status.durable.store(durable, Ordering::Relaxed);
            shared.status.staged_at.reached(0, durable);
        }
        result
    })
}

/// Lets the holders of tickets (handed out in order) finish one at a time,
/// in ticket order.
#[derive(Debug, Default)]
struct Turns {
    /// Tickets finished.
    finished: Mutex<u64>,
    turn_cv: Condvar,
}

impl Turns {
    /// Waits until every ticket before `ticket` has finished, runs `f`, and
    /// lets the next one go.
    fn in_turn<T>(&self, ticket: u64, f: impl FnOnce() -> T) -> T {
        let mut finished = self.finished.lock();
        while *finished != ticket {
            self.turn_cv.wait(&mut finished);
        }
        let out = f();
        *finished += 1;
        self.turn_cv.notify_all();
        out
    }
}

/// Group commit: syncs whatever is staged and not yet covered by a sync
/// under way, as often as the disk allows, on `SYNCERS` threads.
fn sync_loop(shared: &Shared) {
    loop {
        let staging = {
            let mut staging = shared.staging.lock();
            let covered = |staging: &Staging| {
                staging.staged_position() <= shared.prepared.load(Ordering::Relaxed)
            };
            while covered(&staging) && !shared.stop_syncer.load(Ordering::Relaxed) {
                shared
                    .staged_cv
                    .wait_for(&mut staging, Duration::from_millis(100));
            }
            if covered(&staging) {
                return;
            }
            staging
        };
        match sync_in_order(shared, staging) {
            Ok(_) => {
                if let Some(waker) = &*shared.session_waker.lock() {
                    waker.wake();
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                *shared.failed.lock() = Some(e.to_string());
                if let Some(waker) = &*shared.session_waker.lock() {
                    waker.wake();
                }
                return;
            }
        }
    }
}

/// The handshake of a primary's control connection, waiting for its data connection.
struct Pending {
    session: u64,
    control: TcpStream,
    leftover: Vec<u8>,
    deadline: Instant,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    fn end(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("session thread panicked");
    }
}

fn accept_loop(
    config: &Config,
    dir: &Path,
    listener: &TcpListener,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut pending: Option<Pending> = None;
    let mut running: Option<Running> = None;
    let mut next_purge = Instant::now();
    let mut session_counter = 0u64;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(failure) = shared.failed.lock().clone() {
            break Err(anyhow::anyhow!(
                "staging failed; restart the receiver to recover: {failure}"
            ));
        }
        if !shared.status.settled.load(Ordering::Relaxed)
            && shared.staging.lock().prepared_segment_ready()
        {
            tracing::debug!("staging's first segment made ahead is ready");
            shared.status.settled.store(true, Ordering::Relaxed);
        }
        if Instant::now() >= next_purge {
            purge(dir, shared);
            next_purge = Instant::now() + PURGE_EVERY;
        }
        if pending
            .as_ref()
            .is_some_and(|p| Instant::now() > p.deadline)
        {
            tracing::warn!(
                "DMK0043W a primary opened a session but its data connection never came"
            );
            pending = None;
        }
        let stream = match listener.accept() {
            Ok((stream, peer)) => {
                tracing::debug!("connection from {peer}");
                stream
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => {
                tracing::warn!("DMK0044W accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        let mut stream = stream;
        let mut leftover = Vec::new();
        let first = read_control(
            &mut stream,
            &mut leftover,
            Instant::now() + HANDSHAKE_TIMEOUT,
        );
        match first {
            Ok(Control::Hello {
                protocol,
                group,
                primary,
                backup,
                journal,
                journal_id,
            }) => {
                if let Err(reason) = check_hello(
                    config, dir, protocol, &group, &primary, &backup, &journal, journal_id,
                ) {
                    tracing::error!("{reason}");
                    let _ = write_control(&mut stream, &Control::Refused { reason });
                    continue;
                }
                // A new session replaces the old one (its primary restarted
                // or lost the connection); staging has one writer.
                if let Some(old) = running.take() {
                    tracing::info!(
                        "DMK0045I a new session from {primary} replaces the running one"
                    );
                    old.end();
                }
                // Everything staged becomes durable first, so the resume
                // position is exactly the staged position.
                let resume = sync_in_order(shared, shared.staging.lock())?;
                session_counter += 1;
                let session = (u64::from(std::process::id()) << 32) ^ session_counter ^ nanos();
                let welcome = Control::Welcome {
                    protocol: PROTOCOL_VERSION,
                    backup: config.backup.node.clone(),
                    session,
                    resume,
                };
                if let Err(e) = write_control(&mut stream, &welcome) {
                    tracing::warn!("DMK0046W welcome to {primary} failed: {e}");
                    continue;
                }
                pending = Some(Pending {
                    session,
                    control: stream,
                    leftover,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                });
            }
            Ok(Control::DataHello { session }) => {
                let Some(p) = pending.take_if(|p| p.session == session) else {
                    let _ = write_control(
                        &mut stream,
                        &Control::Refused {
                            reason: "DMK0107E data connection for an unknown session".into(),
                        },
                    );
                    continue;
                };
                // Frames that came right behind the data handshake are kept.
                running = Some(start_session(config, shared, p, stream, leftover)?);
            }
            Ok(other) => tracing::warn!("DMK0105E unexpected first message {other:?}"),
            Err(e) => tracing::warn!(
                "DMK0048W handshake failed: {}",
                engine::report::describe(&e)
            ),
        }
        if running.as_ref().is_some_and(|r| r.thread.is_finished()) {
            running.take().expect("checked").end();
        }
    };
    if let Some(r) = running {
        r.end();
    }
    result
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[allow(clippy::too_many_arguments)]
fn check_hello(
    config: &Config,
    dir: &Path,
    protocol: u16,
    group: &str,
    primary: &str,
    backup: &str,
    journal: &str,
    journal_id: u64,
) -> Result<(), String> {
    if protocol != PROTOCOL_VERSION {
        return Err(format!(
            "DMK0106E {primary} speaks protocol {protocol}; this backup speaks {PROTOCOL_VERSION}"
        ));
    }
    if group != config.group
        || backup != config.backup.node
        || journal != config.primary.journal_name
        || primary != config.primary.node
    {
        return Err(format!(
            "DMK0106E {primary} asks for group {group} journal {journal} on backup {backup}; this receiver serves group {} journal {} from {} on backup {}",
            config.group, config.primary.journal_name, config.primary.node, config.backup.node
        ));
    }
    let identity = format!("group={group}\njournal={journal}\njournal_id={journal_id}\n");
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(found) if found == identity => Ok(()),
        Ok(found) => Err(format!(
            "DMK0108E staging {} belongs to another journal ({}); the primary sends journal id {journal_id}. Use another staging directory or remove this one",
            dir.display(),
            found.replace('\n', " ").trim()
        )),
        Err(_) => write_identity(&path, &identity)
            .map_err(|e| format!("DMK0109E cannot record staging identity {}: {e}", path.display())),
    }
}

fn write_identity(path: &PathBuf, identity: &str) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(identity.as_bytes())?;
    file.sync_all()?;
    std::fs::File::open(path.parent().expect("in a directory"))?.sync_all()
}

fn purge(dir: &Path, shared: &Shared) {
    let Some(applied) = read_position_file(&dir.join(APPLIED_FILE)) else {
        return;
    };
    let mut staging = shared.staging.lock();
    // Never past what is durable: apply may have read frames that are not
    // yet (StagingReader takes any whole frame), but purge must not outrun
    // what a crash of this node would keep.
    let through = applied.min(staging.durable_position());
    let purged = staging.purge_through_later(through);
    // Deleting files (and stopping a segment being made) can take
    // milliseconds: not while appends wait for the store.
    drop(staging);
    if let Err(e) = purged.and_then(|(_, cleanup)| cleanup.run()) {
        tracing::warn!("{e}");
    }
}

fn start_session(
    config: &Config,
    shared: &Arc<Shared>,
    pending: Pending,
    data: TcpStream,
    data_in: Vec<u8>,
) -> anyhow::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let waker = Arc::new(Waker::new()?);
    *shared.session_waker.lock() = Some(Arc::clone(&waker));
    let driver = open_driver(config.transport.io)?;
    let mut session = Session {
        config: config.clone(),
        shared: Arc::clone(shared),
        stop: Arc::clone(&stop),
        waker,
        driver,
        control_out: ControlOut::new(pending.control.as_raw_fd(), T_CONTROL_SEND),
        control: pending.control,
        control_in: pending.leftover,
        data,
        data_in,
        decoder: FrameDecoder::new()?,
        acked: 0,
        held_since: None,
    };
    let id = pending.session;
    tracing::info!("DMK0049I session {id:#x} joined");
    let thread = std::thread::Builder::new()
        .name("session".into())
        .spawn(move || {
            engine::sys::enter_realtime();
            match session.run() {
                Ok(reason) => tracing::info!("DMK0050I session {id:#x} ended: {reason}"),
                Err(e) => tracing::warn!(
                    "DMK0051W session {id:#x} ended: {}",
                    engine::report::describe(&e)
                ),
            }
            session.finish();
        })?;
    Ok(Running { stop, thread })
}

struct Session {
    config: Config,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    driver: Box<dyn Driver>,
    control: TcpStream,
    control_in: Vec<u8>,
    control_out: ControlOut,
    data: TcpStream,
    /// Data bytes received and not yet staged while no read holds them: at
    /// the start (what came with the handshake) and while staging is full.
    data_in: Vec<u8>,
    decoder: FrameDecoder,
    acked: u64,
    held_since: Option<Instant>,
}

/// What processing the received bytes led to.
enum Flow {
    /// Keep reading.
    More,
    /// Staging is full (its budget, or the disk: why): stop reading until
    /// space is freed.
    Held(String),
    /// A frame was refused: Resend was queued; end the session.
    Refused(String),
}

impl Session {
    fn run(&mut self) -> anyhow::Result<String> {
        let heartbeat = self.config.transport.heartbeat;
        let timeout = self.config.transport.timeout;
        let control_fd = self.control.as_raw_fd();
        let mut control_buf = std::mem::take(&mut self.control_in);
        let mut last_heard = Instant::now();
        let mut next_heartbeat = Instant::now();
        self.driver.submit(
            T_CONTROL_READ,
            Op::Read {
                fd: control_fd,
                buf: Vec::with_capacity(64 * 1024),
            },
        );
        self.driver.submit(T_WAKE, self.waker.wake_op(Vec::new()));
        self.ack_if_moved();
        if let Some(reason) = self.take_control(&mut control_buf, &mut last_heard)? {
            return Ok(reason);
        }
        if let Some(end) = self.stage_held()? {
            return Ok(end);
        }
        let mut completions = Vec::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok("replaced by a new session or the receiver is stopping".into());
            }
            if let Some(failure) = self.shared.failed.lock().clone() {
                bail!("staging failed: {failure}");
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                let position = self.shared.durable.load(Ordering::Relaxed);
                self.control_out
                    .push(&Control::Heartbeat { position }, &mut *self.driver);
                next_heartbeat = now + heartbeat;
            }
            if last_heard.elapsed() > timeout {
                bail!(
                    "DMK0052E nothing heard from the primary for {} ms",
                    timeout.as_millis()
                );
            }
            // Held: retry the frame that did not fit as apply frees space.
            if self
                .held_since
                .is_some_and(|since| since.elapsed() >= FULL_RETRY)
            {
                if let Some(end) = self.stage_held()? {
                    return Ok(end);
                }
            }
            let wait = next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(FULL_RETRY);
            self.driver.wait(wait, &mut completions)?;
            for Completion { token, result, buf } in completions.drain(..) {
                match token {
                    T_DATA_READ => {
                        let n = result.context("reading the data connection")?;
                        if n == 0 {
                            return Ok("the primary closed the data connection".into());
                        }
                        last_heard = Instant::now();
                        // The read appended to what was not yet staged (the
                        // buffer is read into in place, not copied).
                        let mut unstaged = buf;
                        let flow = self.process(&mut unstaged)?;
                        if let Some(end) = self.follow(flow, unstaged)? {
                            return Ok(end);
                        }
                    }
                    T_CONTROL_READ => {
                        let n = result.context("reading the control connection")?;
                        if n == 0 {
                            return Ok("the primary closed the control connection".into());
                        }
                        let mut buf = buf;
                        control_buf.extend_from_slice(&buf);
                        buf.clear();
                        if let Some(reason) =
                            self.take_control(&mut control_buf, &mut last_heard)?
                        {
                            return Ok(reason);
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
                        .complete(result, buf, &mut *self.driver)
                        .context("sending on the control connection")?,
                    T_WAKE => {
                        result.context("waker")?;
                        self.driver.submit(T_WAKE, self.waker.wake_op(buf));
                        self.ack_if_moved();
                    }
                    _ => unreachable!("unknown token {token}"),
                }
            }
        }
    }

    /// Stages what `data_in` holds (bytes that came with the handshake, or
    /// what did not fit while staging was full), then `follow`s.
    fn stage_held(&mut self) -> anyhow::Result<Option<String>> {
        let mut unstaged = std::mem::take(&mut self.data_in);
        let flow = self.process(&mut unstaged)?;
        self.follow(flow, unstaged)
    }

    /// Acts on what processing received bytes led to: read on into the
    /// spare room after `unstaged` (the bytes not yet staged: a partial
    /// frame, or the frame that did not fit), hold the primary back (saying
    /// so once; `unstaged` is kept in `data_in` for the retry), or refuse.
    /// `Some` ends the session.
    fn follow(&mut self, flow: Flow, mut unstaged: Vec<u8>) -> anyhow::Result<Option<String>> {
        match flow {
            Flow::More => {
                if self.held_since.take().is_some() {
                    tracing::info!("DMK0053I staging has room again; receiving");
                }
                if unstaged.capacity() - unstaged.len() < READ_CHUNK / 2 {
                    unstaged.reserve(READ_CHUNK);
                }
                let fd = self.data.as_raw_fd();
                self.driver
                    .submit(T_DATA_READ, Op::Read { fd, buf: unstaged });
            }
            Flow::Held(reason) => {
                if self.held_since.is_none() {
                    let position = self.shared.durable.load(Ordering::Relaxed);
                    tracing::warn!(
                        "DMK0054W holding the primary back at position {position}: {reason}"
                    );
                    self.control_out
                        .push(&Control::Held { position, reason }, &mut *self.driver);
                }
                self.held_since = Some(Instant::now());
                self.data_in = unstaged;
            }
            Flow::Refused(reason) => return self.refuse(reason).map(Some),
        }
        Ok(None)
    }

    fn ack_if_moved(&mut self) {
        let durable = self.shared.durable.load(Ordering::Relaxed);
        if durable > self.acked {
            self.acked = durable;
            self.control_out
                .push(&Control::Ack { position: durable }, &mut *self.driver);
        }
    }

    /// Checks and stages every complete frame at the front of `buf`.
    fn process(&mut self, buf: &mut Vec<u8>) -> anyhow::Result<Flow> {
        let mut used = 0;
        let flow = loop {
            let rest = &buf[used..];
            if rest.len() < FRAME_HEADER_BYTES {
                break Flow::More;
            }
            let header = match FrameHeader::decode(rest) {
                Ok(h) => h,
                Err(e) => break Flow::Refused(e.to_string()),
            };
            let total = FRAME_HEADER_BYTES + header.body_bytes as usize;
            if rest.len() < total {
                // Lengths were capped by the header check: safe to make room.
                buf.reserve(total - rest.len());
                break Flow::More;
            }
            let frame = &rest[..total];
            if let Err(e) = self.decoder.decode(frame) {
                break Flow::Refused(e.to_string());
            }
            let appended = self.shared.staging.lock().append(frame);
            match appended {
                Ok(Appended::Staged { .. }) => {
                    self.shared.staged_cv.notify_one();
                }
                Ok(Appended::AlreadyStaged) => {}
                Err(StagingError::Full { .. }) => {
                    break Flow::Held(
                        "HAX0012E staging is full: waiting for apply to free space".into(),
                    )
                }
                // The disk, not the budget: nothing of the frame counts as
                // staged (its bytes are written over at the retry), so it is
                // held as a full budget is, not the session ended.
                Err(e) if e.is_disk_full() => {
                    break Flow::Held(format!(
                        "{e}: waiting for space on the disk (apply's purges, or the operator's)"
                    ))
                }
                Err(e @ (StagingError::Gap { .. } | StagingError::Overlap { .. })) => {
                    break Flow::Refused(e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
            used += total;
        };
        buf.drain(..used);
        Ok(flow)
    }

    fn refuse(&mut self, reason: String) -> anyhow::Result<String> {
        let from = self.shared.staging.lock().staged_position();
        tracing::error!("DMK0055E frame refused, nothing of it staged; asking for a resend from position {from}: {reason}");
        self.control_out.push(
            &Control::Resend {
                from,
                reason: reason.clone(),
            },
            &mut *self.driver,
        );
        self.control_out.flush(&mut *self.driver);
        Ok(format!("frame refused: {reason}"))
    }

    fn take_control(
        &mut self,
        buf: &mut Vec<u8>,
        last_heard: &mut Instant,
    ) -> anyhow::Result<Option<String>> {
        take_messages(buf, |message| {
            *last_heard = Instant::now();
            match message {
                Control::Heartbeat { .. } => Ok(None),
                Control::Bye { reason } => Ok(Some(format!("the primary said goodbye: {reason}"))),
                other => bail!("DMK0105E unexpected {other:?}"),
            }
        })
    }

    fn finish(&mut self) {
        let mut cancelled = Vec::new();
        self.driver.cancel_all(&mut cancelled);
        *self.shared.session_waker.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later sync that ends first waits for the earlier one before it
    /// publishes its position.
    #[test]
    fn turns_finish_in_ticket_order_whoever_arrives_first() {
        let turns = Turns::default();
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            s.spawn(|| turns.in_turn(1, || order.lock().push(1)));
            std::thread::sleep(Duration::from_millis(100));
            assert!(order.lock().is_empty(), "ticket 1 finished before ticket 0");
            turns.in_turn(0, || order.lock().push(0));
        });
        assert_eq!(*order.lock(), [0, 1]);
        turns.in_turn(2, || order.lock().push(2));
        assert_eq!(*order.lock(), [0, 1, 2]);
    }
}
