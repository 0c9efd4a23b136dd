//! `body_token`: a shared token in the JSON body (Aircall), and its
//! redaction from the raw record.

use ring::digest;

use super::{Refused, Scheme, Verifier};

impl Verifier {
    /// The body as the raw record keeps it: for `body_token`, with the
    /// token's value replaced by `[redacted]` (a credential must not reach
    /// Kafka); `None` to keep the body as received. The replacement is made
    /// in place where the value appears as a plain JSON string, so the rest
    /// stays byte-exact; otherwise the document is written out again.
    pub fn redact(&self, body: &[u8]) -> Option<Vec<u8>> {
        let Scheme::BodyToken { field, .. } = &self.scheme else {
            return None;
        };
        let token = body_token(body, field).ok()?;
        let literal = serde_json::to_string(&token).ok()?;
        let key = serde_json::to_string(field).ok()?;
        // `"token"` then optional blanks, `:`, blanks, then the literal.
        let mut at = 0;
        while let Some(found) = find(&body[at..], key.as_bytes()) {
            let mut i = at + found + key.len();
            while body.get(i).is_some_and(u8::is_ascii_whitespace) {
                i += 1;
            }
            if body.get(i) == Some(&b':') {
                i += 1;
                while body.get(i).is_some_and(u8::is_ascii_whitespace) {
                    i += 1;
                }
                if body[i..].starts_with(literal.as_bytes()) {
                    let mut out = Vec::with_capacity(body.len());
                    out.extend_from_slice(&body[..i]);
                    out.extend_from_slice(b"\"[redacted]\"");
                    out.extend_from_slice(&body[i + literal.len()..]);
                    return Some(out);
                }
            }
            at += found + 1;
        }
        let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        doc[field.as_str()] = serde_json::Value::from("[redacted]");
        serde_json::to_vec(&doc).ok()
    }
}

/// The string in `body`'s top-level `field` (a JSON object).
pub(super) fn body_token(body: &[u8], field: &str) -> Result<String, Refused> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| Refused::Malformed("body".into()))?;
    match doc.get(field) {
        Some(serde_json::Value::String(token)) if !token.is_empty() => Ok(token.clone()),
        Some(_) => Err(Refused::Malformed(field.into())),
        None => Err(Refused::MissingField(field.into())),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}
