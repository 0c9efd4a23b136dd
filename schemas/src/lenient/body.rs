//! The delivery as a JSON document: a JSON body (into a [`Value`], or
//! straight into a payload struct), a form body or the query string.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{form_to_json, type_name};
use crate::provider::{NormalizeError, RawRequest};

/// The body as a JSON object read straight into `T`, which should use the
/// lenient adapters (`de_string`, `de_number`); the same answer as `json_body` then
/// `serde_json::from_value`, without building the [`Value`] tree.
///
/// Only the usual case takes the direct path: a body that is not a JSON
/// object (whose error `json_body` words), or one that a struct refuses
/// although a JSON object allows it (a repeated key: the last one wins),
/// goes the long way.
pub(crate) fn json_object<T: DeserializeOwned>(req: &RawRequest<'_>) -> Result<T, NormalizeError> {
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
pub(crate) fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// The body as a JSON object. A UTF-8 byte order mark and surrounding
/// whitespace are ignored.
pub(crate) fn json_body(req: &RawRequest<'_>) -> Result<Value, NormalizeError> {
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

/// How a delivery carries its fields, as [`document`] reads them; also
/// the formats a declarative source accepts (`json`, `form`, `query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    Json,
    Form,
    Query,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Form => "form",
            BodyFormat::Query => "query",
        }
    }

    /// An empty body: the query string. A body is JSON when the content
    /// type says so or when it starts with `{` (senders mislabel JSON as
    /// form data more often than the reverse); any other is form data.
    pub fn of(req: &RawRequest<'_>) -> BodyFormat {
        let body = req.body.trim_ascii();
        if body.is_empty() {
            return BodyFormat::Query;
        }
        let content_type = req.content_type.unwrap_or_default().to_ascii_lowercase();
        if content_type.contains("json")
            || body.starts_with(b"{")
            || body.starts_with(b"\xEF\xBB\xBF")
        {
            BodyFormat::Json
        } else {
            BodyFormat::Form
        }
    }
}

/// The delivery as one JSON object, wherever it was carried
/// ([`BodyFormat::of`]): a JSON body, an
/// `application/x-www-form-urlencoded` body, or (for GET, and any request
/// with an empty body) the query string. `multipart/form-data` is refused
/// rather than misread as url-encoded pairs.
pub fn document(req: &RawRequest<'_>) -> Result<Value, NormalizeError> {
    match BodyFormat::of(req) {
        BodyFormat::Query => {
            let query = req.query.trim();
            if query.is_empty() {
                Err(NormalizeError::EmptyBody)
            } else {
                Ok(form_to_json(query.as_bytes()))
            }
        }
        BodyFormat::Json => json_body(req),
        BodyFormat::Form
            if req
                .content_type
                .unwrap_or_default()
                .to_ascii_lowercase()
                .starts_with("multipart/") =>
        {
            Err(NormalizeError::Malformed {
                format: "form",
                detail:
                    "multipart/form-data is not supported; configure url-encoded form data or JSON"
                        .into(),
            })
        }
        BodyFormat::Form => Ok(form_to_json(req.body.trim_ascii())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lenient::de_string;
    use serde_json::json;

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
}
