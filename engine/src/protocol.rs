//! Control messages: the handshake, acknowledgements, heartbeats and commands
//! exchanged between a primary and a backup (docs/protocol.md).
//!
//! Every message is a 12-byte header and a payload (all integers
//! little-endian):
//!
//! ```text
//!  0 payload_bytes u32   at most CONTROL_PAYLOAD_BYTES_MAX
//!  4 kind          u8
//!  5 reserved      [u8; 3] must be 0
//!  8 crc32c        u32   CRC32C of bytes [4, 8) and the payload
//! 12 payload
//! ```
//!
//! Strings are a u16 length and UTF-8 bytes, each bounded. Decoding trusts
//! nothing: the length is capped before anything is buffered for it, the
//! checksum is verified, every field is bounds-checked and a payload must be
//! consumed exactly.

/// The protocol version both sides must speak; the handshake refuses others.
pub const PROTOCOL_VERSION: u16 = 1;
/// Fixed part of every control message.
pub const CONTROL_HEADER_BYTES: usize = 12;
/// Largest control payload.
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 4096;
/// Longest node, group or journal name.
pub const NAME_BYTES_MAX: usize = 64;
/// Longest reason text.
pub const TEXT_BYTES_MAX: usize = 1024;

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Primary to backup, first on the control connection.
    Hello {
        protocol: u16,
        group: String,
        primary: String,
        backup: String,
        journal: String,
        journal_id: u64,
    },
    /// Backup to primary: the session is open; send from `resume`.
    Welcome {
        protocol: u16,
        backup: String,
        session: u64,
        resume: u64,
    },
    /// Backup to primary: the handshake is refused (the reason names why).
    Refused { reason: String },
    /// Primary to backup, first on the data connection: joins it to a session.
    DataHello { session: u64 },
    /// Backup to primary: everything below `position` is durably staged.
    Ack { position: u64 },
    /// Backup to primary: staging cannot take more; acks pause at `position`.
    Held { position: u64, reason: String },
    /// Backup to primary: a frame was refused; resend from `from`.
    Resend { from: u64, reason: String },
    /// Either way: still alive; `position` is the sender's latest position.
    Heartbeat { position: u64 },
    /// Either way: the session ends on purpose.
    Bye { reason: String },
}

/// One framed message (control or sync-check): its kind, its payload, and
/// the bytes it took.
#[derive(Debug)]
pub struct Framed<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
    pub used: usize,
}

/// Appends a message of `kind` whose payload `body` writes, framed with the
/// 12-byte header above (length, kind, reserved zeros, CRC32C).
pub fn frame(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; CONTROL_HEADER_BYTES]);
    body(out);
    let payload_bytes = (out.len() - start - CONTROL_HEADER_BYTES) as u32;
    out[start..start + 4].copy_from_slice(&payload_bytes.to_le_bytes());
    out[start + 4] = kind;
    let crc = crate::checksum::crc32c_append(
        crate::checksum::crc32c(&out[start + 4..start + 8]),
        &out[start + CONTROL_HEADER_BYTES..],
    );
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Splits the framed message at the start of `buf`, whose payload may be
/// at most `max_payload` bytes: `Ok(None)` if more bytes are needed, `Err`
/// with the reason if the header or checksum is wrong.
pub fn unframe(buf: &[u8], max_payload: usize) -> Result<Option<Framed<'_>>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let payload_bytes = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if payload_bytes > max_payload {
        return Err(format!(
            "payload of {payload_bytes} bytes, the limit is {max_payload}"
        ));
    }
    let total = CONTROL_HEADER_BYTES + payload_bytes;
    if buf.len() < total {
        return Ok(None);
    }
    let stored = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let computed = crate::checksum::crc32c_append(
        crate::checksum::crc32c(&buf[4..8]),
        &buf[CONTROL_HEADER_BYTES..total],
    );
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if buf[5..8] != [0, 0, 0] {
        return Err("reserved bytes are not zero".into());
    }
    Ok(Some(Framed {
        kind: buf[4],
        payload: &buf[CONTROL_HEADER_BYTES..total],
        used: total,
    }))
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DMK0101E control message refused: {0}")]
pub struct ProtocolError(pub String);

fn bad<T>(detail: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(detail.into()))
}

impl Control {
    fn kind(&self) -> u8 {
        match self {
            Control::Hello { .. } => 1,
            Control::Welcome { .. } => 2,
            Control::Refused { .. } => 3,
            Control::DataHello { .. } => 4,
            Control::Ack { .. } => 5,
            Control::Held { .. } => 6,
            Control::Resend { .. } => 7,
            Control::Heartbeat { .. } => 8,
            Control::Bye { .. } => 9,
        }
    }

    /// Appends the encoded message to `out`. Strings longer than their limit
    /// are cut at a character boundary (names are validated by config).
    pub fn encode(&self, out: &mut Vec<u8>) {
        frame(out, self.kind(), |out| self.encode_payload(out));
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        let put_u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        let put_str = |out: &mut Vec<u8>, s: &str, max: usize| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&(end as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..end]);
        };
        match self {
            Control::Hello {
                protocol,
                group,
                primary,
                backup,
                journal,
                journal_id,
            } => {
                out.extend_from_slice(&protocol.to_le_bytes());
                for name in [group, primary, backup, journal] {
                    put_str(out, name, NAME_BYTES_MAX);
                }
                put_u64(out, *journal_id);
            }
            Control::Welcome {
                protocol,
                backup,
                session,
                resume,
            } => {
                out.extend_from_slice(&protocol.to_le_bytes());
                put_str(out, backup, NAME_BYTES_MAX);
                put_u64(out, *session);
                put_u64(out, *resume);
            }
            Control::Refused { reason } | Control::Bye { reason } => {
                put_str(out, reason, TEXT_BYTES_MAX)
            }
            Control::DataHello { session } => put_u64(out, *session),
            Control::Ack { position } | Control::Heartbeat { position } => put_u64(out, *position),
            Control::Held { position, reason } => {
                put_u64(out, *position);
                put_str(out, reason, TEXT_BYTES_MAX);
            }
            Control::Resend { from, reason } => {
                put_u64(out, *from);
                put_str(out, reason, TEXT_BYTES_MAX);
            }
        }
    }

    /// Decodes the message at the start of `buf`. `Ok(None)`: more bytes are
    /// needed (never more than `CONTROL_HEADER_BYTES + CONTROL_PAYLOAD_BYTES_MAX`
    /// in all); `Ok(Some((message, consumed)))` otherwise.
    pub fn decode(buf: &[u8]) -> Result<Option<(Control, usize)>, ProtocolError> {
        let Some(framed) = unframe(buf, CONTROL_PAYLOAD_BYTES_MAX).map_err(ProtocolError)? else {
            return Ok(None);
        };
        let mut r = Reader {
            buf: framed.payload,
        };
        let message = match framed.kind {
            1 => Control::Hello {
                protocol: r.u16()?,
                group: r.name()?,
                primary: r.name()?,
                backup: r.name()?,
                journal: r.name()?,
                journal_id: r.u64()?,
            },
            2 => Control::Welcome {
                protocol: r.u16()?,
                backup: r.name()?,
                session: r.u64()?,
                resume: r.u64()?,
            },
            3 => Control::Refused { reason: r.text()? },
            4 => Control::DataHello { session: r.u64()? },
            5 => Control::Ack { position: r.u64()? },
            6 => Control::Held {
                position: r.u64()?,
                reason: r.text()?,
            },
            7 => Control::Resend {
                from: r.u64()?,
                reason: r.text()?,
            },
            8 => Control::Heartbeat { position: r.u64()? },
            9 => Control::Bye { reason: r.text()? },
            kind => return bad(format!("unknown kind {kind}")),
        };
        if !r.buf.is_empty() {
            return bad(format!("{} bytes left over after the fields", r.buf.len()));
        }
        Ok(Some((message, framed.used)))
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtocolError> {
        if self.buf.len() < n {
            return bad("payload ends inside a field");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, max: usize) -> Result<String, ProtocolError> {
        let len = self.u16()? as usize;
        if len > max {
            return bad(format!("string of {len} bytes, the limit is {max}"));
        }
        match std::str::from_utf8(self.take(len)?) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => bad("string is not UTF-8"),
        }
    }
    fn name(&mut self) -> Result<String, ProtocolError> {
        self.string(NAME_BYTES_MAX)
    }
    fn text(&mut self) -> Result<String, ProtocolError> {
        self.string(TEXT_BYTES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Control> {
        vec![
            Control::Hello {
                protocol: PROTOCOL_VERSION,
                group: "PAYROLL".into(),
                primary: "prod1".into(),
                backup: "dr1".into(),
                journal: "J1".into(),
                journal_id: 7,
            },
            Control::Welcome {
                protocol: PROTOCOL_VERSION,
                backup: "dr1".into(),
                session: u64::MAX,
                resume: 12345,
            },
            Control::Refused {
                reason: "DMK0104E wrong group ü".into(),
            },
            Control::DataHello { session: 3 },
            Control::Ack { position: 99 },
            Control::Held {
                position: 5,
                reason: "HAX0012E full".into(),
            },
            Control::Resend {
                from: 8,
                reason: String::new(),
            },
            Control::Heartbeat { position: 1 },
            Control::Bye {
                reason: "stop".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_needs_all_its_bytes() {
        for message in samples() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            for cut in 0..buf.len() {
                assert_eq!(
                    Control::decode(&buf[..cut]),
                    Ok(None),
                    "{message:?} cut {cut}"
                );
            }
            buf.extend_from_slice(b"next");
            let (decoded, used) = Control::decode(&buf).unwrap().unwrap();
            assert_eq!(decoded, message);
            assert_eq!(used, buf.len() - 4);
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        for message in samples() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                match Control::decode(&bad) {
                    Err(_) | Ok(None) => {}
                    Ok(Some(got)) => panic!("{message:?} with bit {bit} flipped read as {got:?}"),
                }
            }
        }
    }

    #[test]
    fn lengths_are_capped_before_buffering_and_fields_checked() {
        let mut huge = vec![0u8; 16];
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Control::decode(&huge).unwrap_err().0.contains("limit"));

        // A checksum-valid message whose string claims more than its limit.
        let mut buf = Vec::new();
        Control::Bye {
            reason: "x".repeat(10),
        }
        .encode(&mut buf);
        let mut payload = (TEXT_BYTES_MAX as u16 + 1).to_le_bytes().to_vec();
        payload.extend(vec![b'x'; TEXT_BYTES_MAX + 1]);
        let mut lie = Vec::new();
        lie.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        lie.extend_from_slice(&[9, 0, 0, 0]);
        let crc = crate::checksum::crc32c_append(crate::checksum::crc32c(&lie[4..8]), &payload);
        lie.extend_from_slice(&crc.to_le_bytes());
        lie.extend_from_slice(&payload);
        assert!(Control::decode(&lie).unwrap_err().0.contains("limit"));
    }
}
