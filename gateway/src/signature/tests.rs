use super::twilio::url_variants;
use super::*;
use actix_web::http::header::HeaderValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
