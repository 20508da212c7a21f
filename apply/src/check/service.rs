//! The replica side of sync-check: answers a checker's requests from the
//! replica store and the probe log, locally or over TCP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::digest::{bucket_records, ObjectDigest, FANOUT};
use super::probe::ProbeLog;
use super::protocol::{MessageError, Reply, Request, RECORDS_REPLY_BYTES};
use crate::store::Store;

/// What a replica answers checkers from.
#[derive(Debug, Clone)]
pub struct CheckService {
    store: Arc<dyn Store>,
    probes: Arc<ProbeLog>,
}

impl CheckService {
    /// `probes` must be the log the replica's apply notes probes in
    /// (`ApplyOptions::probes`).
    pub fn new(store: Arc<dyn Store>, probes: Arc<ProbeLog>) -> CheckService {
        CheckService { store, probes }
    }

    /// A session for one checker: it keeps the trees the checker asked for.
    pub fn session(&self) -> Session {
        Session {
            service: self.clone(),
            trees: HashMap::new(),
        }
    }

    /// Serves checkers that connect to `listener` until `stop` is set, one
    /// thread per connection.
    pub fn serve(&self, listener: TcpListener, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let session = self.session();
                    let stop = stop.clone();
                    std::thread::Builder::new()
                        .name("sync-check".into())
                        .spawn(move || {
                            if let Err(e) = session.serve_stream(stream, &stop) {
                                tracing::warn!("SCI0101E sync-check connection from {peer}: {e}");
                            }
                        })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One checker's session.
#[derive(Debug)]
pub struct Session {
    service: CheckService,
    trees: HashMap<u64, ObjectDigest>,
}

impl Session {
    /// Answers `request`, handing each reply to `send` (`Buckets` gets
    /// several; every other request one).
    pub fn answer<E>(
        &mut self,
        request: Request,
        send: &mut dyn FnMut(Reply) -> Result<(), E>,
    ) -> Result<(), E> {
        let store = &*self.service.store;
        let failed = |e: &dyn std::fmt::Display| Reply::Error {
            message: format!("SCI0121E replica store: {e}"),
        };
        let reply = match request {
            Request::Objects => match store.objects() {
                Ok(objects) => Reply::Objects {
                    objects: objects.into_iter().map(|o| (o.object_id, o.name)).collect(),
                },
                Err(e) => failed(&e),
            },
            Request::Digest { object, bits } => match ObjectDigest::compute(store, object, bits) {
                Ok(tree) => {
                    let reply = Reply::Digest {
                        records: tree.records,
                        bytes: tree.bytes,
                        root: tree.root(),
                    };
                    self.trees.insert(object, tree);
                    reply
                }
                Err(e) => failed(&e),
            },
            Request::Nodes {
                object,
                depth,
                indexes,
            } => self.nodes(object, depth, &indexes),
            Request::Buckets {
                object,
                bits,
                mut buckets,
            } => {
                buckets.sort_unstable();
                let records = match bucket_records(store, object, bits, &buckets) {
                    Ok(records) => records,
                    Err(e) => return send(failed(&e)),
                };
                let mut chunk = Vec::new();
                let mut bytes = 0;
                for r in records {
                    bytes += r.key.len() + 48;
                    chunk.push(r);
                    if bytes >= RECORDS_REPLY_BYTES {
                        send(Reply::Records {
                            records: std::mem::take(&mut chunk),
                            last: false,
                        })?;
                        bytes = 0;
                    }
                }
                Reply::Records {
                    records: chunk,
                    last: true,
                }
            }
            Request::Probes {
                journal,
                timeout_ms,
                sequences,
            } => match self.service.probes.take(
                journal,
                &sequences,
                Duration::from_millis(timeout_ms.into()),
            ) {
                Ok(outcomes) => Reply::Probes { outcomes },
                Err(missing) => Reply::Error {
                    message: format!(
                        "SCI0123E probe {missing} of journal {journal} not applied on the replica within {timeout_ms} ms: apply is behind or stopped"
                    ),
                },
            },
        };
        send(reply)
    }

    fn nodes(&self, object: u64, depth: u32, indexes: &[u64]) -> Reply {
        let Some(tree) = self.trees.get(&object) else {
            return Reply::Error {
                message: format!(
                    "SCI0122E no digest of object {object} in this session: ask for Digest first"
                ),
            };
        };
        let mut hashes = Vec::with_capacity(indexes.len() * FANOUT);
        for &i in indexes {
            match tree.children(depth as usize, i) {
                Some(children) => hashes.extend_from_slice(children),
                None => {
                    return Reply::Error {
                        message: format!(
                            "SCI0122E object {object}: no inner node {i} at depth {depth} (the tree has depth {})",
                            tree.depth()
                        ),
                    }
                }
            }
        }
        Reply::Nodes { hashes }
    }

    /// Answers the requests that come on `stream` until it closes or `stop`
    /// is set.
    fn serve_stream(mut self, mut stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        stream.set_nodelay(true)?;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            match Request::decode(&buf) {
                Err(e) => {
                    // A damaged request: say so and hang up (the stream can
                    // no longer be trusted to be in step).
                    out.clear();
                    Reply::Error {
                        message: e.to_string(),
                    }
                    .encode(&mut out);
                    stream.write_all(&out)?;
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    self.answer(request, &mut |reply: Reply| {
                        out.clear();
                        reply.encode(&mut out);
                        stream.write_all(&out)
                    })?;
                    continue;
                }
                Ok(None) => {}
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Why talking to the replica failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("SCI0101E sync-check connection to {peer}: {source}")]
    Io {
        peer: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("SCI0103E the replica answered: {0}")]
    Replica(String),
}

/// The checker's end of a session.
pub trait Peer: std::fmt::Debug {
    /// Sends `request` and returns its replies (several for `Buckets`).
    fn call(&mut self, request: &Request) -> Result<Vec<Reply>, PeerError>;
    /// Bytes sent and received so far.
    fn exchanged(&self) -> u64;
}

/// Whether `reply` ends the answer to a request.
fn is_final(reply: &Reply) -> bool {
    !matches!(reply, Reply::Records { last: false, .. })
}

/// A replica in this process, spoken to through encoded messages all the
/// same (so the bytes exchanged are the real ones).
#[derive(Debug)]
pub struct LocalPeer {
    session: Session,
    exchanged: u64,
}

impl LocalPeer {
    pub fn new(service: &CheckService) -> LocalPeer {
        LocalPeer {
            session: service.session(),
            exchanged: 0,
        }
    }
}

impl Peer for LocalPeer {
    fn call(&mut self, request: &Request) -> Result<Vec<Reply>, PeerError> {
        let mut buf = Vec::new();
        request.encode(&mut buf);
        self.exchanged += buf.len() as u64;
        let (request, _) = Request::decode(&buf)?.expect("a whole request");
        let mut replies = Vec::new();
        let exchanged = &mut self.exchanged;
        self.session.answer(request, &mut |reply: Reply| {
            buf.clear();
            reply.encode(&mut buf);
            *exchanged += buf.len() as u64;
            replies.push(Reply::decode(&buf)?.expect("a whole reply").0);
            Ok::<(), MessageError>(())
        })?;
        Ok(replies)
    }

    fn exchanged(&self) -> u64 {
        self.exchanged
    }
}

/// How long `TcpPeer::connect` keeps trying a service that refuses.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// A replica's check service over TCP.
#[derive(Debug)]
pub struct TcpPeer {
    peer: String,
    stream: TcpStream,
    buf: Vec<u8>,
    exchanged: u64,
}

impl TcpPeer {
    /// Connects to the service at `addr`, trying again for up to
    /// `CONNECT_PATIENCE` while it refuses (a replapply starting up).
    pub fn connect(addr: &str) -> Result<TcpPeer, PeerError> {
        let io = |source| PeerError::Io {
            peer: addr.to_owned(),
            source,
        };
        let deadline = std::time::Instant::now() + CONNECT_PATIENCE;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(io(e)),
            }
        };
        stream.set_nodelay(true).map_err(io)?;
        Ok(TcpPeer {
            peer: addr.to_owned(),
            stream,
            buf: Vec::new(),
            exchanged: 0,
        })
    }
}

impl Peer for TcpPeer {
    fn call(&mut self, request: &Request) -> Result<Vec<Reply>, PeerError> {
        let io = |source| PeerError::Io {
            peer: self.peer.clone(),
            source,
        };
        let mut out = Vec::new();
        request.encode(&mut out);
        self.stream.write_all(&out).map_err(io)?;
        self.exchanged += out.len() as u64;
        let mut replies = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            while let Some((reply, used)) = Reply::decode(&self.buf)? {
                self.buf.drain(..used);
                self.exchanged += used as u64;
                let done = is_final(&reply);
                replies.push(reply);
                if done {
                    return Ok(replies);
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|source| PeerError::Io {
                    peer: self.peer.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(PeerError::Io {
                    peer: self.peer.clone(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn exchanged(&self) -> u64 {
        self.exchanged
    }
}
