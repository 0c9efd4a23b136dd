//! What a client is answered when its request is wrong: keys, bodies that
//! do not normalize or are too large, paths, methods, slow clients.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_keys_get_401_and_publish_nothing() {
    let gw = spawn_gateway(with_keys).await;
    let attempts = [
        gw.client
            .post(gw.url("/v1/onoff/cdr"))
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client
            .post(gw.url("/v1/onoff/cdr"))
            .header("authorization", "x-api-key nope")
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client
            .post(gw.url("/v1/onoff/cdr?token=nope"))
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client.get(gw.url("/v1/xarios/postcall")).send().await,
        gw.client
            .post(gw.url("/v1/telecmi/cdr?token="))
            .body(TELECMI_LEG_A)
            .send()
            .await,
    ];
    for resp in attempts {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(error_of(resp).await.contains("API key"));
    }
    // Every answer above came after the handler finished, so the topics are
    // final: nothing may have been written.
    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0, "{topic:?}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"callstream_gateway_auth_failures_total{source="onoff"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"callstream_gateway_requests_total{outcome="unauthorized",source="xarios"} 1"#
    ));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_deliveries_go_to_the_dlq_with_200() {
    let gw = spawn_gateway(|f| f).await;
    let cases = [
        ("/v1/onoff/cdr", "{not json", "malformed"),
        (
            "/v1/onoff/cdr",
            r#"{"test":true,"message":"Integration test"}"#,
            "",
        ),
        (
            "/v1/onoff/cdr",
            r#"{"eventName":"CDR","callStatus":"ANSWERED"}"#,
            "missing_field",
        ),
        (
            "/v1/telecmi/cdr",
            r#"{"type":"cdr","status":"answered"}"#,
            "missing_field",
        ),
    ];
    for (path, body, _) in cases {
        let resp = post_json(&gw, path, body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{body}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "dead_lettered");
    }
    let dlq = gw.read(Topic::Dlq, cases.len());
    assert_eq!(dlq.len(), cases.len());
    for (path, body, reason) in cases {
        let record = dlq
            .iter()
            .find(|r| r.payload == body.as_bytes())
            .expect("each body dead-lettered");
        assert_eq!(record.header("cs_path"), Some(path));
        assert!(record
            .header("cs_dlq_detail")
            .is_some_and(|d| !d.is_empty()));
        if !reason.is_empty() {
            assert_eq!(record.header("cs_dlq_reason"), Some(reason), "{body}");
        }
        assert_eq!(record.key_str(), record.header("cs_request_id").unwrap());
    }
    assert_eq!(
        gw.count(Topic::Raw),
        cases.len() as i64,
        "the raw topic keeps even what failed"
    );
    assert_eq!(gw.count(Topic::Events), 0);
    assert!(gw
        .metrics()
        .await
        .contains("callstream_gateway_dlq_records_total"));
    gw.stop().await;
}

/// A body within `max_body_bytes` whose normalized event is larger than a
/// Kafka record may be (form data escapes control characters six times
/// over in JSON) is dead-lettered beside its raw record, not spooled as if
/// Kafka were down: such a delivery would fail every drain attempt and hold
/// every later spooled delivery behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_kafka_is_dead_lettered_and_nothing_waits_behind_it() {
    let gw = spawn_gateway(|f| f.merge(("max_body_bytes", 100_000))).await;
    let body = format!(
        "triggerId=t-1&tenantId=acme&cdr[id]=huge-1&cdr[start]=2024-05-29T09:37:35Z&customData[note]={}",
        "%01".repeat(30_000)
    );
    assert!(body.len() < 100_000);
    let resp = gw
        .client
        .post(gw.url("/v1/xarios/postcall"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "dead_lettered");
    let dlq = gw.read(Topic::Dlq, 1);
    assert_eq!(dlq[0].payload, body.as_bytes(), "the request, as received");
    assert_eq!(dlq[0].header("cs_dlq_reason"), Some("event_too_large"));
    assert_eq!(gw.read(Topic::Raw, 1)[0].payload, body.as_bytes());

    // Kafka is fine: the next delivery is published, not spooled.
    let resp = post_json(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "published");
    assert_eq!(gw.count(Topic::Events), 1);
    assert_eq!(gw.metric("callstream_gateway_kafka_degraded").await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_path_and_method_errors_are_json_and_publish_nothing() {
    let gw = spawn_gateway(|f| f.merge(("max_body_bytes", 1024))).await;
    let big = format!(
        r#"{{"id":"1","eventName":"CDR","callNotes":"{}"}}"#,
        "x".repeat(2048)
    );
    let resp = post_json(&gw, "/v1/onoff/cdr", &big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(resp).await.contains("1024"));

    let resp = post_json(&gw, "/v1/nope", "{}").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(error_of(resp).await.contains("/v1/nope"));

    let resp = gw.client.get(gw.url("/v1/onoff/cdr")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    assert!(error_of(resp).await.contains("GET"));

    let resp = gw
        .client
        .delete(gw.url("/v1/xarios/postcall"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST, PUT");

    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0);
    }
    gw.stop().await;
}

async fn raw_exchange(gw: &TestGateway, head: &str, wait: Duration) -> (String, Duration) {
    let addr = gw.address.trim_start_matches("http://");
    callstream_testkit::raw_exchange(addr, head.as_bytes(), wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let gw = spawn_gateway(|f| {
        f.merge(("body_read_timeout_ms", 300))
            .merge(("header_read_timeout_ms", 300))
    })
    .await;
    // Headers promise a body that never comes.
    let (answer, took) = raw_exchange(
        &gw,
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 300 ms"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Headers that never finish: the connection is closed.
    let (answer, took) = raw_exchange(
        &gw,
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(!answer.contains("200"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "closed after the header timeout, not {took:?}"
    );
    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0);
    }
    gw.stop().await;
}
