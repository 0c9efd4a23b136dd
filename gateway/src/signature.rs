//! Signed deliveries: a source whose platform signs what it sends declares
//! its scheme in `sources.<name>.signature`, and a delivery is taken only
//! if its signature verifies against one of the configured secrets (several,
//! so a secret can rotate). Checked once the body is read, before anything
//! is published: a refused delivery is answered 401 and leaves no record.
//!
//! The schemes, each as its platforms document it (see
//! `docs/signatures.md` for the sources):
//! - `hmac`: an HMAC (SHA-256 or SHA-1) of the body in a header, hex or
//!   base64, after an optional prefix (GitHub's `sha256=`).
//! - `hmac_timestamped`: `t=<unix>,v1=<hex>` (Stripe, DIDWW): HMAC-SHA256 of
//!   `<t>.<body>`, the timestamp within a tolerance so an old delivery
//!   cannot be replayed.
//! - `twilio`: `X-Twilio-Signature`, base64 HMAC-SHA1 of the URL Twilio
//!   called followed by the form parameters sorted by name; a JSON body is
//!   signed through the `bodySHA256` query parameter instead.
//! - `ed25519`: Telnyx: an Ed25519 signature of `<timestamp>|<body>`.
//! - `jwt`: an HS256 JSON Web Token, either the body itself (Dialpad) or an
//!   `Authorization: Bearer` token whose `payload_hash` claim is the
//!   SHA-256 of the body (Vonage).
//!
//! Comparisons are constant-time (ring's `hmac::verify`), every configured
//! secret is tried, and no secret is kept in a form that could be logged:
//! only ring's keys, which print nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::{digest, hmac, signature};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use callstream_runtime::config::{invalid, ConfigError};

/// `sources.<name>.signature`: the scheme and its parameters.
#[derive(Debug, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum SignatureSettings {
    Hmac {
        secrets: Vec<SecretString>,
        /// The header holding the signature.
        header: String,
        /// Text before the signature in the header (`sha256=`), if any.
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        algorithm: HmacAlgorithm,
        #[serde(default)]
        encoding: Encoding,
    },
    HmacTimestamped {
        secrets: Vec<SecretString>,
        #[serde(default = "default_timestamped_header")]
        header: String,
        #[serde(default = "default_tolerance_secs")]
        tolerance_secs: u64,
    },
    Twilio {
        /// Twilio auth tokens.
        secrets: Vec<SecretString>,
    },
    Ed25519 {
        /// Base64 public keys (32 bytes each), as Telnyx shows them.
        public_keys: Vec<String>,
        #[serde(default = "default_ed25519_signature_header")]
        signature_header: String,
        #[serde(default = "default_ed25519_timestamp_header")]
        timestamp_header: String,
        #[serde(default = "default_tolerance_secs")]
        tolerance_secs: u64,
    },
    /// A shared token in a top-level field of a JSON body (Aircall's
    /// `token`): not a signature, only a password in the body. The field's
    /// value is blanked in the raw record (see [`Verifier::redact`]).
    BodyToken {
        secrets: Vec<SecretString>,
        #[serde(default = "default_token_field")]
        field: String,
    },
    Jwt {
        secrets: Vec<SecretString>,
        #[serde(default)]
        token_in: TokenIn,
        /// Clock skew allowed on `exp`, `nbf` and `iat`.
        #[serde(default = "default_leeway_secs")]
        leeway_secs: u64,
        /// Refuse a token whose `iat` is older than this (Vonage's tokens
        /// carry no `exp`). 0, the default: no limit, since a platform
        /// that retries with the first token would otherwise have its
        /// retries refused, and the event lost.
        #[serde(default)]
        max_age_secs: u64,
    },
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha1,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// Where the JWT is.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenIn {
    /// The body is the token (Dialpad).
    #[default]
    Body,
    /// `Authorization: Bearer <token>`, with the body's SHA-256 in the
    /// `payload_hash` claim (Vonage).
    Bearer,
}

fn default_timestamped_header() -> String {
    "stripe-signature".into()
}
fn default_ed25519_signature_header() -> String {
    "telnyx-signature-ed25519".into()
}
fn default_ed25519_timestamp_header() -> String {
    "telnyx-timestamp".into()
}
fn default_token_field() -> String {
    "token".into()
}
fn default_tolerance_secs() -> u64 {
    300
}
fn default_leeway_secs() -> u64 {
    60
}

/// Why a delivery was refused: said in the 401's body and the log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no `{0}` header")]
    Missing(String),
    #[error("no `{0}` field in the body")]
    MissingField(String),
    #[error("`{0}` is not in the expected form")]
    Malformed(String),
    #[error("the signature does not match")]
    Mismatch,
    #[error("the timestamp is {0} s away from now, past the {1} s tolerance")]
    Stale(u64, u64),
    #[error("the token is expired or not yet valid")]
    Expired,
    #[error("the body's SHA-256 is not the signed one")]
    BodyHash,
}

/// What a signature is checked against.
pub struct Signed<'a> {
    /// The URL the platform called (only Twilio signs it): see
    /// [`crate::ingest`]'s `called_url`.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// A source's configured scheme, ready to check deliveries.
pub struct Verifier {
    scheme: Scheme,
}

enum Scheme {
    Hmac {
        keys: Vec<hmac::Key>,
        header: HeaderName,
        prefix: String,
        encoding: Encoding,
    },
    Timestamped {
        keys: Vec<hmac::Key>,
        header: HeaderName,
        tolerance: u64,
    },
    Twilio {
        keys: Vec<hmac::Key>,
    },
    Ed25519 {
        keys: Vec<[u8; 32]>,
        signature_header: HeaderName,
        timestamp_header: HeaderName,
        tolerance: u64,
    },
    BodyToken {
        /// SHA-256 of each token: the tokens themselves are not kept.
        digests: Vec<[u8; 32]>,
        field: String,
    },
    Jwt {
        keys: Vec<hmac::Key>,
        token_in: TokenIn,
        leeway: u64,
        max_age: Option<u64>,
    },
}

impl Verifier {
    /// Checks `settings` (of the setting named `at`, for errors) and builds
    /// the verifier.
    pub fn new(settings: &SignatureSettings, at: &str) -> Result<Verifier, ConfigError> {
        let keys = |secrets: &[SecretString], algorithm: hmac::Algorithm| {
            if secrets.is_empty() {
                return Err(invalid(
                    format!("{at}.secrets"),
                    "needs at least one secret",
                ));
            }
            if secrets.iter().any(|s| s.expose_secret().is_empty()) {
                return Err(invalid(format!("{at}.secrets"), "has an empty secret"));
            }
            Ok(secrets
                .iter()
                .map(|s| hmac::Key::new(algorithm, s.expose_secret().as_bytes()))
                .collect())
        };
        let header = |name: &str, setting: &str| {
            HeaderName::try_from(name)
                .map_err(|_| invalid(format!("{at}.{setting}"), "is not a valid header name"))
        };
        let tolerance = |secs: u64| {
            if secs == 0 {
                Err(invalid(
                    format!("{at}.tolerance_secs"),
                    "must be greater than 0",
                ))
            } else {
                Ok(secs)
            }
        };
        let scheme = match settings {
            SignatureSettings::Hmac {
                secrets,
                header: name,
                prefix,
                algorithm,
                encoding,
            } => Scheme::Hmac {
                keys: keys(
                    secrets,
                    match algorithm {
                        HmacAlgorithm::Sha256 => hmac::HMAC_SHA256,
                        HmacAlgorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    },
                )?,
                header: header(name, "header")?,
                prefix: prefix.clone(),
                encoding: *encoding,
            },
            SignatureSettings::HmacTimestamped {
                secrets,
                header: name,
                tolerance_secs,
            } => Scheme::Timestamped {
                keys: keys(secrets, hmac::HMAC_SHA256)?,
                header: header(name, "header")?,
                tolerance: tolerance(*tolerance_secs)?,
            },
            SignatureSettings::Twilio { secrets } => Scheme::Twilio {
                keys: keys(secrets, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY)?,
            },
            SignatureSettings::Ed25519 {
                public_keys,
                signature_header,
                timestamp_header,
                tolerance_secs,
            } => {
                if public_keys.is_empty() {
                    return Err(invalid(
                        format!("{at}.public_keys"),
                        "needs at least one public key",
                    ));
                }
                let keys = public_keys
                    .iter()
                    .map(|k| {
                        STANDARD
                            .decode(k.trim())
                            .ok()
                            .and_then(|b| <[u8; 32]>::try_from(b).ok())
                            .ok_or_else(|| {
                                invalid(
                                    format!("{at}.public_keys"),
                                    "holds a key that is not 32 bytes in base64",
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?;
                Scheme::Ed25519 {
                    keys,
                    signature_header: header(signature_header, "signature_header")?,
                    timestamp_header: header(timestamp_header, "timestamp_header")?,
                    tolerance: tolerance(*tolerance_secs)?,
                }
            }
            SignatureSettings::BodyToken { secrets, field } => {
                keys(secrets, hmac::HMAC_SHA256)?; // the same checks
                if field.is_empty() {
                    return Err(invalid(format!("{at}.field"), "must name a field"));
                }
                Scheme::BodyToken {
                    digests: secrets
                        .iter()
                        .map(|s| sha256(s.expose_secret().as_bytes()))
                        .collect(),
                    field: field.clone(),
                }
            }
            SignatureSettings::Jwt {
                secrets,
                token_in,
                leeway_secs,
                max_age_secs,
            } => Scheme::Jwt {
                keys: keys(secrets, hmac::HMAC_SHA256)?,
                token_in: *token_in,
                leeway: *leeway_secs,
                max_age: (*max_age_secs > 0).then_some(*max_age_secs),
            },
        };
        Ok(Verifier { scheme })
    }

    /// A source's verifier: its `signature` section, or Twilio's scheme
    /// when it lists `auth_tokens` (`sources.twilio.auth_tokens`), or none.
    /// `at` names the source's settings (`sources.<name>`) in errors.
    pub fn of_source(
        signature: Option<&SignatureSettings>,
        auth_tokens: &[SecretString],
        at: &str,
    ) -> Result<Option<Verifier>, ConfigError> {
        match (signature, auth_tokens) {
            (Some(_), [_, ..]) => Err(invalid(
                format!("{at}.auth_tokens"),
                "and a `signature` section are both set: keep one",
            )),
            (Some(s), []) => Verifier::new(s, &format!("{at}.signature")).map(Some),
            (None, []) => Ok(None),
            (None, tokens) => {
                if tokens.iter().any(|t| t.expose_secret().is_empty()) {
                    return Err(invalid(format!("{at}.auth_tokens"), "has an empty token"));
                }
                let keys = tokens
                    .iter()
                    .map(|t| {
                        hmac::Key::new(
                            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                            t.expose_secret().as_bytes(),
                        )
                    })
                    .collect();
                Ok(Some(Verifier {
                    scheme: Scheme::Twilio { keys },
                }))
            }
        }
    }

    /// The scheme's name, for logs and metrics.
    pub fn scheme(&self) -> &'static str {
        match self.scheme {
            Scheme::Hmac { .. } => "hmac",
            Scheme::Timestamped { .. } => "hmac_timestamped",
            Scheme::Twilio { .. } => "twilio",
            Scheme::Ed25519 { .. } => "ed25519",
            Scheme::BodyToken { .. } => "body_token",
            Scheme::Jwt { .. } => "jwt",
        }
    }

    /// Whether the scheme signs the URL (so `public_url` matters).
    pub fn signs_url(&self) -> bool {
        matches!(self.scheme, Scheme::Twilio { .. })
    }

    pub fn verify(&self, signed: &Signed<'_>) -> Result<(), Refused> {
        match &self.scheme {
            Scheme::Hmac {
                keys,
                header,
                prefix,
                encoding,
            } => {
                let value = header_str(signed.headers, header)?;
                let text = strip_prefix_ignore_case(value.trim(), prefix)
                    .ok_or_else(|| Refused::Malformed(header.to_string()))?;
                let tag = match encoding {
                    Encoding::Hex => hex_decode(text.trim()),
                    Encoding::Base64 => STANDARD.decode(text.trim()).ok(),
                }
                .ok_or_else(|| Refused::Malformed(header.to_string()))?;
                any_key(keys, &[signed.body], &tag)
            }
            Scheme::Timestamped {
                keys,
                header,
                tolerance,
            } => {
                let value = header_str(signed.headers, header)?;
                let (t, tags) = parse_timestamped(value)
                    .ok_or_else(|| Refused::Malformed(header.to_string()))?;
                within(signed.now, t, *tolerance)?;
                let t = t.to_string();
                let mut result = Err(Refused::Mismatch);
                for tag in tags {
                    if any_key(keys, &[t.as_bytes(), b".", signed.body], &tag).is_ok() {
                        result = Ok(());
                    }
                }
                result
            }
            Scheme::Twilio { keys } => verify_twilio(keys, signed),
            Scheme::Ed25519 {
                keys,
                signature_header,
                timestamp_header,
                tolerance,
            } => {
                let sig = header_str(signed.headers, signature_header)?;
                let sig = STANDARD
                    .decode(sig.trim())
                    .map_err(|_| Refused::Malformed(signature_header.to_string()))?;
                let ts = header_str(signed.headers, timestamp_header)?.trim();
                let t: u64 = ts
                    .parse()
                    .map_err(|_| Refused::Malformed(timestamp_header.to_string()))?;
                within(signed.now, t, *tolerance)?;
                let mut message = Vec::with_capacity(ts.len() + 1 + signed.body.len());
                message.extend_from_slice(ts.as_bytes());
                message.push(b'|');
                message.extend_from_slice(signed.body);
                let mut ok = false;
                for key in keys {
                    ok |= signature::UnparsedPublicKey::new(&signature::ED25519, key)
                        .verify(&message, &sig)
                        .is_ok();
                }
                ok.then_some(()).ok_or(Refused::Mismatch)
            }
            Scheme::BodyToken { digests, field } => {
                let token = body_token(signed.body, field)?;
                let presented = sha256(token.as_bytes());
                let mut ok = false;
                for digest in digests {
                    ok |= bool::from(subtle::ConstantTimeEq::ct_eq(&presented[..], &digest[..]));
                }
                ok.then_some(()).ok_or(Refused::Mismatch)
            }
            Scheme::Jwt {
                keys,
                token_in,
                leeway,
                max_age,
            } => verify_jwt(keys, *token_in, *leeway, *max_age, signed),
        }
    }
}

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
fn body_token(body: &[u8], field: &str) -> Result<String, Refused> {
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

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<&'a str, Refused> {
    let value = headers
        .get(name)
        .ok_or_else(|| Refused::Missing(name.to_string()))?;
    value
        .to_str()
        .map_err(|_| Refused::Malformed(name.to_string()))
}

fn within(now: u64, t: u64, tolerance: u64) -> Result<(), Refused> {
    let off = now.abs_diff(t);
    if off > tolerance {
        Err(Refused::Stale(off, tolerance))
    } else {
        Ok(())
    }
}

/// Whether `tag` is the HMAC of the concatenated `parts` under any key.
/// Every key is tried, so timing does not tell which one matched.
fn any_key(keys: &[hmac::Key], parts: &[&[u8]], tag: &[u8]) -> Result<(), Refused> {
    let mut ok = false;
    for key in keys {
        let mut ctx = hmac::Context::with_key(key);
        for part in parts {
            ctx.update(part);
        }
        let computed = ctx.sign();
        ok |= bool::from(subtle::ConstantTimeEq::ct_eq(computed.as_ref(), tag));
    }
    ok.then_some(()).ok_or(Refused::Mismatch)
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`: the timestamp and every `v1` tag
/// (other schemes' entries, `v0`, are ignored).
fn parse_timestamped(value: &str) -> Option<(u64, Vec<Vec<u8>>)> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in value.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "t" => t = Some(v.trim().parse().ok()?),
            "v1" => tags.push(hex_decode(v.trim())?),
            _ => {}
        }
    }
    (!tags.is_empty()).then_some(())?;
    Some((t?, tags))
}

/// Twilio's request validation: base64 HMAC-SHA1 of the URL, followed for a
/// form body by each parameter's name and value, sorted. A JSON body is
/// signed through the URL's `bodySHA256` (its hex SHA-256). Like Twilio's
/// own libraries, the URL is tried with and without its default port.
fn verify_twilio(keys: &[hmac::Key], signed: &Signed<'_>) -> Result<(), Refused> {
    const HEADER: &str = "x-twilio-signature";
    let tag = signed
        .headers
        .get(HEADER)
        .ok_or_else(|| Refused::Missing(HEADER.into()))?
        .to_str()
        .ok()
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .ok_or_else(|| Refused::Malformed(HEADER.into()))?;
    let form = signed
        .content_type
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let mut params = String::new();
    if form {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(signed.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        pairs.sort();
        for (k, v) in pairs {
            params.push_str(&k);
            params.push_str(&v);
        }
    } else if let Some(expected) = query_param(signed.url, "bodySHA256") {
        let actual = hex_encode(digest::digest(&digest::SHA256, signed.body).as_ref());
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(Refused::BodyHash);
        }
    }
    let mut ok = false;
    for url in url_variants(signed.url) {
        ok |= any_key(keys, &[url.as_bytes(), params.as_bytes()], &tag).is_ok();
    }
    ok.then_some(()).ok_or(Refused::Mismatch)
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The URL as given, with its default port added when it has none, and
/// without its port when it has one: what Twilio's Python library tries
/// ("signature generation on the back end is inconsistent").
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let default = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // `host[:port]`; an IPv6 host is in brackets.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    match port {
        Some(_) => out.push(format!("{scheme}://{host}{tail}")),
        None => out.push(format!("{scheme}://{host}:{default}{tail}")),
    }
    out
}

/// An HS256 JWT: the body, or the bearer token whose `payload_hash` is the
/// body's SHA-256 (hex). `alg` must be HS256 (never `none`); `exp`, `nbf`
/// and `iat`, when present, must hold within `leeway`.
fn verify_jwt(
    keys: &[hmac::Key],
    token_in: TokenIn,
    leeway: u64,
    max_age: Option<u64>,
    signed: &Signed<'_>,
) -> Result<(), Refused> {
    let token = match token_in {
        TokenIn::Body => std::str::from_utf8(signed.body)
            .map_err(|_| Refused::Malformed("body".into()))?
            .trim(),
        TokenIn::Bearer => {
            let value = signed
                .headers
                .get("authorization")
                .ok_or_else(|| Refused::Missing("authorization".into()))?
                .to_str()
                .map_err(|_| Refused::Malformed("authorization".into()))?
                .trim();
            strip_prefix_ignore_case(value, "bearer ")
                .ok_or_else(|| Refused::Malformed("authorization".into()))?
                .trim()
        }
    };
    let what = match token_in {
        TokenIn::Body => "body",
        TokenIn::Bearer => "authorization",
    };
    let malformed = || Refused::Malformed(what.into());
    let mut parts = token.splitn(3, '.');
    let (Some(head), Some(claims), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    if header["alg"] != "HS256" {
        return Err(malformed());
    }
    let tag = URL_SAFE_NO_PAD.decode(sig).map_err(|_| malformed())?;
    any_key(keys, &[head.as_bytes(), b".", claims.as_bytes()], &tag)?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let time = |name: &str| {
        claims[name]
            .as_u64()
            .or_else(|| claims[name].as_f64().map(|f| f as u64))
    };
    let now = signed.now;
    if time("exp").is_some_and(|exp| now > exp.saturating_add(leeway))
        || time("nbf").is_some_and(|nbf| nbf > now.saturating_add(leeway))
        || time("iat").is_some_and(|iat| iat > now.saturating_add(leeway))
        || max_age.is_some_and(|max| match time("iat") {
            // No `iat`: the age cannot be told, so the limit refuses it.
            None => true,
            Some(iat) => now > iat.saturating_add(max).saturating_add(leeway),
        })
    {
        return Err(Refused::Expired);
    }
    if token_in == TokenIn::Bearer {
        let actual = hex_encode(digest::digest(&digest::SHA256, signed.body).as_ref());
        match claims["payload_hash"].as_str() {
            Some(expected) if expected.eq_ignore_ascii_case(&actual) => {}
            None if signed.body.is_empty() => {}
            _ => return Err(Refused::BodyHash),
        }
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn verifier(toml: &str) -> Verifier {
        let settings: SignatureSettings = toml_settings(toml);
        Verifier::new(&settings, "sources.test.signature").expect("valid settings")
    }

    fn toml_settings(toml: &str) -> SignatureSettings {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml))
            .extract()
            .expect("settings parse")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn signed<'a>(
        url: &'a str,
        headers: &'a HeaderMap,
        ct: Option<&'a str>,
        body: &'a [u8],
        now: u64,
    ) -> Signed<'a> {
        Signed {
            url,
            headers,
            content_type: ct,
            body,
            now,
        }
    }

    fn hmac_hex(alg: hmac::Algorithm, key: &str, parts: &[&[u8]]) -> String {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, key.as_bytes()));
        for p in parts {
            ctx.update(p);
        }
        hex_encode(ctx.sign().as_ref())
    }

    /// Twilio's own example (its "Webhooks security" page) verifies.
    #[test]
    fn twilio_documented_example() {
        let v = verifier("scheme = \"twilio\"\nsecrets = [\"12345\"]");
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212";
        let h = headers(&[("x-twilio-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")]);
        let form = Some("application/x-www-form-urlencoded");
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(v.verify(&signed(url, &h, form, body, 0)), Ok(()));
        // With the default port written out, as some proxies pass it.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(v.verify(&signed(with_port, &h, form, body, 0)), Ok(()));
        // Another host, a changed parameter or a wrong token: refused.
        let other = "https://evil.example/myapp.php?foo=1&bar=2";
        assert_eq!(
            v.verify(&signed(other, &h, form, body, 0)),
            Err(Refused::Mismatch)
        );
        let tampered = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=9999&From=%2B12349013030&To=%2B18005551212";
        assert_eq!(
            v.verify(&signed(url, &h, form, tampered, 0)),
            Err(Refused::Mismatch)
        );
        let wrong = verifier("scheme = \"twilio\"\nsecrets = [\"54321\"]");
        assert_eq!(
            wrong.verify(&signed(url, &h, form, body, 0)),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            v.verify(&signed(url, &HeaderMap::new(), form, body, 0)),
            Err(Refused::Missing("x-twilio-signature".into()))
        );
    }

    /// twilio-python's own test vectors: repeated parameters (every value,
    /// sorted), a JSON body through `bodySHA256`, and URLs with ports.
    #[test]
    fn twilio_library_vectors() {
        let v = verifier("scheme = \"twilio\"\nsecrets = [\"12345\"]");
        let form = Some("application/x-www-form-urlencoded");
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let check = |url: &str, ct, body: &[u8], sig: &str| {
            let h = headers(&[("x-twilio-signature", sig)]);
            v.verify(&signed(url, &h, ct, body, 0))
        };
        let repeated = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(
            check(url, form, repeated, "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
            Ok(())
        );
        let json = br#"{"property": "value", "boolean": true}"#;
        let json_url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let json_ct = Some("application/json");
        assert_eq!(
            check(json_url, json_ct, json, "a9nBmqA0ju/hNViExpshrM61xv4="),
            Ok(())
        );
        let row2 = b"CallSid=CA1234567890ABCDE&Digits=1234&From=%2B14158675309&To=%2B18005551212&Caller=%2B14158675309";
        assert_eq!(
            check(url, form, row2, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            Ok(())
        );
        // Signed with `:443`, received without it; signed with `:80`,
        // received without it; signed with the non-default port received.
        assert_eq!(
            check(url, form, row2, "kvajT1Ptam85bY51eRf/AJRuM3w="),
            Ok(())
        );
        let http = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            check(http, form, row2, "0ZXoZLH/DfblKGATFgpif+LLRf4="),
            Ok(())
        );
        let port = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(
            check(port, form, row2, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
            Ok(())
        );
        assert_eq!(
            check(url, form, row2, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
            Err(Refused::Mismatch)
        );
    }

    /// GitHub's documented example (`X-Hub-Signature-256`).
    #[test]
    fn github_documented_example() {
        let v = verifier(
            "scheme = \"hmac\"\nsecrets = [\"It's a Secret to Everybody\"]\nheader = \"X-Hub-Signature-256\"\nprefix = \"sha256=\"",
        );
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(v.verify(&signed("", &h, None, b"Hello, World!", 0)), Ok(()));
    }

    /// A token with Vonage's documented claims (no `exp`): freshness, when
    /// wanted, comes from `iat` and `max_age_secs`.
    #[test]
    fn vonage_token_and_max_age() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MDAwMDAwMDAsImp0aSI6ImM1YmE4ZjI0LTFhMTQtNGMxMC1iZmRmLTNmYmU4Y2U1MTFiNSIsImlzcyI6IlZvbmFnZSIsInBheWxvYWRfaGFzaCI6IjNjOTBhNjQxMWRlOTg4ZWE2ZGYzYWRhNWMxOWE3MWM2Mjc1YjdiZjc2Y2NhNTZmZjFkYTNiNTMxNTcwZWE2ZjIiLCJhcGlfa2V5IjoiYTFiMmMzZCIsImFwcGxpY2F0aW9uX2lkIjoiYWFhYWFhYWEtYmJiYi1jY2NjLWRkZGQtMDEyMzQ1Njc4OWFiIn0.oAw9vwPSZMhFaqE7LvcU8jdc7VWY2fxhebJz__Dr_dk";
        let body = br#"{"status":"completed","uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab"}"#;
        let h = headers(&[("authorization", &format!("Bearer {token}"))]);
        let settings = "scheme = \"jwt\"\nsecrets = [\"signature_secret_example_0123456789\"]\ntoken_in = \"bearer\"";
        let v = verifier(settings);
        assert_eq!(v.verify(&signed("", &h, None, body, 1_700_000_000)), Ok(()));
        // Without a limit an old token still verifies (a retry sent with the
        // first token must not be lost); with one, it does not.
        assert_eq!(v.verify(&signed("", &h, None, body, 1_800_000_000)), Ok(()));
        let limited = verifier(&format!("{settings}\nmax_age_secs = 300"));
        assert_eq!(
            limited.verify(&signed("", &h, None, body, 1_700_000_200)),
            Ok(())
        );
        assert_eq!(
            limited.verify(&signed("", &h, None, body, 1_700_001_000)),
            Err(Refused::Expired)
        );
    }

    /// A JSON body is signed through `bodySHA256` in the URL.
    #[test]
    fn twilio_json_body() {
        let body = br#"{"CallSid":"CA1"}"#;
        let hash = hex_encode(digest::digest(&digest::SHA256, body).as_ref());
        let url = format!("https://hooks.example.com/v1/twilio/voice?bodySHA256={hash}");
        let mut ctx =
            hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"tok"));
        ctx.update(url.as_bytes());
        let sig = STANDARD.encode(ctx.sign().as_ref());
        let h = headers(&[("x-twilio-signature", &sig)]);
        let v = verifier("scheme = \"twilio\"\nsecrets = [\"old\", \"tok\"]");
        let json = Some("application/json");
        assert_eq!(v.verify(&signed(&url, &h, json, body, 0)), Ok(()));
        assert_eq!(
            v.verify(&signed(&url, &h, json, br#"{"CallSid":"CA2"}"#, 0)),
            Err(Refused::BodyHash)
        );
    }

    #[test]
    fn hmac_over_the_body_with_prefix_and_rotation() {
        let body = br#"{"id":"1"}"#;
        let sig = format!("sha256={}", hmac_hex(hmac::HMAC_SHA256, "new", &[body]));
        let h = headers(&[("x-hub-signature-256", &sig)]);
        let v = verifier(
            "scheme = \"hmac\"\nsecrets = [\"old\", \"new\"]\nheader = \"X-Hub-Signature-256\"\nprefix = \"sha256=\"",
        );
        assert_eq!(v.verify(&signed("", &h, None, body, 0)), Ok(()));
        assert_eq!(
            v.verify(&signed("", &h, None, br#"{"id":"2"}"#, 0)),
            Err(Refused::Mismatch)
        );
        let no_prefix = headers(&[("x-hub-signature-256", &sig[7..])]);
        assert_eq!(
            v.verify(&signed("", &no_prefix, None, body, 0)),
            Err(Refused::Malformed("x-hub-signature-256".into()))
        );
        // SHA-1 in base64 (Shopify-style header, no prefix).
        let mut ctx =
            hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"k"));
        ctx.update(body);
        let b64 = STANDARD.encode(ctx.sign().as_ref());
        let h = headers(&[("x-signature", &b64)]);
        let v = verifier(
            "scheme = \"hmac\"\nsecrets = [\"k\"]\nheader = \"x-signature\"\nalgorithm = \"sha1\"\nencoding = \"base64\"",
        );
        assert_eq!(v.verify(&signed("", &h, None, body, 0)), Ok(()));
    }

    #[test]
    fn timestamped_within_its_tolerance_only() {
        let body = b"{}";
        let t = 1_700_000_000u64;
        let tag = hmac_hex(
            hmac::HMAC_SHA256,
            "whsec",
            &[t.to_string().as_bytes(), b".", body],
        );
        let value = format!("t={t},v1=00ff,v1={tag}");
        let h = headers(&[("x-ps-signature", &value)]);
        let v = verifier(
            "scheme = \"hmac_timestamped\"\nsecrets = [\"whsec\"]\nheader = \"X-PS-Signature\"",
        );
        assert_eq!(v.verify(&signed("", &h, None, body, t + 299)), Ok(()));
        assert_eq!(
            v.verify(&signed("", &h, None, body, t + 301)),
            Err(Refused::Stale(301, 300))
        );
        assert_eq!(
            v.verify(&signed("", &h, None, b"{ }", t)),
            Err(Refused::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = headers(&[("x-ps-signature", &format!("t={},v1={tag}", t + 1))]);
        assert_eq!(
            v.verify(&signed("", &moved, None, body, t)),
            Err(Refused::Mismatch)
        );
        let bad = headers(&[("x-ps-signature", "v1=abcd")]);
        assert_eq!(
            v.verify(&signed("", &bad, None, body, t)),
            Err(Refused::Malformed("x-ps-signature".into()))
        );
    }

    #[test]
    fn ed25519_over_timestamp_and_body() {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = STANDARD.encode(pair.public_key().as_ref());
        let body = br#"{"data":{"event_type":"call.hangup"}}"#;
        let t = "1700000000";
        let sig = STANDARD.encode(pair.sign(&[t.as_bytes(), b"|", body].concat()).as_ref());
        let h = headers(&[("telnyx-signature-ed25519", &sig), ("telnyx-timestamp", t)]);
        let other = STANDARD.encode([7u8; 32]);
        let v = verifier(&format!(
            "scheme = \"ed25519\"\npublic_keys = [\"{other}\", \"{public}\"]"
        ));
        let now = 1_700_000_010;
        assert_eq!(v.verify(&signed("", &h, None, body, now)), Ok(()));
        assert_eq!(
            v.verify(&signed("", &h, None, b"{}", now)),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            v.verify(&signed("", &h, None, body, now + 600)),
            Err(Refused::Stale(610, 300))
        );
        let stale_key = verifier(&format!(
            "scheme = \"ed25519\"\npublic_keys = [\"{other}\"]"
        ));
        assert_eq!(
            stale_key.verify(&signed("", &h, None, body, now)),
            Err(Refused::Mismatch)
        );
    }

    fn jwt(key: &str, header: &str, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let c = URL_SAFE_NO_PAD.encode(claims);
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
            format!("{h}.{c}").as_bytes(),
        );
        format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    #[test]
    fn jwt_in_the_body_hs256_only() {
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let token = jwt("secret", hs, r#"{"call_id":1,"exp":2000}"#);
        let v = verifier("scheme = \"jwt\"\nsecrets = [\"secret\"]");
        let none = HeaderMap::new();
        assert_eq!(
            v.verify(&signed("", &none, None, token.as_bytes(), 1000)),
            Ok(())
        );
        assert_eq!(
            v.verify(&signed("", &none, None, token.as_bytes(), 2100)),
            Err(Refused::Expired)
        );
        let forged = jwt("other", hs, r#"{"call_id":1}"#);
        assert_eq!(
            v.verify(&signed("", &none, None, forged.as_bytes(), 1000)),
            Err(Refused::Mismatch)
        );
        // `alg: none` and other algorithms are refused before any check.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"call_id":1}"#)
        );
        assert_eq!(
            v.verify(&signed("", &none, None, unsigned.as_bytes(), 1000)),
            Err(Refused::Malformed("body".into()))
        );
    }

    #[test]
    fn jwt_bearer_with_payload_hash() {
        let body = br#"{"status":"completed"}"#;
        let hash = hex_encode(digest::digest(&digest::SHA256, body).as_ref());
        let token = jwt(
            "sig",
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &format!(r#"{{"iat":1000,"payload_hash":"{hash}"}}"#),
        );
        let h = headers(&[("authorization", &format!("Bearer {token}"))]);
        let v = verifier("scheme = \"jwt\"\nsecrets = [\"sig\"]\ntoken_in = \"bearer\"");
        assert_eq!(v.verify(&signed("", &h, None, body, 1000)), Ok(()));
        assert_eq!(
            v.verify(&signed("", &h, None, br#"{"status":"failed"}"#, 1000)),
            Err(Refused::BodyHash)
        );
        assert_eq!(
            v.verify(&signed("", &HeaderMap::new(), None, body, 1000)),
            Err(Refused::Missing("authorization".into()))
        );
    }

    /// Aircall's `token` in the body: checked, then blanked for Kafka with
    /// the rest of the body byte for byte.
    #[test]
    fn body_token_checked_and_redacted() {
        let v = verifier("scheme = \"body_token\"\nsecrets = [\"old\", \"cebcaac65\"]");
        let body = br#"{"resource":"call","event":"call.created","timestamp":1732622896,"token" : "cebcaac65","data":{"id":123}}"#;
        let none = HeaderMap::new();
        assert_eq!(v.verify(&signed("", &none, None, body, 0)), Ok(()));
        let redacted = v.redact(body).expect("redacted");
        assert_eq!(
            std::str::from_utf8(&redacted).unwrap(),
            r#"{"resource":"call","event":"call.created","timestamp":1732622896,"token" : "[redacted]","data":{"id":123}}"#
        );
        let wrong = br#"{"token":"guess","data":{"id":123}}"#;
        assert_eq!(
            v.verify(&signed("", &none, None, wrong, 0)),
            Err(Refused::Mismatch)
        );
        let missing = br#"{"data":{"id":123}}"#;
        assert_eq!(
            v.verify(&signed("", &none, None, missing, 0)),
            Err(Refused::MissingField("token".into()))
        );
        assert_eq!(
            v.verify(&signed("", &none, None, b"token=cebcaac65", 0)),
            Err(Refused::Malformed("body".into()))
        );
        // Written with an escape: found by value, the document rewritten.
        let escaped = br#"{"token":"cebca\u0061c65","data":{"id":1}}"#;
        assert_eq!(v.verify(&signed("", &none, None, escaped, 0)), Ok(()));
        let out: serde_json::Value = serde_json::from_slice(&v.redact(escaped).unwrap()).unwrap();
        assert_eq!(out["token"], "[redacted]");
        assert_eq!(out["data"]["id"], 1);
        // Other schemes keep the body as received.
        assert!(verifier("scheme = \"twilio\"\nsecrets = [\"t\"]")
            .redact(body)
            .is_none());
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let err = |toml: &str| match Verifier::new(&toml_settings(toml), "sources.x.signature") {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e.to_string(),
        };
        assert!(err("scheme = \"twilio\"\nsecrets = []").contains("sources.x.signature.secrets"));
        assert!(
            err("scheme = \"hmac\"\nsecrets = [\"k\"]\nheader = \"bad header\"")
                .contains("sources.x.signature.header")
        );
        assert!(err("scheme = \"ed25519\"\npublic_keys = [\"AAAA\"]")
            .contains("sources.x.signature.public_keys"));
        assert!(
            err("scheme = \"hmac_timestamped\"\nsecrets = [\"k\"]\ntolerance_secs = 0")
                .contains("tolerance_secs")
        );
    }

    #[test]
    fn url_variants_add_or_drop_the_default_port() {
        assert_eq!(
            url_variants("https://a.example/x?y=1"),
            ["https://a.example/x?y=1", "https://a.example:443/x?y=1"]
        );
        assert_eq!(
            url_variants("http://a.example:80/x"),
            ["http://a.example:80/x", "http://a.example/x"]
        );
        assert_eq!(
            url_variants("https://a.example:8443/x"),
            ["https://a.example:8443/x", "https://a.example/x"]
        );
        assert_eq!(
            url_variants("https://[::1]/x"),
            ["https://[::1]/x", "https://[::1]:443/x"]
        );
    }
}
