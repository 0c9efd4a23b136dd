//! Twilio's URL signature: behind a proxy, with forwarded headers, and the built-in source.

use super::*;

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
