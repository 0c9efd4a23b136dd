//! Layout of a `callstream.raw.v1` (and `callstream.dlq.v1`) record.
//!
//! The record *value* is the request body, byte-exact. Everything else about
//! the request travels in Kafka headers named below, so a raw record can be
//! turned back into a [`crate::RawRequest`] and normalized again at any time.
//!
//! The `cs_*` headers the consumers add to their dead letters (a unique
//! record copied as it was, plus why it was given up) are named here too:
//! every documented `cs_*` name in one place, which the AsyncAPI test checks.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const H_REQUEST_ID: &str = "cs_request_id";
pub const H_SOURCE: &str = "cs_source";
pub const H_ROUTE: &str = "cs_route";
pub const H_METHOD: &str = "cs_method";
pub const H_PATH: &str = "cs_path";
pub const H_QUERY: &str = "cs_query";
pub const H_CONTENT_TYPE: &str = "cs_content_type";
pub const H_RECEIVED_AT: &str = "cs_received_at";
/// The tenant configured for the source (`sources.<provider>.tenant`): the
/// event's tenant when the payload names none. Replay reads it back.
pub const H_SOURCE_TENANT: &str = "cs_source_tenant";
/// DLQ only: machine-readable reason ([`crate::NormalizeError::code`]).
pub const H_DLQ_REASON: &str = "cs_dlq_reason";
/// DLQ only: human-readable reason.
pub const H_DLQ_DETAIL: &str = "cs_dlq_detail";

/// `callstream.crm.dlq.v1` only: the target that gave up
/// (`crm.targets.<name>`).
pub const H_CRM_TARGET: &str = "cs_crm_target";
/// `callstream.crm.dlq.v1` only: the last error, for a person.
pub const H_CRM_ERROR: &str = "cs_crm_error";
/// `callstream.crm.dlq.v1` only: attempts made, in decimal.
pub const H_CRM_ATTEMPTS: &str = "cs_crm_attempts";
/// `callstream.recordings.dlq.v1` only: the errors, for a person (never a
/// URL's secrets).
pub const H_RECORDINGS_ERROR: &str = "cs_recordings_error";
/// `callstream.recordings.dlq.v1` only: attempts made, in decimal.
pub const H_RECORDINGS_ATTEMPTS: &str = "cs_recordings_attempts";

/// Request headers copied onto raw records: (request header, Kafka header).
/// Credentials (`Authorization`, `x-api-key`, ...) never are.
pub const COPIED_HEADERS: &[(&str, &str)] = &[
    ("user-agent", "cs_h_user_agent"),
    ("x-forwarded-for", "cs_h_x_forwarded_for"),
    ("x-real-ip", "cs_h_x_real_ip"),
    ("x-request-id", "cs_h_x_request_id"),
];

/// The query string without any `token` parameter (a credential), other
/// parameters kept byte-for-byte: what `cs_query` holds and providers are
/// handed ([`crate::RawRequest::query`]).
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_token_pair(pair))
        .collect::<Vec<_>>()
        .join("&")
}

fn is_token_pair(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or_default();
    form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(k, _)| k == "token")
}

/// The Kafka headers of a raw or DLQ record, as a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RawMeta {
    /// `cs_request_id`: unique per delivery, also logged by the gateway.
    pub cs_request_id: String,
    /// `cs_source`: provider name (`onoff`, `xarios`, `telecmi`, `twilio`, `aircall`, `telnyx`).
    pub cs_source: String,
    /// `cs_route`: the provider route name (`cdr`, `sms`, `postcall`, `event`).
    pub cs_route: String,
    pub cs_method: String,
    pub cs_path: String,
    /// Query string with any `token` parameter removed.
    pub cs_query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs_content_type: Option<String>,
    /// RFC 3339, UTC.
    pub cs_received_at: DateTime<Utc>,
    /// The tenant configured for the source (`sources.<provider>.tenant`),
    /// which the event takes when the payload names none. Absent on records
    /// written before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs_source_tenant: Option<String>,
    /// DLQ only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs_dlq_reason: Option<String>,
    /// DLQ only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cs_dlq_detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_only_token_and_keeps_the_rest_verbatim() {
        assert_eq!(redact_query("token=abc"), "");
        assert_eq!(redact_query("a=1&token=abc&b=%20x"), "a=1&b=%20x");
        assert_eq!(redact_query("to%6Ben=abc&tokens=1"), "tokens=1");
        assert_eq!(redact_query("cdr[dur]=10&&token"), "cdr[dur]=10");
    }
}
