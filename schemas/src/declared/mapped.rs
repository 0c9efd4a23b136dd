//! What a mapping gives: the mapped event, an object whose fields are
//! those of [`Event`] (`docs/declared-sources.md` lists them), read as
//! leniently as a built-in provider reads its payload, then sealed.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use jaq_json::{Num, Val};
use serde::Deserialize;
use serde_json::Value;

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
use crate::lenient::{self, de_number, de_string};
use crate::provider::{Context, NormalizeError};

/// How a mapping's times are written (`declared.time_format`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// ISO 8601 / RFC 3339 with an offset, or epoch milliseconds (what
    /// the built-in providers accept).
    #[default]
    Iso8601,
    /// Seconds since the epoch, a number or numeric text.
    UnixSeconds,
    /// Milliseconds since the epoch.
    UnixMillis,
    /// RFC 2822 (`Tue, 26 Nov 2024 12:08:15 +0000`).
    Rfc2822,
    /// A `strftime` pattern (chrono's); UTC unless it reads an offset (`%z`).
    Pattern(String),
}

impl TimeFormat {
    pub fn parse(text: &str) -> Result<TimeFormat, String> {
        Ok(match text {
            "iso8601" => TimeFormat::Iso8601,
            "unix_seconds" => TimeFormat::UnixSeconds,
            "unix_millis" => TimeFormat::UnixMillis,
            "rfc2822" => TimeFormat::Rfc2822,
            pattern if pattern.contains('%') => {
                let items = chrono::format::StrftimeItems::new(pattern);
                if items
                    .clone()
                    .any(|item| matches!(item, chrono::format::Item::Error))
                {
                    return Err(format!("`{pattern}` is not a valid strftime pattern"));
                }
                TimeFormat::Pattern(pattern.to_string())
            }
            other => {
                return Err(format!(
                    "`{other}` is not a time format (iso8601, unix_seconds, unix_millis, rfc2822, or a strftime pattern such as `%d/%m/%Y %H:%M:%S`)"
                ))
            }
        })
    }

    fn read(
        &self,
        value: Option<&Value>,
        field: &'static str,
    ) -> Result<Option<DateTime<Utc>>, NormalizeError> {
        let invalid = |detail: String| NormalizeError::InvalidField { field, detail };
        let in_range = |at: DateTime<Utc>| {
            // 2000-2099, as for every provider: anything else is a unit mistake.
            (946_684_800..4_102_444_800)
                .contains(&at.timestamp())
                .then_some(at)
                .ok_or_else(|| invalid(format!("{at} is outside 2000-2099")))
        };
        match self {
            TimeFormat::Iso8601 => lenient::timestamp(value, field),
            TimeFormat::UnixSeconds | TimeFormat::UnixMillis => {
                let Some(n) = lenient::number(value) else {
                    return match value {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                        Some(other) => Err(invalid(format!("`{other}` is not a number"))),
                    };
                };
                let millis = if *self == TimeFormat::UnixSeconds {
                    n * 1000.0
                } else {
                    n
                };
                let at = Utc
                    .timestamp_millis_opt(millis as i64)
                    .single()
                    .ok_or_else(|| invalid(format!("{n} is not a time")))?;
                in_range(at).map(Some)
            }
            TimeFormat::Rfc2822 | TimeFormat::Pattern(_) => {
                let Some(text) = lenient::string(value) else {
                    return Ok(None);
                };
                let parsed = match self {
                    TimeFormat::Rfc2822 => DateTime::parse_from_rfc2822(&text)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| e.to_string()),
                    TimeFormat::Pattern(pattern) => DateTime::parse_from_str(&text, pattern)
                        .map(|t| t.with_timezone(&Utc))
                        .or_else(|_| {
                            NaiveDateTime::parse_from_str(&text, pattern).map(|t| t.and_utc())
                        })
                        .map_err(|e| format!("does not match `{pattern}`: {e}")),
                    _ => unreachable!("the arm matched these two"),
                };
                let at = parsed.map_err(|e| invalid(format!("`{text}`: {e}")))?;
                in_range(at).map(Some)
            }
        }
    }
}

/// A party, as the mapping writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappedParty {
    #[serde(default, deserialize_with = "de_string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    name: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    email: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    number: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    company: Option<String>,
}

impl From<MappedParty> for Party {
    fn from(p: MappedParty) -> Party {
        Party {
            id: p.id,
            name: p.name,
            email: p.email,
            number: p.number,
            company: p.company,
        }
    }
}

/// A tag: its name (text or a number), or `{name, id, value, color}`;
/// anything else, or one without a name, is left out.
fn tag(value: &Value) -> Option<Tag> {
    match value {
        Value::Object(object) => Some(Tag {
            name: json_text(object.get("name")?)?,
            id: object.get("id").and_then(json_text),
            value: object.get("value").and_then(json_text),
            color: object.get("color").and_then(json_text),
        }),
        other => json_text(other).map(|name| Tag {
            name,
            ..Tag::default()
        }),
    }
}

/// A recording or voicemail: its URL, or `{url, file_name, ids, duration_seconds}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MappedMedia {
    Url(String),
    Full {
        #[serde(default, deserialize_with = "de_string")]
        url: Option<String>,
        #[serde(default, deserialize_with = "de_string")]
        file_name: Option<String>,
        #[serde(default)]
        ids: Vec<Value>,
        #[serde(default, deserialize_with = "de_number")]
        duration_seconds: Option<f64>,
    },
}

impl MappedMedia {
    fn into_media(self) -> Option<MediaRef> {
        let media = match self {
            MappedMedia::Url(url) => MediaRef {
                url: Some(url.trim().to_string()).filter(|u| !u.is_empty()),
                ..MediaRef::default()
            },
            MappedMedia::Full {
                url,
                file_name,
                ids,
                duration_seconds,
            } => MediaRef {
                url,
                file_name,
                ids: ids
                    .iter()
                    .filter_map(|v| lenient::string(Some(v)))
                    .collect(),
                duration_seconds,
            },
        };
        (media != MediaRef::default()).then_some(media)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappedCorrelation {
    #[serde(default, deserialize_with = "de_string")]
    call_id: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    conversation_id: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    leg_id: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    leg: Option<String>,
}

/// The mapped event. `id` and `kind` are required; the rest default to
/// absent (`status` and `direction` to `unknown`, `tenant` to the
/// source's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Mapped {
    #[serde(default, deserialize_with = "de_string")]
    id: Option<String>,
    kind: Option<Kind>,
    #[serde(default)]
    status: Option<Status>,
    #[serde(default)]
    direction: Option<Direction>,
    #[serde(default, deserialize_with = "de_string")]
    tenant: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    provider_status: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    provider_event_type: Option<String>,
    #[serde(default)]
    started_at: Option<Value>,
    #[serde(default)]
    answered_at: Option<Value>,
    #[serde(default)]
    ended_at: Option<Value>,
    #[serde(default, deserialize_with = "de_number")]
    duration_seconds: Option<f64>,
    #[serde(default, deserialize_with = "de_number")]
    ring_seconds: Option<f64>,
    #[serde(default, deserialize_with = "de_number")]
    talk_seconds: Option<f64>,
    #[serde(default, deserialize_with = "de_number")]
    hold_seconds: Option<f64>,
    #[serde(default)]
    internal: Option<MappedParty>,
    #[serde(default)]
    external: Option<MappedParty>,
    #[serde(default, deserialize_with = "de_string")]
    sms_body: Option<String>,
    #[serde(default, deserialize_with = "de_string")]
    notes: Option<String>,
    #[serde(default)]
    tags: Option<Vec<Value>>,
    #[serde(default)]
    recording: Option<MappedMedia>,
    #[serde(default)]
    voicemail: Option<MappedMedia>,
    #[serde(default)]
    correlation: Option<MappedCorrelation>,
    #[serde(default)]
    custom: Option<Value>,
}

impl Mapped {
    /// Reads the fields' values (an object, parties and correlation
    /// nested); what does not fit the event is an `invalid_field` naming
    /// the field.
    pub(super) fn read(fields: Value) -> Result<Mapped, NormalizeError> {
        serde_json::from_value(fields).map_err(|e| NormalizeError::InvalidField {
            field: "mapping",
            detail: e.to_string(),
        })
    }

    /// The event, sealed with the mapped `id`.
    pub(super) fn into_sealed(
        self,
        provider: ProviderId,
        times: &TimeFormat,
        ctx: &Context<'_>,
    ) -> Result<Sealed, NormalizeError> {
        let id = self.id.ok_or(NormalizeError::MissingField("id"))?;
        let kind = self.kind.ok_or(NormalizeError::MissingField("kind"))?;
        let tenant = self
            .tenant
            .unwrap_or_else(|| ctx.default_tenant.to_string());
        let mut event = Event::new(provider, tenant, kind, ctx);
        event.status = self.status.unwrap_or_default();
        event.direction = self.direction.unwrap_or_default();
        event.provider_status = self.provider_status;
        event.provider_event_type = self.provider_event_type;
        event.started_at = times.read(self.started_at.as_ref(), "started_at")?;
        event.answered_at = times.read(self.answered_at.as_ref(), "answered_at")?;
        event.ended_at = times.read(self.ended_at.as_ref(), "ended_at")?;
        event.duration_seconds = self.duration_seconds;
        event.ring_seconds = self.ring_seconds;
        event.talk_seconds = self.talk_seconds;
        event.hold_seconds = self.hold_seconds;
        event.internal = self.internal.unwrap_or_default().into();
        event.external = self.external.unwrap_or_default().into();
        event.sms_body = self.sms_body;
        event.notes = self.notes;
        event.tags = self
            .tags
            .unwrap_or_default()
            .iter()
            .filter_map(tag)
            .collect();
        event.recording = self.recording.and_then(MappedMedia::into_media);
        event.voicemail = self.voicemail.and_then(MappedMedia::into_media);
        let correlation = self.correlation.unwrap_or_default();
        event.correlation.call_id = correlation.call_id;
        event.correlation.conversation_id = correlation.conversation_id;
        event.correlation.leg_id = correlation.leg_id;
        event.correlation.leg = correlation.leg;
        event.custom = self.custom.filter(|c| !c.is_null());
        Ok(event.seal(&id))
    }
}

/// A value as text, as the built-in providers read one
/// ([`lenient::string`]): text trimmed, empty text absent, numbers as
/// written (`442000000000`, not `442000000000.0`), booleans as
/// `true`/`false`, anything else absent.
pub(super) fn text(value: &Val) -> Option<String> {
    match value {
        Val::TStr(s) | Val::BStr(s) => {
            let text = String::from_utf8_lossy(s);
            let trimmed = text.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_string())
        }
        Val::Num(n) => lenient::string(Some(&number(n))),
        Val::Bool(b) => Some(b.to_string()),
        Val::Null | Val::Arr(_) | Val::Obj(_) => None,
    }
}

/// [`text`] for a JSON value.
pub(super) fn json_text(value: &Value) -> Option<String> {
    lenient::string(Some(value))
}

/// A jaq value as JSON: byte strings as (lossy) text, numbers as JSON
/// numbers (NaN and infinities as `null`, as jq prints them), non-text
/// object keys as their JSON text.
pub(super) fn to_json(value: &Val) -> Value {
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number(n),
        Val::TStr(s) | Val::BStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::Arr(items) => Value::Array(items.iter().map(to_json).collect()),
        Val::Obj(object) => Value::Object(
            object
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
    }
}

fn number(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // Big integers and decimal literals: their text is a JSON number.
        other => serde_json::from_str::<serde_json::Number>(&other.to_string())
            .map_or(Value::Null, Value::Number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_read_what_they_say() {
        let at = |format: &str, v: Value| {
            TimeFormat::parse(format)
                .unwrap()
                .read(Some(&v), "t")
                .map(|t| t.map(|t| t.to_rfc3339()))
        };
        let expect = Ok(Some("2024-11-26T12:08:15+00:00".to_string()));
        assert_eq!(at("unix_seconds", Value::from(1732622895)), expect);
        assert_eq!(at("unix_seconds", Value::from("1732622895")), expect);
        assert_eq!(at("unix_millis", Value::from(1732622895000u64)), expect);
        assert_eq!(at("iso8601", Value::from("2024-11-26T12:08:15Z")), expect);
        assert_eq!(
            at("rfc2822", Value::from("Tue, 26 Nov 2024 12:08:15 +0000")),
            expect
        );
        assert_eq!(
            at("%d/%m/%Y %H:%M:%S", Value::from("26/11/2024 12:08:15")),
            expect
        );
        assert_eq!(
            at(
                "%d/%m/%Y %H:%M:%S %z",
                Value::from("26/11/2024 13:08:15 +0100")
            ),
            expect
        );
        assert_eq!(at("unix_seconds", Value::Null), Ok(None));
        // Milliseconds read as seconds land after 2099: refused, not misdated.
        assert!(at("unix_seconds", Value::from(1732622895000u64)).is_err());
        assert!(at("%d/%m/%Y", Value::from("2024-11-26")).is_err());
        assert!(TimeFormat::parse("unix").is_err());
        assert!(TimeFormat::parse("%Q").is_err());
    }

    #[test]
    fn jaq_values_become_json() {
        let val = jaq_json::read::parse_single(
            br#"{"a": [1, 2.5, "x", null, true], "big": 123456789012345678901234567890}"#,
        )
        .unwrap();
        let json = to_json(&val);
        assert_eq!(json["a"], serde_json::json!([1, 2.5, "x", null, true]));
        assert!(json["big"].is_number());
    }
}
