//! What a call or an SMS says in HubSpot: the engagement's properties
//! (the table in the module above).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use callstream_schemas::call::Call;
use callstream_schemas::{Direction, Event, Kind, Party, Status};

/// The properties of a call's merged state.
pub(super) fn call_state_properties(c: &Call) -> BTreeMap<&'static str, String> {
    let at = c
        .started_at
        .or(c.ended_at)
        .or_else(|| c.timeline.first().map(|s| s.received_at));
    let what = if c.status == Status::Voicemail {
        "voicemail"
    } else {
        "call"
    };
    let recording = c
        .recordings
        .iter()
        .chain(c.voicemail.iter())
        .find_map(|m| m.url.clone());
    engagement_properties(Fields {
        at,
        what,
        direction: c.direction,
        status: c.status,
        notes: c.notes.as_deref(),
        duration_seconds: c.duration_seconds,
        internal: &c.internal,
        external: &c.external,
        recording,
    })
}

pub(super) fn call_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let recording = [&e.recording, &e.voicemail]
        .into_iter()
        .find_map(|m| m.as_ref()?.url.clone());
    engagement_properties(Fields {
        at: e.started_at.or(e.ended_at).or(Some(e.received_at)),
        what: kind_word(e.kind),
        direction: e.direction,
        status: e.status,
        notes: e.notes.as_deref(),
        duration_seconds: e.duration_seconds,
        internal: &e.internal,
        external: &e.external,
        recording,
    })
}

/// What a call engagement is made of, from a call or an event.
struct Fields<'a> {
    at: Option<DateTime<Utc>>,
    what: &'static str,
    direction: Direction,
    status: Status,
    notes: Option<&'a str>,
    duration_seconds: Option<f64>,
    internal: &'a Party,
    external: &'a Party,
    recording: Option<String>,
}

fn engagement_properties(f: Fields<'_>) -> BTreeMap<&'static str, String> {
    let mut p = BTreeMap::new();
    p.insert("hs_timestamp", timestamp(f.at.unwrap_or_else(Utc::now)));
    p.insert("hs_call_title", title(f.what, f.direction, f.external));
    let (from, to) = match f.direction {
        Direction::Inbound => (f.external, f.internal),
        _ => (f.internal, f.external),
    };
    let optional = [
        ("hs_call_body", f.notes.map(escape_html)),
        (
            "hs_call_direction",
            direction(f.direction).map(str::to_string),
        ),
        ("hs_call_status", status(f.status).map(str::to_string)),
        ("hs_call_duration", f.duration_seconds.and_then(millis)),
        ("hs_call_from_number", from.number.clone()),
        ("hs_call_to_number", to.number.clone()),
        ("hs_call_recording_url", f.recording),
    ];
    p.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    p
}

pub(super) fn sms_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let mut body = format!(
        "<p>{}</p>",
        escape_html(&title(kind_word(e.kind), e.direction, &e.external))
    );
    if let Some(text) = &e.sms_body {
        body.push_str(&format!("<p>{}</p>", escape_html(text)));
    }
    BTreeMap::from([
        (
            "hs_timestamp",
            timestamp(e.started_at.or(e.ended_at).unwrap_or(e.received_at)),
        ),
        ("hs_communication_channel_type", "SMS".to_string()),
        ("hs_communication_logged_from", "CRM".to_string()),
        ("hs_communication_body", body),
    ])
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Sms => "SMS",
        Kind::Voicemail => "voicemail",
        _ => "call",
    }
}

/// "Inbound call from John Smith (0987654321)", "Outbound SMS to 0987654321".
fn title(what: &str, direction: Direction, external: &Party) -> String {
    let party = party(external);
    match direction {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn event(json: Value) -> Event {
        let mut base = json!({
            "event_id": "ea5dd800-642e-5d07-9154-ebd9939abf31",
            "identity": "onoff:acme:call:c-1",
            "fingerprint": "f",
            "provider": "onoff",
            "tenant": "acme",
            "kind": "call",
            "direction": "inbound",
            "status": "missed",
            "internal": {"number": "+33100000000"},
            "external": {"name": "Jane", "number": "0612345678"},
            "correlation": {"call_id": "c-1"},
            "received_at": "2023-05-20T14:32:01Z",
            "raw": {"topic": "callstream.raw.v1", "request_id": "r"},
        });
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_missed_call_and_its_voicemail_are_one_unanswered_call_with_the_voicemail() {
        let missed = event(json!({"started_at": "2023-05-20T14:30:00Z"}));
        let voicemail = event(json!({
            "identity": "onoff:acme:voicemail:c-1",
            "kind": "voicemail",
            "status": "voicemail",
            "voicemail": {"url": "https://media.example/vm.mp3"},
            "received_at": "2023-05-20T14:33:00Z",
        }));
        let call = Call::from_events(&[missed, voicemail]).unwrap();
        let p = call_state_properties(&call);
        assert_eq!(
            p["hs_call_title"],
            "Inbound voicemail from Jane (0612345678)"
        );
        assert_eq!(p["hs_call_status"], "NO_ANSWER");
        assert_eq!(p["hs_call_recording_url"], "https://media.example/vm.mp3");
        assert_eq!(p["hs_timestamp"], "2023-05-20T14:30:00.000Z");
        assert_eq!(p["hs_call_from_number"], "0612345678");
        assert_eq!(p["hs_call_to_number"], "+33100000000");
        assert!(!p.contains_key("hs_call_body"));
    }

    #[test]
    fn an_sms_is_a_communication_led_by_its_direction_and_numbers() {
        let sms = event(json!({
            "kind": "sms",
            "direction": "outbound",
            "status": "completed",
            "sms_body": "See you at 5 <3",
            "started_at": "2023-05-20T14:30:00Z",
        }));
        let p = sms_properties(&sms);
        assert_eq!(
            p["hs_communication_body"],
            "<p>Outbound SMS to Jane (0612345678)</p><p>See you at 5 &lt;3</p>"
        );
        assert_eq!(p["hs_communication_channel_type"], "SMS");
        assert_eq!(p["hs_timestamp"], "2023-05-20T14:30:00.000Z");
    }
}
