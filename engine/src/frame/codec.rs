//! Encoding a batch of entries into a frame, and checking a received frame
//! before anything of it is used.

use rkyv::boxed::BoxResolver;
use rkyv::rancor;
use rkyv::ser::WriterExt;
use rkyv::util::AlignedVec;
use rkyv::with::InlineAsBox;
use rkyv::{Archive, Serialize};

use super::header::{Codec, FrameHeader};
use super::FrameError;
use crate::journal::entry::decode_validated;
use crate::journal::Entry;
use crate::limits::{FRAME_ENTRIES_MAX, FRAME_HEADER_BYTES, FRAME_RAW_BYTES_MAX};

/// The archived part of a frame. The sending side lays the archive out
/// itself, as rkyv's serializer would (`FrameEncoder::archive_into`), so each
/// entry is copied once, from the journal into the frame.
#[derive(Archive, Serialize, Debug)]
pub struct FrameBody<'a> {
    pub journal_id: u64,
    /// The sender's position before this frame (see `FrameHeader`).
    pub start_position: u64,
    pub next_sequence: u64,
    /// Start of each entry in `entries`.
    #[rkyv(with = InlineAsBox)]
    pub offsets: &'a [u32],
    /// The entries as they are in the journal, each padded to 8 bytes.
    #[rkyv(with = InlineAsBox)]
    pub entries: &'a [u8],
}

/// Turns batches into frames, reusing its buffers and compression context.
pub struct FrameEncoder {
    codec: Codec,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    offsets: Vec<u32>,
    /// The archive to compress (compressed frames only).
    archive: Vec<u8>,
    compressed: Vec<u8>,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl FrameEncoder {
    pub fn new(codec: Codec) -> Result<FrameEncoder, FrameError> {
        let compressor = match codec {
            Codec::None => None,
            Codec::Zstd { level } => Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| FrameError::Encode(e.to_string()))?,
            ),
        };
        Ok(FrameEncoder {
            codec,
            compressor,
            offsets: Vec::new(),
            archive: Vec::new(),
            compressed: Vec::new(),
        })
    }

    /// Encodes `entries` (in sequence order) into `out` (cleared first):
    /// header, then body. The frame covers positions `start_position..
    /// next_sequence`: `entries` are those of them the selection kept.
    pub fn encode<'e, I>(
        &mut self,
        journal_id: u64,
        start_position: u64,
        next_sequence: u64,
        entries: I,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, FrameError>
    where
        I: IntoIterator<Item = Entry<'e>>,
        I::IntoIter: Clone,
    {
        out.clear();
        self.encode_append(journal_id, start_position, next_sequence, entries, out)
    }

    /// As `encode`, appending the frame to `out` after what it holds.
    /// `entries` is walked twice: once for the offsets, which the archive
    /// holds before the entries, once to copy them.
    pub fn encode_append<'e, I>(
        &mut self,
        journal_id: u64,
        start_position: u64,
        next_sequence: u64,
        entries: I,
        out: &mut Vec<u8>,
    ) -> Result<FrameHeader, FrameError>
    where
        I: IntoIterator<Item = Entry<'e>>,
        I::IntoIter: Clone,
    {
        let entries = entries.into_iter();
        let entries_bytes = self.place(start_position, next_sequence, entries.clone())?;
        let at = out.len();
        let positions = Positions {
            journal_id,
            start_position,
            next_sequence,
        };
        if self.compressor.is_none() {
            // Archived straight into place after the header.
            out.resize(at + FRAME_HEADER_BYTES, 0);
            let base = at + FRAME_HEADER_BYTES;
            if let Err(e) = self.archive_into(out, base, positions, entries, entries_bytes) {
                out.truncate(at);
                return Err(e);
            }
            let raw_bytes = out.len() - base;
            return Ok(self.finish_header(at, raw_bytes, start_position, next_sequence, out));
        }
        let mut archive = std::mem::take(&mut self.archive);
        archive.clear();
        let archived = self.archive_into(&mut archive, 0, positions, entries, entries_bytes);
        let raw_bytes = archive.len();
        let compressed = archived.and_then(|()| {
            let compressor = self
                .compressor
                .as_mut()
                .expect("the uncompressed case returned");
            self.compressed.clear();
            self.compressed
                .reserve(zstd::zstd_safe::compress_bound(raw_bytes));
            compressor
                .compress_to_buffer(&archive[..], &mut self.compressed)
                .map_err(|e| FrameError::Encode(e.to_string()))
        });
        self.archive = archive;
        compressed?;
        out.resize(at + FRAME_HEADER_BYTES, 0);
        out.extend_from_slice(&self.compressed);
        Ok(self.finish_header(at, raw_bytes, start_position, next_sequence, out))
    }

    /// Checks the entries' order and count and sets `offsets`; returns the
    /// bytes they take padded.
    fn place<'e>(
        &mut self,
        start_position: u64,
        next_sequence: u64,
        entries: impl Iterator<Item = Entry<'e>>,
    ) -> Result<usize, FrameError> {
        self.offsets.clear();
        let mut bytes = 0usize;
        let mut previous = start_position.wrapping_sub(1);
        for entry in entries {
            let sequence = entry.sequence();
            if sequence <= previous || sequence >= next_sequence {
                return Err(FrameError::Encode(format!(
                    "entry {sequence} is out of order or outside positions {start_position}..{next_sequence}"
                )));
            }
            previous = sequence;
            self.offsets.push(bytes as u32);
            bytes += entry.as_bytes().len().next_multiple_of(8);
            if self.offsets.len() > FRAME_ENTRIES_MAX {
                return Err(FrameError::Encode(format!(
                    "more than {FRAME_ENTRIES_MAX} entries"
                )));
            }
            if bytes > FRAME_RAW_BYTES_MAX {
                return Err(FrameError::Encode(format!(
                    "entries of more than {FRAME_RAW_BYTES_MAX} bytes"
                )));
            }
        }
        Ok(bytes)
    }

    /// Appends the archive of a frame body to `buf`, whose byte `base` is
    /// the archive's start, laid out as rkyv's serializer lays out a
    /// `FrameBody` (each field's data in field order, then the root): the
    /// offsets, the entries each padded to 8, padding, the root. The padding
    /// aligns the root and, unlike rkyv's, makes the archive a multiple of
    /// `BODY_ALIGN` long. Only the root is rkyv's work; the entries are
    /// copied once, from where they are into `buf`.
    fn archive_into<'e>(
        &self,
        buf: &mut Vec<u8>,
        base: usize,
        positions: Positions,
        entries: impl Iterator<Item = Entry<'e>>,
        entries_bytes: usize,
    ) -> Result<(), FrameError> {
        const ZEROS: [u8; BODY_ALIGN] = [0; BODY_ALIGN];
        debug_assert_eq!(buf.len(), base);
        buf.reserve(4 * self.offsets.len() + entries_bytes + BODY_ALIGN + ROOT_BYTES);
        for offset in &self.offsets {
            buf.extend_from_slice(&offset.to_le_bytes());
        }
        let entries_at = buf.len();
        for entry in entries {
            let bytes = entry.as_bytes();
            buf.extend_from_slice(bytes);
            buf.extend_from_slice(&ZEROS[..bytes.len().next_multiple_of(8) - bytes.len()]);
        }
        if buf.len() - entries_at != entries_bytes {
            return Err(FrameError::Encode(format!(
                "the entries took {} bytes on the second walk, {entries_bytes} on the first",
                buf.len() - entries_at
            )));
        }
        // Padding before the root to its alignment, and on to where the
        // archive ends on a BODY_ALIGN boundary: frames of such lengths, one
        // after another in a receive buffer, all have their bodies aligned,
        // and the receiver checks them in place instead of copying each.
        let len = buf.len() - base;
        let root_at = (len + ROOT_BYTES).next_multiple_of(BODY_ALIGN) - ROOT_BYTES;
        debug_assert_eq!(
            root_at % std::mem::align_of::<ArchivedFrameBody<'static>>(),
            0
        );
        buf.extend_from_slice(&ZEROS[..root_at - len]);
        if root_at + ROOT_BYTES > FRAME_RAW_BYTES_MAX {
            return Err(FrameError::Encode(format!(
                "archive of {} bytes exceeds {FRAME_RAW_BYTES_MAX}",
                root_at + ROOT_BYTES
            )));
        }
        let body = FrameBody {
            journal_id: positions.journal_id,
            start_position: positions.start_position,
            next_sequence: positions.next_sequence,
            offsets: &self.offsets,
            entries: &buf[entries_at..entries_at + entries_bytes],
        };
        let resolver = FrameBodyResolver {
            journal_id: (),
            start_position: (),
            next_sequence: (),
            offsets: BoxResolver::from_pos(0),
            entries: BoxResolver::from_pos(entries_at - base),
        };
        let mut root = RootWriter {
            pos: buf.len() - base,
            bytes: [0; ROOT_BYTES],
            len: 0,
        };
        // SAFETY: the resolver holds the positions (from the archive's
        // start) at which the loops above wrote each slice's data, as
        // serializing `body` would have returned them, and `root.pos` is a
        // multiple of the root's alignment (the padding above).
        unsafe { root.resolve_aligned(&body, resolver) }
            .map_err(|e: rancor::Error| FrameError::Encode(e.to_string()))?;
        buf.extend_from_slice(&root.bytes[..root.len]);
        Ok(())
    }

    /// Writes the header of the frame whose body ends `out`, at `at`.
    fn finish_header(
        &self,
        at: usize,
        raw_bytes: usize,
        start_position: u64,
        next_sequence: u64,
        out: &mut [u8],
    ) -> FrameHeader {
        let header = FrameHeader {
            compressed: self.compressor.is_some(),
            body_bytes: (out.len() - at - FRAME_HEADER_BYTES) as u32,
            raw_bytes: raw_bytes as u32,
            start_position,
            next_sequence,
            entry_count: self.offsets.len() as u32,
            body_crc32c: crate::checksum::crc32c(&out[at + FRAME_HEADER_BYTES..]),
        };
        out[at..at + FRAME_HEADER_BYTES].copy_from_slice(&header.encode(self.codec));
        header
    }
}

/// The frame a body belongs to, as its root records it.
#[derive(Clone, Copy)]
struct Positions {
    journal_id: u64,
    start_position: u64,
    next_sequence: u64,
}

const ROOT_BYTES: usize = std::mem::size_of::<ArchivedFrameBody<'static>>();

/// Where rkyv writes a body's root: a buffer of the root's size standing at
/// position `pos` of the archive, so the root's relative pointers come out
/// right while the archive itself is borrowed for the slices' lengths.
struct RootWriter {
    pos: usize,
    bytes: [u8; ROOT_BYTES],
    len: usize,
}

impl rkyv::ser::Positional for RootWriter {
    fn pos(&self) -> usize {
        self.pos + self.len
    }
}

impl rkyv::ser::Writer<rancor::Error> for RootWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), rancor::Error> {
        let end = self.len + bytes.len();
        let Some(place) = self.bytes.get_mut(self.len..end) else {
            return Err(<rancor::Error as rancor::Source>::new(RootOverflow));
        };
        place.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the frame body's root is larger than its archived type")]
struct RootOverflow;

/// The alignment rkyv needs of an archived frame body.
const BODY_ALIGN: usize = AlignedVec::<16>::ALIGNMENT;

/// Checks received frames; reuses its decompression buffer and context.
pub struct FrameDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    body: AlignedVec<16>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder").finish_non_exhaustive()
    }
}

/// A frame that passed every check; entries are borrowed from the decoder.
pub struct DecodedFrame<'a> {
    pub header: FrameHeader,
    pub journal_id: u64,
    body: &'a ArchivedFrameBody<'static>,
}

impl std::fmt::Debug for DecodedFrame<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedFrame")
            .field("header", &self.header)
            .field("journal_id", &self.journal_id)
            .finish_non_exhaustive()
    }
}

impl<'a> DecodedFrame<'a> {
    pub fn len(&self) -> usize {
        self.body.offsets.len()
    }
    pub fn is_empty(&self) -> bool {
        self.body.offsets.is_empty()
    }
    /// The frame's entries, in order (structure checked by `decode`, which
    /// is not repeated: each is cut at the length its first word gives).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = Entry<'a>> + 'a {
        let body: &'a ArchivedFrameBody<'static> = self.body;
        body.offsets.iter().map(move |offset| {
            // `check_body` decoded an entry at this offset.
            Entry::validated_at(&body.entries[offset.to_native() as usize..])
        })
    }
}

/// A frame read by code that has already checked its body against its
/// header's body checksum (the staging reader must, to tell a whole frame
/// from a write in progress), handed to `FrameDecoder::decode_checked` so
/// the body is not checksummed twice. Only this crate makes one, where the
/// checksum was compared; it stands for the bytes the reader left in its
/// buffer, so hand the decoder that buffer unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedBody {
    header: FrameHeader,
}

impl CheckedBody {
    /// `header`'s frame, whose body was just found to match `body_crc32c`.
    pub(crate) fn new(header: FrameHeader) -> CheckedBody {
        CheckedBody { header }
    }
}

impl std::ops::Deref for CheckedBody {
    type Target = FrameHeader;
    fn deref(&self) -> &FrameHeader {
        &self.header
    }
}

impl FrameDecoder {
    pub fn new() -> Result<FrameDecoder, FrameError> {
        Ok(FrameDecoder {
            decompressor: zstd::bulk::Decompressor::new()
                .map_err(|e| FrameError::Encode(e.to_string()))?,
            body: AlignedVec::new(),
        })
    }

    /// Checks `frame` (header and body, exactly) and returns a view of it:
    /// of `frame` itself when its body is uncompressed and 16-byte aligned
    /// (rkyv reads it in place), else of the decoder's copy.
    pub fn decode<'d>(&'d mut self, frame: &'d [u8]) -> Result<DecodedFrame<'d>, FrameError> {
        self.decode_inner(frame, None)
    }

    /// `decode` of a frame whose body its reader has checksummed already
    /// (`checked`, which must be this frame's: its header is compared).
    /// Every other check is made.
    pub fn decode_checked<'d>(
        &'d mut self,
        frame: &'d [u8],
        checked: CheckedBody,
    ) -> Result<DecodedFrame<'d>, FrameError> {
        self.decode_inner(frame, Some(checked))
    }

    fn decode_inner<'d>(
        &'d mut self,
        frame: &'d [u8],
        checked: Option<CheckedBody>,
    ) -> Result<DecodedFrame<'d>, FrameError> {
        let header = FrameHeader::decode(frame)?;
        let body = &frame[FRAME_HEADER_BYTES..];
        if body.len() != header.body_bytes as usize {
            return Err(FrameError::Header("body length differs from the header's"));
        }
        match checked {
            Some(checked) if checked.header == header => {}
            Some(_) => {
                return Err(FrameError::Header(
                    "not the frame whose body was checksummed",
                ))
            }
            None => {
                let computed = crate::checksum::crc32c(body);
                if computed != header.body_crc32c {
                    return Err(FrameError::BodyChecksum {
                        stored: header.body_crc32c,
                        computed,
                    });
                }
            }
        }
        let raw_bytes = header.raw_bytes as usize;
        self.body.clear();
        let archive: &'d [u8] = if header.compressed {
            // Bounded by the declared size (capped in the header check): a
            // body that would inflate past it is refused, not grown into.
            self.body.resize(raw_bytes, 0);
            let written = self
                .decompressor
                .decompress_to_buffer(body, self.body.as_mut_slice())
                .map_err(|e| FrameError::Decompress {
                    declared: raw_bytes,
                    detail: e.to_string(),
                })?;
            if written != raw_bytes {
                return Err(FrameError::Decompress {
                    declared: raw_bytes,
                    detail: format!("got {written} bytes"),
                });
            }
            &self.body[..]
        } else if (body.as_ptr() as usize).is_multiple_of(BODY_ALIGN) {
            body
        } else {
            // rkyv needs the body 16-aligned; a frame inside a received
            // stream is wherever the one before it ended.
            self.body.extend_from_slice(body);
            &self.body[..]
        };
        let archived = rkyv::access::<ArchivedFrameBody<'static>, rancor::Error>(archive)
            .map_err(|e| FrameError::Archive(e.to_string()))?;
        check_body(&header, archived)?;
        Ok(DecodedFrame {
            journal_id: archived.journal_id.to_native(),
            header,
            body: archived,
        })
    }
}

/// The body agrees with the header, and every entry is structurally sound and
/// in sequence. (The body checksum already covered the entry bytes.)
fn check_body(header: &FrameHeader, body: &ArchivedFrameBody<'static>) -> Result<(), FrameError> {
    let mismatch = |detail| Err(FrameError::Header(detail));
    if body.offsets.len() != header.entry_count as usize {
        return mismatch("entry count differs from the header's");
    }
    if body.start_position.to_native() != header.start_position
        || body.next_sequence.to_native() != header.next_sequence
    {
        return mismatch("positions differ from the header's");
    }
    let entries = &body.entries[..];
    let mut expected_offset = 0usize;
    let mut previous = None;
    for (index, offset) in body.offsets.iter().enumerate() {
        let bad = |detail: String| Err(FrameError::Entry { index, detail });
        let offset = offset.to_native() as usize;
        if offset != expected_offset {
            return bad(format!("starts at {offset}, expected {expected_offset}"));
        }
        let entry = match decode_validated(&entries[offset.min(entries.len())..]) {
            Ok(entry) => entry,
            Err(e) => return bad(e.to_string()),
        };
        let sequence = entry.sequence();
        match previous {
            None if sequence < header.start_position => {
                return bad(format!(
                    "sequence {sequence} is below the frame's start position {}",
                    header.start_position
                ))
            }
            Some(previous) if sequence <= previous => {
                return bad(format!("sequence {sequence} after {previous}"))
            }
            _ => {}
        }
        if sequence >= header.next_sequence {
            return bad(format!(
                "sequence {sequence} at or past the frame's next sequence {}",
                header.next_sequence
            ));
        }
        previous = Some(sequence);
        expected_offset = offset + entry.padded_bytes();
    }
    if expected_offset != entries.len() {
        return mismatch("entry bytes do not end where the last entry does");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::entry::{decode, encode_to_vec};
    use crate::journal::NewEntry;
    use crate::limits::{FRAME_BODY_BYTES_MAX, FRAME_RAW_BYTES_MAX};

    /// Encoded entries with sequences from `first`.
    fn entries(first: u64, count: u64) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut out = Vec::new();
                let image = vec![(i % 7) as u8; 40 + (i as usize % 90)];
                let entry = match i % 3 {
                    0 => NewEntry::put(1, b"key", &image),
                    1 => NewEntry::update(1, b"key", &image, Some(b"old")).in_cycle(4),
                    _ => NewEntry::commit(4),
                };
                encode_to_vec(&entry, first + i, 1000 + i, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn an_aligned_body_is_read_in_place_and_an_unaligned_one_through_a_copy() {
        let encoded = entries(10, 50);
        let bytes = frame(Codec::None, &encoded, 60);
        // The same frame with its body on a 16-byte boundary, and off it.
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        let mut shifted = AlignedVec::<16>::new();
        shifted.extend_from_slice(&[0]);
        shifted.extend_from_slice(&bytes);
        let mut decoder = FrameDecoder::new().unwrap();
        let in_place: Vec<Vec<u8>> = decoder
            .decode(&aligned[..])
            .unwrap()
            .entries()
            .map(|e| e.as_bytes().to_vec())
            .collect();
        assert!(decoder.body.is_empty(), "an aligned body was copied");
        let copied: Vec<Vec<u8>> = decoder
            .decode(&shifted[1..])
            .unwrap()
            .entries()
            .map(|e| e.as_bytes().to_vec())
            .collect();
        assert_eq!(decoder.body.len(), bytes.len() - FRAME_HEADER_BYTES);
        let expected: Vec<Vec<u8>> = encoded
            .iter()
            .map(|e| decode(e).unwrap().as_bytes().to_vec())
            .collect();
        assert!(in_place == expected, "entries read in place differ");
        assert!(copied == expected, "entries read from the copy differ");
    }

    fn frame(codec: Codec, encoded: &[Vec<u8>], next: u64) -> Vec<u8> {
        let start = encoded
            .first()
            .map_or(next, |e| decode(e).unwrap().sequence());
        let mut encoder = FrameEncoder::new(codec).unwrap();
        let mut out = Vec::new();
        encoder
            .encode(
                9,
                start,
                next,
                encoded.iter().map(|e| decode(e).unwrap()),
                &mut out,
            )
            .unwrap();
        out
    }

    /// The body as rkyv's own serializer writes it, from entries gathered
    /// into one buffer first (how the encoder built frames before it laid
    /// the archive out itself).
    fn rkyv_body(journal_id: u64, start: u64, next: u64, encoded: &[Vec<u8>]) -> Vec<u8> {
        let mut offsets = Vec::new();
        let mut gathered = Vec::new();
        for e in encoded {
            offsets.push(gathered.len() as u32);
            gathered.extend_from_slice(decode(e).unwrap().as_bytes());
            gathered.resize(gathered.len().next_multiple_of(8), 0);
        }
        let body = FrameBody {
            journal_id,
            start_position: start,
            next_sequence: next,
            offsets: &offsets,
            entries: &gathered,
        };
        rkyv::to_bytes::<rancor::Error>(&body).unwrap().to_vec()
    }

    #[test]
    fn the_laid_out_archive_is_rkyvs_with_its_length_rounded_up() {
        // Odd and even counts (the entries start 4 bytes off an 8-byte
        // boundary after an odd number of offsets), one, none.
        for count in [0, 1, 2, 3, 7, 50, 301] {
            let encoded = entries(20, count);
            let next = 20 + count + 5;
            for codec in [Codec::None, Codec::Zstd { level: 1 }] {
                let bytes = frame(codec, &encoded, next);
                let header = FrameHeader::decode(&bytes).unwrap();
                let body = &bytes[FRAME_HEADER_BYTES..];
                let raw = match codec {
                    Codec::None => body.to_vec(),
                    Codec::Zstd { .. } => {
                        zstd::bulk::decompress(body, header.raw_bytes as usize).unwrap()
                    }
                };
                let what = format!("{count} entries, {codec:?}");
                assert_eq!(raw.len(), header.raw_bytes as usize, "{what}");
                assert_eq!(raw.len() % BODY_ALIGN, 0, "{what}");
                let start = if count == 0 { next } else { 20 };
                let want = rkyv_body(9, start, next, &encoded);
                // The same data, then zeros up to the root.
                let data = want.len() - ROOT_BYTES;
                let root_at = raw.len() - ROOT_BYTES;
                assert!(raw[..data] == want[..data], "{what}: the data differ");
                assert!(raw[data..root_at].iter().all(|&b| b == 0), "{what}");
                // Roots that read alike.
                let mut aligned = AlignedVec::<16>::new();
                aligned.extend_from_slice(&raw);
                let got =
                    rkyv::access::<ArchivedFrameBody<'static>, rancor::Error>(&aligned).unwrap();
                let mut aligned_want = AlignedVec::<16>::new();
                aligned_want.extend_from_slice(&want);
                let want = rkyv::access::<ArchivedFrameBody<'static>, rancor::Error>(&aligned_want)
                    .unwrap();
                assert_eq!(got.journal_id, want.journal_id, "{what}");
                assert_eq!(got.start_position, want.start_position, "{what}");
                assert_eq!(got.next_sequence, want.next_sequence, "{what}");
                assert!(
                    got.offsets[..] == want.offsets[..],
                    "{what}: offsets differ"
                );
                assert!(
                    got.entries[..] == want.entries[..],
                    "{what}: entries differ"
                );
            }
        }
    }

    #[test]
    fn frames_roundtrip_with_every_codec() {
        let encoded = entries(100, 50);
        for codec in [
            Codec::None,
            Codec::Zstd { level: 1 },
            Codec::Zstd { level: 19 },
        ] {
            let bytes = frame(codec, &encoded, 160);
            let mut decoder = FrameDecoder::new().unwrap();
            let decoded = decoder.decode(&bytes).unwrap();
            assert_eq!(decoded.journal_id, 9);
            assert_eq!(decoded.header.start_position, 100);
            assert_eq!(decoded.header.next_sequence, 160);
            assert_eq!(decoded.header.compressed, codec != Codec::None);
            let got: Vec<&[u8]> = decoded.entries().map(|e| e.as_bytes()).collect();
            let want: Vec<&[u8]> = encoded
                .iter()
                .map(|e| decode(e).unwrap().as_bytes())
                .collect();
            assert_eq!(got, want, "{codec:?}");
        }
        // Positions skipped by selection before the first entry.
        let mut out = Vec::new();
        let mut encoder = FrameEncoder::new(Codec::None).unwrap();
        encoder
            .encode(
                9,
                90,
                160,
                encoded.iter().map(|e| decode(e).unwrap()),
                &mut out,
            )
            .unwrap();
        assert_eq!(FrameDecoder::new().unwrap().decode(&out).unwrap().len(), 50);
        // Entries outside the positions are not encoded.
        for (start, next) in [(101, 160), (90, 149)] {
            let err = encoder
                .encode(
                    9,
                    start,
                    next,
                    encoded.iter().map(|e| decode(e).unwrap()),
                    &mut out,
                )
                .unwrap_err();
            assert!(matches!(err, FrameError::Encode(_)), "{err}");
        }
        // An empty frame carries only a position (everything was filtered).
        let bytes = frame(Codec::None, &[], 7);
        let mut decoder = FrameDecoder::new().unwrap();
        let decoded = decoder.decode(&bytes).unwrap();
        assert!(decoded.is_empty());
        assert_eq!(decoded.header.next_sequence, 7);
    }

    #[test]
    fn a_batch_over_the_entry_limit_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut one = Vec::new();
        let mut all = Vec::new();
        let count = FRAME_ENTRIES_MAX as u64 + 1;
        for sequence in 1..=count {
            encode_to_vec(&NewEntry::commit(sequence), sequence, 0, &mut one);
            all.extend_from_slice(&one);
        }
        let step = one.len();
        let entries = (0..count as usize).map(|i| decode(&all[i * step..]).unwrap());
        for codec in [Codec::None, Codec::Zstd { level: 1 }] {
            let mut out = vec![7u8; 3];
            let mut encoder = FrameEncoder::new(codec).unwrap();
            let err = encoder
                .encode_append(9, 1, count + 1, entries.clone(), &mut out)
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("more than {FRAME_ENTRIES_MAX} entries")),
                "{err}"
            );
            assert_eq!(out, [7, 7, 7], "{codec:?}");
            // One fewer fits.
            let fewer = entries.clone().take(FRAME_ENTRIES_MAX);
            encoder
                .encode_append(9, 1, count + 1, fewer, &mut out)
                .unwrap();
        }
    }

    #[test]
    fn frames_back_to_back_from_an_aligned_start_are_all_read_in_place() {
        let encoded = entries(1, 40);
        let mut encoder = FrameEncoder::new(Codec::None).unwrap();
        let mut out = Vec::new();
        let mut spans = Vec::new();
        let mut start = 1;
        // Counts odd and even: bodies of every length class.
        for count in [1, 2, 3, 5, 8, 13, 0, 8] {
            let part = &encoded[start as usize - 1..][..count];
            let next = start + count as u64;
            let at = out.len();
            encoder
                .encode_append(
                    9,
                    start,
                    next,
                    part.iter().map(|e| decode(e).unwrap()),
                    &mut out,
                )
                .unwrap();
            spans.push(at..out.len());
            start = next;
        }
        let mut stream = AlignedVec::<16>::new();
        stream.extend_from_slice(&out);
        let mut decoder = FrameDecoder::new().unwrap();
        for span in spans {
            let frame = decoder.decode(&stream[span.clone()]).unwrap();
            assert!(frame.header.entry_count as usize == frame.len());
            assert!(decoder.body.is_empty(), "the frame at {span:?} was copied");
        }
    }

    #[test]
    fn frames_appended_anywhere_in_a_buffer_decode() {
        let encoded = entries(1, 30);
        for codec in [Codec::None, Codec::Zstd { level: 1 }] {
            let mut encoder = FrameEncoder::new(codec).unwrap();
            let mut out = vec![0xEE; 5]; // an odd prefix: bodies land unaligned
            let mut spans = Vec::new();
            for (start, part) in [(1, &encoded[..10]), (11, &encoded[10..])] {
                let at = out.len();
                let next = start + part.len() as u64;
                let parts = part.iter().map(|e| decode(e).unwrap());
                encoder
                    .encode_append(9, start, next, parts, &mut out)
                    .unwrap();
                spans.push(at..out.len());
            }
            let mut decoder = FrameDecoder::new().unwrap();
            let mut got = Vec::new();
            for span in spans {
                let frame = decoder.decode(&out[span]).unwrap();
                got.extend(frame.entries().map(|e| e.as_bytes().to_vec()));
            }
            let want: Vec<Vec<u8>> = encoded
                .iter()
                .map(|e| decode(e).unwrap().as_bytes().to_vec())
                .collect();
            assert_eq!(got, want, "{codec:?}");
        }
    }

    #[test]
    fn a_checked_frame_is_decoded_alike_and_only_as_the_frame_that_was_checked() {
        let encoded = entries(10, 50);
        let mut decoder = FrameDecoder::new().unwrap();
        for codec in [Codec::None, Codec::Zstd { level: 1 }] {
            let bytes = frame(codec, &encoded, 60);
            let checked = CheckedBody::new(FrameHeader::decode(&bytes).unwrap());
            let read = |d: DecodedFrame<'_>| -> Vec<Vec<u8>> {
                d.entries().map(|e| e.as_bytes().to_vec()).collect()
            };
            let plain = read(decoder.decode(&bytes).unwrap());
            assert_eq!(
                read(decoder.decode_checked(&bytes, checked).unwrap()),
                plain
            );
            // Another frame's check does not stand for this one.
            let other = frame(codec, &entries(60, 5), 65);
            let err = decoder
                .decode_checked(&other, checked)
                .map(|_| ())
                .unwrap_err();
            assert!(err.to_string().starts_with("HAD030"), "{codec:?}: {err}");
            // Nor for this one with any header bit flipped.
            for bit in 0..FRAME_HEADER_BYTES * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let err = decoder
                    .decode_checked(&bad, checked)
                    .map(|_| ())
                    .unwrap_err();
                assert!(
                    err.to_string().starts_with("HAD030"),
                    "{codec:?} bit {bit}: {err}"
                );
            }
        }
    }

    #[test]
    fn every_bit_flip_and_every_truncation_is_refused() {
        let encoded = entries(1, 4);
        for codec in [Codec::None, Codec::Zstd { level: 1 }] {
            let bytes = frame(codec, &encoded, 5);
            let mut decoder = FrameDecoder::new().unwrap();
            for bit in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let err = decoder.decode(&bad).unwrap_err();
                assert!(
                    err.to_string().starts_with("HAD030"),
                    "{codec:?} bit {bit}: {err}"
                );
            }
            for len in 0..bytes.len() {
                assert!(
                    decoder.decode(&bytes[..len]).is_err(),
                    "{codec:?} truncated to {len}"
                );
            }
        }
    }

    /// A frame whose header and body checksums are right but whose content lies.
    fn forged(body: &[u8], header: FrameHeader, codec: Codec) -> Vec<u8> {
        let header = FrameHeader {
            body_crc32c: crate::checksum::crc32c(body),
            body_bytes: body.len() as u32,
            ..header
        };
        let mut out = header.encode(codec).to_vec();
        out.extend_from_slice(body);
        out
    }

    fn archive(offsets: &[u32], entries: &[u8], first: u64, next: u64) -> Vec<u8> {
        let body = FrameBody {
            journal_id: 1,
            start_position: first,
            next_sequence: next,
            offsets,
            entries,
        };
        rkyv::to_bytes::<rancor::Error>(&body).unwrap().to_vec()
    }

    fn base(raw: usize, count: u32, first: u64, next: u64) -> FrameHeader {
        FrameHeader {
            compressed: false,
            body_bytes: raw as u32,
            raw_bytes: raw as u32,
            start_position: first,
            next_sequence: next,
            entry_count: count,
            body_crc32c: 0,
        }
    }

    #[test]
    fn well_checksummed_lies_are_refused() {
        let encoded = entries(10, 2);
        let mut joined = encoded[0].clone();
        joined.extend_from_slice(&encoded[1]);
        let second = encoded[0].len() as u32;
        let mut decoder = FrameDecoder::new().unwrap();
        let cases: [(&str, Vec<u32>, u64, u64, u32); 5] = [
            ("offset out of range", vec![0, 1 << 20], 10, 12, 2),
            (
                "offset not where the previous entry ends",
                vec![0, second + 8],
                10,
                12,
                2,
            ),
            ("header count differs", vec![0, second], 10, 12, 3),
            ("first entry below the start", vec![0, second], 11, 12, 2),
            ("next sequence inside the frame", vec![0, second], 10, 11, 2),
        ];
        for (what, offsets, first, next, count) in cases {
            let body = archive(&offsets, &joined, first, next);
            let bytes = forged(&body, base(body.len(), count, first, next), Codec::None);
            let err = decoder.decode(&bytes).map(|_| ()).unwrap_err();
            assert!(err.to_string().starts_with("HAD030"), "{what}: {err}");
            // A reader's checksum passes them too (those whose header
            // decodes); the other checks do not.
            if let Ok(header) = FrameHeader::decode(&bytes) {
                let checked = CheckedBody::new(header);
                let err = decoder
                    .decode_checked(&bytes, checked)
                    .map(|_| ())
                    .unwrap_err();
                assert!(err.to_string().starts_with("HAD030"), "{what}: {err}");
            }
        }
        // Entries out of order inside a well-formed archive.
        let mut swapped = encoded[1].clone();
        swapped.extend_from_slice(&encoded[0]);
        let body = archive(&[0, encoded[1].len() as u32], &swapped, 11, 13);
        let bytes = forged(&body, base(body.len(), 2, 11, 13), Codec::None);
        assert!(matches!(
            decoder.decode(&bytes),
            Err(FrameError::Entry { .. })
        ));
        // Garbage with good checksums is not an archive.
        let garbage = vec![0xA5u8; 256];
        let bytes = forged(&garbage, base(256, 0, 1, 1), Codec::None);
        assert!(matches!(
            decoder.decode(&bytes),
            Err(FrameError::Archive(_)) | Err(FrameError::Header(_))
        ));
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut decoder = FrameDecoder::new().unwrap();
        let header = FrameHeader {
            body_bytes: (FRAME_BODY_BYTES_MAX + 1) as u32,
            ..base(0, 0, 1, 1)
        };
        let err = decoder.decode(&header.encode(Codec::None)).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { what: "body", .. }),
            "{err}"
        );
        let header = FrameHeader {
            compressed: true,
            raw_bytes: (FRAME_RAW_BYTES_MAX + 1) as u32,
            ..base(0, 0, 1, 1)
        };
        let err = decoder
            .decode(&header.encode(Codec::Zstd { level: 1 }))
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        // 8 MiB of zeros compress to a few hundred bytes; the header claims 4 KiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 8 << 20], 3).unwrap();
        let header = FrameHeader {
            compressed: true,
            raw_bytes: 4096,
            ..base(bomb.len(), 0, 1, 1)
        };
        let bytes = forged(&bomb, header, Codec::Zstd { level: 3 });
        let mut decoder = FrameDecoder::new().unwrap();
        let err = decoder.decode(&bytes).unwrap_err();
        assert!(
            matches!(err, FrameError::Decompress { declared: 4096, .. }),
            "{err}"
        );
    }
}
