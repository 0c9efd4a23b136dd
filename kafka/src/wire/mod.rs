//! The records of callstream's topics, encoded and decoded in one place:
//! what the gateway writes and replay reads back ([`raw`]: raw, DLQ), the
//! normalized events and dedup's unique events ([`events`]), and the dead
//! letters of the consumers that read the latter ([`letters`]), and the
//! archiver's recordings ([`recordings`]), the merged calls ([`calls`]); and the step from a delivery to
//! its records, which the gateway, replay and the benchmarks share
//! ([`records`]). Header names are
//! `callstream_schemas::raw`'s (`cs_*`) and CloudEvents' Kafka binding
//! (`ce_*`); the schemas and AsyncAPI document describe the same bytes.

use rdkafka::message::{Headers, Message};

pub mod calls;
pub mod events;
pub mod letters;
pub mod raw;
pub mod recordings;
pub mod records;

pub use calls::{call_record, decode_call, CALL_STATE_TYPE};
pub use events::{decode_unique, event_record, fingerprint, unique_headers, UniqueEvent};
pub use letters::{crm_target, By, GaveUp, Letter};
pub use raw::{dlq_record, raw_record, DeadLetter, Delivery};
pub use recordings::{decode_recording, recording_record};
pub use records::Records;

/// Reads a header's value as UTF-8.
pub fn header_str<'a, M: Message>(msg: &'a M, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// A record this module cannot read: which header, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("no UTF-8 `{0}` header")]
    MissingHeader(&'static str),
    #[error("`{name}` is not {expected}: {detail}")]
    InvalidHeader {
        name: &'static str,
        expected: &'static str,
        detail: String,
    },
    #[error("record has no value")]
    Empty,
    #[error("value is not {expected}: {detail}")]
    Json {
        expected: &'static str,
        detail: String,
    },
}

/// What the tests of every topic start from.
#[cfg(test)]
mod fixtures {
    use std::borrow::Cow;

    use callstream_schemas::{Context, Event, Kind, ProviderId, Sealed, Topic};
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::Delivery;
    use crate::publish::OutRecord;

    /// `record` as a consumer receives it.
    pub fn received(record: &OutRecord) -> OwnedMessage {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k.as_ref(),
                    value: Some(v.as_slice()),
                })
            });
        OwnedMessage::new(
            Some(record.payload.clone()),
            Some(record.key.clone().into_bytes()),
            record.topic.default_name().into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(headers),
        )
    }

    /// A delivery with every optional part.
    pub fn delivery() -> Delivery<'static> {
        Delivery {
            request_id: "req-1".into(),
            source: "onoff".into(),
            route: "cdr".into(),
            method: "POST".into(),
            path: "/v1/onoff/cdr".into(),
            query: "a=1".into(),
            content_type: Some("application/json".into()),
            received_at: "2026-12-02T08:00:00.123456Z".parse().unwrap(),
            source_tenant: Some("acme".into()),
            copied: vec![("cs_h_user_agent", Cow::Borrowed(b"Onoff/1.0".as_slice()))],
        }
    }

    /// A normalized event.
    pub fn sealed() -> Sealed {
        let ctx = Context {
            default_tenant: "acme",
            received_at: "2026-12-02T08:00:00Z".parse().unwrap(),
            request_id: "req-1",
            raw_topic: Topic::Raw.default_name(),
        };
        let mut event = Event::new(ProviderId::Onoff, "acme".into(), Kind::Call, &ctx);
        event.identity = "onoff:acme:call:c-1".into();
        event.seal("c-1")
    }
}
