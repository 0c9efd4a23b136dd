//! Every fixture under `tests/fixtures/`, with how it is delivered and what
//! it must produce. Shared by the integration tests.

use callstream_schemas::{
    providers, Context, Event, NormalizeError, ProviderId, RawRequest, Sealed,
};
use chrono::{TimeZone, Utc};
use Expect::{Normalized, Refused};
use ProviderId::{Aircall, Onoff, Telecmi, Telnyx, Twilio, Xarios};

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// How a fixture travels: as the body, or as a GET query string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Via {
    Body,
    Query,
}

/// What normalizing a fixture must give: an event, or an error with this
/// [`NormalizeError::code`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    Normalized,
    Refused(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub provider: ProviderId,
    /// Path below `tests/fixtures/`.
    pub fixture: &'static str,
    /// The fixture's content.
    pub payload: &'static str,
    pub method: &'static str,
    pub route: &'static str,
    pub content_type: Option<&'static str>,
    pub via: Via,
    pub expect: Expect,
}

/// `case!(provider, "dir/file", method, route, content type, expectation)`;
/// GET cases travel in the query string.
macro_rules! case {
    ($provider:expr, $fixture:literal, $method:literal, $route:literal, $content_type:expr, $expect:expr) => {
        Case {
            provider: $provider,
            fixture: $fixture,
            payload: include_str!(concat!("../fixtures/", $fixture)),
            method: $method,
            route: $route,
            content_type: $content_type,
            via: if matches!($method.as_bytes(), b"GET") {
                Via::Query
            } else {
                Via::Body
            },
            expect: $expect,
        }
    };
}

#[rustfmt::skip]
pub const CASES: &[Case] = &[
    case!(Onoff, "onoff/cdr-answered.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/cdr-doc-sample.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/cdr-missed-no-event-name.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/cdr-post-call-update.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/recording.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/vm-event-name.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/vm-call-status.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/vm-url-only.json", "POST", "cdr", JSON, Normalized),
    case!(Onoff, "onoff/sms-doc-sample.json", "POST", "sms", JSON, Normalized),
    case!(Onoff, "onoff/sms-received.json", "POST", "sms", JSON, Normalized),
    case!(Onoff, "onoff/setup-test.json", "POST", "cdr", JSON, Refused("unknown_event_type")),
    case!(Onoff, "onoff/missing-id.json", "POST", "cdr", JSON, Refused("missing_field")),
    case!(Onoff, "onoff/malformed.json", "POST", "cdr", JSON, Refused("malformed")),
    case!(Onoff, "onoff/unknown-event.json", "POST", "cdr", JSON, Refused("unknown_event_type")),
    case!(Xarios, "xarios/doc-example-verbatim.json", "POST", "postcall", JSON, Refused("malformed")),
    case!(Xarios, "xarios/doc-example-fixed.json", "POST", "postcall", JSON, Normalized),
    case!(Xarios, "xarios/answered-outbound.json", "PUT", "postcall", JSON, Normalized),
    case!(Xarios, "xarios/answered-outbound.form", "POST", "postcall", FORM, Normalized),
    case!(Xarios, "xarios/answered-outbound-payload-field.form", "PUT", "postcall", FORM, Normalized),
    case!(Xarios, "xarios/answered-outbound.query", "GET", "postcall", None, Normalized),
    case!(Xarios, "xarios/missed-inbound-flat.form", "POST", "postcall", FORM, Normalized),
    case!(Xarios, "xarios/internal-cdr-json-field.query", "GET", "postcall", None, Normalized),
    case!(Xarios, "xarios/flat-without-cdr-id.form", "POST", "postcall", FORM, Refused("missing_field")),
    case!(Xarios, "xarios/bad-start-time.json", "POST", "postcall", JSON, Refused("invalid_field")),
    case!(Telecmi, "telecmi/c2c-leg-a.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/c2c-leg-b.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/outgoing-answered-doc.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/incoming-missed.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/incoming-user-missed.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/incoming-answered.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/incoming-voicemail.json", "POST", "cdr", JSON, Normalized),
    case!(Telecmi, "telecmi/event-waiting.json", "POST", "event", JSON, Normalized),
    case!(Telecmi, "telecmi/event-started.json", "POST", "event", JSON, Normalized),
    case!(Telecmi, "telecmi/event-answered.json", "POST", "event", JSON, Normalized),
    case!(Telecmi, "telecmi/event-hangup.json", "POST", "event", JSON, Normalized),
    case!(Telecmi, "telecmi/cdr-get.query", "GET", "cdr", None, Normalized),
    case!(Telecmi, "telecmi/event-get.query", "GET", "event", None, Normalized),
    case!(Telecmi, "telecmi/missing-cmiuuid.json", "POST", "cdr", JSON, Refused("missing_field")),
    case!(Telecmi, "telecmi/unknown-type.json", "POST", "event", JSON, Refused("unknown_event_type")),
    case!(Telecmi, "telecmi/epoch-seconds.json", "POST", "cdr", JSON, Refused("invalid_field")),
    case!(Twilio, "twilio/status-completed-doc.form", "POST", "voice", FORM, Normalized),
    case!(Twilio, "twilio/status-ringing-child-leg.form", "POST", "voice", FORM, Normalized),
    case!(Twilio, "twilio/recording-completed-doc.form", "POST", "voice", FORM, Normalized),
    case!(Twilio, "twilio/status-no-answer-get.query", "GET", "voice", None, Normalized),
    case!(Twilio, "twilio/missing-call-sid.form", "POST", "voice", FORM, Refused("missing_field")),
    case!(Aircall, "aircall/call-created-doc.json", "POST", "webhook", JSON, Normalized),
    case!(Aircall, "aircall/call-ended-answered.json", "POST", "webhook", JSON, Normalized),
    case!(Aircall, "aircall/call-ended-missed.json", "POST", "webhook", JSON, Normalized),
    case!(Aircall, "aircall/call-ended-voicemail.json", "POST", "webhook", JSON, Normalized),
    case!(Aircall, "aircall/user-created-not-a-call.json", "POST", "webhook", JSON, Refused("unknown_event_type")),
    case!(Telnyx, "telnyx/call-initiated-doc.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/call-initiated-outgoing.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/call-answered.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/call-hangup-doc.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/call-hangup-normal-clearing.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/call-recording-saved-doc.json", "POST", "webhook", JSON, Normalized),
    case!(Telnyx, "telnyx/conference-recording-saved-doc.json", "POST", "webhook", JSON, Refused("unknown_event_type")),
    case!(Telnyx, "telnyx/hangup-bad-start-time.json", "POST", "webhook", JSON, Refused("invalid_field")),
];

pub fn ctx() -> Context<'static> {
    Context {
        default_tenant: "default-tenant",
        received_at: Utc
            .with_ymd_and_hms(2024, 6, 1, 12, 0, 0)
            .single()
            .expect("valid time"),
        request_id: "req-1",
        raw_topic: "callstream.raw.v1",
    }
}

/// Normalizes `payload` as if it were delivered the way `case` says.
pub fn normalize_as(case: &Case, payload: &[u8]) -> Result<Sealed, NormalizeError> {
    let provider = providers::all()
        .into_iter()
        .find(|p| p.id() == case.provider)
        .expect("every case names a registered provider");
    let text = String::from_utf8_lossy(payload);
    let (query, body): (&str, &[u8]) = match case.via {
        Via::Body => ("", payload),
        Via::Query => (&text, b""),
    };
    let req = RawRequest {
        method: case.method,
        route: case.route,
        query,
        content_type: case.content_type,
        body,
    };
    provider.normalize(&req, &ctx())
}

/// The record a sealed event is published as: the event's fields, and its
/// fingerprint the one `compute_fingerprint` gives (the JSON and the
/// fingerprint come from one pass; this holds them to the separate ones).
pub fn sealed_json_is_the_event(event: &Sealed) -> Result<serde_json::Value, String> {
    // Canonical JSON's definition, compared as bytes (parsing the record
    // back would round some floats differently).
    let fields = serde_json::to_value(&**event)
        .map_err(|e| e.to_string())?
        .to_string();
    if event.json() != fields.as_bytes() {
        return Err(format!(
            "record {} differs from the fields {fields}",
            String::from_utf8_lossy(event.json())
        ));
    }
    if event.fingerprint != event.compute_fingerprint() {
        return Err(format!("fingerprint {} is stale", event.fingerprint));
    }
    serde_json::from_slice(event.json()).map_err(|e| format!("record is not JSON: {e}"))
}

/// The fingerprint as the first release computed it: through a
/// `serde_json::Value` tree (sorted maps) and `format!` per byte. The
/// canonical writer must give the same bytes.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn tree_fingerprint(event: &Event) -> String {
    use sha2::{Digest, Sha256};
    let mut value = serde_json::to_value(event).expect("an Event always serializes");
    if let Some(map) = value.as_object_mut() {
        for delivery_field in ["fingerprint", "received_at", "raw"] {
            map.remove(delivery_field);
        }
    }
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
