//! `/metrics`, `/healthz` and `/readyz`: what they count, where they are
//! served, and HEAD.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_published_records() {
    let gw = spawn_gateway(|f| f).await;
    // Before any request, every series alerts may watch exists at 0.
    let metrics = gw.metrics().await;
    for line in [
        r#"callstream_gateway_requests_total{outcome="unavailable",source="onoff"} 0"#,
        r#"callstream_gateway_requests_total{outcome="published",source="telecmi"} 0"#,
        r#"callstream_gateway_dlq_records_total{reason="malformed",source="xarios"} 0"#,
        r#"callstream_gateway_auth_failures_total{source="onoff"} 0"#,
        r#"callstream_gateway_kafka_produce_errors_total{kind="timeout",topic="events"} 0"#,
        r#"callstream_gateway_records_published_total{topic="dlq"} 0"#,
        r#"callstream_gateway_request_duration_seconds_count{source="xarios"} 0"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    assert_eq!(
        post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await.status(),
        StatusCode::OK
    );
    let metrics = gw.metrics().await;
    for line in [
        r#"callstream_gateway_requests_total{outcome="published",source="onoff"} 1"#,
        r#"callstream_gateway_records_published_total{topic="raw"} 1"#,
        r#"callstream_gateway_records_published_total{topic="events"} 1"#,
        r#"callstream_gateway_request_duration_seconds_count{source="onoff"} 1"#,
        r#"callstream_gateway_kafka_produce_duration_seconds_count{topic="events"} 1"#,
        "callstream_gateway_requests_in_flight 0",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }
    gw.stop().await;
}

/// With `admin_listen` (the test kit sets it), `/metrics` leaves the
/// webhook port (which providers, and so the internet, reach) for a
/// listener of its own; `/healthz` and `/readyz` stay on the webhook port
/// for load balancers and are on the admin listener too; webhooks are not
/// served there. `/readyz` reuses its Kafka answer for a second, so probes
/// cannot turn into a metadata request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener() {
    let gw = spawn_gateway(|f| f).await;
    assert_ne!(gw.admin_address, gw.address);
    assert_eq!(
        post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await.status(),
        StatusCode::OK
    );
    let on_webhooks = gw.client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(on_webhooks.status(), StatusCode::NOT_FOUND);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let on_admin = gw.client.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(on_admin.status(), StatusCode::OK, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        let on_webhooks = gw.client.get(gw.url(path)).send().await.unwrap();
        assert_eq!(on_webhooks.status(), StatusCode::OK, "{path}");
    }
    assert!(gw
        .metrics()
        .await
        .contains(r#"callstream_gateway_requests_total{outcome="published",source="onoff"} 1"#));
    let webhook_on_admin = gw
        .client
        .post(gw.admin_url("/v1/onoff/sms"))
        .header("content-type", "application/json")
        .body(ONOFF_SMS)
        .send()
        .await
        .unwrap();
    assert_eq!(webhook_on_admin.status(), StatusCode::NOT_FOUND);

    // Kafka goes away: the answer of a moment ago still stands, then the
    // next check finds it down.
    // (With the spool on, an unreachable Kafka reads "degraded".)
    let ready = |gw: &TestGateway| {
        let request = gw.client.get(gw.admin_url("/readyz")).send();
        async move {
            let answer: serde_json::Value = request.await.unwrap().json().await.unwrap();
            answer["status"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(ready(&gw).await, "ready");
    gw.broker.cluster().broker_down(-1).unwrap();
    assert_eq!(ready(&gw).await, "ready");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready(&gw).await, "degraded");
    gw.broker.cluster().broker_up(-1).unwrap();
    gw.stop().await;
}

/// Probes that want only the status send HEAD: `/healthz`, `/readyz` and
/// `/metrics` answer it 200 with no body, and other methods still 405
/// with `Allow`. With `admin_listen` empty, `/metrics` is on the webhook
/// port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_probes_get_200_without_a_body() {
    let gw = spawn_gateway(|f| f.merge(("admin_listen", ""))).await;
    assert_eq!(gw.admin_address, gw.address);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let head = gw.client.head(gw.url(path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD {path}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
        let delete = gw.client.delete(gw.url(path)).send().await.unwrap();
        assert_eq!(delete.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(delete.headers()["allow"], "GET, HEAD", "{path}");
    }
    gw.stop().await;
}
