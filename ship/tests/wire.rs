//! Frames damaged on the wire are refused and sent again: a proxy between
//! sender and receiver flips bits, cuts connections, injects garbage and
//! forged oversized headers; staging still ends equal to the journal and the
//! receiver names every refusal.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use engine::limits::{FRAME_BODY_BYTES_MAX, FRAME_ENTRIES_MAX};

/// What the proxy does to one data connection, after the data handshake.
#[derive(Clone, Copy, Debug)]
enum Damage {
    FlipBit {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    Garbage {
        len: usize,
    },
    /// A header with valid checksums claiming a body over the cap.
    OversizedBody,
    /// A header with valid checksums claiming too many entries.
    TooManyEntries,
}

/// Bytes of the data handshake (a control header and a session id).
const DATA_HELLO_BYTES: usize = 12 + 8;

fn forged_header(body_bytes: u32, entry_count: u32) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0..4].copy_from_slice(b"RPLF");
    h[4] = 1;
    h[8..12].copy_from_slice(&body_bytes.to_le_bytes());
    h[12..16].copy_from_slice(&body_bytes.to_le_bytes());
    h[16..24].copy_from_slice(&1u64.to_le_bytes());
    h[24..32].copy_from_slice(&(1 + entry_count as u64).to_le_bytes());
    h[32..36].copy_from_slice(&entry_count.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..44]);
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    h
}

struct Proxy {
    stop: Arc<AtomicBool>,
    /// Damage for the next data connections, in order; then clean.
    plan: Arc<Mutex<Vec<Damage>>>,
}

impl Proxy {
    /// Forwards connections accepted on `listener` to `upstream`.
    fn start(listener: TcpListener, upstream: u16, plan: Vec<Damage>) -> Proxy {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let plan = Arc::new(Mutex::new(plan.into_iter().rev().collect::<Vec<_>>()));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&plan));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump_back(s2, c2));
                let plan = Arc::clone(&p);
                std::thread::spawn(move || pump_forward(client, server, &plan));
            }
        });
        Proxy { stop, plan }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pump_back(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn pump_forward(mut from: TcpStream, mut to: TcpStream, plan: &Mutex<Vec<Damage>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    // Classify the connection by its first message (kind 4: data handshake).
    while head.len() < DATA_HELLO_BYTES {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let damage = if head[4] == 4 {
        plan.lock().unwrap().pop()
    } else {
        None
    };
    let mut stream = head;
    let mut forwarded = 0usize;
    let mut done = damage.is_none();
    loop {
        if !done {
            match damage.unwrap() {
                Damage::FlipBit { at, bit } => {
                    let at = DATA_HELLO_BYTES + at;
                    if at < forwarded + stream.len() && at >= forwarded {
                        stream[at - forwarded] ^= 1 << bit;
                        done = true;
                    }
                }
                Damage::Truncate { at } => {
                    let at = DATA_HELLO_BYTES + at;
                    if at < forwarded + stream.len() {
                        let keep = at.saturating_sub(forwarded);
                        let _ = to.write_all(&stream[..keep]);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                        return;
                    }
                }
                inject => {
                    // Injected right after the data handshake: a frame boundary.
                    let bytes = match inject {
                        Damage::Garbage { len } => (0..len).map(|i| (i * 131 + 7) as u8).collect(),
                        Damage::OversizedBody => forged_header(FRAME_BODY_BYTES_MAX as u32 + 1, 0),
                        _ => forged_header(0, FRAME_ENTRIES_MAX as u32 + 1),
                    };
                    let split = DATA_HELLO_BYTES - forwarded.min(DATA_HELLO_BYTES);
                    let mut injected = stream[..split].to_vec();
                    injected.extend_from_slice(&bytes);
                    injected.extend_from_slice(&stream[split..]);
                    stream = injected;
                    done = true;
                }
            }
        }
        if to.write_all(&stream).is_err() {
            break;
        }
        forwarded += stream.len();
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => stream = buf[..n].to_vec(),
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

#[test]
fn frames_damaged_on_the_wire_are_refused_and_resent() {
    let seed = seed("wire");
    let mut rng = Rng(seed | 1);
    let mut plan = Vec::new();
    for _ in 0..3 {
        plan.push(Damage::FlipBit {
            at: rng.below(60_000) as usize,
            bit: rng.below(8) as u8,
        });
        plan.push(Damage::Garbage {
            len: 1 + rng.below(500) as usize,
        });
        plan.push(Damage::OversizedBody);
        plan.push(Damage::TooManyEntries);
        plan.push(Damage::Truncate {
            at: rng.below(60_000) as usize,
        });
    }
    eprintln!("damage plan: {plan:?}");
    // The sender connects to the proxy; the proxy forwards to the receiver.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pair = Pair::new("auto", Some(listener.local_addr().unwrap().port()), "", "");
    let proxy = Proxy::start(listener, pair.port, plan);
    let journal = open_journal(&pair);
    write(&journal, 40_000, 40_000, Duration::ZERO, 5);
    let recv = Proc::start(RECV, "replrecv", &pair.config);
    let send = Proc::start(SEND, "replsend", &pair.config);
    write(&journal, 20_000, 2000, Duration::from_millis(20), 6);
    wait_acked(&pair, &journal, Duration::from_secs(90));
    assert!(
        proxy.plan.lock().unwrap().is_empty(),
        "every damage was applied"
    );
    let log = recv.log();
    for id in ["HAD0301E", "HAD0302E"] {
        assert!(log.contains(id), "the receiver names {id}:\n{log}");
    }
    assert!(log.matches("DMK0055E").count() >= 9, "refusals:\n{log}");
    assert!(
        send.log().contains("DMK0032W"),
        "the sender heard the resend requests"
    );
    drop(send);
    drop(recv);
    assert_staging_equals_journal(&pair);
}
