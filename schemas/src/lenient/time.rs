//! Timestamps: the one kind of lenient value that is an error when present
//! but unreadable (see the module comment of [`super`]).

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde_json::Value;

use super::{integer, type_name};
use crate::provider::NormalizeError;

/// Earliest instant accepted as a call-centre timestamp (2000-01-01T00:00:00Z).
///
/// Anything earlier is far more likely a unit mistake (epoch *seconds* read
/// as milliseconds lands in January 1970) than a real call.
const EARLIEST_MS: i64 = 946_684_800_000;
/// First instant no longer accepted (2100-01-01T00:00:00Z); guards against
/// microseconds read as milliseconds and keeps every time RFC 3339-printable.
const END_MS: i64 = 4_102_444_800_000;

/// A timestamp: RFC 3339 / ISO 8601 with `Z` or a numeric offset (`+01:00`,
/// `+0100`, `+01`), with or without fractional seconds, or epoch
/// milliseconds as a number or a numeric string.
///
/// Absent, `null` or empty is `Ok(None)`. Anything else that is not a time,
/// a time without an offset (its zone would be a guess), or a time outside
/// 2000–2099 is [`NormalizeError::InvalidField`] naming `field`.
pub fn timestamp(
    value: Option<&Value>,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>, NormalizeError> {
    let invalid = |detail: String| NormalizeError::InvalidField { field, detail };
    let millis = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(v @ Value::Number(_)) => integer(Some(v))
            .ok_or_else(|| invalid(format!("`{v}` is not a whole number of epoch milliseconds")))?,
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<i64>()
                    .map_err(|_| invalid(format!("`{s}` is out of range for epoch milliseconds")))?
            } else {
                parse_datetime(s)
                    .ok_or_else(|| {
                        invalid(format!("`{s}` is not an ISO 8601 time with an offset"))
                    })?
                    .timestamp_millis()
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "expected a time, got {}",
                type_name(other)
            )))
        }
    };
    if !(EARLIEST_MS..END_MS).contains(&millis) {
        return Err(invalid(format!(
            "{millis} ms since the epoch is outside 2000-2099 (epoch seconds sent instead of milliseconds?)"
        )));
    }
    Utc.timestamp_millis_opt(millis)
        .single()
        .map(Some)
        .ok_or_else(|| invalid(format!("{millis} is not a valid instant")))
}

fn parse_datetime(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        // RFC 3339 requires `+01:00`; ISO 8601 also allows `+0100` and `+01`.
        ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"]
            .iter()
            .find_map(|format| DateTime::parse_from_str(s, format).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(value: Value) -> Result<Option<DateTime<Utc>>, NormalizeError> {
        timestamp(Some(&value), "t")
    }

    fn utc(s: &str) -> Option<DateTime<Utc>> {
        Some(
            DateTime::parse_from_rfc3339(s)
                .expect("test time")
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn timestamp_accepts_offsets_fractions_and_epoch_millis() {
        let expected = utc("2024-05-29T08:37:35Z");
        for text in [
            "2024-05-29T08:37:35Z",
            "2024-05-29T08:37:35z",
            "2024-05-29T09:37:35+01:00",
            "2024-05-29T09:37:35+0100",
            "2024-05-29T09:37:35+01",
            "2024-05-29 09:37:35+01:00",
            " 2024-05-29T10:37:35.000+02:00 ",
        ] {
            assert_eq!(ts(json!(text)), Ok(expected), "{text}");
        }
        assert_eq!(
            ts(json!("2024-05-29T08:37:35.250Z")),
            Ok(utc("2024-05-29T08:37:35.250Z"))
        );
        assert_eq!(
            ts(json!(1650630551178_u64)),
            Ok(utc("2022-04-22T12:29:11.178Z"))
        );
        assert_eq!(
            ts(json!("1650630551178")),
            Ok(utc("2022-04-22T12:29:11.178Z"))
        );
        assert_eq!(
            ts(json!(1650630551178.0)),
            Ok(utc("2022-04-22T12:29:11.178Z"))
        );
    }

    #[test]
    fn timestamp_absent_is_none_and_garbage_is_an_error() {
        assert_eq!(timestamp(None, "t"), Ok(None));
        assert_eq!(ts(json!(null)), Ok(None));
        assert_eq!(ts(json!("  ")), Ok(None));
        for bad in [
            json!("yesterday"),
            json!("2024-05-29T09:37:35"),
            json!("2024-13-29T09:37:35Z"),
            json!(1650630551),
            json!(1650630551178.5),
            json!(-1),
            json!("99999999999999999999999"),
            json!(true),
            json!({"at": 1}),
        ] {
            match ts(bad.clone()) {
                Err(NormalizeError::InvalidField { field: "t", .. }) => {}
                other => panic!("{bad}: expected InvalidField, got {other:?}"),
            }
        }
    }
}
