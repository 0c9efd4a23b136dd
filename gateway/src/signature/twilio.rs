//! Twilio's request validation.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::hmac;

use super::{any_key, sha256_hex, Refused, Signed};

/// Twilio's request validation: base64 HMAC-SHA1 of the URL, followed for a
/// form body by each parameter's name and value, sorted. A JSON body is
/// signed through the URL's `bodySHA256` (its hex SHA-256). Like Twilio's
/// own libraries, the URL is tried with and without its default port.
pub(super) fn verify_twilio(keys: &[hmac::Key], signed: &Signed<'_>) -> Result<(), Refused> {
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
        let actual = sha256_hex(signed.body);
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
pub(super) fn url_variants(url: &str) -> Vec<String> {
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
