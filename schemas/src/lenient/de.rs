//! Serde adapters: the lenient readers for payload struct fields, reading
//! each value as it streams past.

use serde::de::{self, Visitor};
use serde::Deserializer;

use super::render_number;

/// Serde adapter: [`string`](super::string) for a payload struct field. Reads the value
/// as it streams past instead of building a [`Value`](serde_json::Value) first; the answer is
/// the same (a unit test holds the two together).
pub(crate) fn de_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
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

/// Serde adapter: [`number`](super::number) for a payload struct field (streamed, as
/// [`de_string`]).
pub(crate) fn de_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lenient::{number, string};
    use serde_json::Value;

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
}
