//! Shared plumbing for the providers' unit tests.

use chrono::{DateTime, TimeZone, Utc};

use crate::{Context, Event, NormalizeError, Provider, RawRequest, Sealed};

pub const TENANT: &str = "default-tenant";
pub const JSON: Option<&str> = Some("application/json");
pub const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

pub fn ctx() -> Context<'static> {
    Context {
        default_tenant: TENANT,
        received_at: Utc
            .with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
            .single()
            .expect("valid time"),
        request_id: "req-1",
        raw_topic: "callstream.raw.v1",
    }
}

/// A delivery with a body and no query string.
pub fn post(
    provider: &dyn Provider,
    method: &str,
    route: &str,
    content_type: Option<&str>,
    body: &str,
) -> Result<Event, NormalizeError> {
    let req = RawRequest {
        method,
        route,
        query: "",
        content_type,
        body: body.as_bytes(),
    };
    provider.normalize(&req, &ctx()).map(Sealed::into_event)
}

/// A GET delivery carried by the query string.
pub fn get(provider: &dyn Provider, route: &str, query: &str) -> Result<Event, NormalizeError> {
    let req = RawRequest {
        method: "GET",
        route,
        query,
        content_type: None,
        body: b"",
    };
    provider.normalize(&req, &ctx()).map(Sealed::into_event)
}

pub fn utc(rfc3339: &str) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test time")
            .with_timezone(&Utc),
    )
}
