//! Twilio Programmable Voice: status callbacks and recording status
//! callbacks, form-encoded (a `GET` callback carries the same fields in the
//! query). Point both `StatusCallback` and `RecordingStatusCallback` at the
//! one route; a delivery with a `RecordingSid` is a recording's. Signed with
//! the account's auth token (`sources.twilio.auth_tokens`, checked by the
//! gateway before this runs; see `docs/signatures.md`). The fields are
//! those of Twilio's docs, as collected in
//! `docs/research/platform-webhooks.md` §1.7–1.8.
//!
//! - `CallStatus`: `completed` is an answered call; `no-answer` and
//!   `canceled` are missed; `busy`; `failed`. `queued`, `initiated`,
//!   `ringing` and `in-progress` are steps of a call still going
//!   (`call_progress`), never final.
//! - `Direction`: `inbound`, or `outbound-api` / `outbound-dial` (a
//!   `<Dial>`'s child leg) as outbound.
//! - `CallSid` names the call leg and is the call key; `ParentCallSid`
//!   links a child leg to the call it was dialled from (the
//!   correlation's conversation).
//! - `CallDuration` (seconds) and `RecordingUrl` are carried over;
//!   `Timestamp` (RFC 2822) dates a step or the end of a call. Twilio has
//!   sent non-standard zones: `Etc/UTC` and its aliases are read as UTC;
//!   any other unreadable `Timestamp` is left out rather than refused, as
//!   it only dates the callback (the raw record keeps it).
//!
//! Identity: a final status is the call (`<CallSid>`), so a resent
//! `completed` is a duplicate; each step is its own
//! (`<CallSid>:<CallStatus>`); a recording is its `RecordingSid` (kind
//! `recording`), its later status (`in-progress` → `completed`) a revision. Tenant: the
//! source's configured tenant (an account's `AccountSid` stays in the raw
//! record).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status};
use crate::lenient::{self, field};
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The Twilio Voice source.
pub struct Twilio;

const ROUTES: &[Route] = &[Route {
    name: "voice",
    default_path: "/v1/twilio/voice",
    methods: &[Method::Get, Method::Post],
}];

/// A final `CallStatus`, or `None` for a step of a call still going.
fn final_status(call_status: &str) -> Option<Status> {
    Some(match call_status {
        "completed" => Status::Answered,
        "no-answer" | "canceled" => Status::Missed,
        "busy" => Status::Busy,
        "failed" => Status::Failed,
        _ => return None,
    })
}

fn progress_status(call_status: &str) -> Status {
    match call_status {
        "queued" | "initiated" => Status::Waiting,
        "ringing" => Status::Ringing,
        "in-progress" | "answered" => Status::Answered,
        _ => Status::Unknown,
    }
}

fn rfc2822(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = lenient::string(value)?;
    let text = text.trim();
    DateTime::parse_from_rfc2822(text)
        .ok()
        .or_else(|| {
            // A zone RFC 2822 does not name but that says UTC, as Twilio
            // has sent (`Etc/UTC`): read as `+0000`.
            let (rest, zone) = text.rsplit_once(' ')?;
            let utc = [
                "UTC", "Etc/UTC", "Etc/GMT", "Etc/UCT", "Etc/Zulu", "UCT", "Zulu",
            ];
            utc.iter()
                .any(|name| zone.eq_ignore_ascii_case(name))
                .then(|| DateTime::parse_from_rfc2822(&format!("{rest} +0000")).ok())?
        })
        .map(|t| t.with_timezone(&Utc))
}

/// The caller and the called, from the call centre's side: inbound, the
/// caller (`From`) is the customer; outbound, the customer is `To`.
fn parties(event: &mut Event, doc: &Value) {
    let from = Party {
        number: lenient::string(field(doc, &["From", "Caller"])),
        name: lenient::string(doc.get("CallerName")),
        ..Party::default()
    };
    let to = Party {
        number: lenient::string(field(doc, &["To", "Called"])),
        ..Party::default()
    };
    (event.external, event.internal) = match event.direction {
        Direction::Outbound => (to, from),
        _ => (from, to),
    };
}

impl Provider for Twilio {
    fn id(&self) -> ProviderId {
        ProviderId::Twilio
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let doc = lenient::document(req)?;
        let call_sid =
            lenient::string(doc.get("CallSid")).ok_or(NormalizeError::MissingField("CallSid"))?;
        let tenant = ctx.default_tenant.to_string();
        let at = rfc2822(doc.get("Timestamp"));

        let recording_sid = lenient::string(doc.get("RecordingSid"));
        let (mut event, provider_id) = if let Some(recording_sid) = recording_sid {
            let recording_status = lenient::string(doc.get("RecordingStatus"));
            let mut event = Event::new(ProviderId::Twilio, tenant, Kind::Recording, ctx);
            // Only a call that was answered is recorded.
            event.status = Status::Answered;
            event.provider_status = recording_status;
            event.duration_seconds = lenient::number(doc.get("RecordingDuration"));
            event.started_at = rfc2822(doc.get("RecordingStartTime"));
            event.recording = Some(MediaRef {
                url: lenient::string(doc.get("RecordingUrl")),
                ids: vec![recording_sid.clone()],
                ..MediaRef::default()
            });
            (event, recording_sid)
        } else {
            let call_status = lenient::string(doc.get("CallStatus"))
                .ok_or(NormalizeError::MissingField("CallStatus"))?
                .to_ascii_lowercase();
            match final_status(&call_status) {
                Some(status) => {
                    let mut event = Event::new(ProviderId::Twilio, tenant, Kind::Call, ctx);
                    event.status = status;
                    event.duration_seconds = lenient::number(doc.get("CallDuration"));
                    event.ended_at = at;
                    if let (Some(end), Some(secs)) = (at, event.duration_seconds) {
                        event.started_at =
                            Some(end - chrono::Duration::milliseconds((secs * 1000.0) as i64));
                    }
                    (event, call_sid.clone())
                }
                None => {
                    let mut event = Event::new(ProviderId::Twilio, tenant, Kind::CallProgress, ctx);
                    event.status = progress_status(&call_status);
                    match event.status {
                        Status::Answered => event.answered_at = at,
                        _ => event.started_at = at,
                    }
                    (event, format!("{call_sid}:{call_status}"))
                }
            }
        };
        if event.kind != Kind::Recording {
            event.provider_status = lenient::string(doc.get("CallStatus"));
            event.recording = lenient::string(doc.get("RecordingUrl")).map(|url| MediaRef {
                url: Some(url),
                ids: lenient::string(doc.get("RecordingSid"))
                    .into_iter()
                    .collect(),
                ..MediaRef::default()
            });
        }
        event.provider_event_type = lenient::string(field(
            &doc,
            &["StatusCallbackEvent", "CallbackSource", "RecordingSource"],
        ));
        event.direction = match lenient::string(doc.get("Direction"))
            .map(|d| d.to_ascii_lowercase())
            .as_deref()
        {
            Some("inbound") => Direction::Inbound,
            Some(d) if d.starts_with("outbound") => Direction::Outbound,
            _ => Direction::Unknown,
        };
        parties(&mut event, &doc);
        event.correlation.call_id = Some(call_sid.clone());
        event.correlation.leg_id = Some(call_sid.clone());
        event.correlation.conversation_id =
            Some(lenient::string(doc.get("ParentCallSid")).unwrap_or(call_sid));
        Ok(event.seal(&provider_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::{post, FORM};

    fn normalize(body: &str) -> Result<Event, NormalizeError> {
        post(&Twilio, "POST", "voice", FORM, body)
    }

    /// The terminal status callback of Twilio's docs' shape.
    const COMPLETED: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&ApiVersion=2010-04-01&CallSid=CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d&CallStatus=completed&CallDuration=49&Duration=1&Direction=outbound-api&From=%2B14155550100&To=%2B14155550199&Caller=%2B14155550100&Called=%2B14155550199&CallbackSource=call-progress-events&SequenceNumber=3&Timestamp=Sun%2C%2025%20Mar%202018%2009%3A53%3A19%20%2B0000&SipResponseCode=200";

    const RECORDING: &str = "AccountSid=AC0123456789abcdef0123456789abcdef&CallSid=CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d&RecordingSid=RE0123456789abcdef0123456789abcdef&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC0123456789abcdef0123456789abcdef%2FRecordings%2FRE0123456789abcdef0123456789abcdef&RecordingStatus=completed&RecordingDuration=37&RecordingChannels=1&RecordingStartTime=Mon%2C%2002%20Jan%202006%2015%3A04%3A05%20%2B0000&RecordingSource=DialVerb";

    #[test]
    fn a_completed_outbound_call() {
        let e = normalize(COMPLETED).unwrap();
        assert_eq!(
            (e.kind, e.status, e.direction),
            (Kind::Call, Status::Answered, Direction::Outbound)
        );
        assert_eq!(
            e.identity,
            "twilio:default-tenant:call:CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
        );
        assert_eq!(e.duration_seconds, Some(49.0));
        assert_eq!(e.external.number.as_deref(), Some("+14155550199"));
        assert_eq!(e.internal.number.as_deref(), Some("+14155550100"));
        assert_eq!(
            e.ended_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2018-03-25T09:53:19+00:00")
        );
        assert_eq!(
            e.started_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2018-03-25T09:52:30+00:00")
        );
        assert_eq!(e.provider_status.as_deref(), Some("completed"));
        assert_eq!(
            e.correlation.call_id.as_deref(),
            Some("CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d")
        );
    }

    #[test]
    fn call_status_maps_to_status_and_kind() {
        let cases = [
            ("completed", Kind::Call, Status::Answered),
            ("no-answer", Kind::Call, Status::Missed),
            ("canceled", Kind::Call, Status::Missed),
            ("busy", Kind::Call, Status::Busy),
            ("failed", Kind::Call, Status::Failed),
            ("queued", Kind::CallProgress, Status::Waiting),
            ("initiated", Kind::CallProgress, Status::Waiting),
            ("ringing", Kind::CallProgress, Status::Ringing),
            ("in-progress", Kind::CallProgress, Status::Answered),
        ];
        let mut identities = std::collections::HashSet::new();
        for (call_status, kind, status) in cases {
            let body =
                COMPLETED.replace("CallStatus=completed", &format!("CallStatus={call_status}"));
            let e = normalize(&body).unwrap();
            assert_eq!((e.kind, e.status), (kind, status), "{call_status}");
            if kind == Kind::Call {
                assert_eq!(
                    e.identity,
                    "twilio:default-tenant:call:CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
                );
            } else {
                assert!(
                    identities.insert(e.identity.clone()),
                    "{call_status}: {}",
                    e.identity
                );
            }
        }
        assert_eq!(identities.len(), 4, "each step is its own event");
    }

    #[test]
    fn directions_and_parent_call() {
        let inbound = COMPLETED.replace("Direction=outbound-api", "Direction=inbound");
        let e = normalize(&inbound).unwrap();
        assert_eq!(e.direction, Direction::Inbound);
        assert_eq!(
            e.external.number.as_deref(),
            Some("+14155550100"),
            "the caller"
        );
        let child = COMPLETED.replace("Direction=outbound-api", "Direction=outbound-dial")
            + "&ParentCallSid=CAparent";
        let e = normalize(&child).unwrap();
        assert_eq!(e.direction, Direction::Outbound);
        assert_eq!(e.correlation.conversation_id.as_deref(), Some("CAparent"));
        assert_eq!(
            e.correlation.leg_id.as_deref(),
            Some("CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d")
        );
    }

    #[test]
    fn a_recording_callback() {
        let e = normalize(RECORDING).unwrap();
        assert_eq!(e.kind, Kind::Recording);
        assert_eq!(
            e.identity,
            "twilio:default-tenant:recording:RE0123456789abcdef0123456789abcdef"
        );
        let media = e.recording.expect("a recording");
        assert!(media
            .url
            .unwrap()
            .ends_with("/Recordings/RE0123456789abcdef0123456789abcdef"));
        assert_eq!(e.duration_seconds, Some(37.0));
        assert_eq!(e.provider_status.as_deref(), Some("completed"));
        assert_eq!(
            e.correlation.call_id.as_deref(),
            Some("CA1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d")
        );
    }

    #[test]
    fn what_cannot_be_normalized_says_why() {
        assert_eq!(
            normalize("CallStatus=completed").unwrap_err(),
            NormalizeError::MissingField("CallSid")
        );
        assert_eq!(
            normalize("CallSid=CA1").unwrap_err(),
            NormalizeError::MissingField("CallStatus")
        );
        // A zone Twilio has sent that RFC 2822 does not know, but that
        // says UTC: read as UTC.
        let odd = COMPLETED.replace("%2B0000", "Etc%2FUTC");
        assert_eq!(
            normalize(&odd)
                .unwrap()
                .ended_at
                .map(|t| t.to_rfc3339())
                .as_deref(),
            Some("2018-03-25T09:53:19+00:00")
        );
        // Any other zone it cannot place: no time, no error.
        let odd = COMPLETED.replace("%2B0000", "America%2FNew_York");
        assert_eq!(normalize(&odd).unwrap().ended_at, None);
    }
}
