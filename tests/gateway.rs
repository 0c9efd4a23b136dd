//! End-to-end: the real gateway on port 0, a real Kafka-protocol broker, and
//! a real consumer reading the topics back.

use std::time::Duration;

use callstream_schemas::Topic;
use callstream_testkit::{assert_valid_event, spawn_gateway, Record, TestGateway};
use reqwest::StatusCode;

const KEY: &str = "k-3f9a-secret";

const ONOFF_CDR: &str = r##"{"id":"cdr-1001","eventName":"CDR","onoffUserName":"John Doe","onoffUserEmail":"john.doe@example.com","onoffUserNumber":"1234567890","externalNumber":"0987654321","externalName":"John Smith","callStarted":"2023-05-20T14:30:00Z","callEnded":"2023-05-20T16:32:00+02:00","callDuration":300,"callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"Important notes","tags":[{"tagId":"17431723-0001","tagName":"Blue","tagColor":"#32A8FF"}]}"##;

const ONOFF_SMS: &str = r#"{"id":"sms-77","eventName":"SMS","onoffUserName":"John Doe","onoffUserNumber":"1234567890","externalNumber":"0987654321","date":"2023-05-20T14:30:00Z","smsDirection":"SENT","body":"This is the body of the SMS"}"#;

const TELECMI_LEG_A: &str = r#"{"virtual_number":"440000000000","call_id":"c4504776-d91e-123b-29a7-56000429abc3","custom":"{\"crm\":\"true\"}","leg":"a","type":"cdr","appid":2222223,"to":442000000000,"cmiuuid":"10ee0eb6-c417-4f5a-b122-bffe28f96eae","status":"answered","user":"202_2222223","time":1650630551178,"direction":"outbound","answeredsec":15,"hangup_reason":"recv_bye","request_id":"c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr"}"#;

const TELECMI_LEG_B: &str = r#"{"virtual_number":"440000000000","call_id":"c4504776-d91e-123b-29a7-56000429abc3","custom":"{\"crm\":\"true\"}","leg":"b","type":"cdr","appid":2222223,"to":"919342012824","cmiuuid":"0da4f02e-6ece-42e4-989b-1e6766b5a81e","status":"answered","user":"202_2222223","time":"1650630551178","direction":"outbound","answeredsec":6,"hangup_reason":"sent_bye","record":true,"filename":"16506305548176941220057791_2222223.mp3","request_id":"c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr"}"#;

const XARIOS_JSON: &str = r#"{"triggerId":"trig-1","id":"user-1","tenantId":"tenant-9","cdr":{"id":"sess-42","dType":"CloudSessionCdr","sVer":1,"tz":"Europe/London","start":"2024-05-29T09:37:35+01:00","end":"2024-05-29T09:37:45+01:00","dur":10,"ring":10,"lost":1,"cause":"NORMAL_CLEARING","dir":2,"type":2,"cliNum":"+447000000000","ddiNum":"+441610000000","lRngUsrName":"Test User","lRngUsrNum":"302","hasRec":0,"tags":{"Support":"step1"}},"customData":{"hook":"post call"}}"#;

fn with_keys(f: figment::Figment) -> figment::Figment {
    f.merge(("sources.onoff.api_keys", [KEY]))
        .merge(("sources.xarios.api_keys", [KEY]))
        .merge(("sources.telecmi.api_keys", [KEY]))
}

async fn post_json(gw: &TestGateway, path: &str, body: &str) -> reqwest::Response {
    gw.client
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("gateway answers")
}

async fn error_of(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    body["error"]
        .as_str()
        .expect("error bodies have an `error` string")
        .to_string()
}

/// Asserts nothing about a record (its headers or value) carries the key.
fn assert_no_secret(records: &[Record]) {
    for r in records {
        assert!(!String::from_utf8_lossy(&r.payload).contains(KEY));
        for (name, value) in &r.headers {
            assert!(
                !name.contains("authorization")
                    && !name.contains("api-key")
                    && !name.contains("api_key")
            );
            assert!(
                !String::from_utf8_lossy(value).contains(KEY),
                "header {name} leaks the key"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onoff_cdr_is_published_raw_and_normalized() {
    let gw = spawn_gateway(with_keys).await;
    let resp = gw
        .client
        .post(gw.url("/v1/onoff/cdr"))
        .header("content-type", "application/json")
        .header("authorization", format!("x-api-key {KEY}"))
        .header("user-agent", "onoff-webhooks/1.0")
        .body(ONOFF_CDR)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value = resp.json().await.unwrap();
    let request_id = answer["request_id"].as_str().unwrap().to_string();

    let raw = gw.read(Topic::Raw, 1);
    assert_eq!(raw.len(), 1);
    let r = &raw[0];
    assert_eq!(
        r.payload,
        ONOFF_CDR.as_bytes(),
        "raw value is the body, byte-exact"
    );
    assert_eq!(r.key_str(), "onoff:default:call:cdr-1001");
    assert_eq!(r.header("cs_source"), Some("onoff"));
    assert_eq!(r.header("cs_route"), Some("cdr"));
    assert_eq!(r.header("cs_method"), Some("POST"));
    assert_eq!(r.header("cs_path"), Some("/v1/onoff/cdr"));
    assert_eq!(r.header("cs_content_type"), Some("application/json"));
    assert_eq!(r.header("cs_request_id"), Some(request_id.as_str()));
    assert_eq!(r.header("cs_h_user_agent"), Some("onoff-webhooks/1.0"));
    assert!(r.header("cs_received_at").unwrap().ends_with('Z'));
    assert_eq!(r.header("cs_source_tenant"), Some("default"));

    let events = gw.read(Topic::Events, 1);
    assert_eq!(events.len(), 1);
    let e = &events[0];
    let event = e.json();
    assert_valid_event(&event);
    assert_eq!(e.key_str(), event["identity"].as_str().unwrap());
    assert_eq!(event["identity"], "onoff:default:call:cdr-1001");
    assert_eq!(event["kind"], "call");
    assert_eq!(event["status"], "answered");
    assert_eq!(event["direction"], "inbound");
    assert_eq!(event["duration_seconds"], 300.0);
    assert_eq!(event["ended_at"], "2023-05-20T14:32:00Z");
    assert_eq!(event["internal"]["email"], "john.doe@example.com");
    assert_eq!(event["raw"]["request_id"], request_id);
    assert_eq!(event["raw"]["topic"], "callstream.raw.v1");
    assert_eq!(e.header("ce_specversion"), Some("1.0"));
    assert_eq!(e.header("ce_id"), event["fingerprint"].as_str());
    assert_eq!(e.header("ce_type"), Some("io.callstream.call.v1"));
    assert_eq!(e.header("ce_source"), Some("/callstream/onoff/default"));
    assert_eq!(e.header("ce_time"), Some("2023-05-20T14:30:00.000Z"));
    assert_eq!(e.header("content-type"), Some("application/json"));
    assert_eq!(gw.count(Topic::Dlq), 0);
    assert_no_secret(&raw);
    assert_no_secret(&events);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onoff_sms_accepts_bare_header_and_query_token_and_redacts_it() {
    let gw = spawn_gateway(with_keys).await;
    let resp = gw
        .client
        .post(gw.url("/v1/onoff/sms"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(ONOFF_SMS)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post_json(&gw, &format!("/v1/onoff/sms?a=1&token={KEY}"), ONOFF_SMS).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let raw = gw.read(Topic::Raw, 2);
    assert_eq!(raw.len(), 2);
    let queries: Vec<_> = raw
        .iter()
        .map(|r| r.header("cs_query").unwrap().to_string())
        .collect();
    assert!(
        queries.contains(&"a=1".to_string()),
        "token removed, rest kept: {queries:?}"
    );
    assert_no_secret(&raw);

    let events = gw.read(Topic::Events, 2);
    assert_eq!(events.len(), 2);
    for e in &events {
        let event = e.json();
        assert_valid_event(&event);
        assert_eq!(event["kind"], "sms");
        assert_eq!(event["direction"], "outbound");
        assert_eq!(event["sms_body"], "This is the body of the SMS");
    }
    // A resend is the same event: same key, id and fingerprint.
    assert_eq!(events[0].key, events[1].key);
    assert_eq!(
        events[0].json()["fingerprint"],
        events[1].json()["fingerprint"]
    );
    assert!(!gw.metrics().await.contains(KEY));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xarios_get_post_put_json_and_form_all_normalize_alike() {
    let gw = spawn_gateway(with_keys).await;
    let path = format!("/v1/xarios/postcall?token={KEY}");
    let form = "triggerId=trig-1&tenantId=tenant-9&cdr%5Bid%5D=sess-42&cdr%5Bdur%5D=10&cdr%5Blost%5D=1&cdr%5Bdir%5D=2&cdr%5Bstart%5D=2024-05-29T09%3A37%3A35%2B01%3A00&cdr%5BcliNum%5D=%2B447000000000";
    let dotted = "triggerId=trig-1&tenantId=tenant-9&cdr.id=sess-42&cdr.dur=10&cdr.lost=1&cdr.dir=2&cdr.start=2024-05-29T09%3A37%3A35%2B01%3A00&cdr.cliNum=%2B447000000000";

    let c = &gw.client;
    let answers = [
        c.post(gw.url(&path))
            .header("content-type", "application/json")
            .body(XARIOS_JSON)
            .send()
            .await,
        c.put(gw.url(&path))
            .header("content-type", "application/json")
            .body(XARIOS_JSON)
            .send()
            .await,
        c.post(gw.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await,
        c.put(gw.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(dotted)
            .send()
            .await,
        c.get(gw.url(&format!("{path}&{form}"))).send().await,
    ];
    for answer in answers {
        assert_eq!(answer.unwrap().status(), StatusCode::OK);
    }
    let events = gw.read(Topic::Events, 5);
    assert_eq!(events.len(), 5);
    for e in &events {
        let event = e.json();
        assert_valid_event(&event);
        assert_eq!(
            event["identity"], "xarios:tenant-9:call:sess-42:trig-1",
            "{event:#}"
        );
        assert_eq!(event["status"], "missed");
        assert_eq!(event["direction"], "inbound");
        assert_eq!(event["started_at"], "2024-05-29T08:37:35Z");
        assert_eq!(event["external"]["number"], "+447000000000");
    }
    let raw = gw.read(Topic::Raw, 5);
    let methods: Vec<_> = raw
        .iter()
        .map(|r| r.header("cs_method").unwrap().to_string())
        .collect();
    assert_eq!(methods.iter().filter(|m| *m == "GET").count(), 1);
    assert_eq!(methods.iter().filter(|m| *m == "PUT").count(), 2);
    assert_no_secret(&raw);
    assert_eq!(gw.count(Topic::Dlq), 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telecmi_legs_are_distinct_events_and_either_path_takes_either_type() {
    let gw = spawn_gateway(with_keys).await;
    let event_body = r#"{"type":"event","app_id":"2222223","cmiuuid":"10ee0eb6-c417-4f5a-b122-bffe28f96eae","status":"started","direction":"inbound","from":919000000001,"time":1650630551178}"#;
    for (path, body) in [
        ("/v1/telecmi/cdr", TELECMI_LEG_A),
        ("/v1/telecmi/cdr", TELECMI_LEG_B),
        ("/v1/telecmi/cdr", event_body),
        ("/v1/telecmi/event", TELECMI_LEG_A),
    ] {
        let resp = post_json(&gw, &format!("{path}?token={KEY}"), body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let events: Vec<serde_json::Value> =
        gw.read(Topic::Events, 4).iter().map(Record::json).collect();
    assert_eq!(events.len(), 4);
    events.iter().for_each(assert_valid_event);
    let identity = |leg: &str| format!("telecmi:2222223:call:{leg}");
    let leg_a: Vec<_> = events
        .iter()
        .filter(|e| e["identity"] == identity("10ee0eb6-c417-4f5a-b122-bffe28f96eae"))
        .collect();
    assert_eq!(leg_a.len(), 2, "leg a sent twice, through both paths");
    let leg_b = events
        .iter()
        .find(|e| e["identity"] == identity("0da4f02e-6ece-42e4-989b-1e6766b5a81e"))
        .expect("leg b is its own event");
    assert_eq!(
        leg_b["recording"]["file_name"],
        "16506305548176941220057791_2222223.mp3"
    );
    assert_eq!(leg_b["external"]["number"], "919342012824");
    assert_eq!(leg_b["started_at"], "2022-04-22T12:29:11.178Z");
    let progress = events
        .iter()
        .find(|e| e["kind"] == "call_progress")
        .expect("live event");
    assert_eq!(progress["status"], "ringing");
    gw.stop().await;
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_can_be_disabled_and_repathed() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.xarios.enabled", false))
            .merge(("sources.onoff.paths.sms", "/hooks/onoff-sms"))
            .merge(("sources.onoff.tenant", "acme"))
    })
    .await;
    let resp = gw
        .client
        .post(gw.url("/v1/xarios/postcall"))
        .body(XARIOS_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post_json(&gw, "/hooks/onoff-sms", ONOFF_SMS).await.status(),
        StatusCode::OK
    );
    let events = gw.read(Topic::Events, 1);
    assert_eq!(events[0].json()["tenant"], "acme");
    assert_eq!(events[0].key_str(), "onoff:acme:sms:sms-77");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_a_broker_that_does_not_answer_gives_503_never_200() {
    let gw = spawn_gateway(|f| {
        f.merge(("kafka.publish_timeout_ms", 1500))
            .merge(("spool.enabled", false))
    })
    .await;
    let ready = gw.client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    gw.broker.cluster().broker_down(-1).unwrap();

    let resp = post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(error_of(resp).await.contains("not stored"));
    let ready = gw.client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let metrics = gw.metrics().await;
    assert!(metrics
        .contains(r#"callstream_gateway_requests_total{outcome="unavailable",source="onoff"} 1"#));
    assert!(metrics.contains("callstream_gateway_kafka_produce_errors_total"));

    gw.broker.cluster().broker_up(-1).unwrap();
    let healthy = gw.client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(healthy.status(), StatusCode::OK);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bootstrap_server_gives_503() {
    // A port nothing listens on: the producer never connects.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let figment = callstream_gateway::config::Settings::defaults()
        .merge(("listen", "127.0.0.1:0"))
        .merge(("kafka.bootstrap_servers", addr.to_string()))
        .merge(("kafka.publish_timeout_ms", 800))
        .merge(("spool.enabled", false));
    let settings = callstream_gateway::config::Settings::from_figment(figment).unwrap();
    let app = callstream_gateway::startup::Application::build(&settings).unwrap();
    let url = format!("http://127.0.0.1:{}/v1/onoff/sms", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    let resp = client
        .post(&url)
        .body(ONOFF_SMS)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    handle.stop(true).await;
}

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

/// Kafka back under steady traffic: the gateway publishes directly again as
/// soon as Kafka acknowledges what the drainer sends, not only at an
/// instant when the spool happens to be empty (with a slow broker and
/// steady traffic, that instant never comes and everything would go on
/// through fsync and the drainer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_steady_traffic_goes_back_to_kafka_while_the_spool_drains() {
    let gw = spawn_gateway(|f| f.merge(("kafka.publish_timeout_ms", 500))).await;
    gw.broker.cluster().broker_down(-1).unwrap();
    for i in 0..5 {
        let body = ONOFF_SMS.replace("sms-77", &format!("outage-{i}"));
        let answer: serde_json::Value = post_json(&gw, "/v1/onoff/sms", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "spooled");
    }
    // Every drain round trip takes 100 ms; the senders keep deliveries
    // arriving faster than that.
    gw.broker
        .cluster()
        .broker_round_trip_time(-1, Duration::from_millis(100))
        .unwrap();
    gw.broker.cluster().broker_up(-1).unwrap();
    // The drainer may still be backing off from the outage (up to 5 s): keep
    // sending for longer than that (bounded in time and in count).
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 600;
    let until = std::time::Instant::now() + Duration::from_secs(7);
    let senders = (0..SENDERS).map(|s| {
        let (client, url) = (gw.client.clone(), gw.url("/v1/onoff/sms"));
        async move {
            let mut statuses = Vec::new();
            for i in 0..PER_SENDER {
                if std::time::Instant::now() > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let body = ONOFF_SMS.replace("sms-77", &format!("steady-{s}-{i}"));
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let answer: serde_json::Value = resp.json().await.unwrap();
                statuses.push(answer["status"].as_str().unwrap().to_string());
            }
            statuses
        }
    });
    let per_sender = futures_util::future::join_all(senders).await;
    for statuses in &per_sender {
        assert_eq!(
            statuses.last().map(String::as_str),
            Some("published"),
            "each sender ends up publishing directly"
        );
    }
    let statuses: Vec<String> = per_sender.into_iter().flatten().collect();
    let published = statuses.iter().filter(|s| *s == "published").count();
    assert!(
        published > 0,
        "back to Kafka under traffic: {} spooled, {published} published",
        statuses.len() - published
    );
    let total = 5 + statuses.len();
    assert_eq!(
        gw.read(Topic::Raw, total).len(),
        total,
        "every 200 in Kafka"
    );
    gw.stop().await;
}

/// A spooled delivery of one raw record of `bytes` bytes, keyed `key`.
fn spooled_raw(key: &str, bytes: usize) -> callstream_gateway::spool::format::Delivery {
    callstream_gateway::spool::format::Delivery {
        spooled_at_ms: 1_700_000_000_000,
        records: vec![callstream_gateway::publish::OutRecord {
            topic: Topic::Raw,
            key: key.to_string(),
            payload: vec![b'x'; bytes],
            headers: Vec::new(),
        }],
    }
}

/// Kafka refusing one delivery's record (the broker's own size limit) is
/// not an outage: that delivery is spooled, the others go on to Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_does_not_send_the_others_to_the_spool() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let gw = spawn_gateway(|f| f).await;
    gw.broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let answer: serde_json::Value = post_json(&gw, "/v1/onoff/sms", ONOFF_SMS)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "spooled");
    assert_eq!(gw.metric("callstream_gateway_kafka_degraded").await, 0.0);
    let next = ONOFF_SMS.replace("sms-77", "sms-78");
    let answer: serde_json::Value = post_json(&gw, "/v1/onoff/sms", &next)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "published");
    gw.stop().await;
}

/// A spooled delivery Kafka refuses as a record (here: spooled while
/// `max_body_bytes` was larger, so now over the producer's record limit)
/// would fail every drain attempt. It is set aside, fsynced, in the spool's
/// `rejected/` directory, and the deliveries behind it drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_delivery_kafka_refuses_is_set_aside_and_the_rest_drains() {
    use callstream_gateway::spool::format::{encode_segment, scan};
    let dir = tempfile::tempdir().unwrap();
    let (big, small) = (spooled_raw("big", 300_000), spooled_raw("small", 100));
    let segment = encode_segment(&[big.clone(), small]);
    std::fs::write(dir.path().join(format!("{:020}.seg", 1)), segment).unwrap();

    let gw = spawn_gateway(|f| {
        f.merge(("spool.dir", dir.path()))
            .merge(("max_body_bytes", 100_000))
    })
    .await;
    let raw = gw.read(Topic::Raw, 1);
    assert_eq!(raw[0].key_str(), "small", "the delivery behind it drained");
    let aside = dir
        .path()
        .join("rejected")
        .join(format!("{:020}-{:06}.seg", 1, 0));
    let kept = std::fs::read(&aside).expect("the refused delivery is kept on disk");
    assert_eq!(scan(&kept).deliveries, vec![big], "byte for byte");
    assert_eq!(
        gw.metric("callstream_gateway_spool_set_aside_records_total")
            .await,
        1.0
    );
    assert!(
        callstream_testkit::eventually(Duration::from_secs(10), || {
            !dir.path().join(format!("{:020}.seg", 1)).exists()
        })
        .await,
        "the drained segment is deleted"
    );
    let answer: serde_json::Value = post_json(&gw, "/v1/onoff/sms", ONOFF_SMS)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "published");
    assert_eq!(gw.count(Topic::Raw), 2);
    gw.stop().await;

    // Limit raised, the file moved back as the newest segment: replayed.
    std::fs::rename(&aside, dir.path().join(format!("{:020}.seg", 99))).unwrap();
    let gw = spawn_gateway(|f| {
        f.merge(("spool.dir", dir.path()))
            .merge(("max_body_bytes", 400_000))
    })
    .await;
    let raw = gw.read(Topic::Raw, 1);
    assert_eq!(
        (raw[0].key_str(), raw[0].payload.len()),
        ("big", 300_000),
        "replayed after the limit was raised"
    );
    gw.stop().await;
}

/// While a refused delivery cannot be set aside (here `rejected/` is a
/// file in the way), the drain retries it alone: the delivery Kafka
/// acknowledged beside it is neither sent again at every attempt nor
/// counted as drained twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_that_cannot_be_set_aside_is_retried_alone() {
    use callstream_gateway::spool::format::encode_segment;
    let dir = tempfile::tempdir().unwrap();
    let segment = encode_segment(&[spooled_raw("big", 300_000), spooled_raw("small", 100)]);
    std::fs::write(dir.path().join(format!("{:020}.seg", 1)), segment).unwrap();
    let in_the_way = dir.path().join("rejected");
    std::fs::write(&in_the_way, b"not a directory").unwrap();

    let gw = spawn_gateway(|f| {
        f.merge(("spool.dir", dir.path()))
            .merge(("max_body_bytes", 100_000))
    })
    .await;
    assert_eq!(gw.read(Topic::Raw, 1)[0].key_str(), "small");
    // Retries back off from 100 ms: four or more in two seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.count(Topic::Raw), 1, "sent once, not at every retry");
    assert_eq!(
        gw.metric("callstream_gateway_spool_set_aside_records_total")
            .await,
        0.0
    );

    std::fs::remove_file(&in_the_way).unwrap();
    let mut set_aside = 0.0;
    for _ in 0..100 {
        set_aside = gw
            .metric("callstream_gateway_spool_set_aside_records_total")
            .await;
        if set_aside > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(set_aside, 1.0, "set aside once its directory can be made");
    assert!(in_the_way.join(format!("{:020}-{:06}.seg", 1, 0)).exists());
    assert_eq!(
        gw.metric("callstream_gateway_spool_drained_records_total")
            .await,
        1.0,
        "the set-aside delivery did not reach Kafka: not drained"
    );
    assert_eq!(gw.count(Topic::Raw), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kafka_is_down_deliveries_are_spooled_then_drained() {
    let gw = spawn_gateway(|f| f.merge(("kafka.publish_timeout_ms", 500))).await;
    gw.broker.cluster().broker_down(-1).unwrap();
    for i in 0..5 {
        let body = ONOFF_SMS.replace("sms-77", &format!("sms-{i}"));
        let resp = post_json(&gw, "/v1/onoff/sms", &body).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "spooled");
    }
    assert_eq!(gw.metric("callstream_gateway_spool_records").await, 5.0);
    assert_eq!(gw.metric("callstream_gateway_kafka_degraded").await, 1.0);
    let ready: serde_json::Value = gw
        .client
        .get(gw.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded");

    gw.broker.cluster().broker_up(-1).unwrap();
    let raw = gw.read(Topic::Raw, 5);
    assert_eq!(raw.len(), 5, "every spooled delivery reaches Kafka");
    let events = gw.read(Topic::Events, 5);
    assert_eq!(events.len(), 5);
    events.iter().for_each(|e| assert_valid_event(&e.json()));
    let drained = callstream_testkit::eventually(Duration::from_secs(20), || {
        std::fs::read_dir(gw.spool_dir.path()).unwrap().count() <= 1
    })
    .await;
    assert!(drained, "drained segments are deleted");
    assert_eq!(
        gw.metric("callstream_gateway_spool_drained_records_total")
            .await,
        5.0
    );
    let back = post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    let answer: serde_json::Value = back.json().await.unwrap();
    assert_eq!(answer["status"], "published", "direct again once drained");
    assert_eq!(gw.metric("callstream_gateway_spool_records").await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_never_drops() {
    let gw = spawn_gateway(|f| {
        f.merge(("kafka.publish_timeout_ms", 300))
            .merge(("max_body_bytes", 1024))
            .merge(("spool.max_bytes", 4096))
    })
    .await;
    gw.broker.cluster().broker_down(-1).unwrap();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let body = ONOFF_SMS.replace("sms-77", &format!("sms-{i}"));
        statuses.push(post_json(&gw, "/v1/onoff/sms", &body).await.status());
    }
    let spooled = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(spooled > 0 && spooled < 20, "{statuses:?}");
    assert!(statuses[spooled..]
        .iter()
        .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE));
    let resp = post_json(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    assert_eq!(resp.headers()["retry-after"], "5");
    assert!(error_of(resp).await.contains("spool is full"));

    gw.broker.cluster().broker_up(-1).unwrap();
    assert_eq!(
        gw.read(Topic::Raw, spooled).len(),
        spooled,
        "what got 200 reaches Kafka"
    );
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
