//! Telnyx Call Control (Voice API): call webhooks, JSON. Each body is an
//! envelope `{"data": {"record_type": "event", "event_type", "id",
//! "occurred_at", "payload": {...}}, "meta": {"attempt", "delivered_to"}}`,
//! signed with Ed25519 over `<telnyx-timestamp>|<body>` (the gateway's
//! `ed25519` scheme checks it before this runs; see `docs/signatures.md`).
//! The fields are those of Telnyx's callback reference and SDK models, as
//! collected in `docs/research/platform-webhooks.md` §2.2. TeXML's
//! Twilio-like form callbacks are not these: as form data they are not JSON,
//! and are dead-lettered.
//!
//! - `call.initiated` is a step (`call_progress`), ringing; it alone
//!   carries `direction` (`incoming` → inbound, `outgoing` → outbound).
//! - `call.answered` is a step, answered (`answered_at` = its `occurred_at`).
//! - `call.hangup` is the leg's final record (`call`). Telnyx gives no end
//!   time, duration or answer time with it: `ended_at` is its
//!   `occurred_at`, `started_at` its `start_time`, and no duration is
//!   computed (durations are only ever the provider's). Status from
//!   `hangup_cause`, kept as the provider status: `normal_clearing` →
//!   answered, `user_busy` → busy, `no_answer`, `timeout` and
//!   `originator_cancel` → missed, anything else (`call_rejected`,
//!   `not_found`, `time_limit`, `unspecified`, ...) → failed, and no cause
//!   at all → unknown. Nothing in the hangup proves the call was answered:
//!   there is no answer time, and `call_quality_stats` counts packets even
//!   on a rejected call (early media; Telnyx's own sample), so
//!   `normal_clearing` (the normal end of an established call) is taken as
//!   answered. A parked inbound call that the application hangs up without
//!   answering may end so too; the `call.answered` step says which.
//! - `call.hangup` and `call.answered` carry no `direction` (none is read
//!   when absent): unknown, until the call model joins it from the leg's
//!   `call.initiated`.
//! - `call.recording.saved` is a recording (`recording`, answered: only an
//!   answered call is recorded), dated `recording_started_at` /
//!   `recording_ended_at`. Its URL: `public_recording_urls.mp3` (valid as
//!   long as the file exists, when the account has them activated), else
//!   `recording_urls.mp3` (valid 10 minutes), else the `wav` of either.
//!   Telnyx gives no recording duration.
//! - Any other `call.*` event (`call.bridged`, `call.dtmf.received`, ...) is
//!   a step with an unknown status. An event that is not `call.*`
//!   (`conference.*`, `message.*`, ...) is not a call event: dead-lettered
//!   as an unknown event type.
//! - Parties: `from` places the call, `to` receives it. Inbound, the
//!   caller (`from`, with `caller_id_name`) is the external party and `to`
//!   the internal one; outbound, the reverse. With no direction (every event
//!   but `call.initiated`) they are placed as inbound, like Twilio's.
//! - Times are ISO 8601 with microseconds (`2018-02-02T22:25:27.521992Z`),
//!   read to the millisecond like every provider's; one present but
//!   unreadable is refused (`invalid_field`).
//!
//! Identity: the leg is the call's key, `call_leg_id` (or `call_control_id`
//! where a payload has no leg id); `call_leg_id` is in all four events,
//! `call_control_id` is not in `call.recording.saved`. The hangup is the
//! leg (`<leg>`); `call.initiated` and `call.answered` happen once per leg
//! (`<leg>:<event_type>`); a recording (a leg can have several) is its
//! webhook, `data.id`; other steps, which can repeat on a leg, are
//! `<leg>:<event_type>:<data.id>`. Telnyx resends a webhook with the same
//! `data.id` and body (only `meta.attempt`, which no event field reads,
//! changes), so a resend has the same identity and fingerprint.
//! Correlation: `call_id` and `leg_id` are the leg, `conversation_id` the
//! `call_session_id` (the legs of one call, e.g. a transfer). Tenant: the
//! source's configured tenant (Call Control payloads name no account; the
//! `connection_id` stays in the raw record). `client_state`, and the
//! hangup's `hangup_source` and `sip_hangup_cause`, are kept in
//! [`Event::custom`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
use crate::lenient;
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The Telnyx Call Control source.
pub struct Telnyx;

const ROUTES: &[Route] = &[Route {
    name: "webhook",
    default_path: "/v1/telnyx/webhook",
    methods: &[Method::Post],
}];

/// The status a `call.hangup`'s `hangup_cause` gives the call.
fn hangup_status(cause: &str) -> Status {
    match cause {
        "normal_clearing" => Status::Answered,
        "user_busy" => Status::Busy,
        "no_answer" | "timeout" | "originator_cancel" => Status::Missed,
        _ => Status::Failed,
    }
}

fn direction(payload: &Value) -> Direction {
    match lenient::string(payload.get("direction"))
        .map(|d| d.to_ascii_lowercase())
        .as_deref()
    {
        Some("incoming") => Direction::Inbound,
        Some("outgoing") => Direction::Outbound,
        _ => Direction::Unknown,
    }
}

fn time(
    object: &Value,
    key: &str,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    lenient::timestamp(object.get(key), field)
}

/// The caller (`from`) and the called (`to`), from the call centre's side:
/// outbound, the customer is `to`; otherwise the caller.
fn parties(event: &mut Event, payload: &Value) {
    let from = Party {
        number: lenient::string(payload.get("from")),
        name: lenient::string(payload.get("caller_id_name")),
        ..Party::default()
    };
    let to = Party {
        number: lenient::string(payload.get("to")),
        ..Party::default()
    };
    (event.external, event.internal) = match event.direction {
        Direction::Outbound => (to, from),
        _ => (from, to),
    };
}

/// The recording's URL: the lasting public one, else the 10-minute one;
/// mp3 before wav.
fn recording_url(payload: &Value) -> Option<String> {
    let urls = |key: &str| payload.get(key).unwrap_or(&Value::Null);
    let (public, expiring) = (urls("public_recording_urls"), urls("recording_urls"));
    [
        (public, "mp3"),
        (expiring, "mp3"),
        (public, "wav"),
        (expiring, "wav"),
    ]
    .into_iter()
    .find_map(|(urls, format)| lenient::string(urls.get(format)))
}

/// The number's tags, a list of strings.
fn tags(payload: &Value) -> Vec<Tag> {
    let Some(Value::Array(items)) = payload.get("tags") else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|t| {
            Some(Tag {
                name: lenient::string(Some(t))?,
                ..Tag::default()
            })
        })
        .collect()
}

/// What has no normalized field: the application's `client_state` and the
/// hangup's details.
fn extras(payload: &Value) -> Option<Value> {
    let kept: Map<String, Value> = ["client_state", "hangup_source", "sip_hangup_cause"]
        .into_iter()
        .filter_map(|key| Some((key.to_string(), lenient::string(payload.get(key))?.into())))
        .collect();
    (!kept.is_empty()).then_some(Value::Object(kept))
}

impl Provider for Telnyx {
    fn id(&self) -> ProviderId {
        ProviderId::Telnyx
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let doc = lenient::json_body(req)?;
        let data = doc.get("data").unwrap_or(&Value::Null);
        let event_type = lenient::string(data.get("event_type"))
            .ok_or(NormalizeError::MissingField("data.event_type"))?;
        if !event_type.starts_with("call.") {
            return Err(NormalizeError::UnknownEventType(event_type));
        }
        let payload = data.get("payload").unwrap_or(&Value::Null);
        let leg = lenient::string(payload.get("call_leg_id"))
            .or_else(|| lenient::string(payload.get("call_control_id")))
            .ok_or(NormalizeError::MissingField("data.payload.call_leg_id"))?;
        let webhook_id =
            || lenient::string(data.get("id")).ok_or(NormalizeError::MissingField("data.id"));
        let occurred_at = time(data, "occurred_at", "data.occurred_at")?;
        let tenant = ctx.default_tenant.to_string();

        let (mut event, provider_id) = match event_type.as_str() {
            "call.recording.saved" => {
                let mut event = Event::new(ProviderId::Telnyx, tenant, Kind::Recording, ctx);
                // Only an answered call is recorded.
                event.status = Status::Answered;
                event.started_at = time(
                    payload,
                    "recording_started_at",
                    "data.payload.recording_started_at",
                )?;
                event.ended_at = time(
                    payload,
                    "recording_ended_at",
                    "data.payload.recording_ended_at",
                )?;
                event.recording = recording_url(payload).map(|url| MediaRef {
                    url: Some(url),
                    ..MediaRef::default()
                });
                (event, webhook_id()?)
            }
            "call.hangup" => {
                let mut event = Event::new(ProviderId::Telnyx, tenant, Kind::Call, ctx);
                let cause = lenient::string(payload.get("hangup_cause"));
                event.status = cause
                    .as_deref()
                    .map_or(Status::Unknown, |c| hangup_status(&c.to_ascii_lowercase()));
                event.provider_status = cause;
                event.started_at = time(payload, "start_time", "data.payload.start_time")?;
                event.ended_at = occurred_at;
                (event, leg.clone())
            }
            step => {
                let mut event = Event::new(ProviderId::Telnyx, tenant, Kind::CallProgress, ctx);
                let start_time = time(payload, "start_time", "data.payload.start_time")?;
                event.provider_status = lenient::string(payload.get("state"));
                let provider_id = match step {
                    "call.initiated" => {
                        event.status = Status::Ringing;
                        event.started_at = start_time.or(occurred_at);
                        format!("{leg}:{step}")
                    }
                    "call.answered" => {
                        event.status = Status::Answered;
                        event.started_at = start_time;
                        event.answered_at = occurred_at;
                        format!("{leg}:{step}")
                    }
                    _ => {
                        event.started_at = start_time;
                        format!("{leg}:{step}:{}", webhook_id()?)
                    }
                };
                (event, provider_id)
            }
        };
        event.provider_event_type = Some(event_type);
        event.direction = direction(payload);
        parties(&mut event, payload);
        event.tags = tags(payload);
        event.custom = extras(payload);
        event.correlation.call_id = Some(leg.clone());
        event.correlation.leg_id = Some(leg);
        event.correlation.conversation_id = lenient::string(payload.get("call_session_id"));
        Ok(event.seal(&provider_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::{post, utc, FORM, JSON};
    use serde_json::json;

    fn normalize(body: &Value) -> Result<Event, NormalizeError> {
        post(&Telnyx, "POST", "webhook", JSON, &body.to_string())
    }

    /// Telnyx's documented `call.initiated` example.
    fn initiated() -> Value {
        json!({"data":{"record_type":"event","event_type":"call.initiated","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
            "occurred_at":"2018-02-02T22:25:27.521992Z","payload":{"call_control_id":"d14dbcee-880b-11eb-8204-02420a0f7568",
            "connection_id":"7267xxxxxxxxxxxxxx","call_leg_id":"d14dbcee-880b-11eb-8204-02420a0f7568",
            "call_session_id":"428c31b6-abf3-3bc1-b7f4-5013ef9657c1","client_state":"aGF2ZSBhIG5pY2UgZGF5ID1d",
            "from":"+1-202-555-0133","to":"+12025550131","direction":"incoming","state":"parked"}},
            "meta":{"attempt":1,"delivered_to":"http://example.com/webhooks"}})
    }

    /// Telnyx's documented `call.hangup` example (`call_rejected`).
    fn hangup() -> Value {
        json!({"data":{"record_type":"event","event_type":"call.hangup","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
            "occurred_at":"2018-02-02T22:25:27.521992Z","payload":{"call_control_id":"v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg",
            "connection_id":"7267xxxxxxxxxxxxxx","call_leg_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
            "call_session_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1","client_state":"aGF2ZSBhIG5pY2UgZGF5ID1d",
            "from":"+35319605860","to":"+35319605860","start_time":"2018-02-02T22:20:27.521992Z","state":"hangup",
            "hangup_cause":"call_rejected","hangup_source":"caller","sip_hangup_cause":"603",
            "call_quality_stats":{"inbound":{"jitter_max_variance":"2.74","jitter_packet_count":"0","mos":"4.50",
            "packet_count":"591","skip_packet_count":"9"},"outbound":{"packet_count":"0","skip_packet_count":"0"}}}}})
    }

    /// Telnyx's documented `call.recording.saved` example.
    fn recording() -> Value {
        json!({"data":{"record_type":"event","event_type":"call.recording.saved","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
            "occurred_at":"2018-02-02T22:25:27.521992Z","payload":{"connection_id":"7267xxxxxxxxxxxxxx",
            "call_leg_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1","call_session_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1",
            "client_state":"aGF2ZSBhIG5pY2UgZGF5ID1d","recording_started_at":"2018-02-02T22:20:27.521992Z",
            "recording_ended_at":"2018-02-02T22:20:27.521992Z","channels":"single",
            "recording_urls":{"mp3":"http://example.com/recording.mp3","wav":"http://example.com/recording.wav"},
            "public_recording_urls":{"mp3":"http://example.com/recording.mp3","wav":"http://example.com/recording.wav"}}}})
    }

    const LEG: &str = "428c31b6-7af4-4bcb-b7f5-5013ef9657c1";

    #[test]
    fn the_documented_initiated_sample_is_a_ringing_step() {
        let e = normalize(&initiated()).unwrap();
        assert_eq!(
            (e.kind, e.status, e.direction),
            (Kind::CallProgress, Status::Ringing, Direction::Inbound)
        );
        assert_eq!(
            e.identity,
            "telnyx:default-tenant:call_progress:d14dbcee-880b-11eb-8204-02420a0f7568:call.initiated"
        );
        assert_eq!(e.external.number.as_deref(), Some("+1-202-555-0133"));
        assert_eq!(e.internal.number.as_deref(), Some("+12025550131"));
        assert_eq!(e.started_at, utc("2018-02-02T22:25:27.521Z"));
        assert_eq!(e.provider_status.as_deref(), Some("parked"));
        assert_eq!(e.provider_event_type.as_deref(), Some("call.initiated"));
        assert_eq!(
            e.correlation.conversation_id.as_deref(),
            Some("428c31b6-abf3-3bc1-b7f4-5013ef9657c1")
        );
        assert_eq!(
            e.custom,
            Some(json!({"client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d"}))
        );
        let mut outgoing = initiated();
        outgoing["data"]["payload"]["direction"] = "outgoing".into();
        let e = normalize(&outgoing).unwrap();
        assert_eq!(e.direction, Direction::Outbound);
        assert_eq!(e.external.number.as_deref(), Some("+12025550131"));
        assert_eq!(e.internal.number.as_deref(), Some("+1-202-555-0133"));
    }

    #[test]
    fn an_answered_step() {
        let mut answered = hangup();
        answered["data"]["event_type"] = "call.answered".into();
        answered["data"]["occurred_at"] = "2018-02-02T22:20:31.000000Z".into();
        let payload = answered["data"]["payload"].as_object_mut().unwrap();
        for key in [
            "hangup_cause",
            "hangup_source",
            "sip_hangup_cause",
            "call_quality_stats",
        ] {
            payload.remove(key);
        }
        payload.insert("state".into(), "answered".into());
        let e = normalize(&answered).unwrap();
        assert_eq!(
            (e.kind, e.status, e.direction),
            (Kind::CallProgress, Status::Answered, Direction::Unknown)
        );
        assert_eq!(
            e.identity,
            format!("telnyx:default-tenant:call_progress:{LEG}:call.answered")
        );
        assert_eq!(e.started_at, utc("2018-02-02T22:20:27.521Z"));
        assert_eq!(e.answered_at, utc("2018-02-02T22:20:31Z"));
    }

    #[test]
    fn the_documented_hangup_sample_is_the_final_record() {
        let e = normalize(&hangup()).unwrap();
        assert_eq!(
            (e.kind, e.status, e.direction),
            (Kind::Call, Status::Failed, Direction::Unknown)
        );
        assert_eq!(e.identity, format!("telnyx:default-tenant:call:{LEG}"));
        assert_eq!(e.provider_status.as_deref(), Some("call_rejected"));
        assert_eq!(e.started_at, utc("2018-02-02T22:20:27.521Z"));
        assert_eq!(e.ended_at, utc("2018-02-02T22:25:27.521Z"));
        assert_eq!(e.duration_seconds, None, "Telnyx reports none");
        assert_eq!(e.correlation.call_id.as_deref(), Some(LEG));
        assert_eq!(e.correlation.leg_id.as_deref(), Some(LEG));
        assert_eq!(e.correlation.conversation_id.as_deref(), Some(LEG));
        assert_eq!(
            e.custom,
            Some(json!({"client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
                "hangup_source": "caller", "sip_hangup_cause": "603"}))
        );
    }

    #[test]
    fn hangup_cause_maps_to_status() {
        let cases = [
            ("normal_clearing", Status::Answered),
            ("user_busy", Status::Busy),
            ("no_answer", Status::Missed),
            ("timeout", Status::Missed),
            ("originator_cancel", Status::Missed),
            ("call_rejected", Status::Failed),
            ("not_found", Status::Failed),
            ("time_limit", Status::Failed),
            ("unspecified", Status::Failed),
            ("something_new", Status::Failed),
        ];
        for (cause, status) in cases {
            let mut body = hangup();
            body["data"]["payload"]["hangup_cause"] = cause.into();
            let e = normalize(&body).unwrap();
            assert_eq!((e.kind, e.status), (Kind::Call, status), "{cause}");
            assert_eq!(e.provider_status.as_deref(), Some(cause));
        }
        let mut none = hangup();
        none["data"]["payload"]
            .as_object_mut()
            .unwrap()
            .remove("hangup_cause");
        assert_eq!(normalize(&none).unwrap().status, Status::Unknown);
    }

    /// Telnyx resends the same `data.id` and body, `meta.attempt` aside.
    #[test]
    fn a_resend_is_the_same_event() {
        for body in [initiated(), hangup(), recording()] {
            let mut resent = body.clone();
            resent["meta"] = json!({"attempt": 2, "delivered_to": "http://failover.example.com"});
            let (first, again) = (normalize(&body).unwrap(), normalize(&resent).unwrap());
            assert_eq!(first.identity, again.identity);
            assert_eq!(first.fingerprint, again.fingerprint);
        }
    }

    #[test]
    fn the_documented_recording_sample() {
        let e = normalize(&recording()).unwrap();
        assert_eq!((e.kind, e.status), (Kind::Recording, Status::Answered));
        assert_eq!(
            e.identity,
            "telnyx:default-tenant:recording:0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"
        );
        assert_eq!(
            e.recording.and_then(|m| m.url).as_deref(),
            Some("http://example.com/recording.mp3")
        );
        assert_eq!(e.started_at, utc("2018-02-02T22:20:27.521Z"));
        assert_eq!(e.correlation.call_id.as_deref(), Some(LEG));
        // Without public URLs (not activated), the 10-minute one.
        let mut private = recording();
        private["data"]["payload"]["public_recording_urls"] = json!({});
        private["data"]["payload"]["recording_urls"] = json!({"wav": "https://s3.example/r.wav"});
        assert_eq!(
            normalize(&private)
                .unwrap()
                .recording
                .and_then(|m| m.url)
                .as_deref(),
            Some("https://s3.example/r.wav")
        );
    }

    #[test]
    fn other_call_events_are_steps_of_their_own() {
        let mut bridged = hangup();
        bridged["data"]["event_type"] = "call.dtmf.received".into();
        bridged["data"]["id"] = "e-2".into();
        let e = normalize(&bridged).unwrap();
        assert_eq!((e.kind, e.status), (Kind::CallProgress, Status::Unknown));
        assert_eq!(
            e.identity,
            format!("telnyx:default-tenant:call_progress:{LEG}:call.dtmf.received:e-2")
        );
    }

    #[test]
    fn what_cannot_be_normalized_says_why() {
        let mut conference = recording();
        conference["data"]["event_type"] = "conference.recording.saved".into();
        assert_eq!(
            normalize(&conference).unwrap_err(),
            NormalizeError::UnknownEventType("conference.recording.saved".into())
        );
        assert_eq!(
            normalize(&json!({"meta": {"attempt": 1}})).unwrap_err(),
            NormalizeError::MissingField("data.event_type")
        );
        let mut no_leg = hangup();
        let payload = no_leg["data"]["payload"].as_object_mut().unwrap();
        payload.remove("call_leg_id");
        payload.remove("call_control_id");
        assert_eq!(
            normalize(&no_leg).unwrap_err(),
            NormalizeError::MissingField("data.payload.call_leg_id")
        );
        // The leg's command id stands in for a missing leg id.
        let mut control_only = hangup();
        control_only["data"]["payload"]
            .as_object_mut()
            .unwrap()
            .remove("call_leg_id");
        assert!(normalize(&control_only)
            .unwrap()
            .identity
            .ends_with(":call:v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"));
        let mut no_id = recording();
        no_id["data"].as_object_mut().unwrap().remove("id");
        assert_eq!(
            normalize(&no_id).unwrap_err(),
            NormalizeError::MissingField("data.id")
        );
        let mut bad_time = hangup();
        bad_time["data"]["payload"]["start_time"] = "2018-02-02 22:20".into();
        assert!(matches!(
            normalize(&bad_time).unwrap_err(),
            NormalizeError::InvalidField {
                field: "data.payload.start_time",
                ..
            }
        ));
        // TeXML's form callbacks are not Call Control webhooks.
        let texml = "CallSid=v3%3Aabc&CallStatus=completed";
        assert!(matches!(
            post(&Telnyx, "POST", "webhook", FORM, texml).unwrap_err(),
            NormalizeError::Malformed { format: "JSON", .. }
        ));
    }
}
