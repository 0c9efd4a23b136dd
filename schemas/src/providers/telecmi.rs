//! TeleCMI: call detail records (`type: "cdr"`) and live call events
//! (`type: "event"`), as a JSON POST or, per newer docs, a GET whose query
//! string carries the same fields as strings.
//!
//! The body's `type` decides what a delivery is, whichever route received it
//! (the route only stands in when `type` is missing). Identity:
//!
//! * a CDR is one call leg: `cmiuuid`. A click-to-call makes two CDRs, leg
//!   `a` (the agent's phone) and leg `b` (the customer), with distinct
//!   `cmiuuid`s and a shared `call_id`/`request_id`; only leg `b` has the
//!   real talk time and the recording.
//! * a live event is one step of one leg: `cmiuuid:status`.
//!
//! `time` is epoch milliseconds. For a CDR it is taken as the call's start
//! (the docs only say "timestamp of this call"; an assumption). For a live
//! event it is when that step happened, so it goes to the timestamp that
//! matches the step: `started_at` (waiting, started), `answered_at`
//! (answered) or `ended_at` (hangup).
//!
//! `custom` and `extra_params` are JSON-encoded strings; they are decoded and
//! kept in [`Event::custom`] with `hangup_reason`, `team`, `ivr_name`,
//! `request_id` and `click_to_call`, which have no normalized field. A
//! `custom` of `"none"` is TeleCMI's "no value" and is dropped; a value that
//! is not JSON is kept as the string it is.

use serde_json::{Map, Value};

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status};
use crate::lenient::{self, field};
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The TeleCMI webhook source.
pub struct Telecmi;

const ROUTES: &[Route] = &[
    Route {
        name: "cdr",
        default_path: "/v1/telecmi/cdr",
        methods: &[Method::Get, Method::Post],
    },
    Route {
        name: "event",
        default_path: "/v1/telecmi/event",
        methods: &[Method::Get, Method::Post],
    },
];

/// What a delivery reports.
enum Delivery {
    Cdr,
    Live,
}

fn delivery(doc: &Value, route: &str) -> Result<Delivery, NormalizeError> {
    match lenient::string(doc.get("type")) {
        Some(kind) => match kind.to_ascii_lowercase().as_str() {
            "cdr" => Ok(Delivery::Cdr),
            "event" => Ok(Delivery::Live),
            _ => Err(NormalizeError::UnknownEventType(kind)),
        },
        None => match route {
            "cdr" => Ok(Delivery::Cdr),
            "event" => Ok(Delivery::Live),
            _ => Err(NormalizeError::UnknownEventType("(no type)".into())),
        },
    }
}

/// CDR outcome. TeleCMI spells the "a user did not pick up" case
/// `user-missed` in its docs; other separators are tolerated.
fn cdr_status(status: Option<&str>) -> Status {
    let squashed: Option<String> = status.map(|s| {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    });
    match squashed.as_deref() {
        Some("answered") => Status::Answered,
        Some("missed" | "usermissed" | "noanswer" | "unanswered") => Status::Missed,
        Some("busy") => Status::Busy,
        Some("failed") => Status::Failed,
        _ => Status::Unknown,
    }
}

fn live_status(status: &str) -> Status {
    match status.to_ascii_lowercase().as_str() {
        "waiting" => Status::Waiting,
        "started" => Status::Ringing,
        "answered" => Status::Answered,
        "hangup" => Status::Ended,
        _ => Status::Unknown,
    }
}

/// A voicemail CDR carries `voicename` (taken to be the message's file) or
/// `voicemail`, which may be a flag or the file/URL itself. Guessed: the
/// docs list both fields without describing them. An explicit
/// `voicemail: false` wins over a `voicename`, and `none` (TeleCMI's word
/// for no value) is no file.
fn voicemail(doc: &Value) -> Option<MediaRef> {
    let flag = lenient::boolean(doc.get("voicemail"));
    if flag == Some(false) {
        return None;
    }
    let handle = lenient::string(doc.get("voicename"))
        .or_else(|| lenient::string(doc.get("voicemail")).filter(|_| flag.is_none()))
        .filter(|h| !h.eq_ignore_ascii_case("none"));
    if flag != Some(true) && handle.is_none() {
        return None;
    }
    let is_url = handle
        .as_deref()
        .is_some_and(|h| h.starts_with("http://") || h.starts_with("https://"));
    Some(if is_url {
        MediaRef {
            url: handle,
            ..MediaRef::default()
        }
    } else {
        MediaRef {
            file_name: handle,
            ..MediaRef::default()
        }
    })
}

/// A JSON-encoded string field, decoded; see the module comment.
fn embedded_json(value: Option<&Value>) -> Option<Value> {
    match value? {
        Value::String(text) => {
            let text = text.trim();
            if text.is_empty() || text.eq_ignore_ascii_case("none") {
                return None;
            }
            Some(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
        }
        Value::Null => None,
        // A GET delivery's form decoder has already turned JSON into objects.
        other => Some(other.clone()),
    }
    .filter(|decoded| !decoded.is_null())
}

fn extras(doc: &Value) -> Option<Value> {
    let mut extras = Map::new();
    for key in ["custom", "extra_params"] {
        if let Some(decoded) = embedded_json(doc.get(key)) {
            extras.insert(key.to_string(), decoded);
        }
    }
    // `request_id` is the click-to-call API's id for the request that
    // placed the call, shared by both legs: what the caller of that API
    // matches CDRs to. It stands in for `call_id` in the correlation only
    // when `call_id` is missing, so it is kept here whether or not it does.
    // `click_to_call` is the docs' "made through click to call api" flag,
    // kept as a string like the other scalars (`true` and `"true"` alike).
    for key in [
        "hangup_reason",
        "team",
        "ivr_name",
        "request_id",
        "click_to_call",
    ] {
        if let Some(value) = lenient::string(doc.get(key)) {
            extras.insert(key.to_string(), Value::String(value));
        }
    }
    (!extras.is_empty()).then_some(Value::Object(extras))
}

/// Leg `a` of a click-to-call: the platform ringing the agent's own phone
/// before it dials the customer on leg `b`. Recognised by the leg name on an
/// outbound CDR that came from the click-to-call API (`request_id`, or the
/// `click_to_call` flag); other calls with legs are not described anywhere.
fn is_click_to_call_agent_leg(event: &Event, doc: &Value) -> bool {
    let leg_a = lenient::string(doc.get("leg")).is_some_and(|leg| leg.eq_ignore_ascii_case("a"));
    let click_to_call = field(doc, &["request_id"]).is_some()
        || lenient::boolean(doc.get("click_to_call")) == Some(true);
    leg_a && click_to_call && event.direction == Direction::Outbound
}

/// Fills both parties. Inbound, the customer is the caller (`from`, or
/// `callerid`); outbound, the callee (`to`). On the agent leg of a
/// click-to-call the callee is the agent, and the customer is not on it.
fn fill_parties(event: &mut Event, doc: &Value) {
    let caller = || lenient::string(field(doc, &["from", "callerid"]));
    let callee = || lenient::string(doc.get("to"));
    event.internal = Party {
        id: lenient::string(doc.get("user")),
        number: lenient::string(doc.get("virtual_number")),
        ..Party::default()
    };
    if is_click_to_call_agent_leg(event, doc) {
        event.internal.number = callee().or(event.internal.number.take());
        return;
    }
    event.external.number = match event.direction {
        Direction::Outbound => callee(),
        Direction::Inbound => caller(),
        Direction::Internal | Direction::Unknown => caller().or_else(callee),
    };
}

impl Provider for Telecmi {
    fn id(&self) -> ProviderId {
        ProviderId::Telecmi
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let doc = lenient::document(req)?;
        let delivery = delivery(&doc, req.route)?;
        let cmiuuid =
            lenient::string(doc.get("cmiuuid")).ok_or(NormalizeError::MissingField("cmiuuid"))?;
        let status = lenient::string(doc.get("status"));
        let time = lenient::timestamp(doc.get("time"), "time")?;
        let tenant = lenient::string(field(&doc, &["appid", "app_id"]))
            .unwrap_or_else(|| ctx.default_tenant.to_string());

        let (mut event, provider_id) = match delivery {
            Delivery::Cdr => {
                let voicemail = voicemail(&doc);
                let kind = if voicemail.is_some() {
                    Kind::Voicemail
                } else {
                    Kind::Call
                };
                let mut event = Event::new(ProviderId::Telecmi, tenant, kind, ctx);
                event.status = match voicemail {
                    Some(_) => Status::Voicemail,
                    None => cdr_status(status.as_deref()),
                };
                event.voicemail = voicemail;
                event.started_at = time;
                (event, cmiuuid.clone())
            }
            Delivery::Live => {
                let step = status
                    .clone()
                    .ok_or(NormalizeError::MissingField("status"))?;
                let mut event = Event::new(ProviderId::Telecmi, tenant, Kind::CallProgress, ctx);
                event.status = live_status(&step);
                match event.status {
                    Status::Answered => event.answered_at = time,
                    Status::Ended => event.ended_at = time,
                    _ => event.started_at = time,
                }
                (event, format!("{cmiuuid}:{step}"))
            }
        };

        event.provider_status = status;
        event.provider_event_type = lenient::string(doc.get("type"));
        event.direction = match lenient::string(doc.get("direction"))
            .map(|d| d.to_ascii_lowercase())
            .as_deref()
        {
            Some("inbound" | "incoming") => Direction::Inbound,
            Some("outbound" | "outgoing") => Direction::Outbound,
            _ => Direction::Unknown,
        };
        fill_parties(&mut event, &doc);
        // `answeredsec` is the only length TeleCMI reports: talk time, and
        // so also the call's duration as far as the provider is concerned.
        event.talk_seconds = lenient::number(doc.get("answeredsec"));
        event.duration_seconds = event.talk_seconds;
        event.ring_seconds = lenient::number(doc.get("waitedsec"));
        let file_name = lenient::string(doc.get("filename"));
        if file_name.is_some() || lenient::boolean(doc.get("record")) == Some(true) {
            event.recording = Some(MediaRef {
                file_name,
                ..MediaRef::default()
            });
        }
        event.correlation.call_id = lenient::string(field(&doc, &["call_id", "request_id"]));
        event.correlation.conversation_id = lenient::string(doc.get("conversation_uuid"));
        event.correlation.leg = lenient::string(doc.get("leg"));
        event.correlation.leg_id = Some(cmiuuid);
        event.custom = extras(&doc);
        Ok(event.seal(&provider_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::{get, post, utc, JSON, TENANT};
    use serde_json::json;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/telecmi/", $name))
        };
    }

    fn cdr(body: &str) -> Result<Event, NormalizeError> {
        post(&Telecmi, "POST", "cdr", JSON, body)
    }

    #[test]
    fn click_to_call_legs_are_distinct_events_of_one_call() {
        let a = cdr(fixture!("c2c-leg-a.json")).expect("normalizes");
        let b = cdr(fixture!("c2c-leg-b.json")).expect("normalizes");
        assert_eq!(
            a.identity,
            "telecmi:2222223:call:10ee0eb6-c417-4f5a-b122-bffe28f96eae"
        );
        assert_eq!(
            b.identity,
            "telecmi:2222223:call:0da4f02e-6ece-42e4-989b-1e6766b5a81e"
        );
        assert_ne!(a.event_id, b.event_id);
        for leg in [&a, &b] {
            assert_eq!(
                (leg.kind, leg.status, leg.direction),
                (Kind::Call, Status::Answered, Direction::Outbound)
            );
            assert_eq!(leg.started_at, utc("2022-04-22T12:29:11.178Z"));
            assert_eq!(
                leg.correlation.call_id.as_deref(),
                Some("c4504776-d91e-123b-29a7-56000429abc3")
            );
            assert_eq!(leg.internal.id.as_deref(), Some("202_2222223"));
        }
        assert_eq!(
            (
                a.correlation.leg.as_deref(),
                a.correlation.leg_id.as_deref()
            ),
            (Some("a"), Some("10ee0eb6-c417-4f5a-b122-bffe28f96eae"))
        );
        assert_eq!(b.correlation.leg.as_deref(), Some("b"));
        // Leg a rings the agent: its `to` is the agent's phone, not a customer.
        assert_eq!(a.internal.number.as_deref(), Some("442000000000"));
        assert_eq!(a.external, Party::default());
        assert_eq!(b.internal.number.as_deref(), Some("440000000000"));
        assert_eq!(b.external.number.as_deref(), Some("919342012824"));
        // Only leg b has the real talk time and the recording.
        assert_eq!(
            (a.talk_seconds, a.duration_seconds, a.recording.as_ref()),
            (Some(15.0), Some(15.0), None)
        );
        assert_eq!((b.talk_seconds, b.duration_seconds), (Some(6.0), Some(6.0)));
        assert_eq!(
            b.recording.and_then(|r| r.file_name).as_deref(),
            Some("16506305548176941220057791_2222223.mp3")
        );
        // Both legs keep the click-to-call request id next to `call_id`.
        let request_id = "c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr";
        assert_eq!(
            a.custom,
            Some(json!({
                "custom": {"crm": "true"},
                "hangup_reason": "recv_bye",
                "request_id": request_id
            }))
        );
        assert_eq!(
            b.custom,
            Some(json!({
                "custom": {"crm": "true"},
                "hangup_reason": "sent_bye",
                "request_id": request_id
            }))
        );

        // A leg `a` that did not come from click-to-call is an ordinary call.
        let plain = r#"{"type":"cdr","cmiuuid":"u","leg":"a","direction":"outbound","to":"9193"}"#;
        let plain = cdr(plain).expect("normalizes");
        assert_eq!(plain.external.number.as_deref(), Some("9193"));
    }

    #[test]
    fn outgoing_answered_doc_sample() {
        let event = cdr(fixture!("outgoing-answered-doc.json")).expect("normalizes");
        assert_eq!(
            event.identity,
            "telecmi:1111113:call:760df326-7f03-4b5d-b573-278dec867f13"
        );
        assert_eq!(
            (event.status, event.direction),
            (Status::Answered, Direction::Outbound)
        );
        assert_eq!(event.provider_status.as_deref(), Some("answered"));
        assert_eq!(event.provider_event_type.as_deref(), Some("cdr"));
        assert_eq!(event.started_at, utc("2019-10-04T10:20:01.056Z"));
        assert_eq!(event.external.number.as_deref(), Some("9100000000"));
        assert_eq!(event.internal.id.as_deref(), Some("103_1111113"));
        assert_eq!(event.talk_seconds, Some(13.0));
        assert_eq!(
            event.recording.and_then(|r| r.file_name).as_deref(),
            Some("157018440105699392452463833_1111113.mp3")
        );
        assert_eq!(event.correlation.call_id, None);
        // The sample's `click_to_call: "true"` is kept.
        assert_eq!(event.custom, Some(json!({"click_to_call": "true"})));
    }

    #[test]
    fn request_id_and_click_to_call_are_kept_in_custom() {
        let base = json!({"type": "cdr", "cmiuuid": "u", "direction": "outbound", "to": "9193"});
        let with = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .expect("an object")
                .extend(extra.as_object().expect("an object").clone());
            cdr(&body.to_string()).expect("normalizes")
        };

        // With `call_id` the correlation takes it, and `request_id` is not lost.
        let both = with(json!({"call_id": "call-1", "request_id": "req-1"}));
        assert_eq!(both.correlation.call_id.as_deref(), Some("call-1"));
        assert_eq!(both.custom, Some(json!({"request_id": "req-1"})));

        // Without it, `request_id` still stands in for the call id.
        let alone = with(json!({"request_id": "req-2"}));
        assert_eq!(alone.correlation.call_id.as_deref(), Some("req-2"));
        assert_eq!(alone.custom, Some(json!({"request_id": "req-2"})));

        // The flag, however it is spelled, next to the decoded `custom`.
        for flag in [json!(true), json!("true"), json!(" true ")] {
            let event = with(json!({"click_to_call": flag, "custom": "{\"crm\":1}"}));
            assert_eq!(
                event.custom,
                Some(json!({"click_to_call": "true", "custom": {"crm": 1}})),
                "{flag}"
            );
        }
        let off = with(json!({"click_to_call": false}));
        assert_eq!(off.custom, Some(json!({"click_to_call": "false"})));

        // A GET delivery keeps the same.
        let query = "type=cdr&cmiuuid=u&direction=outbound&to=9193\
                     &call_id=call-1&request_id=req-1&click_to_call=true";
        let by_get = get(&Telecmi, "cdr", query).expect("normalizes");
        assert_eq!(
            by_get.custom,
            Some(json!({"click_to_call": "true", "request_id": "req-1"}))
        );
    }

    #[test]
    fn incoming_missed_with_strings_everywhere() {
        let event = cdr(fixture!("incoming-missed.json")).expect("normalizes");
        assert_eq!(
            event.identity,
            "telecmi:2222223:call:5f0c1d2e-0001-4000-8000-00000000a001"
        );
        assert_eq!(
            (event.status, event.direction),
            (Status::Missed, Direction::Inbound)
        );
        assert_eq!(event.started_at, utc("2022-04-23T07:46:40Z"));
        assert_eq!(event.external.number.as_deref(), Some("919876500001"));
        assert_eq!(event.internal.number.as_deref(), Some("440000000000"));
        assert_eq!(
            (event.ring_seconds, event.talk_seconds),
            (Some(18.0), Some(0.0))
        );
        assert_eq!(
            event.correlation.conversation_id.as_deref(),
            Some("7a1b2c3d-0001-4000-8000-00000000c001")
        );
        // `custom: "none"` is dropped; the hang-up reason, team and IVR are kept.
        assert_eq!(
            event.custom,
            Some(
                json!({"hangup_reason": "recv_cancel", "team": "support", "ivr_name": "Main IVR"})
            )
        );
    }

    #[test]
    fn user_missed_falls_back_to_callerid() {
        let event = cdr(fixture!("incoming-user-missed.json")).expect("normalizes");
        assert_eq!(event.status, Status::Missed);
        assert_eq!(event.provider_status.as_deref(), Some("user-missed"));
        assert_eq!(event.external.number.as_deref(), Some("919876500002"));
        assert_eq!(event.internal.number.as_deref(), Some("440000000000"));
        assert_eq!(event.ring_seconds, Some(25.0));
        for (given, expected) in [
            ("usermissed", Status::Missed),
            ("User_Missed", Status::Missed),
            ("busy", Status::Busy),
        ] {
            assert_eq!(cdr_status(Some(given)), expected, "{given}");
        }
    }

    #[test]
    fn incoming_answered_decodes_custom_and_extra_params() {
        let event = cdr(fixture!("incoming-answered.json")).expect("normalizes");
        assert_eq!(
            (event.status, event.direction),
            (Status::Answered, Direction::Inbound)
        );
        assert_eq!(event.external.number.as_deref(), Some("919876500003"));
        assert_eq!(
            (event.talk_seconds, event.ring_seconds),
            (Some(42.0), Some(4.0))
        );
        assert_eq!(
            event.custom,
            Some(json!({
                "custom": {"ticket": "T-1001"},
                "extra_params": {"crm_id": 77, "source": "web"},
                "hangup_reason": "recv_bye"
            }))
        );
        assert_eq!(
            event.recording.and_then(|r| r.file_name).as_deref(),
            Some("16507002000001234_2222223.mp3")
        );
    }

    #[test]
    fn voicemail_cdr() {
        let event = cdr(fixture!("incoming-voicemail.json")).expect("normalizes");
        assert_eq!(
            event.identity,
            "telecmi:2222223:voicemail:5f0c1d2e-0004-4000-8000-00000000a004"
        );
        assert_eq!(
            (event.kind, event.status),
            (Kind::Voicemail, Status::Voicemail)
        );
        assert_eq!(event.provider_status.as_deref(), Some("missed"));
        assert_eq!(
            event.voicemail.and_then(|v| v.file_name).as_deref(),
            Some("vm_16507003000004_2222223.mp3")
        );
        // Not JSON: kept as the string it is.
        assert_eq!(event.custom, Some(json!({"custom": "{not json"})));

        let by_url = cdr(r#"{"type":"cdr","cmiuuid":"u","voicemail":"https://vm.example/1.mp3"}"#)
            .expect("normalizes");
        assert_eq!(
            by_url.voicemail.and_then(|v| v.url).as_deref(),
            Some("https://vm.example/1.mp3")
        );
        let not_voicemail =
            cdr(r#"{"type":"cdr","cmiuuid":"u","voicemail":"false"}"#).expect("normalizes");
        assert_eq!(
            (not_voicemail.kind, not_voicemail.voicemail),
            (Kind::Call, None)
        );
        for body in [
            r#"{"type":"cdr","cmiuuid":"u","status":"answered","voicemail":false,"voicename":"greeting.mp3"}"#,
            r#"{"type":"cdr","cmiuuid":"u","status":"answered","voicemail":"false","voicename":"greeting.mp3"}"#,
            r#"{"type":"cdr","cmiuuid":"u","status":"answered","voicename":"none"}"#,
        ] {
            let call = cdr(body).expect("normalizes");
            assert_eq!(
                (call.kind, call.status, call.voicemail),
                (Kind::Call, Status::Answered, None),
                "{body}"
            );
        }
        let flagged = cdr(r#"{"type":"cdr","cmiuuid":"u","voicemail":true,"voicename":"none"}"#)
            .expect("normalizes");
        assert_eq!(
            (flagged.kind, flagged.voicemail),
            (Kind::Voicemail, Some(MediaRef::default()))
        );
    }

    #[test]
    fn live_events_are_one_event_per_step() {
        let steps = [
            (fixture!("event-waiting.json"), "waiting", Status::Waiting),
            (fixture!("event-started.json"), "started", Status::Ringing),
            (
                fixture!("event-answered.json"),
                "answered",
                Status::Answered,
            ),
            (fixture!("event-hangup.json"), "hangup", Status::Ended),
        ];
        let mut identities = std::collections::HashSet::new();
        for (body, step, status) in steps {
            let event = post(&Telecmi, "POST", "event", JSON, body).expect("normalizes");
            assert_eq!(
                event.identity,
                format!(
                    "telecmi:2222223:call_progress:5f0c1d2e-0005-4000-8000-00000000a005:{step}"
                )
            );
            assert_eq!(
                (event.kind, event.status, event.direction),
                (Kind::CallProgress, status, Direction::Inbound)
            );
            assert_eq!(event.provider_event_type.as_deref(), Some("event"));
            assert_eq!(event.external.number.as_deref(), Some("919876500005"));
            assert_eq!(
                event.correlation.leg_id.as_deref(),
                Some("5f0c1d2e-0005-4000-8000-00000000a005")
            );
            identities.insert(event.identity);
            let at = |field: Option<chrono::DateTime<chrono::Utc>>| field.map(|t| t.to_rfc3339());
            let times = (
                at(event.started_at),
                at(event.answered_at),
                at(event.ended_at),
            );
            let expected = match step {
                "waiting" => (Some("2022-04-23T07:53:20+00:00".into()), None, None),
                "started" => (Some("2022-04-23T07:53:25+00:00".into()), None, None),
                "answered" => (None, Some("2022-04-23T07:53:30+00:00".into()), None),
                _ => (None, None, Some("2022-04-23T07:54:30+00:00".into())),
            };
            assert_eq!(times, expected, "{step}");
        }
        assert_eq!(identities.len(), 4);
    }

    #[test]
    fn type_decides_whichever_route_received_it() {
        let on_event_route = post(&Telecmi, "POST", "event", JSON, fixture!("c2c-leg-b.json"));
        assert_eq!(on_event_route, cdr(fixture!("c2c-leg-b.json")));
        let on_cdr_route = cdr(fixture!("event-hangup.json")).expect("normalizes");
        assert_eq!(on_cdr_route.kind, Kind::CallProgress);
        // Without `type`, the route stands in.
        let untyped = r#"{"cmiuuid":"u","status":"started"}"#;
        assert_eq!(
            post(&Telecmi, "POST", "event", JSON, untyped).map(|e| e.status),
            Ok(Status::Ringing)
        );
        assert_eq!(cdr(untyped).map(|e| e.kind), Ok(Kind::Call));
    }

    #[test]
    fn get_deliveries_carry_strings_in_the_query() {
        let event = get(&Telecmi, "cdr", fixture!("cdr-get.query")).expect("normalizes");
        assert_eq!(
            event.identity,
            "telecmi:2222223:call:5f0c1d2e-0006-4000-8000-00000000a006"
        );
        assert_eq!(
            (event.status, event.direction),
            (Status::Answered, Direction::Outbound)
        );
        assert_eq!(event.started_at, utc("2022-04-23T07:55:00Z"));
        assert_eq!(event.external.number.as_deref(), Some("919342012824"));
        assert_eq!(event.talk_seconds, Some(61.0));
        assert_eq!(
            event.recording.and_then(|r| r.file_name).as_deref(),
            Some("16507005000006_2222223.mp3")
        );
        assert_eq!(
            event.custom,
            Some(
                json!({"custom": {"crm": "true"}, "extra_params": {"lead": 9}, "hangup_reason": "sent_bye"})
            )
        );

        let live = get(&Telecmi, "event", fixture!("event-get.query")).expect("normalizes");
        assert_eq!(
            live.identity,
            "telecmi:2222223:call_progress:5f0c1d2e-0007-4000-8000-00000000a007:started"
        );
        assert_eq!(
            (live.status, live.direction),
            (Status::Ringing, Direction::Outbound)
        );
        assert_eq!(live.external.number.as_deref(), Some("919342012824"));
        assert_eq!(live.started_at, utc("2022-04-23T07:56:40Z"));
    }

    #[test]
    fn deliveries_that_cannot_be_normalized() {
        assert_eq!(
            cdr(fixture!("missing-cmiuuid.json")),
            Err(NormalizeError::MissingField("cmiuuid"))
        );
        assert_eq!(
            cdr(fixture!("unknown-type.json")),
            Err(NormalizeError::UnknownEventType("sms".into()))
        );
        assert!(matches!(
            cdr(fixture!("epoch-seconds.json")),
            Err(NormalizeError::InvalidField { field: "time", .. })
        ));
        assert_eq!(
            post(
                &Telecmi,
                "POST",
                "event",
                JSON,
                r#"{"type":"event","cmiuuid":"u"}"#
            ),
            Err(NormalizeError::MissingField("status"))
        );
        assert_eq!(get(&Telecmi, "cdr", ""), Err(NormalizeError::EmptyBody));
        assert_eq!(
            cdr(r#"{"cmiuuid":"u"}"#).map(|e| e.tenant),
            Ok(TENANT.to_string())
        );
    }
}
