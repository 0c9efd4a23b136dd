//! `callstream.raw.v1` and `callstream.dlq.v1`: a delivery as the gateway
//! received it (the body as value, the request in `cs_*` headers), and why
//! it did not normalize.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Headers, Message};

use callstream_schemas::raw as h;
use callstream_schemas::Topic;

use super::{header_str, WireError};
use crate::publish::{header, HeaderPair, OutRecord};

/// The request one delivery was, as a raw record's headers carry it (its
/// value is the body, byte-exact): enough to normalize it again at any
/// time.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<'a> {
    /// Unique per delivery, logged by the gateway; the key of a record
    /// that did not normalize.
    pub request_id: Cow<'a, str>,
    /// Source name: a provider's (`onoff`, `xarios`, `telecmi`, `twilio`,
    /// `aircall`, `telnyx`) or a declarative source's.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{delivery, received};

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
}
