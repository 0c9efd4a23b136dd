//! Which records a run takes (time and offset ranges) and what a dry run
//! reports without publishing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_offset_ranges_select_exactly_their_records() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let deliveries: Vec<Delivery> = (0..9)
        .map(|i| Delivery {
            timestamp_ms: Some(T0 + i * 1000),
            ..onoff_delivery(
                &format!("req-{i}"),
                &cdr(&format!("cdr-{i}")),
                "2024-05-20T14:30:00Z",
            )
        })
        .collect();
    produce(&bootstrap, Topic::Raw.default_name(), &deliveries).await;
    let ids = |outcomes: &[Outcome]| -> Vec<String> {
        let mut ids: Vec<String> = outcomes
            .iter()
            .map(|o| o.request_id.clone().expect("request id"))
            .collect();
        ids.sort();
        ids
    };

    // Times select by Kafka timestamp, `--to` excluded.
    let (report, outcomes) = replay(
        &bootstrap,
        &options(
            Source::Raw,
            Some("2024-05-20T14:30:03Z"),
            Some("2024-05-20T14:30:06Z"),
            true,
        ),
    )
    .await
    .expect("replay runs");
    assert_eq!(ids(&outcomes), ["req-3", "req-4", "req-5"]);
    assert_eq!(
        report.new, 3,
        "keyed by request id: dead-lettered when received"
    );
    // From a time after the last record, and from before the first.
    let (_, outcomes) = replay(
        &bootstrap,
        &options(Source::Raw, Some("2024-05-20T14:31:00Z"), None, true),
    )
    .await
    .unwrap();
    assert!(outcomes.is_empty());
    let (_, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 9);

    // Offsets: `--from` included, `--to` excluded, only listed partitions.
    let raw = read_all(&bootstrap, Topic::Raw.default_name());
    let fullest = (0..PARTITIONS)
        .max_by_key(|p| raw.iter().filter(|r| r.partition == *p).count())
        .unwrap();
    let in_fullest: Vec<&Record> = raw.iter().filter(|r| r.partition == fullest).collect();
    assert!(in_fullest.len() >= 3, "9 records in 3 partitions");
    let end = in_fullest.len() as i64 - 1;
    let (_, outcomes) = replay(
        &bootstrap,
        &options(
            Source::Raw,
            Some(&format!("{fullest}:1")),
            Some(&format!("{fullest}:{end}")),
            true,
        ),
    )
    .await
    .unwrap();
    let got: Vec<(i32, i64)> = outcomes.iter().map(|o| (o.partition, o.offset)).collect();
    let want: Vec<(i32, i64)> = (1..end).map(|o| (fullest, o)).collect();
    assert_eq!(got, want);
    let expected_ids: Vec<String> = {
        let mut v: Vec<String> = in_fullest[1..end as usize]
            .iter()
            .map(|r| request_id(r))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&outcomes), expected_ids);

    // Invalid ranges fail before anything is read.
    for (from, to) in [
        (format!("{fullest}:2"), Some(format!("{fullest}:1"))),
        (
            "2024-05-20T14:30:06Z".to_string(),
            Some("2024-05-20T14:30:03Z".to_string()),
        ),
        ("7:0".to_string(), None),
        (format!("{fullest}:1000"), None),
        (
            format!("{fullest}:0"),
            Some(format!("{}:1", (fullest + 1) % PARTITIONS)),
        ),
    ] {
        let result = replay(
            &bootstrap,
            &options(Source::Raw, Some(&from), to.as_deref(), true),
        )
        .await;
        assert!(
            matches!(result, Err(ReplayError::InvalidRange(_))),
            "--from {from} --to {to:?}: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_publishes_nothing_and_reports_each_change() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/onoff/cdr", ONOFF_NO_ID).await;
    let now = chrono::Utc::now().to_rfc3339();
    // What an older normalizer made of deliveries the current one treats
    // differently: content (an update), identity, a refusal, an acceptance.
    let mut changed = onoff_delivery("req-changed", &cdr("cdr-changed"), &now);
    changed.key = "onoff:default:call:cdr-changed".into();
    let mut moved = onoff_delivery("req-moved", &cdr("cdr-moved"), &now);
    moved.key = "onoff:default:call:old-id".into();
    let mut refused = onoff_delivery("req-refused", ONOFF_NO_ID, &now);
    refused.key = "onoff:default:call:refused".into();
    let accepted = onoff_delivery("req-accepted", &cdr("cdr-accepted"), &now);
    produce(
        &bootstrap,
        Topic::Raw.default_name(),
        &[changed, moved, refused, accepted],
    )
    .await;
    let old_event = Delivery {
        key: "onoff:default:call:cdr-changed".into(),
        body: "{}".into(),
        headers: vec![
            ("ce_id", "0".repeat(64)),
            ("cs_request_id", "req-changed".into()),
        ],
        timestamp_ms: None,
    };
    produce(&bootstrap, Topic::Events.default_name(), &[old_event]).await;
    let events_before = gw.count(Topic::Events);

    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    assert_eq!(
        gw.count(Topic::Events),
        events_before,
        "a dry run publishes nothing"
    );
    assert_eq!(report.published, 0);
    assert!(report.dry_run);
    assert_eq!(report.read, 7);
    assert_eq!(report.originals_scanned, Some(3));
    assert_eq!(
        (
            report.unchanged,
            report.updated,
            report.new,
            report.reidentified,
            report.unverified
        ),
        (2, 1, 1, 1, 0)
    );
    assert_eq!(report.failing, BTreeMap::from([("missing_field", 2)]));
    assert_eq!(report.regressed, 1);
    let line = |request_id: &str| {
        outcomes
            .iter()
            .find(|o| o.request_id.as_deref() == Some(request_id))
            .unwrap_or_else(|| panic!("{request_id} reported"))
            .to_string()
    };
    assert!(line("req-changed").starts_with("updated"));
    assert!(line("req-changed").contains("fingerprint 000000000000 -> "));
    assert!(line("req-moved").contains("(was onoff:default:call:old-id"));
    assert!(line("req-refused").starts_with("regressed"));
    assert!(line("req-accepted").starts_with("new"));
    let summary = report.to_string();
    assert!(summary.contains("dry run: published nothing (would publish 5)"));
    assert!(summary.contains("not normalized 2 (not re-published): missing_field 2"));

    // Another tenant than the gateway's moves every Onoff identity.
    let mut acme = options(Source::Raw, Some(EPOCH), None, true);
    acme.tenants.insert("onoff".into(), "acme".into());
    let (report, _) = replay(&bootstrap, &acme).await.expect("dry run runs");
    assert_eq!(report.reidentified, 4);
    acme.tenants.insert("nobody".into(), "x".into());
    assert!(matches!(
        replay(&bootstrap, &acme).await,
        Err(ReplayError::InvalidOption(_))
    ));
    gw.stop().await;
}
