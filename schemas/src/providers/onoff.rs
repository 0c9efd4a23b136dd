//! Onoff Business: call-log (`CDR`, `RECORDING`, `VM`) and SMS-log (`SMS`)
//! webhooks, one JSON object per POST.
//!
//! Onoff sends no tenant, so every event takes the source's configured
//! tenant. The documented `id` is the event identity; Onoff re-sends the same
//! `id` on retries and for post-call updates of notes and tags, which
//! [`Event::fingerprint`] tells apart.
//!
//! Voicemail is recognised three ways, as real consumers do: `eventName=VM`,
//! `callStatus=VMS`, or a `voicemailUrl` on any call log. The documentation's
//! own sample CDR carries a `voicemailUrl`, so it normalizes as a voicemail.
//!
//! The payload on "Integrate" is undocumented; whatever it is, it lacks an
//! `id` or an `eventName` (or call fields) and is refused, so it lands in the
//! DLQ while the gateway still answers 200 and the integration activates.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
use crate::lenient;
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The Onoff Business webhook source.
pub struct Onoff;

const ROUTES: &[Route] = &[
    Route {
        name: "cdr",
        default_path: "/v1/onoff/cdr",
        methods: &[Method::Post],
    },
    Route {
        name: "sms",
        default_path: "/v1/onoff/sms",
        methods: &[Method::Post],
    },
];

/// Fields whose presence marks a call log when `eventName` is missing.
const CALL_FIELDS: &[&str] = &[
    "callStarted",
    "callEnded",
    "callDuration",
    "callDirection",
    "callStatus",
    "voicemailUrl",
    "callRecordingUrl",
];

/// One delivery: the fields of both log types (a call log: `eventName`
/// `CDR`, `RECORDING` or `VM`; an SMS log: `SMS`), read in one pass straight
/// from the body.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Log {
    #[serde(deserialize_with = "lenient::de_string")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    event_name: Option<String>,

    // Both sides, common to the two log types.
    #[serde(deserialize_with = "lenient::de_string")]
    onoff_user_name: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    onoff_user_email: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    onoff_user_number: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    external_number: Option<String>,
    /// Only sent when the other side is in the user's contacts.
    #[serde(deserialize_with = "lenient::de_string")]
    external_name: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    external_email: Option<String>,
    /// Undocumented, but seen in real deliveries.
    #[serde(deserialize_with = "lenient::de_string")]
    external_company_name: Option<String>,

    // Call logs.
    /// Kept as JSON so that a bad time is reported with the field's name.
    call_started: Option<Value>,
    call_ended: Option<Value>,
    /// Kept as sent, even when it disagrees with the timestamps (the docs'
    /// own sample says 300 s for a two-minute call).
    #[serde(deserialize_with = "lenient::de_number")]
    call_duration: Option<f64>,
    #[serde(deserialize_with = "lenient::de_string")]
    call_direction: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    call_status: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    call_notes: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    voicemail_url: Option<String>,
    #[serde(deserialize_with = "lenient::de_number")]
    voicemail_duration: Option<f64>,
    /// Present on `RECORDING`; the link expires after Onoff's retention period.
    #[serde(deserialize_with = "lenient::de_string")]
    call_recording_url: Option<String>,
    #[serde(deserialize_with = "tags")]
    tags: Vec<Tag>,

    // SMS logs.
    date: Option<Value>,
    #[serde(deserialize_with = "lenient::de_string")]
    sms_direction: Option<String>,
    #[serde(deserialize_with = "lenient::de_string")]
    body: Option<String>,
}

impl Log {
    /// Both sides of the call or SMS.
    fn fill_parties(&mut self, event: &mut Event) {
        event.internal = Party {
            name: self.onoff_user_name.take(),
            email: self.onoff_user_email.take(),
            number: self.onoff_user_number.take(),
            ..Party::default()
        };
        event.external = Party {
            name: self.external_name.take(),
            email: self.external_email.take(),
            number: self.external_number.take(),
            company: self.external_company_name.take(),
            ..Party::default()
        };
    }
}

/// `[{tagId, tagName, tagColor}]`; entries without a name are skipped
/// because a [`Tag`] needs one.
fn tags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Tag>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    let items = value
        .as_ref()
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(items
        .iter()
        .filter_map(|tag| {
            Some(Tag {
                name: lenient::string(tag.get("tagName"))?,
                id: lenient::string(tag.get("tagId")),
                color: lenient::string(tag.get("tagColor")),
                value: None,
            })
        })
        .collect())
}

/// Which log a delivery is, before it is read as one.
enum LogType {
    Call(Kind),
    Sms,
}

fn classify(event_name: Option<&str>, req: &RawRequest<'_>) -> Result<LogType, NormalizeError> {
    let Some(name) = event_name else {
        // Each log type has its own URL, so the route is a fair hint; the
        // setup test payload has neither an `eventName` nor call fields.
        return if req.route == "sms" {
            Ok(LogType::Sms)
        } else if has_call_fields(req)? {
            Ok(LogType::Call(Kind::Call))
        } else {
            Err(NormalizeError::UnknownEventType("(no eventName)".into()))
        };
    };
    match name.to_ascii_uppercase().as_str() {
        "CDR" => Ok(LogType::Call(Kind::Call)),
        "RECORDING" => Ok(LogType::Call(Kind::Recording)),
        "VM" => Ok(LogType::Call(Kind::Voicemail)),
        "SMS" => Ok(LogType::Sms),
        _ => Err(NormalizeError::UnknownEventType(name.to_string())),
    }
}

/// Whether any call field holds something (even a value its reader would
/// not take). Rare (deliveries without `eventName`), so the body is read
/// again as a tree.
fn has_call_fields(req: &RawRequest<'_>) -> Result<bool, NormalizeError> {
    let body = lenient::json_body(req)?;
    Ok(CALL_FIELDS
        .iter()
        .any(|key| lenient::field(&body, &[key]).is_some()))
}

fn call_status(status: Option<&str>) -> Status {
    match status.map(str::to_ascii_uppercase).as_deref() {
        Some("MISSED_CALL") => Status::Missed,
        Some("ANSWERED") => Status::Answered,
        Some("BUSY") => Status::Busy,
        Some("WRONG_NUMBER") => Status::Failed,
        Some("VMS") => Status::Voicemail,
        _ => Status::Unknown,
    }
}

fn call_event(
    mut log: Log,
    kind: Kind,
    id: &str,
    ctx: &Context<'_>,
) -> Result<Event, NormalizeError> {
    let status = call_status(log.call_status.as_deref());
    let is_voicemail =
        kind == Kind::Voicemail || status == Status::Voicemail || log.voicemail_url.is_some();
    let kind = if is_voicemail { Kind::Voicemail } else { kind };

    let mut event = Event::new(ProviderId::Onoff, ctx.default_tenant.to_string(), kind, ctx);
    event.status = if is_voicemail {
        Status::Voicemail
    } else {
        status
    };
    event.provider_status = log.call_status.take();
    event.direction = match log
        .call_direction
        .take()
        .map(|d| d.to_ascii_uppercase())
        .as_deref()
    {
        Some("INBOUND") => Direction::Inbound,
        Some("OUTBOUND") => Direction::Outbound,
        _ => Direction::Unknown,
    };
    event.started_at = lenient::timestamp(log.call_started.as_ref(), "callStarted")?;
    event.ended_at = lenient::timestamp(log.call_ended.as_ref(), "callEnded")?;
    event.duration_seconds = log.call_duration;
    event.notes = log.call_notes.take();
    event.tags = std::mem::take(&mut log.tags);
    event.recording = log.call_recording_url.take().map(|url| MediaRef {
        url: Some(url),
        ..MediaRef::default()
    });
    if log.voicemail_url.is_some() || log.voicemail_duration.is_some() {
        event.voicemail = Some(MediaRef {
            url: log.voicemail_url.take(),
            duration_seconds: log.voicemail_duration,
            ..MediaRef::default()
        });
    }
    event.correlation.call_id = Some(id.to_string());
    log.fill_parties(&mut event);
    Ok(event)
}

fn sms_event(mut log: Log, ctx: &Context<'_>) -> Result<Event, NormalizeError> {
    let mut event = Event::new(
        ProviderId::Onoff,
        ctx.default_tenant.to_string(),
        Kind::Sms,
        ctx,
    );
    event.status = Status::Completed;
    event.direction = match log
        .sms_direction
        .take()
        .map(|d| d.to_ascii_uppercase())
        .as_deref()
    {
        Some("SENT") => Direction::Outbound,
        Some("RECEIVED") => Direction::Inbound,
        _ => Direction::Unknown,
    };
    event.started_at = lenient::timestamp(log.date.as_ref(), "date")?;
    event.sms_body = log.body.take();
    log.fill_parties(&mut event);
    Ok(event)
}

impl Provider for Onoff {
    fn id(&self) -> ProviderId {
        ProviderId::Onoff
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let mut log: Log = lenient::json_object(req)?;
        let event_name = log.event_name.take();
        let log_type = classify(event_name.as_deref(), req)?;
        let id = log.id.take().ok_or(NormalizeError::MissingField("id"))?;
        let mut event = match log_type {
            LogType::Call(kind) => call_event(log, kind, &id, ctx)?,
            LogType::Sms => sms_event(log, ctx)?,
        };
        event.provider_event_type = event_name;
        Ok(event.seal(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::{post, utc, JSON, TENANT};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/onoff/", $name))
        };
    }

    fn cdr(body: &str) -> Result<Event, NormalizeError> {
        post(&Onoff, "POST", "cdr", JSON, body)
    }

    fn sms(body: &str) -> Result<Event, NormalizeError> {
        post(&Onoff, "POST", "sms", JSON, body)
    }

    fn edited(body: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut value: Value = serde_json::from_str(body).expect("fixture is JSON");
        edit(value.as_object_mut().expect("fixture is an object"));
        value.to_string()
    }

    #[test]
    fn answered_cdr_with_offsets_company_and_tags() {
        let event = cdr(fixture!("cdr-answered.json")).expect("normalizes");
        let id = "0c6f1b52-3f0e-4c8e-9f0a-6d1d2f0a1001";
        assert_eq!(event.identity, format!("onoff:{TENANT}:call:{id}"));
        assert_eq!(event.tenant, TENANT);
        assert_eq!(
            (event.kind, event.status, event.direction),
            (Kind::Call, Status::Answered, Direction::Inbound)
        );
        assert_eq!(event.provider_status.as_deref(), Some("ANSWERED"));
        assert_eq!(event.provider_event_type.as_deref(), Some("CDR"));
        assert_eq!(event.started_at, utc("2024-03-05T08:15:00Z"));
        assert_eq!(event.ended_at, utc("2024-03-05T08:19:30Z"));
        assert_eq!(event.duration_seconds, Some(270.0));
        assert_eq!(
            event.internal,
            Party {
                name: Some("Ana Lopez".into()),
                email: Some("ana.lopez@example.com".into()),
                number: Some("+34910000001".into()),
                ..Party::default()
            }
        );
        assert_eq!(
            event.external,
            Party {
                name: Some("Marc Puig".into()),
                email: Some("marc@acme.example".into()),
                number: Some("+34600000002".into()),
                company: Some("Acme SL".into()),
                ..Party::default()
            }
        );
        assert_eq!(event.notes.as_deref(), Some("Asked for a quote"));
        assert_eq!(
            event.tags,
            vec![
                Tag {
                    id: Some("t-1".into()),
                    name: "Lead".into(),
                    color: Some("#00FF00".into()),
                    value: None,
                },
                Tag {
                    id: Some("t-2".into()),
                    name: "Spain".into(),
                    ..Tag::default()
                },
            ]
        );
        assert_eq!(event.correlation.call_id.as_deref(), Some(id));
        assert_eq!((event.recording, event.voicemail), (None, None));
    }

    #[test]
    fn post_call_update_is_the_same_event_with_new_content() {
        let first = cdr(fixture!("cdr-answered.json")).expect("normalizes");
        let resend = cdr(fixture!("cdr-answered.json")).expect("normalizes");
        let update = cdr(fixture!("cdr-post-call-update.json")).expect("normalizes");
        assert_eq!(first.fingerprint, resend.fingerprint);
        assert_eq!(
            (first.identity.as_str(), first.event_id),
            (update.identity.as_str(), update.event_id)
        );
        assert_ne!(first.fingerprint, update.fingerprint);
        assert_eq!(update.tags.len(), 3);
    }

    #[test]
    fn doc_sample_is_a_voicemail_and_keeps_the_stated_duration() {
        let event = cdr(fixture!("cdr-doc-sample.json")).expect("normalizes");
        assert_eq!(event.identity, format!("onoff:{TENANT}:voicemail:12345"));
        assert_eq!(
            (event.kind, event.status),
            (Kind::Voicemail, Status::Voicemail)
        );
        assert_eq!(event.provider_status.as_deref(), Some("ANSWERED"));
        // Two minutes by the timestamps, 300 s by the provider: keep 300.
        assert_eq!(event.started_at, utc("2023-05-20T14:30:00Z"));
        assert_eq!(event.ended_at, utc("2023-05-20T14:32:00Z"));
        assert_eq!(event.duration_seconds, Some(300.0));
        assert_eq!(
            event.voicemail,
            Some(MediaRef {
                url: Some("http://example.com/voicemail/12345".into()),
                duration_seconds: Some(60.0),
                ..MediaRef::default()
            })
        );
        assert_eq!(
            event.recording.and_then(|r| r.url).as_deref(),
            Some("http://example.com/recordings/12345")
        );
        assert_eq!(event.external.name.as_deref(), Some("John Smith"));
        assert_eq!(event.internal.number.as_deref(), Some("1234567890"));
        assert_eq!(
            event.tags.first().map(|t| t.color.as_deref()),
            Some(Some("#32A8FF"))
        );
    }

    #[test]
    fn recording_replaces_cdr() {
        let event = cdr(fixture!("recording.json")).expect("normalizes");
        assert_eq!(
            event.identity,
            format!("onoff:{TENANT}:recording:0c6f1b52-3f0e-4c8e-9f0a-6d1d2f0a1003")
        );
        assert_eq!(
            (event.kind, event.status, event.direction),
            (Kind::Recording, Status::Answered, Direction::Outbound)
        );
        assert_eq!(
            event.recording,
            Some(MediaRef {
                url: Some(
                    "https://recordings.onoff.example/r/0c6f1b52.mp3?expires=1709640000".into()
                ),
                ..MediaRef::default()
            })
        );
        assert_eq!(event.provider_event_type.as_deref(), Some("RECORDING"));
    }

    #[test]
    fn voicemail_is_detected_three_ways() {
        let by_name = cdr(fixture!("vm-event-name.json")).expect("normalizes");
        let by_status = cdr(fixture!("vm-call-status.json")).expect("normalizes");
        let by_url = cdr(fixture!("vm-url-only.json")).expect("normalizes");
        for event in [&by_name, &by_status, &by_url] {
            assert_eq!(
                (event.kind, event.status),
                (Kind::Voicemail, Status::Voicemail),
                "{}",
                event.identity
            );
            assert_eq!(event.direction, Direction::Inbound);
        }
        assert_eq!(by_name.provider_status.as_deref(), Some("MISSED_CALL"));
        assert_eq!(
            by_name.voicemail.as_ref().and_then(|v| v.duration_seconds),
            Some(42.0)
        );
        assert_eq!(by_status.provider_status.as_deref(), Some("VMS"));
        assert_eq!(by_status.voicemail, None);
        assert_eq!(
            by_url.voicemail,
            Some(MediaRef {
                url: Some("https://voicemail.onoff.example/v/1006.mp3".into()),
                duration_seconds: Some(31.0),
                ..MediaRef::default()
            })
        );
        assert_eq!(by_url.started_at, utc("2024-03-05T10:20:00Z"));
        assert_eq!(
            by_url.identity,
            format!("onoff:{TENANT}:voicemail:0c6f1b52-3f0e-4c8e-9f0a-6d1d2f0a1006")
        );
    }

    #[test]
    fn cdr_without_event_name_is_read_from_its_call_fields() {
        let event = cdr(fixture!("cdr-missed-no-event-name.json")).expect("normalizes");
        assert_eq!(
            (event.kind, event.status, event.direction),
            (Kind::Call, Status::Missed, Direction::Outbound)
        );
        assert_eq!(event.provider_event_type, None);
        assert_eq!(event.started_at, utc("2024-03-05T08:00:00.123Z"));
        assert_eq!(event.ended_at, utc("2024-03-05T08:00:20.456Z"));
        assert_eq!(event.duration_seconds, Some(0.0));
        assert_eq!(event.internal.number.as_deref(), Some("34910000001"));
        assert_eq!(event.external.number.as_deref(), Some("34600000003"));
    }

    #[test]
    fn call_statuses_map_and_keep_the_original() {
        for (given, expected) in [
            ("MISSED_CALL", Status::Missed),
            ("ANSWERED", Status::Answered),
            ("BUSY", Status::Busy),
            ("WRONG_NUMBER", Status::Failed),
            ("UNKNOWN", Status::Unknown),
            ("answered", Status::Answered),
            ("SOMETHING_NEW", Status::Unknown),
        ] {
            let body = edited(fixture!("cdr-answered.json"), |o| {
                o.insert("callStatus".into(), given.into());
            });
            let event = cdr(&body).expect("normalizes");
            assert_eq!(
                (event.status, event.provider_status.as_deref()),
                (expected, Some(given))
            );
        }
    }

    #[test]
    fn sms_sent_and_received() {
        let sent = sms(fixture!("sms-doc-sample.json")).expect("normalizes");
        assert_eq!(sent.identity, format!("onoff:{TENANT}:sms:12345"));
        assert_eq!(
            (sent.kind, sent.status, sent.direction),
            (Kind::Sms, Status::Completed, Direction::Outbound)
        );
        assert_eq!(sent.started_at, utc("2023-05-20T14:30:00Z"));
        assert_eq!(
            sent.sms_body.as_deref(),
            Some("This is the body of the SMS")
        );
        assert_eq!(sent.external.email.as_deref(), Some("smith@example.com"));
        assert_eq!(sent.provider_event_type.as_deref(), Some("SMS"));
        assert_eq!(sent.correlation.call_id, None);

        let received = sms(fixture!("sms-received.json")).expect("normalizes");
        assert_eq!(received.direction, Direction::Inbound);
        assert_eq!(received.started_at, utc("2024-03-05T08:45:10Z"));
        assert_eq!(received.external.company.as_deref(), Some("Acme SL"));
        assert_eq!(received.sms_body.as_deref(), Some("Can you call me back?"));
    }

    #[test]
    fn the_route_stands_in_for_a_missing_event_name() {
        let body = edited(fixture!("sms-received.json"), |o| {
            o.remove("eventName");
        });
        assert_eq!(sms(&body).map(|e| e.kind), Ok(Kind::Sms));
        assert_eq!(
            cdr(&body).map(|e| e.kind),
            Err(NormalizeError::UnknownEventType("(no eventName)".into()))
        );
        // The event name, when present, wins over the route.
        assert_eq!(
            cdr(fixture!("sms-received.json")).map(|e| e.kind),
            Ok(Kind::Sms)
        );
        assert_eq!(
            sms(fixture!("recording.json")).map(|e| e.kind),
            Ok(Kind::Recording)
        );
    }

    #[test]
    fn setup_test_payload_is_refused_on_both_routes() {
        let body = fixture!("setup-test.json");
        assert_eq!(
            cdr(body),
            Err(NormalizeError::UnknownEventType("(no eventName)".into()))
        );
        assert_eq!(sms(body), Err(NormalizeError::MissingField("id")));
        assert_eq!(
            cdr("{}"),
            Err(NormalizeError::UnknownEventType("(no eventName)".into()))
        );
    }

    #[test]
    fn deliveries_that_cannot_be_normalized() {
        assert_eq!(
            cdr(fixture!("missing-id.json")),
            Err(NormalizeError::MissingField("id"))
        );
        let blank_id = edited(fixture!("cdr-answered.json"), |o| {
            o.insert("id".into(), "  ".into());
        });
        assert_eq!(cdr(&blank_id), Err(NormalizeError::MissingField("id")));
        assert!(matches!(
            cdr(fixture!("malformed.json")),
            Err(NormalizeError::Malformed { format: "JSON", .. })
        ));
        assert_eq!(
            cdr(fixture!("unknown-event.json")),
            Err(NormalizeError::UnknownEventType("CALL_STARTED".into()))
        );
        assert_eq!(cdr(""), Err(NormalizeError::EmptyBody));
        let bad_time = edited(fixture!("cdr-answered.json"), |o| {
            o.insert("callEnded".into(), "20/05/2023 14:32".into());
        });
        assert!(matches!(
            cdr(&bad_time),
            Err(NormalizeError::InvalidField {
                field: "callEnded",
                ..
            })
        ));
    }

    #[test]
    fn odd_optional_fields_are_ignored() {
        let body = edited(fixture!("cdr-answered.json"), |o| {
            o.insert("tags".into(), "not a list".into());
            o.insert("callDuration".into(), serde_json::json!({"s": 1}));
            o.insert("externalName".into(), serde_json::json!([1]));
        });
        let event = cdr(&body).expect("normalizes");
        assert_eq!(
            (
                event.tags.len(),
                event.duration_seconds,
                event.external.name
            ),
            (0, None, None)
        );
    }
}
