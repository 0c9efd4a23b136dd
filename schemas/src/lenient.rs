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

mod body;
mod de;
mod form;
mod time;

use serde_json::Value;

pub use body::{document, BodyFormat};
pub(crate) use body::{json_body, json_object, without_bom};
pub(crate) use de::{de_number, de_string};
pub(crate) use form::form_to_json;
pub use time::timestamp;

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
pub(crate) fn integer(value: Option<&Value>) -> Option<i64> {
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
pub(crate) fn boolean(value: Option<&Value>) -> Option<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn field_takes_the_first_spelling_present() {
        let object = json!({"triggerID": "a", "triggerId": null, "tid": " ", "x": 1});
        assert_eq!(
            field(&object, &["triggerId", "tid", "triggerID"]),
            Some(&json!("a"))
        );
        assert_eq!(field(&object, &["nope"]), None);
    }
}
