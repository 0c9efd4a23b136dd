//! The one trait every provider implements, and what it is given.
//!
//! The gateway owns everything around a delivery (routing, authentication,
//! body limits, publishing, metrics, the HTTP answer). A provider only says
//! which routes it serves and turns one request into one [`Event`], or says
//! why it cannot. It must never panic: a property test feeds it garbage.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::event::{ProviderId, Sealed};

/// HTTP methods a route may accept (`GET`, `POST`, `PUT` in a
/// declarative source's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// One webhook endpoint a provider serves.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Stable name, used in config (`sources.<provider>.paths.<name>`) and
    /// handed back to the provider in [`RawRequest::route`].
    pub name: &'static str,
    pub default_path: &'static str,
    pub methods: &'static [Method],
}

/// A delivery as received, independent of any HTTP framework.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// `GET`, `POST` or `PUT`.
    pub method: &'a str,
    /// Name of the [`Route`] that received it.
    pub route: &'a str,
    /// The query string, without the leading `?` and without the auth token.
    pub query: &'a str,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The body, byte-exact.
    pub body: &'a [u8],
}

/// A source's tenant unless configured (`sources.<provider>.tenant`): the
/// tenant of events whose payload and source name none.
pub const DEFAULT_TENANT: &str = "default";

/// What the gateway knows about the delivery besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Tenant configured for the source; used when the payload names none.
    pub default_tenant: &'a str,
    pub received_at: DateTime<Utc>,
    pub request_id: &'a str,
    /// Name of the raw topic, for [`crate::event::RawPointer`].
    pub raw_topic: &'a str,
}

/// Why a delivery could not be normalized. It goes to the DLQ with
/// [`NormalizeError::code`] in a header; the provider still gets 200.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormalizeError {
    #[error("body is not valid {format}: {detail}")]
    Malformed {
        format: &'static str,
        detail: String,
    },
    #[error("required field `{0}` is missing or empty")]
    MissingField(&'static str),
    /// A declarative source's mapping named the missing field
    /// (`missing_field("...")`).
    #[error("required field `{0}` is missing or empty")]
    MissingFieldNamed(String),
    #[error("field `{field}` has an invalid value: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("unknown event type `{0}`")]
    UnknownEventType(String),
    #[error("empty body")]
    EmptyBody,
    /// A declarative source's mapping failed on this delivery (a jq error,
    /// no value, more than one), not by refusing it.
    #[error("the mapping failed: {0}")]
    MappingFailed(String),
    /// Normalized, but its record would exceed what the producer may send
    /// (`max_body_bytes` + 64 KiB): a body that grows in JSON, such as
    /// form data full of control characters (six bytes each once escaped).
    #[error(
        "the normalized event's record is {bytes} bytes, over the {limit}-byte Kafka record limit"
    )]
    EventTooLarge { bytes: usize, limit: usize },
}

impl NormalizeError {
    /// Every [`NormalizeError::code`].
    pub const CODES: [&'static str; 7] = [
        "malformed",
        "missing_field",
        "invalid_field",
        "unknown_event_type",
        "empty_body",
        "event_too_large",
        "mapping_failed",
    ];

    /// Short machine-readable reason, for the `cs_dlq_reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            NormalizeError::Malformed { .. } => "malformed",
            NormalizeError::MissingField(_) | NormalizeError::MissingFieldNamed(_) => {
                "missing_field"
            }
            NormalizeError::InvalidField { .. } => "invalid_field",
            NormalizeError::UnknownEventType(_) => "unknown_event_type",
            NormalizeError::EmptyBody => "empty_body",
            NormalizeError::EventTooLarge { .. } => "event_too_large",
            NormalizeError::MappingFailed(_) => "mapping_failed",
        }
    }
}

/// A webhook source. Implementations live one per file in [`crate::providers`]
/// and are registered in [`crate::providers::all`].
pub trait Provider: Send + Sync + 'static {
    fn id(&self) -> ProviderId;

    /// The endpoints this provider delivers to.
    fn routes(&self) -> &'static [Route];

    /// Turns one delivery into one event, sealed ([`Event::seal`]). Must
    /// not panic on any input.
    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed() {
        let all = [
            NormalizeError::Malformed {
                format: "JSON",
                detail: String::new(),
            },
            NormalizeError::MissingField("id"),
            NormalizeError::InvalidField {
                field: "id",
                detail: String::new(),
            },
            NormalizeError::UnknownEventType(String::new()),
            NormalizeError::EmptyBody,
            NormalizeError::EventTooLarge { bytes: 2, limit: 1 },
            NormalizeError::MappingFailed(String::new()),
        ];
        let codes: Vec<&str> = all.iter().map(NormalizeError::code).collect();
        assert_eq!(
            NormalizeError::MissingFieldNamed(String::new()).code(),
            "missing_field"
        );
        assert_eq!(codes, NormalizeError::CODES);
    }
}
