//! Tokens: a JWT in the body or a bearer header, and a shared token in the body.

use super::*;

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
