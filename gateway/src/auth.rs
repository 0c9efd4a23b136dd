//! Per-source API keys. A delivery proves itself with one of: `?token=<key>`,
//! `Authorization: x-api-key <key>` (Onoff), `Authorization: Bearer <key>`,
//! a bare `x-api-key: <key>` header, or a header named in config. Several
//! keys may be configured so they can rotate. Comparison is constant-time
//! (SHA-256 of both sides, then a constant-time equality), so neither the
//! key's content nor its length leaks through timing.

use actix_web::http::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Auth {
    /// SHA-256 of each accepted key; the keys themselves are not kept.
    key_digests: Vec<[u8; 32]>,
    extra_header: Option<String>,
}

impl Auth {
    pub fn new(keys: &[SecretString], extra_header: Option<String>) -> Auth {
        Auth {
            key_digests: keys.iter().map(|k| digest(k.expose_secret())).collect(),
            extra_header: extra_header.map(|h| h.to_ascii_lowercase()),
        }
    }

    /// No key configured: every request is accepted (warned about at start-up).
    pub(crate) fn is_open(&self) -> bool {
        self.key_digests.is_empty()
    }

    /// Whether any credential presented matches any configured key.
    pub(crate) fn verify(&self, headers: &HeaderMap, query: &str) -> bool {
        if self.is_open() {
            return true;
        }
        let mut matched = false;
        self.each_candidate(headers, query, |candidate| {
            let d = digest(candidate);
            for key in &self.key_digests {
                // Keep going after a match so timing does not tell which key matched.
                matched |= bool::from(d.ct_eq(key));
            }
        });
        matched
    }

    /// Calls `f` with every credential the request presents (none is
    /// copied: this runs for every delivery).
    fn each_candidate(&self, headers: &HeaderMap, query: &str, mut f: impl FnMut(&str)) {
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name == "token" {
                f(&value);
            }
        }
        for value in headers
            .get_all("authorization")
            .filter_map(|v| v.to_str().ok())
        {
            let value = value.trim();
            for scheme in ["x-api-key", "bearer"] {
                if let Some(rest) = strip_prefix_ignore_case(value, scheme) {
                    if let Some(key) = rest.strip_prefix(' ').or_else(|| rest.strip_prefix(':')) {
                        f(key.trim());
                    }
                }
            }
        }
        let named = std::iter::once("x-api-key").chain(self.extra_header.as_deref());
        for name in named {
            for value in headers.get_all(name).filter_map(|v| v.to_str().ok()) {
                f(value.trim());
            }
        }
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn auth(keys: &[&str], extra: Option<&str>) -> Auth {
        let keys: Vec<SecretString> = keys
            .iter()
            .map(|k| SecretString::from(k.to_string()))
            .collect();
        Auth::new(&keys, extra.map(String::from))
    }

    #[test]
    fn every_documented_credential_form_is_accepted() {
        let a = auth(&["s3cret"], Some("X-Webhook-Secret"));
        assert!(a.verify(&headers(&[("authorization", "x-api-key s3cret")]), ""));
        assert!(a.verify(&headers(&[("authorization", "X-API-KEY s3cret")]), ""));
        assert!(a.verify(&headers(&[("authorization", "Bearer s3cret")]), ""));
        assert!(a.verify(&headers(&[("x-api-key", "s3cret")]), ""));
        assert!(a.verify(&headers(&[("x-webhook-secret", "s3cret")]), ""));
        assert!(a.verify(&headers(&[]), "a=1&token=s3cret"));
        assert!(a.verify(&headers(&[]), "token=s3%63ret"));
    }

    #[test]
    fn wrong_missing_or_partial_keys_are_refused() {
        let a = auth(&["s3cret"], None);
        assert!(!a.verify(&headers(&[]), ""));
        assert!(!a.verify(&headers(&[("authorization", "x-api-key s3cre")]), ""));
        assert!(!a.verify(&headers(&[("authorization", "x-api-keys3cret")]), ""));
        assert!(!a.verify(&headers(&[("authorization", "s3cret")]), ""));
        assert!(!a.verify(&headers(&[("x-webhook-secret", "s3cret")]), ""));
        assert!(!a.verify(&headers(&[]), "tokens=s3cret&xtoken=s3cret"));
    }

    #[test]
    fn rotated_keys_are_all_accepted_and_open_sources_accept_anything() {
        let a = auth(&["old", "new"], None);
        assert!(a.verify(&headers(&[]), "token=old"));
        assert!(a.verify(&headers(&[]), "token=new"));
        assert!(!a.verify(&headers(&[]), "token=other"));
        let open = auth(&[], None);
        assert!(open.is_open());
        assert!(open.verify(&headers(&[]), ""));
    }
}
