//! Faults the sink survives on its own side: a Kafka outage, a fenced batch, a record PostgreSQL refuses.

use super::*;

/// A Kafka outage: librdkafka reports the lost broker as error events,
/// which the consumer's `recv` returns; the sink logs them and goes on once
/// the broker is back (librdkafka reconnects by itself), instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_does_not_stop_the_sink() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let received = at("2024-06-03T12:00:00Z");
    let before = scenario("a", 30, at("2024-06-03T10:00:00Z"), received);
    produce(&bootstrap, &before, None).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-outage", writer()).await;
    wait_caught_up(&client, GROUP, before.len() as i64, CATCH_UP).await;

    broker.cluster().broker_down(-1).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!sink.is_finished(), "the sink stopped while Kafka was down");
    broker.cluster().broker_up(-1).unwrap();
    let after = scenario("b", 30, at("2024-06-03T10:00:00Z"), received);
    produce(&bootstrap, &after, None).await;
    let end = (before.len() + after.len()) as i64;
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;
    let all: Vec<Revision> = before.iter().chain(&after).cloned().collect();
    assert_newest_revisions(&client, &all).await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_the_stored_position_is_fenced_and_never_applied() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let received = at("2024-06-03T12:00:00Z");
    let base = at("2024-06-03T10:00:00Z");
    let record = |i: usize| Revision {
        spec: spec("f", i, base),
        revision: 1,
        received_at: received,
    };
    let first: Vec<Revision> = (1..=10).map(record).collect();
    produce(&bootstrap, &first, Some(0)).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer()).await;
    wait_caught_up(&client, GROUP, 10, CATCH_UP).await;

    // Another instance (say, after a rebalance) applied offsets 10..15 of
    // partition 0 while this one still believes it is at 10.
    let moved = client
        .execute(
            "UPDATE consumer_offsets SET next_offset = 15 WHERE consumer_group = $1 AND partition = 0",
            &[&GROUP],
        )
        .await
        .expect("position moves");
    assert_eq!(moved, 1);
    let second: Vec<Revision> = (11..=20).map(record).collect();
    // Partition 1 goes through another connection (one per partition
    // here): its transactions are not the fenced one's.
    let elsewhere: Vec<Revision> = (21..=30).map(record).collect();
    produce(&bootstrap, &second, Some(0)).await;
    produce(&bootstrap, &elsewhere, Some(1)).await;
    wait_caught_up(&client, GROUP, 30, CATCH_UP).await;

    assert!(sink.metrics.fenced.get() >= 1, "the stale batch was fenced");
    let stored: BTreeSet<String> = store_rows(&client).await.into_keys().collect();
    let expected: BTreeSet<String> = first
        .iter()
        .chain(&second[5..])
        .chain(&elsewhere)
        .map(|r| r.event().identity)
        .collect();
    assert_eq!(
        stored, expected,
        "offsets 10..15 of partition 0 are the other instance's: this one applied none of them, resumed at 15, and partition 1 was applied whole"
    );
    sink.stop().await;
}

/// Records PostgreSQL cannot take (a NUL character, which no `text` or
/// `jsonb` value may hold; a call id too long for a B-tree index entry) are
/// set aside in `rejected_events` with the reason and the record as
/// received, and the rest of their batch lands: before, one such record
/// stopped the consumer, and every restart stopped at it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgresql_refuses_is_set_aside_and_the_rest_lands() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let received = at("2024-06-03T12:00:00Z");
    let mut events: Vec<(Event, i32)> = (0..12)
        .map(|i| (spec("r", i, base).event(received), 1))
        .collect();
    events[4].0.internal.name = Some("Bob\u{0} Smith".into());
    // Random hex does not compress below the index entry's 2,704 bytes.
    events[7].0.correlation.call_id = Some(
        (0..300)
            .map(|_| Uuid::new_v4().simple().to_string())
            .collect(),
    );
    produce_events(&bootstrap, &events, Some(0)).await;

    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer()).await;
    wait_caught_up(&client, GROUP, events.len() as i64, CATCH_UP).await;

    let stored: BTreeSet<String> = store_rows(&client).await.into_keys().collect();
    let expected: BTreeSet<String> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| ![4, 7].contains(i))
        .map(|(_, (e, _))| e.identity.clone())
        .collect();
    assert_eq!(stored, expected);
    let rejected = client
        .query(
            "SELECT consumer_group, topic, partition, record_offset, event_id, revision,
                    sqlstate, error, record
             FROM rejected_events ORDER BY record_offset",
            &[],
        )
        .await
        .expect("rejected_events is readable");
    assert_eq!(rejected.len(), 2);
    for (row, (index, sqlstate)) in rejected.iter().zip([(4, "22"), (7, "54")]) {
        let (event, revision) = &events[index];
        assert_eq!(row.get::<_, String>("consumer_group"), GROUP);
        assert_eq!(row.get::<_, String>("topic"), unique_topic());
        assert_eq!(row.get::<_, i32>("partition"), 0);
        assert_eq!(row.get::<_, i64>("record_offset"), index as i64);
        assert_eq!(row.get::<_, Uuid>("event_id"), event.event_id);
        assert_eq!(row.get::<_, i32>("revision"), *revision);
        let state: String = row.get("sqlstate");
        assert!(state.starts_with(sqlstate), "{index}: SQLSTATE {state}");
        assert!(!row.get::<_, String>("error").is_empty());
        assert_eq!(
            row.get::<_, Vec<u8>>("record"),
            serde_json::to_vec(event).unwrap(),
            "the record as received"
        );
    }
    assert_eq!(sink.metrics.rejected.get(), 2);
    assert_eq!(sink.metrics.consumed.get(), 10);
    sink.stop().await;

    // Set aside for good: a restart resumes after them.
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-2", writer()).await;
    produce_events(
        &bootstrap,
        &[(spec("r", 12, base).event(received), 1)],
        Some(0),
    )
    .await;
    wait_caught_up(&client, GROUP, 13, CATCH_UP).await;
    assert_eq!(sink.metrics.consumed.get(), 1);
    assert_eq!(sink.metrics.rejected.get(), 0);
    sink.stop().await;
}
