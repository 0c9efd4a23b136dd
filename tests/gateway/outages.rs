//! Kafka failing: 503 without a spool, the spool while Kafka is down, the
//! drain back, records Kafka refuses, a full spool.

use super::*;

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
        records: vec![callstream_kafka::publish::OutRecord {
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
