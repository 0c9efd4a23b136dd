//! `callstream-store` in-process: the sink as a task of the test, a real
//! Kafka-protocol broker, a real PostgreSQL. Resends, updates out of order,
//! a restart, and a fenced batch (`faults.rs`), PostgreSQL outages
//! (`database.rs`).

mod database;
mod faults;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::Registry;
use uuid::Uuid;

use callstream_consumers::pg;
use callstream_consumers::store::StoreWriter;
use callstream_schemas::Event;
use callstream_testkit::count_records;
use callstream_testkit::expected::{assert_newest_revisions, store_rows};
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::{
    produce, produce_events, setup, start_sink, stored_position, wait_caught_up,
};
use callstream_testkit::unique::{
    a_call_and_its_update_after_the_window, at, scenario, set_notes, spec, unique_topic, Revision,
};

const GROUP: &str = "callstream-store";
const CATCH_UP: Duration = Duration::from_secs(60);

fn writer() -> StoreWriter {
    StoreWriter::new(&Registry::new()).expect("metrics register")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_per_event_holding_its_newest_revision() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let records = scenario(
        "s",
        400,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:00:00Z"),
    );
    produce(&bootstrap, &records, None).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer()).await;
    let end = count_records(&bootstrap, unique_topic());
    assert_eq!(end, records.len() as i64);
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;

    assert!(records.len() > 550, "the scenario repeats events");
    assert_newest_revisions(&client, &records).await;
    assert_eq!(sink.metrics.consumed.get(), records.len() as u64);
    assert_eq!(sink.metrics.fenced.get(), 0);

    // The typed columns of one answered inbound Xarios call, looked up by
    // identity through the primary key as docs/consumers.md shows.
    client
        .batch_execute(r#"CREATE EXTENSION IF NOT EXISTS "uuid-ossp""#)
        .await
        .expect("uuid-ossp is installed");
    let row = client
        .query_one(
            "SELECT provider, tenant, kind, direction, status, user_number, external_number,
                    ring_seconds, talk_seconds, duration_seconds, started_at, call_id, user_id,
                    identity
             FROM events WHERE event_id = uuid_generate_v5(
                 '6b2f1c2e-9a1d-4c55-8f1e-3b7d0c9a51e4', 'xarios:globex:call:s-10:post-call')",
            &[],
        )
        .await
        .expect("the row of s-10");
    assert_eq!(
        row.get::<_, String>("identity"),
        "xarios:globex:call:s-10:post-call"
    );
    let text = |i: usize| row.get::<_, Option<String>>(i);
    assert_eq!(
        (0..7).map(text).collect::<Vec<_>>(),
        [
            "xarios",
            "globex",
            "call",
            "inbound",
            "answered",
            "2100",
            "+447900000010"
        ]
        .map(|s| Some(s.to_string()))
    );
    assert_eq!(
        (
            row.get::<_, Option<f64>>(7),
            row.get::<_, Option<f64>>(8),
            row.get::<_, Option<f64>>(9)
        ),
        (Some(10.0), Some(15.0), Some(25.0))
    );
    assert_eq!(
        row.get::<_, Option<DateTime<Utc>>>(10),
        Some(at("2024-06-03T10:08:50Z"))
    );
    assert_eq!((text(11), text(12)), (Some("s-10".to_string()), None));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_where_the_database_says_not_where_kafka_says() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let received = at("2024-06-03T12:00:00Z");
    let wave1 = scenario("a", 150, at("2024-06-03T10:00:00Z"), received);
    produce(&bootstrap, &wave1, None).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-1", writer()).await;
    wait_caught_up(&client, GROUP, wave1.len() as i64, CATCH_UP).await;
    sink.stop().await;

    // While it is down: everything of wave 1 again (an upstream replay),
    // newer revisions of some events and older ones of others, new events.
    let mut wave2 = wave1.clone();
    for r in wave1.iter().filter(|r| r.revision == 1).step_by(7) {
        wave2.push(r.updated(7, |s| set_notes(s, "v7")));
    }
    wave2.extend(scenario("b", 100, at("2024-06-03T10:00:00Z"), received));
    produce(&bootstrap, &wave2, None).await;

    // A new Kafka group has no committed offsets, so Kafka alone would
    // start every partition at the beginning; the stored positions decide.
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-2", writer()).await;
    let end = (wave1.len() + wave2.len()) as i64;
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;
    assert_eq!(
        sink.metrics.consumed.get(),
        wave2.len() as u64,
        "the second run applied only what arrived after the first"
    );
    let all: Vec<Revision> = wave1.iter().chain(&wave2).cloned().collect();
    assert_newest_revisions(&client, &all).await;
    sink.stop().await;
}

/// A database the first release migrated (V3) and filled upgrades in place:
/// rows kept, the identity index gone, identifier columns compared bytewise
/// and still found through their indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_upgrade_a_filled_table_in_place() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    pg::migrate_up_to(&mut client, Some(3))
        .await
        .expect("the first release's migrations apply");
    for (id, tenant, number) in [(1, "acme", "+4470"), (2, "Acme", "0044"), (3, "acme", "é1")] {
        client
            .execute(
                "INSERT INTO events (event_id, identity, revision, fingerprint, provider,
                     tenant, kind, direction, status, external_number, call_id,
                     started_at, received_at, event)
                 VALUES (gen_random_uuid(), $1, 1, 'f', 'onoff', $2, 'call', 'inbound',
                     'answered', $3, $1, now(), now(), '{}')",
                &[&format!("onoff:{tenant}:call:{id}"), &tenant, &number],
            )
            .await
            .expect("a V3 row");
    }
    pg::migrate(&mut client).await.expect("the upgrade applies");

    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM events").await, 3);
    assert_eq!(
        count("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_identity'").await,
        0
    );
    let collations: Vec<(String, Option<String>)> = client
        .query(
            "SELECT column_name::text, collation_name::text FROM information_schema.columns
             WHERE table_name = 'events' AND column_name IN
                 ('tenant', 'user_id', 'external_number', 'call_id')
             ORDER BY column_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        collations,
        ["call_id", "external_number", "tenant", "user_id"]
            .map(|c| (c.to_string(), Some("C".into())))
    );
    // Bytewise: "+" < "0" < "A" < "a" < "é" whatever the database's locale.
    let numbers: Vec<String> = client
        .query(
            "SELECT external_number FROM events ORDER BY external_number",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(numbers, ["+4470", "0044", "é1"]);
    // The rebuilt indexes answer equality look-ups.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    assert_eq!(
        count("SELECT count(*) FROM events WHERE tenant = 'acme' AND started_at <= now()").await,
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE call_id = 'onoff:Acme:call:2'").await,
        1
    );
}

/// Dedup numbers revisions only while its window remembers an identity: an
/// update that arrives after it comes out as revision 1 again, received
/// later. The store keeps it over the revision 2 it holds; the same content
/// later still, and the original replayed with its original time, change
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_the_dedup_window_is_kept_and_a_late_resend_changes_nothing() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let (first, late) =
        a_call_and_its_update_after_the_window(|s| set_notes(s, "added a week later"));
    let mut within = first.updated(2, |s| set_notes(s, "within the window"));
    within.received_at = at("2024-06-03T10:20:00Z");
    let mut late_resend = late.clone();
    late_resend.received_at = at("2024-06-11T09:00:00Z");
    let replayed = first.clone();
    let records = vec![first, within, late.clone(), late_resend, replayed];
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer()).await;
    // One wave at a time, so each meets a stored row, not a batch-mate.
    for (wave, end) in [(&records[..2], 2), (&records[2..3], 3), (&records[3..], 5)] {
        produce(&bootstrap, wave, Some(0)).await;
        wait_caught_up(&client, GROUP, end, CATCH_UP).await;
    }
    assert_newest_revisions(&client, &records).await;
    let row = client
        .query_one(
            "SELECT event->'custom'->>'notes', revision, received_at FROM events WHERE identity = $1",
            &[&late.event().identity],
        )
        .await
        .expect("the row");
    let notes: Option<String> = row.get(0);
    let received_at: DateTime<Utc> = row.get(2);
    assert_eq!(
        (notes.as_deref(), row.get::<_, i32>(1), received_at),
        (Some("added a week later"), 1, late.received_at)
    );
    sink.stop().await;
}
