//! Signed sources over HTTP, one scheme at a time: a delivery signed as its
//! platform signs it is answered 200 and is in Kafka; a tampered body, a
//! wrong secret, a stale timestamp or a missing header is answered 401 and
//! leaves nothing in any topic; a rotated (older) secret is still accepted;
//! and behind a proxy, `public_url` makes a URL signature verify.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_over_the_body() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "hmac"))
            .merge((
                "sources.onoff.signature.secrets",
                ["old-secret", "new-secret"],
            ))
            .merge(("sources.onoff.signature.header", "X-Hub-Signature-256"))
            .merge(("sources.onoff.signature.prefix", "sha256="))
    })
    .await;
    let signed = |n: u32, key: &str, body: Option<String>| {
        let sent = sms(n);
        let sig = format!(
            "sha256={}",
            hex(&mac(hmac::HMAC_SHA256, key, &[sent.as_bytes()]))
        );
        Try {
            what: "",
            path: "/v1/onoff/sms".into(),
            content_type: "application/json",
            headers: vec![("x-hub-signature-256", sig)],
            body: body.unwrap_or(sent),
        }
    };
    let named = |what, mut t: Try| {
        t.what = what;
        t
    };
    let mut missing = signed(5, "new-secret", None);
    missing.headers.clear();
    judge(
        gw,
        "hmac",
        "onoff",
        &[
            named("current secret", signed(1, "new-secret", None)),
            named(
                "rotated-out secret still listed",
                signed(2, "old-secret", None),
            ),
        ],
        &[
            named("tampered body", signed(3, "new-secret", Some(sms(33)))),
            named("wrong secret", signed(4, "guess", None)),
            named("missing header", missing),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_with_a_timestamp() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.telecmi.signature.scheme", "hmac_timestamped"))
            .merge(("sources.telecmi.signature.secrets", ["ps-secret"]))
            .merge(("sources.telecmi.signature.header", "X-PS-Signature"))
    })
    .await;
    let signed = |leg: &str, t: u64, key: &str, tamper: bool| {
        let body = if leg == "a" {
            TELECMI_LEG_A
        } else {
            TELECMI_LEG_B
        };
        let sig = hex(&mac(
            hmac::HMAC_SHA256,
            key,
            &[t.to_string().as_bytes(), b".", body.as_bytes()],
        ));
        Try {
            what: "",
            path: "/v1/telecmi/cdr".into(),
            content_type: "application/json",
            headers: vec![("x-ps-signature", format!("t={t},v1={sig}"))],
            body: if tamper {
                body.replace("answered", "missed")
            } else {
                body.to_string()
            },
        }
    };
    let named = |what, mut t: Try| {
        t.what = what;
        t
    };
    let t = now();
    judge(
        gw,
        "hmac_timestamped",
        "telecmi",
        &[
            named("fresh", signed("a", t, "ps-secret", false)),
            named("a minute old", signed("b", t - 60, "ps-secret", false)),
        ],
        &[
            named("stale timestamp", signed("a", t - 3600, "ps-secret", false)),
            named("tampered body", signed("a", t, "ps-secret", true)),
            named("wrong secret", signed("a", t, "other", false)),
        ],
    )
    .await;
}

/// Twilio signs the URL it called. The gateway is behind a proxy at
/// `https://hooks.example.com/cs`: with `public_url` set, the signature
/// over that URL verifies though the request reached 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_behind_a_proxy() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.xarios.signature.scheme", "twilio"))
            .merge(("sources.xarios.signature.secrets", ["twilio-token"]))
            .merge(("sources.xarios.public_url", "https://hooks.example.com/cs"))
    })
    .await;
    let path = "/v1/xarios/postcall?src=pbx1";
    let public = format!("https://hooks.example.com/cs{path}");
    let signed = |n: u32, url: &str, key: &str| Try {
        what: "",
        path: path.into(),
        content_type: "application/x-www-form-urlencoded",
        headers: vec![(
            "x-twilio-signature",
            twilio_signature(key, url, &xarios_form(n)),
        )],
        body: xarios_form(n),
    };
    let named = |what, mut t: Try| {
        t.what = what;
        t
    };
    let mut tampered = signed(3, &public, "twilio-token");
    tampered.body = xarios_form(33);
    let local = gw.url(path);
    judge(
        gw,
        "twilio",
        "xarios",
        &[
            named(
                "signed over the public URL",
                signed(1, &public, "twilio-token"),
            ),
            named(
                "with the default port written out",
                signed(2, &public.replace(".com/", ".com:443/"), "twilio-token"),
            ),
        ],
        &[
            named(
                "signed over the URL the gateway sees",
                signed(4, &local, "twilio-token"),
            ),
            named("tampered form", tampered),
            named("wrong token", signed(5, &public, "not-the-token")),
        ],
    )
    .await;
}

/// Without `public_url`, and only when trusted, `X-Forwarded-*` name the
/// URL; untrusted, they are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_with_forwarded_headers_only_when_trusted() {
    for trusted in [true, false] {
        let gw = spawn_gateway(|f| {
            f.merge(("sources.xarios.signature.scheme", "twilio"))
                .merge(("sources.xarios.signature.secrets", ["tok"]))
                .merge(("sources.xarios.trust_forwarded_headers", trusted))
        })
        .await;
        let url = "https://edge.example.net/hooks/v1/xarios/postcall";
        let resp = gw
            .client
            .post(gw.url("/v1/xarios/postcall"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "edge.example.net")
            .header("x-forwarded-prefix", "/hooks")
            .header(
                "x-twilio-signature",
                twilio_signature("tok", url, &xarios_form(1)),
            )
            .body(xarios_form(1))
            .send()
            .await
            .unwrap();
        let expected = if trusted {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(resp.status(), expected, "trusted = {trusted}");
        assert_eq!(gw.count(Topic::Raw), i64::from(trusted));
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_over_timestamp_and_body() {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pair = |_| {
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap()
    };
    let (current, previous, stranger) = (pair(0), pair(1), pair(2));
    let keys = [
        STANDARD.encode(current.public_key().as_ref()),
        STANDARD.encode(previous.public_key().as_ref()),
    ];
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "ed25519"))
            .merge(("sources.onoff.signature.public_keys", keys))
    })
    .await;
    let signed = |n: u32, t: u64, key: &Ed25519KeyPair| {
        let body = sms(n);
        let sig = key.sign(&[t.to_string().as_bytes(), b"|", body.as_bytes()].concat());
        Try {
            what: "",
            path: "/v1/onoff/sms".into(),
            content_type: "application/json",
            headers: vec![
                ("telnyx-signature-ed25519", STANDARD.encode(sig.as_ref())),
                ("telnyx-timestamp", t.to_string()),
            ],
            body,
        }
    };
    let named = |what, mut t: Try| {
        t.what = what;
        t
    };
    let t = now();
    let mut tampered = signed(3, t, &current);
    tampered.body = sms(33);
    let mut no_timestamp = signed(6, t, &current);
    no_timestamp.headers.truncate(1);
    judge(
        gw,
        "ed25519",
        "onoff",
        &[
            named("current key", signed(1, t, &current)),
            named("previous key, still listed", signed(2, t, &previous)),
        ],
        &[
            named("tampered body", tampered),
            named("a key not configured", signed(4, t, &stranger)),
            named("stale timestamp", signed(5, t - 3600, &current)),
            named("missing timestamp header", no_timestamp),
        ],
    )
    .await;
}

/// Dialpad: the body is the JWT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_as_the_body() {
    // The JWT body is not an Onoff event: it is taken (200) and, not
    // normalizing, dead-lettered; what matters here is that only a
    // verified token gets that far. So: no events, one DLQ record each.
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "jwt"))
            .merge(("sources.onoff.signature.secrets", ["dialpad-secret"]))
    })
    .await;
    let t = now();
    let send = |claims: serde_json::Value, key: &str| {
        let body = jwt(key, &claims);
        let gw = &gw;
        async move {
            gw.client
                .post(gw.url("/v1/onoff/sms"))
                .header("content-type", "application/jwt")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let ok = send(
        serde_json::json!({"call_id": 1, "exp": t + 60}),
        "dialpad-secret",
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    for (what, resp) in [
        (
            "expired",
            send(
                serde_json::json!({"call_id": 2, "exp": t - 3600}),
                "dialpad-secret",
            )
            .await,
        ),
        (
            "wrong secret",
            send(serde_json::json!({"call_id": 3}), "guess").await,
        ),
    ] {
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(error_of(resp).await.contains("invalid signature (jwt)"));
    }
    assert_eq!(gw.count(Topic::Raw), 1);
    assert_eq!(
        gw.count(Topic::Dlq),
        1,
        "the verified one, not an Onoff event"
    );
    gw.stop().await;
}

/// Vonage: a bearer JWT whose `payload_hash` is the body's SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_with_the_body_hash() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "jwt"))
            .merge(("sources.onoff.signature.token_in", "bearer"))
            .merge(("sources.onoff.signature.secrets", ["vonage-secret"]))
    })
    .await;
    let signed = |n: u32, key: &str, body_hash_of: Option<String>| {
        let body = sms(n);
        let hashed = body_hash_of.unwrap_or_else(|| body.clone());
        let hash = hex(digest::digest(&digest::SHA256, hashed.as_bytes()).as_ref());
        let token = jwt(
            key,
            &serde_json::json!({"iat": now(), "payload_hash": hash}),
        );
        Try {
            what: "",
            path: "/v1/onoff/sms".into(),
            content_type: "application/json",
            headers: vec![("authorization", format!("Bearer {token}"))],
            body,
        }
    };
    let named = |what, mut t: Try| {
        t.what = what;
        t
    };
    let mut missing = signed(4, "vonage-secret", None);
    missing.headers.clear();
    judge(
        gw,
        "jwt",
        "onoff",
        &[named("signed", signed(1, "vonage-secret", None))],
        &[
            named(
                "body other than the hashed one",
                signed(2, "vonage-secret", Some(sms(22))),
            ),
            named("wrong secret", signed(3, "guess", None)),
            named("missing header", missing),
        ],
    )
    .await;
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

/// The built-in Twilio source: `sources.twilio.auth_tokens` and
/// `public_url`, a status callback and a recording callback signed as
/// Twilio signs them, each normalized; an unsigned one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_voice_callbacks_end_to_end() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.twilio.auth_tokens", ["old-token", "auth-token"]))
            .merge(("sources.twilio.public_url", "https://hooks.example.com"))
    })
    .await;
    let status = "AccountSid=AC0123&CallSid=CA42&CallStatus=no-answer&CallDuration=0&Direction=inbound&From=%2B14155550100&To=%2B14155550199&Timestamp=Sun%2C%2025%20Mar%202018%2009%3A53%3A19%20%2B0000";
    let recording = "AccountSid=AC0123&CallSid=CA43&RecordingSid=RE7&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2F2010-04-01%2FAccounts%2FAC0123%2FRecordings%2FRE7&RecordingStatus=completed&RecordingDuration=37";
    let url = "https://hooks.example.com/v1/twilio/voice";
    let post = |form: &'static str, signature: Option<String>| {
        let mut req = gw
            .client
            .post(gw.url("/v1/twilio/voice"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(sig) = signature {
            req = req.header("x-twilio-signature", sig);
        }
        req.send()
    };
    let ok = post(status, Some(twilio_signature("auth-token", url, status)))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let rotated = post(
        recording,
        Some(twilio_signature("old-token", url, recording)),
    )
    .await
    .unwrap();
    assert_eq!(rotated.status(), StatusCode::OK);
    let unsigned = post(status, None).await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let events: Vec<serde_json::Value> =
        gw.read(Topic::Events, 2).iter().map(Record::json).collect();
    assert_eq!(events.len(), 2);
    for event in &events {
        assert_valid_event(event);
        assert_eq!(event["provider"], "twilio");
    }
    let call = events
        .iter()
        .find(|e| e["kind"] == "call")
        .expect("the call");
    assert_eq!(
        (
            &call["status"],
            &call["direction"],
            &call["external"]["number"]
        ),
        (&"missed".into(), &"inbound".into(), &"+14155550100".into())
    );
    let rec = events
        .iter()
        .find(|e| e["kind"] == "recording")
        .expect("the recording");
    assert_eq!(rec["recording"]["ids"][0], "RE7");
    assert_eq!(gw.count(Topic::Raw), 2, "the unsigned one left nothing");
    gw.stop().await;
}

/// Aircall: the body's `token` checked (`body_token`), blanked in the raw
/// record, and the call normalized; a wrong or missing token refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aircall_body_token_end_to_end() {
    const TOKEN: &str = "cebcaac65f00d";
    let gw = spawn_gateway(|f| {
        f.merge(("sources.aircall.signature.scheme", "body_token"))
            .merge(("sources.aircall.signature.secrets", [TOKEN]))
    })
    .await;
    let ended = |token: &str| {
        serde_json::json!({"resource":"call","event":"call.ended","timestamp":1732622960,"token":token,
            "data":{"id":123,"direction":"inbound","status":"done","started_at":1732622895,
            "answered_at":1732622900,"ended_at":1732622959,"duration":64,"raw_digits":"+1 800-123-4567",
            "user":{"id":456,"name":"Jane Agent"},"number":{"digits":"+33 1 23 45 67 89"}}})
        .to_string()
    };
    let post = |body: String| {
        gw.client
            .post(gw.url("/v1/aircall/webhook"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(post(ended(TOKEN)).await.unwrap().status(), StatusCode::OK);
    for (what, body) in [
        ("wrong token", ended("guess")),
        ("no token", {
            let mut doc: serde_json::Value = serde_json::from_str(&ended(TOKEN)).unwrap();
            doc.as_object_mut().unwrap().remove("token");
            doc.to_string()
        }),
    ] {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(error_of(resp)
            .await
            .contains("invalid signature (body_token)"));
    }
    let raw = gw.read(Topic::Raw, 1);
    assert_eq!(raw.len(), 1, "refused deliveries left nothing");
    let stored = String::from_utf8(raw[0].payload.clone()).unwrap();
    assert!(!stored.contains(TOKEN), "the token reached Kafka: {stored}");
    assert_eq!(stored, ended("[redacted]"), "the rest byte for byte");
    let event = gw.read(Topic::Events, 1)[0].json();
    assert_valid_event(&event);
    assert_eq!(
        (&event["provider"], &event["kind"], &event["status"]),
        (&"aircall".into(), &"call".into(), &"answered".into())
    );
    for r in gw.read_all(Topic::Events) {
        assert!(!String::from_utf8_lossy(&r.payload).contains(TOKEN));
    }
    gw.stop().await;
}
