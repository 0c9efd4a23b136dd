//! Replaying the DLQ after a fix: what parses now is published, the rest nowhere.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_records_that_parse_now_are_published_and_the_rest_published_nowhere() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let received_at = "2024-05-20T14:30:00.123456Z";
    // Dead-lettered by an older normalizer, fine for the current one.
    let fixed = onoff_delivery("req-fixed", &cdr("cdr-fixed"), received_at);
    let broken = onoff_delivery("req-broken", "{not json", received_at);
    produce(
        &bootstrap,
        Topic::Raw.default_name(),
        &[
            onoff_delivery("req-fixed", &cdr("cdr-fixed"), received_at),
            onoff_delivery("req-broken", "{not json", received_at),
        ],
    )
    .await;
    produce(
        &bootstrap,
        Topic::Dlq.default_name(),
        &[
            dead_lettered(fixed, "missing_field"),
            dead_lettered(broken, "malformed"),
        ],
    )
    .await;

    let (report, outcomes) = replay(&bootstrap, &options(Source::Dlq, None, None, false))
        .await
        .expect("replay runs");
    assert_eq!((report.read, report.new, report.published), (2, 1, 1));
    assert_eq!(report.failing, BTreeMap::from([("malformed", 1)]));
    assert_eq!(
        report.originals_scanned, None,
        "DLQ records all were dead-lettered"
    );
    let still_failing = outcomes
        .iter()
        .find(|o| matches!(o.verdict, Verdict::StillFailing(_)))
        .expect("the broken record is reported");
    assert_eq!(still_failing.request_id.as_deref(), Some("req-broken"));
    assert!(still_failing.to_string().starts_with("failing"));

    let events = read_all(&bootstrap, Topic::Events.default_name());
    assert_eq!(events.len(), 1, "only the record that parses now");
    let e = &events[0];
    let event = e.json();
    assert_eq!(event["identity"], "onoff:default:call:cdr-fixed");
    assert_eq!(e.key_str(), "onoff:default:call:cdr-fixed");
    assert_eq!(
        event["received_at"], received_at,
        "the original receipt time"
    );
    assert_eq!(event["raw"]["request_id"], "req-fixed");
    assert_eq!(event["raw"]["topic"], Topic::Raw.default_name());
    assert_eq!(e.header("cs_request_id"), Some("req-fixed"));
    assert_eq!(e.header("ce_id"), event["fingerprint"].as_str());
    assert_eq!(e.header("ce_type"), Some("io.callstream.call.v1"));
    let count = |t: Topic| read_all(&bootstrap, t.default_name()).len();
    assert_eq!(
        (count(Topic::Dlq), count(Topic::Raw)),
        (2, 2),
        "no DLQ loop"
    );
}
