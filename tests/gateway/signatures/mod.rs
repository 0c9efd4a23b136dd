//! Signed sources over HTTP, one scheme at a time: a delivery signed as its
//! platform signs it is answered 200 and is in Kafka; a tampered body, a
//! wrong secret, a stale timestamp or a missing header is answered 401 and
//! leaves nothing in any topic; a rotated (older) secret is still accepted;
//! and behind a proxy, `public_url` makes a URL signature verify.

mod macs;
mod telnyx;
mod tokens;
mod twilio;

use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::{digest, hmac};

const XARIOS_FORM: &str = "triggerId=trig-{n}&tenantId=tenant-9&cdr%5Bid%5D=sess-{n}&cdr%5Bdur%5D=10&cdr%5Blost%5D=1&cdr%5Bdir%5D=2&cdr%5Bstart%5D=2024-05-29T09%3A37%3A35%2B01%3A00&cdr%5BcliNum%5D=%2B447000000000";

fn sms(n: u32) -> String {
    ONOFF_SMS.replace("sms-77", &format!("sms-{n}"))
}

fn xarios_form(n: u32) -> String {
    XARIOS_FORM.replace("{n}", &n.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(alg: hmac::Algorithm, key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, key.as_bytes()));
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

/// Twilio's signature of a form POST to `url`.
fn twilio_signature(token: &str, url: &str, form: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    let mut data = url.to_string();
    for (k, v) in pairs {
        data.push_str(&k);
        data.push_str(&v);
    }
    STANDARD.encode(mac(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        token,
        &[data.as_bytes()],
    ))
}

fn jwt(key: &str, claims: &serde_json::Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tag = mac(hmac::HMAC_SHA256, key, &[format!("{h}.{c}").as_bytes()]);
    format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// A delivery: where it goes, its headers and body.
struct Try {
    what: &'static str,
    path: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// `t`, named for the assertion messages.
fn named(what: &'static str, mut t: Try) -> Try {
    t.what = what;
    t
}

impl Try {
    async fn send(&self, gw: &TestGateway) -> reqwest::Response {
        let mut req = gw
            .client
            .post(gw.url(&self.path))
            .header("content-type", self.content_type)
            .body(self.body.clone());
        for (k, v) in &self.headers {
            req = req.header(*k, v);
        }
        req.send().await.expect("gateway answers")
    }
}

/// Sends the `good` deliveries (each 200) and the `bad` ones (each 401,
/// naming the scheme), then checks that Kafka holds exactly the good ones.
async fn judge(gw: TestGateway, scheme: &str, source: &str, good: &[Try], bad: &[Try]) {
    for t in good {
        let resp = t.send(&gw).await;
        let status = resp.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{scheme}: {}: {}",
            t.what,
            resp.text().await.unwrap()
        );
    }
    for t in bad {
        let resp = t.send(&gw).await;
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "{scheme}: {}",
            t.what
        );
        let error = error_of(resp).await;
        assert!(
            error.contains(&format!("invalid signature ({scheme})")),
            "{scheme}: {}: {error}",
            t.what
        );
    }
    // Every answer came after the handler finished: the topics are final.
    assert_eq!(gw.count(Topic::Raw), good.len() as i64, "{scheme}: raw");
    assert_eq!(
        gw.count(Topic::Events),
        good.len() as i64,
        "{scheme}: events"
    );
    assert_eq!(gw.count(Topic::Dlq), 0, "{scheme}: dlq");
    let metrics = gw.metrics().await;
    let failures = format!(
        "callstream_gateway_auth_failures_total{{source=\"{source}\"}} {}",
        bad.len()
    );
    assert!(metrics.contains(&failures), "{scheme}: no `{failures}`");
    gw.stop().await;
}

/// A wrong signature setting stops start-up, naming it.
#[test]
fn a_wrong_signature_setting_names_itself() {
    use callstream_gateway::config::Settings;
    let err = Settings::from_figment(
        Settings::defaults()
            .merge(("sources.onoff.signature.scheme", "ed25519"))
            .merge(("sources.onoff.signature.public_keys", ["not-a-key"])),
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("sources.onoff.signature.public_keys"), "{err}");
    let err = Settings::from_figment(
        Settings::defaults().merge(("sources.onoff.signature.scheme", "rot13")),
    )
    .expect_err("refused")
    .to_string();
    assert!(err.contains("rot13"), "{err}");
}
