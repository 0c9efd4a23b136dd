//! HS256 JSON Web Tokens: Dialpad's body, Vonage's bearer token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

use super::{any_key, sha256_hex, strip_prefix_ignore_case, Refused, Signed, TokenIn};

/// An HS256 JWT: the body, or the bearer token whose `payload_hash` is the
/// body's SHA-256 (hex). `alg` must be HS256 (never `none`); `exp`, `nbf`
/// and `iat`, when present, must hold within `leeway`.
pub(super) fn verify_jwt(
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
        let actual = sha256_hex(signed.body);
        match claims["payload_hash"].as_str() {
            Some(expected) if expected.eq_ignore_ascii_case(&actual) => {}
            None if signed.body.is_empty() => {}
            _ => return Err(Refused::BodyHash),
        }
    }
    Ok(())
}
