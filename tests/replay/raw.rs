//! Replaying raw records: the very records the gateway published, the
//! tenant configured then, Kafka refusing one, and dedup dropping a second run.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_raw_republishes_the_gateways_records_and_twice_changes_nothing() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/telecmi/cdr", TELECMI_LEG_A).await;
    post(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    let failing = post(&gw, "/v1/onoff/cdr", ONOFF_NO_ID).await;
    let originals = gw.read_all(Topic::Events);
    assert_eq!(originals.len(), 4);

    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs");
    assert_eq!(report.read, 5);
    assert_eq!(report.unchanged, 4, "{outcomes:#?}");
    assert_eq!(report.published, 4);
    assert_eq!(report.failing, BTreeMap::from([("missing_field", 1)]));
    assert_eq!(report.regressed, 0);
    let fail = outcomes.iter().find(|o| o.is_change()).expect("one change");
    assert_eq!(fail.request_id.as_deref(), Some(failing.as_str()));

    let after_one = gw.read_all(Topic::Events);
    let first = by_request_id(added(&originals, after_one.clone()));
    assert_eq!(first.len(), 4);
    for original in &originals {
        let replayed = &first[&request_id(original)];
        assert_eq!(replayed.key, original.key, "same key, so same partition");
        assert_eq!(replayed.partition, original.partition);
        assert_eq!(
            replayed.headers, original.headers,
            "same CloudEvents headers"
        );
        assert_eq!(
            replayed.json()["fingerprint"],
            original.json()["fingerprint"]
        );
        assert_eq!(
            String::from_utf8_lossy(&replayed.payload),
            String::from_utf8_lossy(&original.payload),
            "byte for byte"
        );
    }

    let (again, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs again");
    assert_eq!((again.read, again.unchanged, again.published), (5, 4, 4));
    let second = added(&after_one, gw.read_all(Topic::Events));
    assert_eq!(second.len(), 4);
    for r in &second {
        let earlier = &first[&request_id(r)];
        assert_eq!(
            (&r.key, &r.payload, &r.headers),
            (&earlier.key, &earlier.payload, &earlier.headers),
            "a second replay publishes the same records again"
        );
    }
    assert_eq!(gw.count(Topic::Dlq), 1, "nothing dead-lettered again");
    gw.stop().await;
}

/// A re-derived event Kafka refuses as a record (here the broker answers
/// `MSG_SIZE_TOO_LARGE`, as for an events topic with a smaller limit than
/// the raw one) used to stop every run at the same place. It is reported,
/// and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_refuses_is_reported_and_the_run_completes() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    let originals = gw.read_all(Topic::Events);
    // The batch, then the record alone: refused both times.
    gw.broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let (report, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("the run completes");
    assert_eq!((report.read, report.published, report.refused), (1, 0, 1));
    assert!(report
        .to_string()
        .contains("refused by Kafka 1 (too large or invalid; logged, not published)"));
    assert_eq!(gw.read_all(Topic::Events).len(), originals.len());

    let (again, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs");
    assert_eq!((again.published, again.refused), (1, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_configured_tenant_travels_with_the_raw_record() {
    let gw = spawn_gateway(|f| f.merge(("sources.onoff.tenant", "acme"))).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let request_id = post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    let raw = gw.read_all(Topic::Raw);
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].header("cs_source_tenant"), Some("acme"));
    assert_eq!(raw[0].key_str(), "onoff:acme:call:cdr-1001");

    // No --tenant: the recorded tenant rebuilds the very same event.
    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    assert_eq!(
        (report.read, report.unchanged, report.reidentified),
        (1, 1, 0),
        "{outcomes:#?}"
    );

    // --tenant still wins: a deliberate re-tenanting moves the identity.
    let mut other = options(Source::Raw, Some(EPOCH), None, true);
    other.tenants.insert("onoff".into(), "globex".into());
    let (report, outcomes) = replay(&bootstrap, &other).await.expect("dry run runs");
    assert_eq!(report.reidentified, 1, "{outcomes:#?}");
    assert!(outcomes[0]
        .to_string()
        .contains("(was onoff:acme:call:cdr-1001"));

    // A record from before the header: --tenant, else `default`.
    let old = onoff_delivery(
        &format!("{request_id}-old"),
        &cdr("cdr-2002"),
        "2024-05-20T14:40:00.000000Z",
    );
    produce(&bootstrap, Topic::Raw.default_name(), &[old]).await;
    let (_, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    let old_line = outcomes
        .iter()
        .map(ToString::to_string)
        .find(|line| line.contains("cdr-2002"))
        .expect("the old record is reported");
    assert!(
        old_line.contains("onoff:default:call:cdr-2002"),
        "{old_line}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_adds_nothing_after_dedup() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let metrics = DedupMetrics::new(&prometheus::Registry::new());
    let dedup_settings = Settings::from_figment(
        Settings::defaults()
            .merge(("kafka.bootstrap_servers", bootstrap.as_str()))
            .merge(("dedup.batch_linger_ms", 5)),
    )
    .unwrap();
    let dedup = Dedup::new(
        &dedup_settings.dedup,
        &dedup_settings.kafka,
        &dedup_settings.topics,
        metrics.clone(),
    )
    .expect("dedup starts");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dedup.run(stopped));
    let consumed = |n: u64| {
        let metrics = metrics.clone();
        async move { eventually(Duration::from_secs(30), || metrics.consumed.get() >= n).await }
    };

    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    assert!(consumed(3).await);
    for _ in 0..2 {
        replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
            .await
            .expect("replay runs");
    }
    assert!(
        consumed(9).await,
        "dedup consumed {}",
        metrics.consumed.get()
    );
    assert_eq!(metrics.forwarded.get(), 3);
    assert_eq!(metrics.duplicates.get(), 6);
    stop.send(true).unwrap();
    task.await.unwrap().expect("dedup ran without error");
    let unique = read_committed_to_end(&bootstrap, Topic::EventsUnique.default_name());
    assert_eq!(unique.len(), 3, "each event once");
    gw.stop().await;
}
