//! Each provider's deliveries, published raw and normalized; sources
//! re-pathed and disabled.

use super::*;

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
