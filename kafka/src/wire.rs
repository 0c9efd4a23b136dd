//! The records of callstream's topics, encoded and decoded in one place:
//! what the gateway writes and replay reads back (raw, DLQ), the
//! normalized events, and dedup's unique events. Header names are
//! `callstream_schemas::raw`'s (`cs_*`) and CloudEvents' Kafka binding
//! (`ce_*`); the schemas and AsyncAPI document describe the same bytes.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use callstream_schemas::event::REVISION_HEADER;
use callstream_schemas::raw as h;
use callstream_schemas::{Event, Sealed, Topic};

use crate::publish::{header, HeaderPair, OutRecord};

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
    #[error("value is not a normalized event: {0}")]
    Json(String),
}

/// The request one delivery was, as a raw record's headers carry it (its
/// value is the body, byte-exact): enough to normalize it again at any
/// time.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<'a> {
    /// Unique per delivery, logged by the gateway; the key of a record
    /// that did not normalize.
    pub request_id: Cow<'a, str>,
    /// Provider name (`onoff`, `xarios`, `telecmi`).
    pub source: Cow<'a, str>,
    /// The provider's route name (`cdr`, `sms`, `postcall`, `event`).
    pub route: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    /// Query string with any `token` parameter removed.
    pub query: Cow<'a, str>,
    pub content_type: Option<Cow<'a, str>>,
    /// Microseconds: a replay rebuilds the event from it and must derive
    /// the same bytes.
    pub received_at: DateTime<Utc>,
    /// The tenant configured for the source then; absent on records
    /// written before it existed.
    pub source_tenant: Option<Cow<'a, str>>,
    /// Request headers copied as `callstream_schemas::raw::COPIED_HEADERS`
    /// name them (never credentials): (Kafka header, value).
    pub copied: Vec<(&'static str, Cow<'a, [u8]>)>,
}

impl Delivery<'_> {
    /// The `cs_*` headers of its raw record.
    pub fn headers(&self) -> Vec<HeaderPair> {
        let mut headers = vec![
            header(h::H_REQUEST_ID, self.request_id.as_bytes()),
            header(h::H_SOURCE, self.source.as_bytes()),
            header(h::H_ROUTE, self.route.as_bytes()),
            header(h::H_METHOD, self.method.as_bytes()),
            header(h::H_PATH, self.path.as_bytes()),
            header(h::H_QUERY, self.query.as_bytes()),
            header(
                h::H_RECEIVED_AT,
                self.received_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
        ];
        if let Some(tenant) = &self.source_tenant {
            headers.push(header(h::H_SOURCE_TENANT, tenant.as_bytes()));
        }
        if let Some(ct) = &self.content_type {
            headers.push(header(h::H_CONTENT_TYPE, ct.as_bytes()));
        }
        for (name, value) in &self.copied {
            headers.push(header(name, value.to_vec()));
        }
        headers
    }

    /// Reads the delivery a raw or DLQ record carries.
    pub fn decode<M: Message>(msg: &M) -> Result<Delivery<'_>, WireError> {
        let required = |name: &'static str| {
            header_str(msg, name)
                .map(Cow::Borrowed)
                .ok_or(WireError::MissingHeader(name))
        };
        let received_at = required(h::H_RECEIVED_AT)?;
        let received_at = DateTime::parse_from_rfc3339(&received_at)
            .map_err(|e| WireError::InvalidHeader {
                name: h::H_RECEIVED_AT,
                expected: "RFC 3339",
                detail: e.to_string(),
            })?
            .with_timezone(&Utc);
        let copied = h::COPIED_HEADERS
            .iter()
            .filter_map(|(_, name)| {
                let value = msg.headers()?.iter().find(|h| h.key == *name)?.value?;
                Some((*name, Cow::Borrowed(value)))
            })
            .collect();
        Ok(Delivery {
            request_id: required(h::H_REQUEST_ID)?,
            source: required(h::H_SOURCE)?,
            route: required(h::H_ROUTE)?,
            method: required(h::H_METHOD)?,
            path: header_str(msg, h::H_PATH).unwrap_or_default().into(),
            query: header_str(msg, h::H_QUERY).unwrap_or_default().into(),
            content_type: header_str(msg, h::H_CONTENT_TYPE).map(Cow::Borrowed),
            received_at,
            source_tenant: header_str(msg, h::H_SOURCE_TENANT).map(Cow::Borrowed),
            copied,
        })
    }
}

/// The raw record of a delivery: its body, byte-exact, keyed like its
/// normalized record (or by request id when there is none), so both land
/// on one partition.
pub fn raw_record(key: String, body: Vec<u8>, headers: Vec<HeaderPair>) -> OutRecord {
    OutRecord {
        topic: Topic::Raw,
        key,
        payload: body,
        headers,
    }
}

/// The DLQ record of a delivery that did not normalize: the raw record's
/// headers plus the reason (a stable code) and its detail, keyed by
/// request id.
pub fn dlq_record(
    request_id: &str,
    body: &[u8],
    raw_headers: &[HeaderPair],
    reason: &str,
    detail: &str,
) -> OutRecord {
    let mut headers = raw_headers.to_vec();
    headers.push(header(h::H_DLQ_REASON, reason.as_bytes()));
    headers.push(header(h::H_DLQ_DETAIL, detail.as_bytes()));
    OutRecord {
        topic: Topic::Dlq,
        key: request_id.to_string(),
        payload: body.to_vec(),
        headers,
    }
}

/// Why a DLQ record is there.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<'a> {
    pub delivery: Delivery<'a>,
    /// `NormalizeError::code`.
    pub reason: Cow<'a, str>,
    pub detail: Cow<'a, str>,
}

impl DeadLetter<'_> {
    pub fn decode<M: Message>(msg: &M) -> Result<DeadLetter<'_>, WireError> {
        Ok(DeadLetter {
            delivery: Delivery::decode(msg)?,
            reason: header_str(msg, h::H_DLQ_REASON)
                .ok_or(WireError::MissingHeader(h::H_DLQ_REASON))?
                .into(),
            detail: header_str(msg, h::H_DLQ_DETAIL).unwrap_or_default().into(),
        })
    }
}

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
    let event: Event = serde_json::from_slice(json).map_err(|e| WireError::Json(e.to_string()))?;
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
    use callstream_schemas::{Context, Kind, ProviderId};
    use rdkafka::message::{OwnedMessage, Timestamp};

    /// `record` as a consumer receives it.
    fn received(record: &OutRecord) -> OwnedMessage {
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

    fn delivery() -> Delivery<'static> {
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

    #[test]
    fn a_raw_record_gives_back_its_delivery() {
        let sent = delivery();
        let record = raw_record("key".into(), b"{}".to_vec(), sent.headers());
        assert_eq!(record.topic, Topic::Raw);
        let msg = received(&record);
        assert_eq!(Delivery::decode(&msg).unwrap(), sent);
        // Optional headers stay optional.
        let bare = Delivery {
            content_type: None,
            source_tenant: None,
            copied: Vec::new(),
            ..sent
        };
        let msg = received(&raw_record("k".into(), Vec::new(), bare.headers()));
        assert_eq!(Delivery::decode(&msg).unwrap(), bare);
    }

    #[test]
    fn a_dlq_record_gives_back_its_delivery_and_reason() {
        let sent = delivery();
        let record = dlq_record("req-1", b"nope", &sent.headers(), "malformed", "not JSON");
        assert_eq!((record.topic, record.key.as_str()), (Topic::Dlq, "req-1"));
        let msg = received(&record);
        let letter = DeadLetter::decode(&msg).unwrap();
        assert_eq!(letter.delivery, sent);
        assert_eq!(
            (&*letter.reason, &*letter.detail),
            ("malformed", "not JSON")
        );
        // A raw record is no dead letter.
        let raw = received(&raw_record("k".into(), Vec::new(), sent.headers()));
        assert_eq!(
            DeadLetter::decode(&raw).unwrap_err(),
            WireError::MissingHeader(h::H_DLQ_REASON)
        );
    }

    #[test]
    fn a_damaged_raw_record_names_its_header() {
        let mut headers = delivery().headers();
        headers.retain(|(k, _)| k != h::H_SOURCE);
        let msg = received(&raw_record("k".into(), Vec::new(), headers));
        assert_eq!(
            Delivery::decode(&msg).unwrap_err(),
            WireError::MissingHeader(h::H_SOURCE)
        );
        let mut headers = delivery().headers();
        for (k, v) in &mut headers {
            if k == h::H_RECEIVED_AT {
                *v = b"yesterday".to_vec();
            }
        }
        let msg = received(&raw_record("k".into(), Vec::new(), headers));
        let err = Delivery::decode(&msg).unwrap_err().to_string();
        assert!(err.contains("`cs_received_at` is not RFC 3339"), "{err}");
    }

    fn sealed() -> Sealed {
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
