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
use std::path::Path;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;

use callstream_schemas::declared::{Declaration, DeclaredSource};
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

/// The declarative sources of the gateway's configuration file, compiled
/// as the gateway compiles them; a wrong one stops the replay with the
/// gateway's own message.
fn declared_sources(path: &Path) -> Result<Vec<Box<dyn Provider>>, ReplayError> {
    #[derive(Deserialize)]
    struct GatewayFile {
        #[serde(default)]
        sources: BTreeMap<String, Source>,
    }
    /// Only `declared`: the rest of a source's settings is the gateway's.
    #[derive(Deserialize)]
    struct Source {
        declared: Option<Declaration>,
    }
    let file: GatewayFile = Figment::from(Toml::file_exact(path))
        .extract()
        .map_err(|e| {
            ReplayError::InvalidOption(format!("--gateway-config {}: {e}", path.display()))
        })?;
    let mut out: Vec<Box<dyn Provider>> = Vec::new();
    for (name, source) in file.sources {
        let Some(declaration) = source.declared else {
            continue;
        };
        let compiled = DeclaredSource::compile(&name, &declaration).map_err(|e| {
            ReplayError::InvalidOption(format!(
                "--gateway-config {}: `sources.{name}.{}` {}",
                path.display(),
                e.setting,
                e.problem
            ))
        })?;
        out.push(Box::new(compiled));
    }
    Ok(out)
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
    /// `overrides` replaces the source's tenant per provider name;
    /// `gateway_config` adds the declarative sources of that file.
    pub fn new(
        overrides: &BTreeMap<String, String>,
        gateway_config: Option<&Path>,
        raw_topic: &str,
    ) -> Result<Renormalizer, ReplayError> {
        let mut providers = providers::all();
        if let Some(path) = gateway_config {
            providers.extend(declared_sources(path)?);
        }
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
            .ok_or_else(|| {
                Failure::new(
                    "unknown_source",
                    format!("no provider `{source}` (a declarative source? pass the gateway's configuration: --gateway-config)"),
                )
            })?;
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
