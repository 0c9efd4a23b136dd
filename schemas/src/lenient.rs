//! Lenient field readers shared by the provider normalizers.
//!
//! Providers are inconsistent about types: the same field arrives as a JSON
//! number in one delivery and a string in the next, flags are `1`, `"1"` or
//! `true`, and form-encoded or query-string deliveries carry only strings.
//! These readers accept every plausible spelling of a value and answer `None`
//! for anything else, so an odd optional field never costs us an event.
//!
//! Timestamps are the exception: a timestamp that is present but cannot be
//! read is an error ([`NormalizeError::InvalidField`]), because a silently
//! dropped or misread time corrupts reporting downstream. The raw delivery is
//! kept, so such an event can be normalized again once the parser is fixed.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};

use crate::provider::{NormalizeError, RawRequest};

/// Earliest instant accepted as a call-centre timestamp (2000-01-01T00:00:00Z).
///
/// Anything earlier is far more likely a unit mistake (epoch *seconds* read
/// as milliseconds lands in January 1970) than a real call.
const EARLIEST_MS: i64 = 946_684_800_000;
/// First instant no longer accepted (2100-01-01T00:00:00Z); guards against
/// microseconds read as milliseconds and keeps every time RFC 3339-printable.
const END_MS: i64 = 4_102_444_800_000;

/// Deepest key path the form decoder builds (`a[b][c]...`). Real payloads
/// need four levels; the cap keeps hostile names from building values deep
/// enough to exhaust the stack when they are dropped or serialized.
const MAX_FORM_DEPTH: usize = 8;

/// A string, or a number rendered as written (`442000000000`, not
/// `442000000000.0`), or a boolean as `true`/`false`. Trimmed; empty is `None`.
pub fn string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => {
            let trimmed = s.trim();
            (!trimmed.is_empty()).then(|| trimmed.to_string())
        }
        Value::Number(n) => Some(render_number(n)),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn render_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        // Integers beyond u64 arrive as floats; print them without `.0` as long
        // as the float still holds the exact integer (below 2^53).
        Some(f)
            if !n.is_i64()
                && !n.is_u64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0 =>
        {
            format!("{f:.0}")
        }
        _ => n.to_string(),
    }
}

/// A finite number, from a JSON number or a numeric string (`"10"`, `" 2.5 "`).
pub fn number(value: Option<&Value>) -> Option<f64> {
    let parsed = match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    parsed.filter(|f| f.is_finite())
}

/// A whole number, from a JSON number or a numeric string (`3`, `"3"`, `3.0`).
pub fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    }
}

fn whole(f: f64) -> Option<i64> {
    // Both bounds are exact in f64 and `as` saturates, so this admits exactly
    // the whole numbers that fit in an i64 (and never NaN).
    (f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f))
        .then_some(f as i64)
}

/// A flag: `true`/`false`, `1`/`0`, and the strings `true`, `1`, `yes`, `y`,
/// `on` (and `false`, `0`, `no`, `n`, `off`), case-insensitive.
pub fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        number @ Value::Number(_) => match integer(Some(number)) {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "on" => Some(true),
            "false" | "0" | "no" | "n" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

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

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value of the first of `keys` that `object` holds, skipping `null` and
/// blank strings. For fields whose spelling varies between a provider's
/// documentation and its deliveries, and for documented fallbacks.
pub fn field<'a>(object: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|key| {
        object.get(key).filter(|v| match v {
            Value::Null => false,
            Value::String(s) => !s.trim().is_empty(),
            _ => true,
        })
    })
}

/// Serde adapter: [`string`] for a payload struct field. Reads the value
/// as it streams past instead of building a [`Value`] first; the answer is
/// the same (a unit test holds the two together).
pub fn de_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match deserializer.deserialize_any(ScalarVisitor)? {
        Scalar::Str(s) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                None
            } else if trimmed.len() == s.len() {
                Some(s)
            } else {
                Some(trimmed.to_string())
            }
        }
        Scalar::I64(n) => Some(n.to_string()),
        Scalar::U64(n) => Some(n.to_string()),
        Scalar::F64(f) => serde_json::Number::from_f64(f).map(|n| render_number(&n)),
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Other => None,
    })
}

/// Serde adapter: [`number`] for a payload struct field (streamed, as
/// [`de_string`]).
pub fn de_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let parsed = match deserializer.deserialize_any(ScalarVisitor)? {
        Scalar::Str(s) => s.trim().parse::<f64>().ok(),
        Scalar::I64(n) => Some(n as f64),
        Scalar::U64(n) => Some(n as f64),
        Scalar::F64(f) => Some(f),
        Scalar::Bool(_) | Scalar::Other => None,
    };
    Ok(parsed.filter(|f| f.is_finite()))
}

/// One JSON value as the lenient readers see it: a scalar, or something
/// else (`null`, an array, an object), which they all read as absent.
enum Scalar {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Other,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(s))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
        Ok(Scalar::I64(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
        Ok(Scalar::U64(n))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Scalar, E> {
        Ok(Scalar::F64(f))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Scalar::Other)
    }
}

/// The body as a JSON object read straight into `T`, which should use the
/// lenient adapters above; the same answer as `json_body` then
/// `serde_json::from_value`, without building the [`Value`] tree.
///
/// Only the usual case takes the direct path: a body that is not a JSON
/// object (whose error `json_body` words), or one that a struct refuses
/// although a JSON object allows it (a repeated key: the last one wins),
/// goes the long way.
pub fn json_object<T: DeserializeOwned>(req: &RawRequest<'_>) -> Result<T, NormalizeError> {
    if without_bom(req.body).trim_ascii_start().starts_with(b"{") {
        if let Ok(value) = serde_json::from_slice(without_bom(req.body)) {
            return Ok(value);
        }
    }
    serde_json::from_value(json_body(req)?).map_err(|e| NormalizeError::Malformed {
        format: "JSON",
        detail: e.to_string(),
    })
}

/// `body` without a leading UTF-8 byte order mark.
fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// The body as a JSON object. A UTF-8 byte order mark and surrounding
/// whitespace are ignored.
pub fn json_body(req: &RawRequest<'_>) -> Result<Value, NormalizeError> {
    let body = without_bom(req.body);
    if body.trim_ascii().is_empty() {
        return Err(NormalizeError::EmptyBody);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| NormalizeError::Malformed {
        format: "JSON",
        detail: e.to_string(),
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(NormalizeError::Malformed {
            format: "JSON",
            detail: format!("expected an object, got {}", type_name(&value)),
        })
    }
}

/// The delivery as one JSON object, wherever it was carried: a JSON body, an
/// `application/x-www-form-urlencoded` body, or (for GET, and any request
/// with an empty body) the query string.
///
/// A body is JSON when the content type says so or when it starts with `{`
/// (senders mislabel JSON as form data more often than the reverse); any other
/// non-empty body is read as form data. `multipart/form-data` is refused
/// rather than misread as url-encoded pairs.
pub fn document(req: &RawRequest<'_>) -> Result<Value, NormalizeError> {
    let body = req.body.trim_ascii();
    if body.is_empty() {
        let query = req.query.trim();
        return if query.is_empty() {
            Err(NormalizeError::EmptyBody)
        } else {
            Ok(form_to_json(query.as_bytes()))
        };
    }
    let content_type = req.content_type.unwrap_or_default().to_ascii_lowercase();
    if content_type.contains("json") || body.starts_with(b"{") || body.starts_with(b"\xEF\xBB\xBF")
    {
        json_body(req)
    } else if content_type.starts_with("multipart/") {
        Err(NormalizeError::Malformed {
            format: "form",
            detail: "multipart/form-data is not supported; configure url-encoded form data or JSON"
                .into(),
        })
    } else {
        Ok(form_to_json(body))
    }
}

/// One step of a form field name's path.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    /// `[n]` or `.n`.
    Index(usize),
    /// `[]`: append.
    Push,
}

/// Decodes url-encoded pairs (a form body or a query string) into a nested
/// JSON object. Names may be flat (`dur`), bracketed (`cdr[dur]`,
/// `cdr[recordingIds][]`, `cdr[directoryMatches][0][fields][companyName]`)
/// or dotted (`cdr.dur`). A value that is itself a JSON object is used as
/// that object, so one field may carry a whole JSON document. Every other
/// value stays a string; the readers above accept numeric strings.
///
/// Conflicting names resolve to the last one seen. Indices only order
/// entries: `[5]` on a two-element list appends, so a hostile index cannot
/// allocate a huge array.
pub fn form_to_json(input: &[u8]) -> Value {
    let mut root = Value::Object(Map::new());
    for (name, raw) in form_urlencoded::parse(input) {
        if name.is_empty() {
            continue;
        }
        let path = key_path(&name);
        if path.len() > MAX_FORM_DEPTH {
            continue;
        }
        let value = match serde_json::from_str::<Value>(&raw) {
            Ok(object @ Value::Object(_)) => object,
            _ => Value::String(raw.into_owned()),
        };
        place(&mut root, &path, value);
    }
    root
}

/// Splits a field name into its path. A name that is not well formed
/// (unbalanced brackets, empty dotted parts) is one flat key, verbatim.
fn key_path(name: &str) -> Vec<Segment> {
    let flat = || vec![Segment::Key(name.to_string())];
    let (head, mut rest) = match name.find('[') {
        Some(at) => name.split_at(at),
        None => (name, ""),
    };
    if head.is_empty() || head.split('.').any(str::is_empty) {
        return flat();
    }
    let mut path: Vec<Segment> = head.split('.').map(named_segment).collect();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) else {
            return flat();
        };
        let (part, tail) = inner;
        path.push(match part {
            "" => Segment::Push,
            _ => named_segment(part),
        });
        rest = tail;
    }
    path
}

/// `0`, `12`: a list index; anything else: an object key.
fn named_segment(part: &str) -> Segment {
    match part.parse::<usize>() {
        Ok(i) if part.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(i),
        _ => Segment::Key(part.to_string()),
    }
}

/// Stores `value` at `path` below `slot`, creating (or, on conflict,
/// replacing) objects and arrays on the way.
fn place(slot: &mut Value, path: &[Segment], value: Value) {
    let Some((segment, tail)) = path.split_first() else {
        *slot = value;
        return;
    };
    let child = match segment {
        Segment::Key(key) => object_entry(slot, key.clone()),
        // An index below an object (`tags[0]` after `tags[x]`) is just a key.
        Segment::Index(i) if slot.is_object() => object_entry(slot, i.to_string()),
        Segment::Index(i) => array_slot(slot, Some(*i)),
        Segment::Push => array_slot(slot, None),
    };
    place(child, tail, value);
}

fn object_entry(slot: &mut Value, key: String) -> &mut Value {
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => map.entry(key).or_insert(Value::Null),
        other => other,
    }
}

fn array_slot(slot: &mut Value, at: Option<usize>) -> &mut Value {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(items) => {
            let i = at.filter(|&i| i < items.len()).unwrap_or_else(|| {
                items.push(Value::Null);
                items.len() - 1
            });
            // In bounds: either checked above or the element just pushed.
            &mut items[i]
        }
        other => other,
    }
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
    fn string_renders_numbers_as_written() {
        assert_eq!(
            string(Some(&json!(442000000000_u64))).as_deref(),
            Some("442000000000")
        );
        assert_eq!(
            string(Some(&json!(442000000000.0))).as_deref(),
            Some("442000000000")
        );
        assert_eq!(string(Some(&json!(-12))).as_deref(), Some("-12"));
        assert_eq!(string(Some(&json!(2.5))).as_deref(), Some("2.5"));
        assert_eq!(string(Some(&json!("  abc "))).as_deref(), Some("abc"));
        assert_eq!(string(Some(&json!(true))).as_deref(), Some("true"));
        assert_eq!(string(Some(&json!("   "))), None);
        assert_eq!(string(Some(&json!(null))), None);
        assert_eq!(string(Some(&json!({"a": 1}))), None);
        assert_eq!(string(None), None);
    }

    #[test]
    fn number_accepts_numeric_strings_only() {
        assert_eq!(number(Some(&json!(10))), Some(10.0));
        assert_eq!(number(Some(&json!(" 2.5 "))), Some(2.5));
        assert_eq!(number(Some(&json!("NaN"))), None);
        assert_eq!(number(Some(&json!("inf"))), None);
        assert_eq!(number(Some(&json!("ten"))), None);
        assert_eq!(number(Some(&json!(true))), None);
        assert_eq!(integer(Some(&json!("3"))), Some(3));
        assert_eq!(integer(Some(&json!(3.0))), Some(3));
        assert_eq!(integer(Some(&json!(3.5))), None);
        assert_eq!(integer(Some(&json!("1e300"))), None);
    }

    #[test]
    fn boolean_accepts_flag_spellings() {
        for yes in [
            json!(true),
            json!("TRUE"),
            json!(1),
            json!("1"),
            json!("Yes"),
            json!(1.0),
        ] {
            assert_eq!(boolean(Some(&yes)), Some(true), "{yes}");
        }
        for no in [
            json!(false),
            json!("false"),
            json!(0),
            json!("0"),
            json!("no"),
            json!("OFF"),
        ] {
            assert_eq!(boolean(Some(&no)), Some(false), "{no}");
        }
        for neither in [json!(2), json!("maybe"), json!(null), json!([])] {
            assert_eq!(boolean(Some(&neither)), None, "{neither}");
        }
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

    #[test]
    fn streamed_adapters_read_values_as_the_value_readers_do() {
        #[derive(serde::Deserialize)]
        struct Fields {
            #[serde(default, deserialize_with = "de_string")]
            s: Option<String>,
            #[serde(default, deserialize_with = "de_number")]
            n: Option<f64>,
        }
        let values = [
            "\"  padded \"",
            "\"plain\"",
            "\"   \"",
            "\"\"",
            "\" 2.5 \"",
            "\"1e400\"",
            "442000000000",
            "-17",
            "18446744073709551615",
            "123456789012345678901234",
            "2.50",
            "1e20",
            "-0.0",
            "true",
            "false",
            "null",
            "[1, \"a\", {\"b\": []}]",
            "{\"a\": {\"b\": 1}}",
        ];
        for text in values {
            let value: Value = serde_json::from_str(text).unwrap();
            let doc = format!("{{\"s\": {text}, \"n\": {text}}}");
            // Straight from the bytes, and from a `Value` (form documents).
            let streamed: Fields = serde_json::from_str(&doc).unwrap();
            let from_tree: Fields =
                serde_json::from_value(serde_json::from_str(&doc).unwrap()).unwrap();
            for fields in [streamed, from_tree] {
                assert_eq!(fields.s, string(Some(&value)), "string of {text}");
                assert_eq!(fields.n, number(Some(&value)), "number of {text}");
            }
        }
        let absent: Fields = serde_json::from_str("{}").unwrap();
        assert_eq!((absent.s, absent.n), (None, None));
    }

    #[test]
    fn json_object_reads_like_json_body_then_from_value() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Doc {
            #[serde(default, deserialize_with = "de_string")]
            id: Option<String>,
        }
        let json = |body: &'static str| request(body.as_bytes(), "", Some("application/json"));
        let read = |body| json_object::<Doc>(&json(body));
        assert_eq!(
            read("\u{feff} {\"id\": 7}").unwrap().id.as_deref(),
            Some("7")
        );
        // A repeated key is legal JSON: the last one wins, as in a `Value`.
        assert_eq!(
            read("{\"id\": 1, \"id\": 2}").unwrap().id.as_deref(),
            Some("2")
        );
        // Not objects: refused with json_body's own words, although a struct
        // would accept a sequence.
        for body in [
            "[]",
            "[\"x\"]",
            "7",
            "{\"id\": 1} trailing",
            "",
            "  ",
            " \u{feff}{}",
        ] {
            let direct = read(body).unwrap_err();
            let long_way = json_body(&json(body)).unwrap_err();
            assert_eq!(direct.to_string(), long_way.to_string(), "{body:?}");
        }
    }

    #[test]
    fn field_takes_the_first_spelling_present() {
        let object = json!({"triggerID": "a", "triggerId": null, "tid": " ", "x": 1});
        assert_eq!(
            field(&object, &["triggerId", "tid", "triggerID"]),
            Some(&json!("a"))
        );
        assert_eq!(field(&object, &["nope"]), None);
    }

    fn request<'a>(
        body: &'a [u8],
        query: &'a str,
        content_type: Option<&'a str>,
    ) -> RawRequest<'a> {
        RawRequest {
            method: "POST",
            route: "r",
            query,
            content_type,
            body,
        }
    }

    #[test]
    fn json_body_requires_an_object() {
        assert_eq!(
            json_body(&request(b" \n", "", None)),
            Err(NormalizeError::EmptyBody)
        );
        assert_eq!(
            json_body(&request(b"\xEF\xBB\xBF{\"a\":1}", "", None)),
            Ok(json!({"a": 1}))
        );
        for bad in [&b"{\"a\":"[..], b"[1]", b"\"x\"", b"null"] {
            assert!(
                matches!(
                    json_body(&request(bad, "", None)),
                    Err(NormalizeError::Malformed { format: "JSON", .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn document_picks_json_form_or_query() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(
            document(&request(b"{\"a\":1}", "b=2", form)),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            document(&request(b"a=1", "b=2", form)),
            Ok(json!({"a": "1"}))
        );
        assert_eq!(document(&request(b"", "b=2", form)), Ok(json!({"b": "2"})));
        assert_eq!(
            document(&request(b"", " ", None)),
            Err(NormalizeError::EmptyBody)
        );
        assert!(matches!(
            document(&request(b"a=1", "", Some("application/json"))),
            Err(NormalizeError::Malformed { format: "JSON", .. })
        ));
        assert!(matches!(
            document(&request(
                b"--x\r\n",
                "",
                Some("multipart/form-data; boundary=x")
            )),
            Err(NormalizeError::Malformed { format: "form", .. })
        ));
    }

    #[test]
    fn form_names_nest() {
        let decoded = form_to_json(
            b"cdr[dur]=10&cdr.ring=3&flat=x\
              &cdr[recordingIds][]=r1&cdr[recordingIds][]=r2\
              &cdr[ids][0]=a&cdr[ids][1]=b&cdr[ids][0]=a2\
              &cdr[directoryMatches][0][fields][companyName]=Acme+Ltd\
              &cdr[directoryMatches][0][fields][email]=a%40acme.test\
              &cdr.list.0=d0",
        );
        assert_eq!(
            decoded,
            json!({
                "flat": "x",
                "cdr": {
                    "dur": "10",
                    "ring": "3",
                    "recordingIds": ["r1", "r2"],
                    "ids": ["a2", "b"],
                    "directoryMatches": [{"fields": {"companyName": "Acme Ltd", "email": "a@acme.test"}}],
                    "list": ["d0"],
                }
            })
        );
    }

    #[test]
    fn form_values_holding_json_objects_are_parsed() {
        let decoded =
            form_to_json(b"payload=%7B%22a%22%3A%7B%22b%22%3A1%7D%7D&cdr=%7Bnot+json&n=%5B1%5D");
        assert_eq!(
            decoded,
            json!({"payload": {"a": {"b": 1}}, "cdr": "{not json", "n": "[1]"})
        );
    }

    #[test]
    fn odd_form_names_stay_flat_and_deep_ones_are_dropped() {
        let decoded =
            form_to_json(b"a[b=1&[x]=2&.y=3&z..w=4&k[9]=5&a[b][c][d][e][f][g][h][i]=6&=7");
        assert_eq!(
            decoded,
            json!({"a[b": "1", "[x]": "2", ".y": "3", "z..w": "4", "k": ["5"]})
        );
    }

    #[test]
    fn form_conflicts_resolve_to_the_last_name() {
        assert_eq!(form_to_json(b"a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(form_to_json(b"a[b]=2&a=1"), json!({"a": "1"}));
        assert_eq!(form_to_json(b"a[]=1&a[x]=2"), json!({"a": {"x": "2"}}));
        assert_eq!(
            form_to_json(b"a[x]=1&a[0]=2"),
            json!({"a": {"x": "1", "0": "2"}})
        );
    }
}
