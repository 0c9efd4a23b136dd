//! A raw or DLQ record turned back into the request the gateway saw, and
//! normalized again by the current code.
//!
//! The body is the record value, byte-exact; the provider, route, method,
//! query and content type come from the `cs_*` headers
//! (`callstream_schemas::raw`). The context gets the original
//! `cs_received_at` and `cs_request_id`, so an unchanged normalizer derives
//! the identity and fingerprint it derived then, and the tenant configured
//! for the source then (`cs_source_tenant`), the event's tenant when the
//! payload names none. `--tenant` overrides it per provider; records
//! written before the header existed take `--tenant`, else the gateway's
//! default.

use std::collections::BTreeMap;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use callstream_schemas::{providers, Provider, Sealed};

use super::ReplayError;
use callstream_kafka::wire::{Delivery, WireError};

/// Why a record does not become an event (it is reported, never re-published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Short, stable: a `NormalizeError` code (`malformed`, `missing_field`,
    /// ...), or `missing_header`, `invalid_header`, `unknown_source`,
    /// `unknown_route` for records this code cannot rebuild.
    pub reason: &'static str,
    /// For a person.
    pub detail: String,
}

impl Failure {
    fn new(reason: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

pub(crate) struct Renormalizer {
    providers: Vec<Box<dyn Provider>>,
    /// `--tenant`: the tenant per provider name, over the record's own.
    overrides: BTreeMap<String, String>,
    /// Name of the raw topic, for the events' `raw` pointer (for DLQ
    /// records too: their raw record is there, under the same request id).
    raw_topic: String,
}

impl Renormalizer {
    /// `overrides` replaces the source's tenant per provider name.
    pub fn new(
        overrides: &BTreeMap<String, String>,
        raw_topic: &str,
    ) -> Result<Renormalizer, ReplayError> {
        let providers = providers::all();
        for (provider, tenant) in overrides {
            if !providers.iter().any(|p| p.id().as_str() == provider) {
                let known: Vec<&str> = providers.iter().map(|p| p.id().as_str()).collect();
                return Err(ReplayError::InvalidOption(format!(
                    "--tenant {provider}={tenant}: no provider `{provider}` (known: {})",
                    known.join(", ")
                )));
            }
        }
        Ok(Renormalizer {
            providers,
            overrides: overrides.clone(),
            raw_topic: raw_topic.to_string(),
        })
    }

    pub fn normalize(&self, msg: &BorrowedMessage<'_>) -> Result<Sealed, Failure> {
        let delivery = Delivery::decode(msg).map_err(|e| {
            let reason = match e {
                WireError::MissingHeader(_) => "missing_header",
                _ => "invalid_header",
            };
            Failure::new(reason, e.to_string())
        })?;
        let source = delivery.source.as_ref();
        let route = delivery.route.as_ref();
        let provider = self
            .providers
            .iter()
            .find(|p| p.id().as_str() == source)
            .ok_or_else(|| Failure::new("unknown_source", format!("no provider `{source}`")))?;
        if !provider.routes().iter().any(|r| r.name == route) {
            return Err(Failure::new(
                "unknown_route",
                format!("provider `{source}` has no route `{route}`"),
            ));
        }
        // What the gateway handed the provider then, but for `--tenant`.
        let mut ctx = delivery.context(&self.raw_topic);
        if let Some(tenant) = self.overrides.get(source) {
            ctx.default_tenant = tenant;
        }
        provider
            .normalize(&delivery.request(msg.payload().unwrap_or_default()), &ctx)
            .map_err(|e| Failure::new(e.code(), e.to_string()))
    }
}
