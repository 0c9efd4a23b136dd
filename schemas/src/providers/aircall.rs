//! Aircall: call webhooks, JSON. Each body is an envelope
//! `{"resource", "event", "timestamp", "token", "data"}` around the whole
//! call as it stands (`data`). The `token` is the webhook's shared token:
//! the gateway checks it (`body_token` scheme, `docs/signatures.md`) and
//! blanks it in the raw record. The fields are those of Aircall's API
//! reference, as collected in `docs/research/platform-webhooks.md` §3.
//!
//! - `call.ended` is the call, final (~30 s after hang-up, once duration
//!   and recording are known): voicemail if `data.voicemail` is set, else
//!   answered if `answered_at` is, else missed (`missed_call_reason` says
//!   why, kept as the provider status).
//! - `call.commented`, `call.tagged` and `call.untagged` on a call that is
//!   `done` are the same call again, with its notes and tags: a revision.
//!   Before that they, and every other `call.*` event (`call.created`,
//!   `call.answered`, `call.voicemail_left`, `call.hungup`, ...), are steps
//!   of a call in progress (`call_progress`), each its own event: Aircall
//!   gives a webhook no id of its own, so a step is `<id>:<event>:<timestamp>`.
//! - Times are Unix seconds. `raw_digits` is the external party's number
//!   as Aircall formats it (`+1 800-123-4567`), kept as written, like every
//!   provider's numbers.
//! - A resource other than `call` (users, numbers, contacts) is not a call
//!   event: dead-lettered as an unknown event type.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
use crate::lenient;
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The Aircall webhook source.
pub struct Aircall;

const ROUTES: &[Route] = &[Route {
    name: "webhook",
    default_path: "/v1/aircall/webhook",
    methods: &[Method::Post],
}];

/// Unix seconds (a number or numeric text), within 2000–2099.
fn unix_seconds(
    value: Option<&Value>,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    let Some(secs) = lenient::number(value) else {
        return Ok(None);
    };
    let invalid = || NormalizeError::InvalidField {
        field,
        detail: format!("{secs} is not a time in Unix seconds between 2000 and 2099"),
    };
    if !(946_684_800.0..4_102_444_800.0).contains(&secs) {
        return Err(invalid());
    }
    Utc.timestamp_opt(secs as i64, 0)
        .single()
        .map(Some)
        .ok_or_else(invalid)
}

fn media(value: Option<&Value>) -> Option<MediaRef> {
    lenient::string(value).map(|url| MediaRef {
        url: Some(url),
        ..MediaRef::default()
    })
}

/// The agent: the Aircall user who took (or was offered) the call, on the
/// Aircall number the call came through.
fn internal(data: &Value) -> Party {
    let user = data.get("user").unwrap_or(&Value::Null);
    let number = data.get("number").unwrap_or(&Value::Null);
    Party {
        id: lenient::string(user.get("id")),
        name: lenient::string(user.get("name")),
        email: lenient::string(user.get("email")),
        number: lenient::string(number.get("digits")),
        ..Party::default()
    }
}

fn external(data: &Value) -> Party {
    let contact = data.get("contact").unwrap_or(&Value::Null);
    let name = [contact.get("first_name"), contact.get("last_name")]
        .into_iter()
        .filter_map(lenient::string)
        .collect::<Vec<_>>()
        .join(" ");
    Party {
        id: lenient::string(contact.get("id")),
        name: (!name.is_empty()).then_some(name),
        company: lenient::string(contact.get("company_name")),
        number: lenient::string(data.get("raw_digits")),
        ..Party::default()
    }
}

fn tags(data: &Value) -> Vec<Tag> {
    let Some(Value::Array(items)) = data.get("tags") else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|t| {
            Some(Tag {
                name: lenient::string(t.get("name"))?,
                id: lenient::string(t.get("id")),
                color: lenient::string(t.get("color")),
                ..Tag::default()
            })
        })
        .collect()
}

/// The comments' texts, oldest first, one per line.
fn notes(data: &Value) -> Option<String> {
    let Some(Value::Array(comments)) = data.get("comments") else {
        return None;
    };
    let texts: Vec<String> = comments
        .iter()
        .filter_map(|c| lenient::string(c.get("content")))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

impl Provider for Aircall {
    fn id(&self) -> ProviderId {
        ProviderId::Aircall
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let doc = lenient::document(req)?;
        let event_name =
            lenient::string(doc.get("event")).ok_or(NormalizeError::MissingField("event"))?;
        let resource = lenient::string(doc.get("resource"));
        if resource.as_deref().is_some_and(|r| r != "call") || !event_name.starts_with("call.") {
            return Err(NormalizeError::UnknownEventType(event_name));
        }
        let data = doc.get("data").unwrap_or(&Value::Null);
        let id = lenient::string(data.get("id")).ok_or(NormalizeError::MissingField("data.id"))?;
        let tenant = ctx.default_tenant.to_string();
        let done = lenient::string(data.get("status")).as_deref() == Some("done");
        let revision_of_call = matches!(
            event_name.as_str(),
            "call.ended" | "call.commented" | "call.tagged" | "call.untagged"
        ) && (done || event_name == "call.ended");

        let voicemail = media(data.get("voicemail"));
        let answered_at = unix_seconds(data.get("answered_at"), "data.answered_at")?;
        let missed_reason = lenient::string(data.get("missed_call_reason"));
        let (mut event, provider_id) = if revision_of_call {
            let mut event = Event::new(ProviderId::Aircall, tenant, Kind::Call, ctx);
            event.status = if voicemail.is_some() {
                Status::Voicemail
            } else if answered_at.is_some() {
                Status::Answered
            } else {
                Status::Missed
            };
            (event, id.clone())
        } else {
            let mut event = Event::new(ProviderId::Aircall, tenant, Kind::CallProgress, ctx);
            event.status = match event_name.as_str() {
                "call.created" | "call.ringing_on_agent" => Status::Ringing,
                "call.answered" => Status::Answered,
                "call.voicemail_left" => Status::Voicemail,
                "call.hungup" | "call.ended" => Status::Ended,
                _ => Status::Unknown,
            };
            let at = lenient::string(doc.get("timestamp")).unwrap_or_default();
            (event, format!("{id}:{event_name}:{at}"))
        };
        event.provider_event_type = Some(event_name);
        event.provider_status = missed_reason.or_else(|| lenient::string(data.get("status")));
        event.direction = match lenient::string(data.get("direction")).as_deref() {
            Some("inbound") => Direction::Inbound,
            Some("outbound") => Direction::Outbound,
            _ => Direction::Unknown,
        };
        event.started_at = unix_seconds(data.get("started_at"), "data.started_at")?;
        event.answered_at = answered_at;
        event.ended_at = unix_seconds(data.get("ended_at"), "data.ended_at")?;
        event.duration_seconds = lenient::number(data.get("duration"));
        event.internal = internal(data);
        event.external = external(data);
        event.recording = media(data.get("recording"));
        event.voicemail = voicemail;
        event.tags = tags(data);
        event.notes = notes(data);
        event.correlation.call_id = Some(id);
        Ok(event.seal(&provider_id))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::providers::testkit::{post, JSON};

    fn normalize(body: &Value) -> Result<Event, NormalizeError> {
        post(&Aircall, "POST", "webhook", JSON, &body.to_string())
    }

    /// Aircall's documented `call.created` sample.
    pub(crate) fn created() -> Value {
        serde_json::json!({"resource":"call","event":"call.created","timestamp":1732622896,"token":"cebcaac65XXXXXXXXXx",
            "data":{"id":123,"direct_link":"https://api.aircall.io/v1/calls/123","direction":"outbound",
            "call_uuid":"CAed058bba60a84d62c77cee898a852b05","status":"initial","missed_call_reason":null,
            "started_at":1732622895,"answered_at":null,"ended_at":null,"duration":0,"cost":"0","hangup_cause":null,
            "voicemail":null,"recording":null,"raw_digits":"+1 800-123-4567",
            "participants":[{"phone_number":"+1 800-123-4567","type":"external"},{"id":123,"name":"John Doe","type":"user"}],
            "user":{},"contact":{},"number":{}}})
    }

    /// The same call, ended (the shape the field reference describes).
    pub(crate) fn ended(answered: bool) -> Value {
        let mut body = created();
        body["event"] = "call.ended".into();
        body["timestamp"] = 1732622960.into();
        let data = &mut body["data"];
        data["status"] = "done".into();
        data["ended_at"] = 1732622959.into();
        data["duration"] = 64.into();
        data["user"] =
            serde_json::json!({"id": 456, "name": "Jane Agent", "email": "jane@example.com"});
        data["number"] = serde_json::json!({"digits": "+33 1 23 45 67 89"});
        if answered {
            data["answered_at"] = 1732622900.into();
            data["recording"] = "https://aircall-recordings.example/123.mp3".into();
        } else {
            data["missed_call_reason"] = "agents_did_not_answer".into();
        }
        body
    }

    #[test]
    fn the_documented_created_sample_is_a_step() {
        let e = normalize(&created()).unwrap();
        assert_eq!(
            (e.kind, e.status, e.direction),
            (Kind::CallProgress, Status::Ringing, Direction::Outbound)
        );
        assert_eq!(
            e.identity,
            "aircall:default-tenant:call_progress:123:call.created:1732622896"
        );
        assert_eq!(e.external.number.as_deref(), Some("+1 800-123-4567"));
        assert_eq!(
            e.started_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2024-11-26T12:08:15+00:00")
        );
        assert_eq!(e.correlation.call_id.as_deref(), Some("123"));
    }

    #[test]
    fn an_ended_call_is_answered_missed_or_voicemail() {
        let answered = normalize(&ended(true)).unwrap();
        assert_eq!(
            (answered.kind, answered.status),
            (Kind::Call, Status::Answered)
        );
        assert_eq!(answered.identity, "aircall:default-tenant:call:123");
        assert_eq!(answered.duration_seconds, Some(64.0));
        assert_eq!(answered.internal.name.as_deref(), Some("Jane Agent"));
        assert_eq!(
            answered.internal.number.as_deref(),
            Some("+33 1 23 45 67 89")
        );
        assert!(answered.recording.is_some());
        let missed = normalize(&ended(false)).unwrap();
        assert_eq!(missed.status, Status::Missed);
        assert_eq!(
            missed.provider_status.as_deref(),
            Some("agents_did_not_answer")
        );
        let mut vm = ended(false);
        vm["data"]["voicemail"] = "https://aircall-voicemails.example/123.mp3".into();
        let vm = normalize(&vm).unwrap();
        assert_eq!((vm.kind, vm.status), (Kind::Call, Status::Voicemail));
        assert!(vm.voicemail.is_some());
    }

    /// A comment or tag on a finished call is the call again, with them:
    /// a revision of the same identity.
    #[test]
    fn comments_and_tags_revise_a_finished_call() {
        let mut commented = ended(true);
        commented["event"] = "call.commented".into();
        commented["data"]["comments"] =
            serde_json::json!([{"id": 1, "content": "Call back Monday"}]);
        commented["data"]["tags"] =
            serde_json::json!([{"id": 9, "name": "VIP", "color": "#ff0000"}]);
        let e = normalize(&commented).unwrap();
        assert_eq!(e.identity, "aircall:default-tenant:call:123");
        assert_eq!(e.notes.as_deref(), Some("Call back Monday"));
        assert_eq!(e.tags[0].name, "VIP");
        // On a call still going, the same event is a step.
        let mut early = created();
        early["event"] = "call.tagged".into();
        assert_eq!(normalize(&early).unwrap().kind, Kind::CallProgress);
    }

    #[test]
    fn what_is_not_a_call_event_says_why() {
        let mut user = created();
        user["resource"] = "user".into();
        user["event"] = "user.created".into();
        assert_eq!(
            normalize(&user).unwrap_err(),
            NormalizeError::UnknownEventType("user.created".into())
        );
        let mut no_id = created();
        no_id["data"]["id"] = Value::Null;
        assert_eq!(
            normalize(&no_id).unwrap_err(),
            NormalizeError::MissingField("data.id")
        );
        let mut ms = created();
        ms["data"]["started_at"] = 1732622895000u64.into();
        assert!(matches!(
            normalize(&ms).unwrap_err(),
            NormalizeError::InvalidField {
                field: "data.started_at",
                ..
            }
        ));
    }
}
