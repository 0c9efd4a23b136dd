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

mod body_token;
mod jwt;
mod settings;
#[cfg(test)]
mod tests;
mod twilio;

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::{digest, hmac, signature};
use secrecy::{ExposeSecret, SecretString};

use callstream_runtime::config::{invalid, ConfigError};

use body_token::{body_token, sha256};
use jwt::verify_jwt;
pub use settings::{Encoding, HmacAlgorithm, SignatureSettings, TokenIn};
use twilio::verify_twilio;

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
        let keys = |secrets: &[SecretString], algorithm| {
            hmac_keys(secrets, algorithm, &format!("{at}.secrets"))
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
                let keys = hmac_keys(
                    tokens,
                    hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    &format!("{at}.auth_tokens"),
                )?;
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

/// One HMAC key per secret of the setting `at`: at least one, none empty.
fn hmac_keys(
    secrets: &[SecretString],
    algorithm: hmac::Algorithm,
    at: &str,
) -> Result<Vec<hmac::Key>, ConfigError> {
    if secrets.is_empty() {
        return Err(invalid(at, "needs at least one secret"));
    }
    if secrets.iter().any(|s| s.expose_secret().is_empty()) {
        return Err(invalid(at, "has an empty secret"));
    }
    Ok(secrets
        .iter()
        .map(|s| hmac::Key::new(algorithm, s.expose_secret().as_bytes()))
        .collect())
}

/// Lowercase hex SHA-256 of `bytes` (Twilio's `bodySHA256`, Vonage's
/// `payload_hash`).
fn sha256_hex(bytes: &[u8]) -> String {
    hex_encode(digest::digest(&digest::SHA256, bytes).as_ref())
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
