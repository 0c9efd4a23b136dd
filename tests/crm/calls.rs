//! Calls reach a target as calls: one state per revision of
//! `callstream.calls.v1`, with one `Idempotency-Key` per call, so a
//! receiver upserts; the events of a call are not sent on their own.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_each_state_of_a_call_under_one_key() {
    let kafka = Kafka::start();
    let web = FakeCrm::start().await;
    let settings = settings(
        &kafka.bootstrap(),
        json!({"web": {"kind": "webhook", "url": web.url("/hooks")}}),
    );
    // A missed call, then its voicemail: two events, one call. Each event
    // is on the unique topic too; the target takes the call instead.
    let missed = call_event("c-1", "call", "missed");
    let mut voicemail = call_event("c-1", "voicemail", "voicemail");
    voicemail["voicemail"] = json!({"url": "https://media.example/vm.mp3"});
    voicemail["received_at"] = json!("2023-05-20T14:33:00Z");
    kafka.publish(&[(&missed, 1), (&voicemail, 1)]).await;
    let first = kafka.publish_call(&[&missed], 1).await;
    let second = kafka.publish_call(&[&missed, &voicemail], 2).await;
    // Live steps alone (no final event yet) are not a call to log.
    let mut ringing = call_event("c-2", "call_progress", "ringing");
    ringing["identity"] = json!("onoff:acme:call_progress:c-2");
    let live = kafka.publish_call(&[&ringing], 1).await;
    assert!(!live.r#final);

    let crm = start(&settings).await;
    wait("both states of the call", || web.delivered().len() >= 2).await;
    wait("the events and the live call skipped", || {
        crm.events("web", "skipped") == 3.0
    })
    .await;
    crm.stop().await;

    let received = web.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    for (r, (call, revision)) in received.iter().zip([(&first, 1), (&second, 2)]) {
        assert_eq!(r.header("idempotency-key"), "onoff:acme:c-1");
        assert_eq!(r.header("x-callstream-revision"), revision.to_string());
        assert_eq!(
            r.body,
            json!({"revision": revision, "call": serde_json::to_value(call).unwrap()})
        );
    }
    assert_eq!(received[1].body["call"]["status"], "voicemail");
    assert_eq!(kafka.dead_letter_count(), 0);
}

/// A call state the target refused is dead-lettered like an event, and
/// `callstream-replay crm` delivers it again as a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_state_is_dead_lettered_and_delivered_again() {
    let kafka = Kafka::start();
    let web = FakeCrm::start().await;
    web.script("onoff:acme:c-9", [Reply::Status(400)]);
    let settings = settings(
        &kafka.bootstrap(),
        json!({"web": {"kind": "webhook", "url": web.url("/hooks")}}),
    );
    let call = kafka
        .publish_call(&[&call_event("c-9", "call", "answered")], 1)
        .await;
    let crm = start(&settings).await;
    wait("the refused state dead-lettered", || {
        kafka.dead_letter_count() == 1
    })
    .await;
    crm.stop().await;

    let options = RedeliverOptions {
        target: "web".into(),
        from: None,
        to: None,
        dry_run: false,
    };
    let report = redeliver_with(&settings, &options, |_| {})
        .await
        .expect("redelivery");
    assert_eq!((report.for_target, report.delivered), (1, 1), "{report}");
    let statuses: Vec<u16> = web
        .for_key("onoff:acme:c-9")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [400, 200]);
    let again = web.for_key("onoff:acme:c-9").pop().unwrap();
    assert_eq!(again.body["call"], serde_json::to_value(&call).unwrap());
    assert_eq!(again.header("x-callstream-revision"), "1");
}
