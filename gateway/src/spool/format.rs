//! On-disk format of the spool. A segment file is a sequence of frames:
//!
//! ```text
//! frame  := len:u32le crc32:u32le body[len]          crc32 (IEEE) over body
//! body   := version:u8(=1) spooled_at_ms:u64le count:u16le record*count
//! record := topic:u8 key:blob32 payload:blob32 headers:u16le (name:blob16 value:blob32)*
//! blobN  := len:uN-le bytes[len]
//! ```
//!
//! A frame is one delivery (the records the gateway must publish together).
//! A torn write leaves a short or checksum-failing frame at the tail; the
//! scanner stops there and reports how many good bytes precede it.

use std::borrow::Cow;

use callstream_schemas::Topic;

use crate::publish::OutRecord;

const VERSION: u8 = 1;
pub const FRAME_HEADER: usize = 8;
/// Larger "lengths" are garbage, not records (bodies are capped far lower).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

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
const TOPIC_TAGS: [(Topic, u8); 8] = [
    (Topic::Raw, 0),
    (Topic::Events, 1),
    (Topic::Dlq, 2),
    (Topic::EventsUnique, 3),
    (Topic::CrmDlq, 4),
    (Topic::Recordings, 5),
    (Topic::DedupState, 6),
    (Topic::RecordingsDlq, 7),
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

/// Encodes a delivery as one complete frame.
pub fn encode(delivery: &Delivery) -> Vec<u8> {
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
    let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

fn put32(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the frame at the start of `buf`; returns it and its total length.
pub fn decode(buf: &[u8]) -> Result<(Delivery, usize), DecodeError> {
    if buf.len() < FRAME_HEADER {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME {
        return Err(DecodeError::BadLength(len));
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = buf
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(DecodeError::Truncated)?;
    if crc32fast::hash(body) != crc {
        return Err(DecodeError::Checksum);
    }
    let delivery = decode_body(body)?;
    Ok((delivery, FRAME_HEADER + len))
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
#[derive(Debug)]
pub struct Scan {
    pub deliveries: Vec<Delivery>,
    /// Bytes of good frames from the start; a corrupt tail begins here.
    pub good_bytes: usize,
    /// Why scanning stopped before the end, if it did.
    pub corrupt: Option<DecodeError>,
}

/// Decodes every frame of a segment, stopping at the first bad one.
pub fn scan(buf: &[u8]) -> Scan {
    let mut deliveries = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        match decode(&buf[offset..]) {
            Ok((delivery, len)) => {
                deliveries.push(delivery);
                offset += len;
            }
            Err(err) => {
                return Scan {
                    deliveries,
                    good_bytes: offset,
                    corrupt: Some(err),
                }
            }
        }
    }
    Scan {
        deliveries,
        good_bytes: offset,
        corrupt: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::header;
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
    fn frames_round_trip() {
        let d = delivery(7);
        let frame = encode(&d);
        let (back, len) = decode(&frame).unwrap();
        assert_eq!(back, d);
        assert_eq!(len, frame.len());
    }

    #[test]
    fn a_torn_tail_is_cut_and_everything_before_it_kept() {
        let mut seg = Vec::new();
        for n in 0..5 {
            seg.extend(encode(&delivery(n)));
        }
        let whole = seg.len();
        let last = encode(&delivery(4)).len();
        for cut in [1, 7, 8, 9, last - 1] {
            let s = scan(&seg[..whole - cut]);
            assert_eq!(s.deliveries.len(), 4, "cut {cut}");
            assert_eq!(s.good_bytes, whole - last);
            assert_eq!(s.corrupt, Some(DecodeError::Truncated));
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut seg = Vec::new();
        for n in 0..3 {
            seg.extend(encode(&delivery(n)));
        }
        let at = seg.len() - 5;
        seg[at] ^= 0x10;
        let s = scan(&seg);
        assert_eq!(s.deliveries.len(), 2);
        assert_eq!(s.corrupt, Some(DecodeError::Checksum));
    }

    #[test]
    fn garbage_lengths_are_refused_without_allocating() {
        let mut frame = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        frame.extend([0u8; 16]);
        assert!(matches!(decode(&frame), Err(DecodeError::BadLength(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&bytes);
        }

        #[test]
        fn decoding_mutated_frames_never_panics(n in 0u8..20, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut frame = encode(&delivery(n));
            let i = pos.index(frame.len());
            frame[i] = byte;
            let _ = scan(&frame);
        }

        #[test]
        fn any_delivery_round_trips(
            key in ".{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            name in "[a-z_]{1,20}",
            value in proptest::collection::vec(any::<u8>(), 0..50),
            at in any::<u64>(),
        ) {
            let d = Delivery {
                spooled_at_ms: at,
                records: vec![OutRecord {
                    topic: Topic::Dlq,
                    key,
                    payload,
                    headers: vec![(Cow::Owned(name), value)],
                }],
            };
            let frame = encode(&d);
            prop_assert_eq!(decode(&frame).unwrap(), (d, frame.len()));
        }
    }
}
