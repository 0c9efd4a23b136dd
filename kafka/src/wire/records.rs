//! A delivery's records, derived in one place for everyone who derives
//! them: the gateway for each request, the benchmarks for their workload,
//! replay for a raw record read back ([`Delivery::request`] and
//! [`Delivery::context`]: what the provider was handed then).

use callstream_schemas::{
    Context, Event, NormalizeError, Provider, RawRequest, Sealed, DEFAULT_TENANT,
};

use super::{dlq_record, event_record, raw_record, Delivery};
use crate::publish::OutRecord;

/// The two records of one delivery.
#[derive(Debug, Clone)]
pub struct Records {
    /// `[raw, event]`; `[raw, dlq]` when it did not normalize.
    pub records: [OutRecord; 2],
    /// Why it did not normalize; `None` when it did.
    pub dead_lettered: Option<NormalizeError>,
}

impl Delivery<'_> {
    /// The request as its provider is handed it; `body` is the raw
    /// record's value.
    pub fn request<'b>(&'b self, body: &'b [u8]) -> RawRequest<'b> {
        RawRequest {
            method: &self.method,
            route: &self.route,
            query: &self.query,
            content_type: self.content_type.as_deref(),
            body,
        }
    }

    /// What its provider knows besides the request: the source's tenant
    /// (else [`DEFAULT_TENANT`]), when, and which request; `raw_topic` is
    /// where its raw record is.
    pub fn context<'b>(&'b self, raw_topic: &'b str) -> Context<'b> {
        Context {
            default_tenant: self.source_tenant.as_deref().unwrap_or(DEFAULT_TENANT),
            received_at: self.received_at,
            request_id: &self.request_id,
            raw_topic,
        }
    }

    /// The delivery normalized by `provider` (its source's).
    pub fn normalize(
        &self,
        provider: &dyn Provider,
        body: &[u8],
        raw_topic: &str,
    ) -> Result<Sealed, NormalizeError> {
        provider.normalize(&self.request(body), &self.context(raw_topic))
    }

    /// Normalizes the delivery and builds its records: the raw record
    /// (keyed by the event's identity) and the event record when it
    /// normalized to one of at most `max_record_bytes` (Kafka would refuse
    /// a larger one on every attempt); else the raw record (keyed by
    /// request id) and its DLQ record. `on_event` sees the event before it
    /// becomes a record.
    pub fn records(
        &self,
        provider: &dyn Provider,
        body: Vec<u8>,
        raw_topic: &str,
        max_record_bytes: usize,
        on_event: impl FnOnce(&Event),
    ) -> Records {
        let normalized = self
            .normalize(provider, &body, raw_topic)
            .and_then(|event| {
                on_event(&event);
                let record = event_record(event);
                match record.wire_size() {
                    bytes if bytes > max_record_bytes => Err(NormalizeError::EventTooLarge {
                        bytes,
                        limit: max_record_bytes,
                    }),
                    _ => Ok(record),
                }
            });
        match normalized {
            Ok(event) => Records {
                records: [raw_record(event.key.clone(), body, self.headers()), event],
                dead_lettered: None,
            },
            Err(err) => {
                let headers = self.headers();
                let dlq = dlq_record(
                    &self.request_id,
                    &body,
                    &headers,
                    err.code(),
                    &err.to_string(),
                );
                Records {
                    records: [raw_record(self.request_id.to_string(), body, headers), dlq],
                    dead_lettered: Some(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{delivery, received};
    use crate::wire::DeadLetter;
    use callstream_schemas::providers::onoff::Onoff;
    use callstream_schemas::Topic;

    const CDR: &[u8] = include_bytes!("../../../schemas/tests/fixtures/onoff/cdr-answered.json");

    const RAW: &str = "callstream.raw.v1";

    #[test]
    fn a_delivery_that_normalizes_is_a_raw_and_an_event_record() {
        let sent = delivery();
        let mut seen = None;
        let out = sent.records(&Onoff, CDR.to_vec(), RAW, usize::MAX, |e| {
            seen = Some(e.identity.clone())
        });
        assert!(out.dead_lettered.is_none());
        let [raw, event] = &out.records;
        assert_eq!((raw.topic, event.topic), (Topic::Raw, Topic::Events));
        // Both under the event's identity; the body byte-exact.
        assert_eq!(Some(&event.key), seen.as_ref());
        assert_eq!(raw.key, event.key);
        assert_eq!(raw.payload, CDR);
        let msg = received(raw);
        let back = Delivery::decode(&msg).unwrap();
        assert_eq!(back, sent);
        // Read back, it normalizes to the very same event record.
        let again = event_record(back.normalize(&Onoff, &raw.payload, RAW).unwrap());
        assert_eq!(again, *event);
        let ev: Event = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(ev.tenant, "acme");
        assert_eq!(ev.raw.request_id, "req-1");
    }

    #[test]
    fn a_delivery_that_does_not_is_a_raw_and_a_dlq_record() {
        let sent = delivery();
        let out = sent.records(&Onoff, b"{nope".to_vec(), RAW, usize::MAX, |_| {
            panic!("no event")
        });
        assert_eq!(
            out.dead_lettered.as_ref().map(|e| e.code()),
            Some("malformed")
        );
        let [raw, dlq] = &out.records;
        assert_eq!((raw.topic, dlq.topic), (Topic::Raw, Topic::Dlq));
        assert_eq!((raw.key.as_str(), dlq.key.as_str()), ("req-1", "req-1"));
        assert_eq!(
            (&raw.payload[..], &dlq.payload[..]),
            (&b"{nope"[..], &b"{nope"[..])
        );
        let msg = received(dlq);
        let letter = DeadLetter::decode(&msg).unwrap();
        assert_eq!(letter.delivery, sent);
        assert_eq!(letter.reason, "malformed");

        // An event over the record limit is dead-lettered the same way.
        let out = sent.records(&Onoff, CDR.to_vec(), RAW, 100, |_| {});
        let err = out.dead_lettered.unwrap();
        assert_eq!(err.code(), "event_too_large");
        let msg = received(&out.records[1]);
        let letter = DeadLetter::decode(&msg).unwrap();
        assert_eq!(letter.reason, "event_too_large");
        assert_eq!(out.records[0].key, "req-1");
    }

    #[test]
    fn without_a_source_tenant_the_default_one_applies() {
        let bare = Delivery {
            source_tenant: None,
            ..delivery()
        };
        assert_eq!(bare.context(RAW).default_tenant, DEFAULT_TENANT);
        assert_eq!(delivery().context(RAW).default_tenant, "acme");
    }
}
