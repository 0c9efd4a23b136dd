//! When a CRM fails: retries, dead letters and their redelivery, and a dead
//! target that must not hold a healthy one back.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_delivers_or_dead_letters_and_loses_nothing() {
    let kafka = Kafka::start();
    let crm_server = FakeCrm::start().await;
    let settings = settings(
        &kafka.bootstrap(),
        json!({"flaky": {
            "kind": "webhook",
            "url": crm_server.url("/"),
            "timeout_ms": 500,
            "max_attempts": 3,
            "initial_backoff_ms": 50,
            "max_backoff_ms": 2000,
            "rate_per_second": 100,
        }}),
    );
    let [flaky, limited, slow, bad, dead, locked] =
        [0; 6].map(|_| event("call", "outbound", "answered"));
    crm_server.script(&key_of(&flaky), [Reply::Status(500), Reply::Status(503)]);
    // A token rotated, then fixed: refused credentials are not the event's fault.
    crm_server.script(&key_of(&locked), [Reply::Status(401), Reply::Status(403)]);
    crm_server.script(&key_of(&limited), [Reply::TooMany("1")]);
    crm_server.script(&key_of(&slow), [Reply::Hang(Duration::from_millis(1500))]);
    crm_server.script(&key_of(&bad), [Reply::Status(400)]);
    crm_server.script(&key_of(&dead), vec![Reply::Status(500); 3]);
    let events = [&flaky, &limited, &slow, &bad, &dead, &locked];
    kafka.publish(&events.map(|e| (e, 1))).await;
    kafka.send("garbage-key", b"not an event", 1).await;

    let crm = start(&settings).await;
    wait("every event finished", || {
        crm.events("flaky", "delivered") + crm.events("flaky", "dead_lettered") >= 7.0
    })
    .await;

    // Nothing lost: each event delivered exactly once, or dead-lettered.
    let mut delivered = vec![
        key_of(&flaky),
        key_of(&limited),
        key_of(&slow),
        key_of(&locked),
    ];
    delivered.sort();
    assert_eq!(crm_server.delivered_keys(), delivered);
    let letters = kafka.dead_letters();
    let mut lettered: Vec<&str> = letters.iter().map(Record::key_str).collect();
    lettered.sort();
    let mut expected = vec![
        dead["identity"].as_str().unwrap(),
        bad["identity"].as_str().unwrap(),
        "garbage-key",
    ];
    expected.sort();
    assert_eq!(lettered, expected);

    // 500, 503, then 200.
    let statuses: Vec<u16> = crm_server
        .for_key(&key_of(&flaky))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 503, 200]);
    // 429 + Retry-After: 1 with 50 ms back-off: the retry waited the full second.
    let limited_requests = crm_server.for_key(&key_of(&limited));
    assert_eq!(limited_requests.len(), 2);
    let gap = limited_requests[1].at - limited_requests[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried {gap:?} after a 429 asking for 1 s"
    );
    // Timed out after 500 ms, then tried again.
    let slow_requests = crm_server.for_key(&key_of(&slow));
    assert_eq!(
        slow_requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [0, 200]
    );
    assert!(slow_requests[1].at - slow_requests[0].at >= Duration::from_millis(500));
    let locked_statuses: Vec<u16> = crm_server
        .for_key(&key_of(&locked))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(locked_statuses, [401, 403, 200]);
    // A 400 cannot improve: one attempt.
    assert_eq!(crm_server.for_key(&key_of(&bad)).len(), 1);
    assert_eq!(crm_server.for_key(&key_of(&dead)).len(), 3);

    // Dead letters: the original record plus target, last error and attempts.
    let letter = |key: &str| letters.iter().find(|r| r.key_str() == key).unwrap();
    let r = letter(dead["identity"].as_str().unwrap());
    assert_eq!(r.header("cs_crm_target"), Some("flaky"));
    assert_eq!(
        r.header("cs_crm_error"),
        Some(r#"HTTP 500: {"error":"internal boom"}"#)
    );
    assert_eq!(r.header("cs_crm_attempts"), Some("3"));
    assert_eq!(r.header("cs_revision"), Some("1"));
    assert_eq!(r.json(), dead);
    let r = letter(bad["identity"].as_str().unwrap());
    assert_eq!(
        r.header("cs_crm_error"),
        Some(r#"HTTP 400: {"status":"error", "message":"Property values were not valid"}"#)
    );
    assert_eq!(r.header("cs_crm_attempts"), Some("1"));
    let r = letter("garbage-key");
    assert_eq!(r.payload, b"not an event");
    assert!(r
        .header("cs_crm_error")
        .unwrap()
        .starts_with("undecodable record: "));
    assert_eq!(r.header("cs_crm_attempts"), Some("0"));

    let requests = |outcome: &str| {
        crm.metric(
            "callstream_crm_requests_total",
            &format!(r#"outcome="{outcome}",target="flaky""#),
        )
    };
    assert_eq!(requests("success"), 4.0);
    assert_eq!(requests("server_error"), 5.0);
    assert_eq!(requests("rate_limited"), 1.0);
    assert_eq!(requests("timeout"), 1.0);
    assert_eq!(requests("unauthorized"), 2.0);
    assert_eq!(requests("client_error"), 1.0);
    assert_eq!(
        crm.metric("callstream_crm_retries_total", r#"target="flaky""#),
        8.0
    );
    assert_eq!(crm.events("flaky", "delivered"), 4.0);
    assert_eq!(crm.events("flaky", "dead_lettered"), 3.0);
    crm.stop().await;
}

/// `callstream-replay crm`: once the target is fixed, its dead letters go
/// to it again, with the consumer's request and headers; only that
/// target's, nothing in a dry run, nothing written back; one the target
/// still refuses is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_delivered_again_once_the_target_is_fixed() {
    let kafka = Kafka::start();
    let crm_server = FakeCrm::start().await;
    let settings = settings(
        &kafka.bootstrap(),
        json!({"flaky": {
            "kind": "webhook",
            "url": crm_server.url("/"),
            "max_attempts": 1,
            "rate_per_second": 100,
        }}),
    );
    let [refused, still_refused, fine] = [0; 3].map(|_| event("call", "outbound", "answered"));
    crm_server.script(&key_of(&refused), [Reply::Status(400)]);
    crm_server.script(
        &key_of(&still_refused),
        [Reply::Status(422), Reply::Status(422)],
    );
    kafka
        .publish(&[(&refused, 2), (&still_refused, 1), (&fine, 1)])
        .await;
    kafka.send("garbage-key", b"not an event", 1).await;
    let crm = start(&settings).await;
    wait("every event finished", || {
        crm.events("flaky", "delivered") + crm.events("flaky", "dead_lettered") >= 4.0
    })
    .await;
    crm.stop().await;
    assert_eq!(kafka.dead_letter_count(), 3);
    // Another target's dead letter, left alone.
    let other = serde_json::to_vec(&fine).unwrap();
    kafka
        .producer
        .send(
            FutureRecord::to(Topic::CrmDlq.default_name())
                .key(fine["identity"].as_str().unwrap())
                .payload(&other)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "cs_crm_target",
                    value: Some("other"),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    let sent_before = crm_server.received().len();

    let mut options = RedeliverOptions {
        target: "flaky".into(),
        from: None,
        to: None,
        dry_run: true,
    };
    let dry = redeliver_with(&settings, &options, |_| {})
        .await
        .expect("dry run");
    assert_eq!(
        (dry.read, dry.for_target, dry.delivered, dry.undecodable),
        (4, 3, 0, 1)
    );
    assert_eq!(crm_server.received().len(), sent_before, "dry run sent");

    options.dry_run = false;
    let mut lines = Vec::new();
    let report = redeliver_with(&settings, &options, |letter| lines.push(letter.to_string()))
        .await
        .expect("redelivery");
    assert_eq!(
        (
            report.for_target,
            report.delivered,
            report.failed,
            report.undecodable
        ),
        (3, 1, 1, 1),
        "{lines:?}"
    );
    let again = crm_server.for_key(&key_of(&refused));
    assert_eq!(
        again.iter().map(|r| r.status).collect::<Vec<_>>(),
        [400, 200]
    );
    assert_eq!(again[1].header("x-callstream-revision"), "2");
    assert_eq!(again[1].body["event"]["event_id"], refused["event_id"]);
    let statuses: Vec<u16> = crm_server
        .for_key(&key_of(&still_refused))
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [422, 422]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("FAILED AGAIN") && l.contains("HTTP 422")),
        "{lines:?}"
    );
    assert_eq!(crm_server.for_key(&key_of(&fine)).len(), 1, "not re-sent");
    assert_eq!(kafka.dead_letter_count(), 4, "nothing written back");

    let unknown = RedeliverOptions {
        target: "nobody".into(),
        ..options
    };
    let error = redeliver_with(&settings, &unknown, |_| {})
        .await
        .expect_err("unknown target");
    assert!(error.to_string().contains("nobody"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_does_not_delay_a_healthy_one() {
    let kafka = Kafka::start();
    let (healthy, failing) = (FakeCrm::start().await, FakeCrm::start().await);
    failing.answer_everything(Reply::Status(500));
    let closed_port = closed_port();
    // Ten attempts with back-off from 200 ms: several seconds per event.
    let retrying = json!({
        "max_attempts": 10,
        "initial_backoff_ms": 200,
        "max_backoff_ms": 1000,
    });
    let mut unreachable =
        json!({"kind": "webhook", "url": format!("http://127.0.0.1:{closed_port}/")});
    let mut failing_target = json!({"kind": "webhook", "url": failing.url("/")});
    for target in [&mut unreachable, &mut failing_target] {
        target
            .as_object_mut()
            .unwrap()
            .extend(retrying.as_object().unwrap().clone());
    }
    let settings = settings(
        &kafka.bootstrap(),
        json!({
            "healthy": {"kind": "webhook", "url": healthy.url("/")},
            "unreachable": unreachable,
            "failing": failing_target,
        }),
    );
    let events: Vec<Value> = (0..5)
        .map(|_| event("sms", "inbound", "completed"))
        .collect();
    kafka
        .publish(&events.iter().map(|e| (e, 1)).collect::<Vec<_>>())
        .await;

    let started = Instant::now();
    let crm = start(&settings).await;
    wait("the healthy target has every event", || {
        healthy.delivered().len() == 5
    })
    .await;
    let healthy_done = started.elapsed();
    // The others are still on their first event.
    assert_eq!(kafka.dead_letter_count(), 0);
    assert_eq!(crm.events("unreachable", "dead_lettered"), 0.0);
    assert_eq!(crm.events("failing", "dead_lettered"), 0.0);
    wait("the broken targets are retrying", || {
        crm.metric(
            "callstream_crm_requests_total",
            r#"outcome="connect_error",target="unreachable""#,
        ) >= 1.0
            && failing.received().len() >= 2
    })
    .await;
    assert!(
        healthy_done < Duration::from_secs(10),
        "took {healthy_done:?}"
    );
    // Shutdown does not wait for their back-off either.
    let stopping = crm.stop().await;
    assert!(
        stopping < Duration::from_secs(3),
        "stopping took {stopping:?}"
    );
    assert_eq!(kafka.dead_letter_count(), 0);
}
