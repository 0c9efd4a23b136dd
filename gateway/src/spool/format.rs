//! On-disk format of the spool. A segment file is a sequence of frames, one
//! delivery each (the records the gateway must publish together):
//!
//! ```text
//! frame  := magic:4 len:u32le index:u32le hcrc:u32le crc:u32le body[len]
//!           magic = C5 53 50 F2; index = the frame's number in its segment;
//!           hcrc = crc32(magic len index offset:u64le), offset being the
//!           frame's own position in its segment; crc = crc32(body)
//! body   := version:u8(=1) spooled_at_ms:u64le count:u16le record*count
//! record := topic:u8 key:blob32 payload:blob32 headers:u16le (name:blob16 value:blob32)*
//! blobN  := len:uN-le bytes[len]
//! ```
//!
//! Recovery must keep every intact delivery, wherever damage is:
//! - the header's own checksum proves its length, so a damaged body is
//!   skipped by exactly its length and the next frame read where it starts;
//! - a damaged header is skipped by searching forward for the next magic
//!   whose header checksum passes, so one bad byte costs one delivery, not
//!   the rest of the segment;
//! - the index of the next intact frame says exactly how many were lost.
//!
//! The header checksum covers the frame's offset, so a frame that a caller
//! put inside a webhook body (and so inside a payload here) does not pass
//! as a frame of its own when the search passes over it: it would have to
//! sit at the very offset it was made for. The search only runs over bytes
//! whose header was damaged, so a forgery also needs the disk to damage the
//! header right before it.
//!
//! Segments written before this format (v1, `len crc body`, no magic) are
//! still read, frame by frame from the start; damage in one of them cannot
//! be resynchronised, and everything from it on is quarantined. The magic's
//! last byte (F2) is above any v1 length's (at most 64 MiB: 04), so the two
//! cannot be confused.

use std::borrow::Cow;
use std::ops::Range;

use callstream_schemas::Topic;

use callstream_kafka::publish::OutRecord;

const VERSION: u8 = 1;
const MAGIC: [u8; 4] = [0xC5, 0x53, 0x50, 0xF2];
pub(crate) const FRAME_HEADER: usize = 20;
const V1_HEADER: usize = 8;
/// Larger "lengths" are garbage, not records (bodies are capped far lower).
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// One spooled delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub spooled_at_ms: u64,
    pub records: Vec<OutRecord>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame truncated")]
    Truncated,
    #[error("frame length {0} is impossible")]
    BadLength(usize),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown topic tag {0}")]
    Topic(u8),
    #[error("body malformed")]
    Malformed,
}

/// On-disk topic tags. Part of the format: never renumber, only append.
const TOPIC_TAGS: [(Topic, u8); 9] = [
    (Topic::Raw, 0),
    (Topic::Events, 1),
    (Topic::Dlq, 2),
    (Topic::EventsUnique, 3),
    (Topic::CrmDlq, 4),
    (Topic::Recordings, 5),
    (Topic::DedupState, 6),
    (Topic::RecordingsDlq, 7),
    (Topic::Calls, 8),
];

fn topic_tag(topic: Topic) -> u8 {
    TOPIC_TAGS
        .iter()
        .find(|(t, _)| *t == topic)
        .map(|(_, tag)| *tag)
        .expect("every topic has a tag")
}

fn tag_topic(tag: u8) -> Option<Topic> {
    TOPIC_TAGS
        .iter()
        .find(|(_, t)| *t == tag)
        .map(|(topic, _)| *topic)
}

/// A delivery's encoded body, waiting for its place in a segment: the
/// header depends on where the frame will stand.
#[derive(Debug)]
pub struct Encoded {
    body: Vec<u8>,
    crc: u32,
}

impl Encoded {
    pub fn new(delivery: &Delivery) -> Encoded {
        let body = encode_body(delivery);
        let crc = crc32fast::hash(&body);
        Encoded { body, crc }
    }

    /// Bytes the frame takes in a segment.
    pub(crate) fn frame_len(&self) -> usize {
        FRAME_HEADER + self.body.len()
    }

    /// Appends the frame as it must stand at `offset` of its segment, as
    /// the segment's `index`-th frame.
    pub(crate) fn write_at(&self, offset: u64, index: u32, out: &mut Vec<u8>) {
        let len = self.body.len() as u32;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(&header_crc(len, index, offset).to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// One complete frame for a delivery standing first in its file.
pub fn encode(delivery: &Delivery) -> Vec<u8> {
    encode_segment(std::slice::from_ref(delivery))
}

/// A whole segment holding `deliveries`, in order. (Frames are bound to
/// their place: frames encoded one by one do not concatenate into one.)
pub fn encode_segment(deliveries: &[Delivery]) -> Vec<u8> {
    let mut segment = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let offset = segment.len() as u64;
        Encoded::new(delivery).write_at(offset, index as u32, &mut segment);
    }
    segment
}

fn header_crc(len: u32, index: u32, offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&MAGIC);
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize()
}

fn encode_body(delivery: &Delivery) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        64 + delivery
            .records
            .iter()
            .map(|r| r.payload.len() + 256)
            .sum::<usize>(),
    );
    body.push(VERSION);
    body.extend_from_slice(&delivery.spooled_at_ms.to_le_bytes());
    body.extend_from_slice(&(delivery.records.len() as u16).to_le_bytes());
    for r in &delivery.records {
        body.push(topic_tag(r.topic));
        put32(&mut body, r.key.as_bytes());
        put32(&mut body, &r.payload);
        body.extend_from_slice(&(r.headers.len() as u16).to_le_bytes());
        for (name, value) in &r.headers {
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            put32(&mut body, value);
        }
    }
    body
}

fn put32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// A frame header that passed its checksum: its length and index are true.
struct Header {
    len: usize,
    index: u32,
    crc: u32,
}

/// The header of a v2 frame at `offset` of segment `buf`, if one stands there.
fn header_at(buf: &[u8], offset: usize) -> Option<Header> {
    let h = buf.get(offset..offset + FRAME_HEADER)?;
    if h[0..4] != MAGIC {
        return None;
    }
    let (len, index) = (u32_at(h, 4), u32_at(h, 8));
    (header_crc(len, index, offset as u64) == u32_at(h, 12)).then(|| Header {
        len: len as usize,
        index,
        crc: u32_at(h, 16),
    })
}

/// A frame read at some offset of a segment.
#[derive(Debug)]
struct Frame {
    delivery: Delivery,
    len: usize,
    /// Its index in the segment (v2 frames only).
    index: Option<u32>,
}

/// Why no frame could be read at an offset.
#[derive(Debug)]
struct Bad {
    error: DecodeError,
    /// The frame's true length, when its header passed its checksum: the
    /// next frame starts right after it.
    extent: Option<usize>,
}

/// Decodes the frame at `offset` of segment `buf`.
fn decode_at(buf: &[u8], offset: usize) -> Result<Frame, Bad> {
    let rest = &buf[offset..];
    let bad = |error| Bad {
        error,
        extent: None,
    };
    if rest.len() >= 4 && rest[0..4] == MAGIC {
        if rest.len() < FRAME_HEADER {
            return Err(bad(DecodeError::Truncated));
        }
        let header = header_at(buf, offset).ok_or(bad(DecodeError::HeaderChecksum))?;
        let body = rest
            .get(FRAME_HEADER..FRAME_HEADER + header.len)
            .ok_or(bad(DecodeError::Truncated))?;
        let checked = if crc32fast::hash(body) == header.crc {
            decode_body(body)
        } else {
            Err(DecodeError::Checksum)
        };
        return match checked {
            Ok(delivery) => Ok(Frame {
                delivery,
                len: FRAME_HEADER + header.len,
                index: Some(header.index),
            }),
            Err(error) => Err(Bad {
                error,
                extent: Some(FRAME_HEADER + header.len),
            }),
        };
    }
    decode_v1(rest)
        .map(|(delivery, len)| Frame {
            delivery,
            len,
            index: None,
        })
        .map_err(bad)
}

/// A frame as segments were written before the v2 format.
fn decode_v1(buf: &[u8]) -> Result<(Delivery, usize), DecodeError> {
    if buf.len() < V1_HEADER {
        return Err(DecodeError::Truncated);
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::BadLength(len));
    }
    let body = buf
        .get(V1_HEADER..V1_HEADER + len)
        .ok_or(DecodeError::Truncated)?;
    if crc32fast::hash(body) != u32_at(buf, 4) {
        return Err(DecodeError::Checksum);
    }
    Ok((decode_body(body)?, V1_HEADER + len))
}

fn decode_body(body: &[u8]) -> Result<Delivery, DecodeError> {
    let mut r = Reader { buf: body };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let spooled_at_ms = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let count = r.u16()?;
    let mut records = Vec::with_capacity(usize::from(count).min(16));
    for _ in 0..count {
        let tag = r.u8()?;
        let topic = tag_topic(tag).ok_or(DecodeError::Topic(tag))?;
        let key = String::from_utf8(r.blob32()?.to_vec()).map_err(|_| DecodeError::Malformed)?;
        let payload = r.blob32()?.to_vec();
        let header_count = r.u16()?;
        let mut headers = Vec::with_capacity(usize::from(header_count).min(32));
        for _ in 0..header_count {
            let name_len = usize::from(r.u16()?);
            let name =
                std::str::from_utf8(r.take(name_len)?).map_err(|_| DecodeError::Malformed)?;
            headers.push((Cow::Owned(name.to_string()), r.blob32()?.to_vec()));
        }
        records.push(OutRecord {
            topic,
            key,
            payload,
            headers,
        });
    }
    if !r.buf.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(Delivery {
        spooled_at_ms,
        records,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn blob32(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        self.take(len)
    }
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every intact delivery, in order.
    pub deliveries: Vec<Delivery>,
    /// The byte ranges that hold no intact frame, in order.
    pub damaged: Vec<Range<usize>>,
    /// Deliveries whose frames were damaged: exact where an intact frame
    /// follows the damage (frames carry their index), otherwise the frames
    /// whose start could still be seen (at least one per range).
    pub lost: u64,
    /// What was wrong with the first damaged frame.
    pub first_error: Option<DecodeError>,
}

impl Scan {
    pub(crate) fn damaged_bytes(&self) -> usize {
        self.damaged.iter().map(|r| r.len()).sum()
    }
}

/// Decodes every intact frame of a segment. Damage is passed over, never
/// ended at: see the module comment.
pub fn scan(buf: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut offset = 0;
    // The index the next frame should have; a gap is the deliveries lost.
    let mut next_index = 0u32;
    // Where the damage being passed over began, and how many frame starts
    // failed in it.
    let mut damage: Option<(usize, u64)> = None;
    while offset < buf.len() {
        match decode_at(buf, offset) {
            Ok(frame) => {
                if let Some((start, failed)) = damage.take() {
                    let gap = frame
                        .index
                        .map_or(0, |i| u64::from(i.saturating_sub(next_index)));
                    scan.damaged.push(start..offset);
                    scan.lost += gap.max(failed);
                }
                if let Some(index) = frame.index {
                    next_index = index.wrapping_add(1);
                }
                scan.deliveries.push(frame.delivery);
                offset += frame.len;
            }
            Err(bad) => {
                scan.first_error.get_or_insert(bad.error);
                damage.get_or_insert((offset, 0)).1 += 1;
                offset = match bad.extent {
                    Some(len) if offset + len <= buf.len() => offset + len,
                    _ => resync(buf, offset + 1),
                };
            }
        }
    }
    if let Some((start, failed)) = damage {
        let starts = buf[start..]
            .windows(MAGIC.len())
            .filter(|w| *w == MAGIC)
            .count() as u64;
        scan.damaged.push(start..buf.len());
        scan.lost += failed.max(starts);
    }
    scan
}

/// The first offset from `from` on where a frame header passes its
/// checksum, or the end of the segment.
fn resync(buf: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(found) = buf
        .get(at..)
        .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC))
    {
        if header_at(buf, at + found).is_some() {
            return at + found;
        }
        at += found + 1;
    }
    buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_kafka::publish::header;
    use proptest::prelude::*;

    fn delivery(n: u8) -> Delivery {
        Delivery {
            spooled_at_ms: 1_700_000_000_000 + u64::from(n),
            records: vec![
                OutRecord {
                    topic: Topic::Raw,
                    key: format!("onoff:default:call:{n}"),
                    payload: vec![n; 40],
                    headers: vec![
                        header("cs_request_id", format!("req-{n}")),
                        header("cs_source", "onoff"),
                    ],
                },
                OutRecord {
                    topic: Topic::Events,
                    key: format!("onoff:default:call:{n}"),
                    payload: b"{}".to_vec(),
                    headers: vec![],
                },
            ],
        }
    }

    /// A segment as the writer lays it out, and where each frame starts.
    fn segment(deliveries: &[Delivery]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut start = 0;
        let frames = deliveries
            .iter()
            .map(|d| {
                let len = Encoded::new(d).frame_len();
                start += len;
                start - len..start
            })
            .collect();
        (encode_segment(deliveries), frames)
    }

    fn numbered(n: u8) -> Vec<Delivery> {
        (0..n).map(delivery).collect()
    }

    /// A frame as the gateway wrote them before the v2 format.
    fn encode_v1(delivery: &Delivery) -> Vec<u8> {
        let body = encode_body(delivery);
        let mut frame = Vec::new();
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn every_topic_has_a_distinct_stable_tag() {
        for topic in Topic::ALL {
            assert_eq!(tag_topic(topic_tag(topic)), Some(topic));
        }
        assert_eq!(
            topic_tag(Topic::Raw),
            0,
            "tags are part of the on-disk format"
        );
        assert_eq!(topic_tag(Topic::Events), 1);
        assert_eq!(topic_tag(Topic::Dlq), 2);
    }

    #[test]
    fn segments_round_trip() {
        let (seg, _) = segment(&numbered(5));
        let s = scan(&seg);
        assert_eq!(s.deliveries, numbered(5));
        assert!(s.damaged.is_empty() && s.first_error.is_none());
        assert_eq!(s.lost, 0);
        assert_eq!(scan(&encode(&delivery(9))).deliveries, vec![delivery(9)]);
    }

    #[test]
    fn a_torn_tail_costs_only_the_torn_frame() {
        let (seg, frames) = segment(&numbered(5));
        let last = frames[4].clone();
        for cut in [1, 7, 8, 17, 20, 21, last.len() - 1] {
            let s = scan(&seg[..seg.len() - cut]);
            assert_eq!(s.deliveries, numbered(4), "cut {cut}");
            assert_eq!(s.damaged, vec![last.start..seg.len() - cut]);
            assert_eq!(s.lost, 1);
            assert_eq!(s.first_error, Some(DecodeError::Truncated));
        }
    }

    #[test]
    fn a_flipped_byte_costs_only_its_own_frame_wherever_it_is() {
        let all = numbered(5);
        let (seg, frames) = segment(&all);
        let hit = &frames[2];
        // In the magic, the length, the index, each checksum, and the body.
        for at in [0, 5, 9, 13, 17, 20, 40, hit.len() - 1] {
            let mut bad = seg.clone();
            bad[hit.start + at] ^= 0x10;
            let s = scan(&bad);
            let mut expected = all.clone();
            expected.remove(2);
            assert_eq!(s.deliveries, expected, "byte {at} of the frame");
            assert_eq!(s.damaged, vec![hit.clone()], "byte {at}");
            assert_eq!(s.lost, 1, "byte {at}");
        }
    }

    #[test]
    fn a_zeroed_page_costs_exactly_the_frames_it_touched() {
        let all: Vec<Delivery> = (0..200u16).map(|n| delivery(n as u8)).collect();
        let (mut seg, frames) = segment(&all);
        let page = 4096..8192;
        seg[page.clone()].fill(0);
        let touched: Vec<usize> = (0..frames.len())
            .filter(|&i| frames[i].start < page.end && page.start < frames[i].end)
            .collect();
        let s = scan(&seg);
        assert_eq!(s.lost, touched.len() as u64);
        let first = touched[0];
        let last = *touched.last().unwrap();
        assert_eq!(s.damaged, vec![frames[first].start..frames[last].end]);
        let kept: Vec<Delivery> = (0..all.len())
            .filter(|i| !touched.contains(i))
            .map(|i| all[i].clone())
            .collect();
        assert_eq!(s.deliveries, kept);
    }

    #[test]
    fn segments_of_the_previous_format_are_still_read() {
        let mut seg = Vec::new();
        for d in numbered(3) {
            seg.extend(encode_v1(&d));
        }
        assert_eq!(scan(&seg).deliveries, numbered(3));
        // Damage there cannot be passed over: the rest is quarantined.
        let first = encode_v1(&delivery(0)).len();
        seg[first + 12] ^= 1;
        let s = scan(&seg);
        assert_eq!(s.deliveries, numbered(1));
        assert_eq!(s.damaged, vec![first..seg.len()]);
    }

    #[test]
    fn a_frame_inside_a_payload_is_not_taken_for_one_of_the_segment() {
        // A caller posts a body that is itself a well-formed frame; the
        // header of the delivery carrying it is then damaged.
        let forged = Delivery {
            spooled_at_ms: 1,
            records: vec![OutRecord {
                topic: Topic::Events,
                key: "forged".into(),
                payload: b"{}".to_vec(),
                headers: vec![],
            }],
        };
        let mut carrier = delivery(1);
        carrier.records[0].payload = encode(&forged);
        let all = vec![delivery(0), carrier, delivery(2)];
        let (mut seg, frames) = segment(&all);
        seg[frames[1].start + 5] ^= 0xff;
        let s = scan(&seg);
        assert_eq!(s.deliveries, vec![delivery(0), delivery(2)]);
        assert_eq!(s.damaged, vec![frames[1].clone()]);
    }

    #[test]
    fn garbage_lengths_are_refused_without_allocating() {
        let mut frame = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        frame.extend([0u8; 16]);
        let s = scan(&frame);
        assert!(s.deliveries.is_empty());
        assert_eq!(s.damaged, vec![0..frame.len()]);
        assert_eq!(
            s.first_error,
            Some(DecodeError::BadLength(u32::MAX as usize))
        );
    }

    /// In-place damage, as disks do it: bytes changed or zeroed, a tail cut
    /// off or garbage left after the last frame.
    #[derive(Debug, Clone)]
    enum Damage {
        Set { at: prop::sample::Index, byte: u8 },
        Zero { at: prop::sample::Index, len: usize },
        Cut { keep: prop::sample::Index },
        Append { garbage: Vec<u8> },
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (any::<prop::sample::Index>(), any::<u8>())
                .prop_map(|(at, byte)| Damage::Set { at, byte }),
            (any::<prop::sample::Index>(), 1usize..600)
                .prop_map(|(at, len)| Damage::Zero { at, len }),
            any::<prop::sample::Index>().prop_map(|keep| Damage::Cut { keep }),
            proptest::collection::vec(any::<u8>(), 1..64)
                .prop_map(|garbage| Damage::Append { garbage }),
        ]
    }

    fn arbitrary_delivery() -> impl Strategy<Value = Delivery> {
        (
            any::<u64>(),
            ".{0,20}",
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..30),
        )
            .prop_map(|(at, key, payload, value)| Delivery {
                spooled_at_ms: at,
                records: vec![OutRecord {
                    topic: Topic::Raw,
                    key,
                    payload,
                    headers: vec![(Cow::Borrowed("cs_source"), value)],
                }],
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let s = scan(&bytes);
            prop_assert_eq!(s.damaged_bytes() <= bytes.len(), true);
        }

        /// The reader's whole promise: whatever the damage, every delivery
        /// it returns is one that was written (its checksums passed), every
        /// frame the damage left alone is returned, in order, and every
        /// other byte is in a damaged (quarantined) range.
        #[test]
        fn damage_costs_only_the_frames_it_touched(
            deliveries in proptest::collection::vec(arbitrary_delivery(), 1..12),
            damages in proptest::collection::vec(damage(), 0..4),
        ) {
            let (mut seg, frames) = segment(&deliveries);
            let written = seg.clone();
            for d in &damages {
                match d {
                    Damage::Set { at, byte } if !seg.is_empty() => {
                        let i = at.index(seg.len());
                        seg[i] = *byte;
                    }
                    Damage::Zero { at, len } if !seg.is_empty() => {
                        let i = at.index(seg.len());
                        let end = (i + len).min(seg.len());
                        seg[i..end].fill(0);
                    }
                    Damage::Cut { keep } => {
                        let keep = keep.index(seg.len() + 1);
                        seg.truncate(keep);
                    }
                    Damage::Append { garbage } => seg.extend_from_slice(garbage),
                    _ => {}
                }
            }
            // A frame is touched when any of its bytes is not what was
            // written (judged at the end: a later damage may undo an
            // earlier one, and garbage may refill a cut tail).
            let touched: Vec<bool> = frames
                .iter()
                .map(|f| seg.get(f.clone()) != Some(&written[f.clone()]))
                .collect();
            let s = scan(&seg);
            let intact: Vec<Delivery> = deliveries
                .iter()
                .zip(&touched)
                .filter(|(_, t)| !**t)
                .map(|(d, _)| d.clone())
                .collect();
            prop_assert_eq!(&s.deliveries, &intact);
            // Every byte is either in a returned frame or in a damaged range.
            let kept: usize = frames
                .iter()
                .zip(&touched)
                .filter(|(_, t)| !**t)
                .map(|(f, _)| f.len())
                .sum();
            prop_assert_eq!(kept + s.damaged_bytes(), seg.len());
        }
    }
}
