//! `callstream.events.v1` and `callstream.events.unique.v1`: a normalized
//! event with CloudEvents headers, and dedup's copy of it with a revision.

use chrono::SecondsFormat;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use callstream_schemas::event::REVISION_HEADER;
use callstream_schemas::raw as h;
use callstream_schemas::{Event, Sealed, Topic};

use super::{header_str, WireError};
use crate::publish::{header, OutRecord};

/// The normalized record: the sealed event's JSON, keyed by identity so
/// every resend of one event lands on one partition, with CloudEvents
/// Kafka-binding headers.
/// `ce_id` is the fingerprint: equal `ce_id` means an exact resend.
/// `callstream-replay` publishes re-derived events with it too, so a replayed
/// event is the very record the gateway would have published.
pub fn event_record(event: Sealed) -> OutRecord {
    let (event, payload) = event.into_parts();
    let time = event.started_at.unwrap_or(event.received_at);
    OutRecord {
        topic: Topic::Events,
        headers: vec![
            header("ce_specversion", "1.0"),
            header("ce_id", event.fingerprint.as_str()),
            header(
                "ce_source",
                format!("/callstream/{}/{}", event.provider.as_str(), event.tenant),
            ),
            header(
                "ce_type",
                format!("io.callstream.{}.v1", event.kind.as_str()),
            ),
            header("ce_subject", event.identity.as_str()),
            header("ce_time", time.to_rfc3339_opts(SecondsFormat::Millis, true)),
            header("content-type", "application/json"),
            header(h::H_REQUEST_ID, event.raw.request_id.as_str()),
        ],
        key: event.identity,
        payload,
    }
}

/// The `ce_id` of a normalized or unique event: its fingerprint.
pub fn fingerprint<M: Message>(msg: &M) -> Option<&str> {
    header_str(msg, "ce_id")
}

/// One event from `callstream.events.unique.v1`.
#[derive(Debug, Clone)]
pub struct UniqueEvent {
    pub event: Event,
    /// The record's value as received: `event` before parsing (the store
    /// keeps it as is, rather than serializing `event` again).
    pub json: Vec<u8>,
    /// 1 for the first content of an identity, then 2, 3, ... per update.
    pub revision: i32,
    pub partition: i32,
    pub offset: i64,
}

/// The headers of an event dedup forwards as a unique event: the
/// event's own, and its revision.
pub fn unique_headers<M: Message>(event: &M, revision: u32) -> OwnedHeaders {
    let revision = revision.to_string();
    let mut headers = OwnedHeaders::new();
    if let Some(hs) = event.headers() {
        for h in hs.iter().filter(|h| h.key != REVISION_HEADER) {
            headers = headers.insert(h);
        }
    }
    headers.insert(Header {
        key: REVISION_HEADER,
        value: Some(revision.as_bytes()),
    })
}

/// Reads a unique event: the event, and its revision (1 when absent).
pub fn decode_unique<M: Message>(msg: &M) -> Result<UniqueEvent, WireError> {
    let json = msg.payload().ok_or(WireError::Empty)?;
    let event: Event = serde_json::from_slice(json).map_err(|e| WireError::Json {
        expected: "a normalized event",
        detail: e.to_string(),
    })?;
    let revision = header_str(msg, REVISION_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Ok(UniqueEvent {
        event,
        json: json.to_vec(),
        revision,
        partition: msg.partition(),
        offset: msg.offset(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{received, sealed};
    use std::borrow::Cow;

    #[test]
    fn an_event_record_and_its_unique_copy_give_back_the_event() {
        let record = event_record(sealed());
        assert_eq!(record.topic, Topic::Events);
        assert_eq!(record.key, "onoff:acme:call:c-1");
        let msg = received(&record);
        let sent: Event = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(fingerprint(&msg), Some(sent.fingerprint.as_str()));
        assert_eq!(header_str(&msg, "ce_subject"), Some(record.key.as_str()));
        assert_eq!(header_str(&msg, h::H_REQUEST_ID), Some("req-1"));

        // Dedup forwards it with a revision, replacing any it had.
        let mut unique = record.clone();
        unique.headers = unique_headers(&msg, 3)
            .iter()
            .map(|h| (Cow::Owned(h.key.to_string()), h.value.unwrap().to_vec()))
            .collect();
        let again = received(&unique);
        let twice = unique_headers(&again, 4);
        assert_eq!(twice.iter().filter(|h| h.key == REVISION_HEADER).count(), 1);
        let decoded = decode_unique(&again).unwrap();
        assert_eq!(decoded.revision, 3);
        assert_eq!(decoded.event, sent);
        assert_eq!(decoded.json, record.payload);
        assert_eq!((decoded.partition, decoded.offset), (2, 41));
        // Without the header: the first revision.
        assert_eq!(decode_unique(&msg).unwrap().revision, 1);
    }
}
