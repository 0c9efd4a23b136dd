//! HubSpot: each event becomes one CRM activity through the objects API.
//!
//! * `call`, `recording` and `voicemail` → a call engagement,
//!   `POST {base}/crm/v3/objects/calls`. A voicemail is a call that nobody
//!   answered (`NO_ANSWER`), titled "voicemail", with the voicemail as the
//!   recording.
//! * `sms` → a communication (`POST {base}/crm/v3/objects/communications`,
//!   channel `SMS`): HubSpot has no SMS call type, and logging texts as
//!   calls would distort call counts and durations. Communications have no
//!   number fields, so the direction and numbers lead the body.
//!
//! | property | from |
//! |---|---|
//! | `hs_timestamp` | `started_at`, else `ended_at`, else `received_at` (RFC 3339, ms) |
//! | `hs_call_title` | e.g. "Inbound call from John Smith (0987654321)" |
//! | `hs_call_body` | `notes`, HTML-escaped (HubSpot renders it as rich text) |
//! | `hs_call_direction` | `INBOUND` / `OUTBOUND`; absent for internal and unknown |
//! | `hs_call_status` | answered → `COMPLETED`, missed and voicemail → `NO_ANSWER`, busy → `BUSY`, failed → `FAILED`; absent when unknown |
//! | `hs_call_duration` | `duration_seconds` × 1000 (HubSpot counts milliseconds) |
//! | `hs_call_from_number` / `hs_call_to_number` | inbound: external → internal; otherwise internal → external |
//! | `hs_call_recording_url` | `recording.url`, else `voicemail.url` |
//!
//! Values are strings, as in HubSpot's API model; absent fields are left
//! out rather than sent empty.
//!
//! Limit: the create endpoint is not idempotent and HubSpot ignores the
//! `Idempotency-Key` header, so a redelivery or a revision of an event
//! creates a second activity. Making it an upsert needs a custom unique
//! property in the HubSpot account (`batch/upsert` with `idProperty`).

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use reqwest::Url;
use serde::Serialize;

use callstream_schemas::{Direction, Event, Kind, Party, Status};

use super::{Mapping, Outgoing};

pub struct HubSpot {
    calls: Url,
    communications: Url,
}

impl HubSpot {
    /// `base` is the API base (`https://api.hubapi.com`), possibly with a path.
    pub fn new(base: &Url) -> Result<HubSpot, String> {
        let base = base.as_str().trim_end_matches('/');
        let endpoint = |path: &str| {
            Url::parse(&format!("{base}/crm/v3/objects/{path}")).map_err(|e| e.to_string())
        };
        Ok(HubSpot {
            calls: endpoint("calls")?,
            communications: endpoint("communications")?,
        })
    }
}

#[derive(Serialize)]
struct Body {
    properties: BTreeMap<&'static str, String>,
}

impl Mapping for HubSpot {
    fn request(&self, event: &Event, _revision: i32) -> Result<Outgoing, serde_json::Error> {
        let (url, properties) = match event.kind {
            Kind::Sms => (&self.communications, sms_properties(event)),
            _ => (&self.calls, call_properties(event)),
        };
        Ok(Outgoing {
            url: url.clone(),
            body: serde_json::to_vec(&Body { properties })?,
        })
    }
}

fn call_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let mut p = BTreeMap::new();
    p.insert("hs_timestamp", timestamp(e));
    p.insert("hs_call_title", title(e));
    let (from, to) = match e.direction {
        Direction::Inbound => (&e.external, &e.internal),
        _ => (&e.internal, &e.external),
    };
    let optional = [
        ("hs_call_body", e.notes.as_deref().map(escape_html)),
        (
            "hs_call_direction",
            direction(e.direction).map(str::to_string),
        ),
        ("hs_call_status", status(e.status).map(str::to_string)),
        ("hs_call_duration", e.duration_seconds.and_then(millis)),
        ("hs_call_from_number", from.number.clone()),
        ("hs_call_to_number", to.number.clone()),
        (
            "hs_call_recording_url",
            [&e.recording, &e.voicemail]
                .into_iter()
                .find_map(|m| m.as_ref()?.url.clone()),
        ),
    ];
    p.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    p
}

fn sms_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let mut body = format!("<p>{}</p>", escape_html(&title(e)));
    if let Some(text) = &e.sms_body {
        body.push_str(&format!("<p>{}</p>", escape_html(text)));
    }
    BTreeMap::from([
        ("hs_timestamp", timestamp(e)),
        ("hs_communication_channel_type", "SMS".to_string()),
        ("hs_communication_logged_from", "CRM".to_string()),
        ("hs_communication_body", body),
    ])
}

fn timestamp(e: &Event) -> String {
    e.started_at
        .or(e.ended_at)
        .unwrap_or(e.received_at)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// "Inbound call from John Smith (0987654321)", "Outbound SMS to 0987654321".
fn title(e: &Event) -> String {
    let what = match e.kind {
        Kind::Sms => "SMS",
        Kind::Voicemail => "voicemail",
        _ => "call",
    };
    let party = party(&e.external);
    match e.direction {
        Direction::Inbound => format!("Inbound {what} from {party}"),
        Direction::Outbound => format!("Outbound {what} to {party}"),
        Direction::Internal => format!("Internal {what} with {party}"),
        Direction::Unknown => format!("{} with {party}", capitalized(what)),
    }
}

fn party(p: &Party) -> String {
    match (&p.name, &p.number) {
        (Some(name), Some(number)) => format!("{name} ({number})"),
        (Some(name), None) => name.clone(),
        (None, Some(number)) => number.clone(),
        (None, None) => "an unknown number".to_string(),
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn direction(d: Direction) -> Option<&'static str> {
    match d {
        Direction::Inbound => Some("INBOUND"),
        Direction::Outbound => Some("OUTBOUND"),
        Direction::Internal | Direction::Unknown => None,
    }
}

fn status(s: Status) -> Option<&'static str> {
    match s {
        Status::Answered | Status::Completed | Status::Ended => Some("COMPLETED"),
        Status::Missed | Status::Voicemail => Some("NO_ANSWER"),
        Status::Busy => Some("BUSY"),
        Status::Failed => Some("FAILED"),
        Status::Waiting => Some("QUEUED"),
        Status::Ringing => Some("RINGING"),
        Status::Unknown => None,
    }
}

fn millis(seconds: f64) -> Option<String> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| format!("{}", (seconds * 1000.0).round() as u64))
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
