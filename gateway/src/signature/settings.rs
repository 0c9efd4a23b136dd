//! `sources.<name>.signature`: which scheme, with which secrets.

use secrecy::SecretString;
use serde::Deserialize;

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
