//! `callstream-store` in-process: the sink as a task of the test, a real
//! Kafka-protocol broker, a real PostgreSQL. Resends, updates out of order,
//! a restart, and a fenced batch.

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
use callstream_testkit::unique::{at, scenario, set_notes, spec, unique_topic, Revision};

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

/// PostgreSQL going away (connections cut, then refused for a while) holds
/// the consumer back without stopping it: the batch rolls back, is retried
/// with backoff on a new connection, and lands once the database is back.
/// A stop during the outage returns at once, and nothing is lost or applied
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_retried_and_loses_nothing() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let received = at("2024-06-03T12:00:00Z");
    let wave = |from: usize| -> Vec<Revision> {
        (from..from + 40)
            .map(|i| Revision {
                spec: spec("o", i, base),
                revision: 1,
                received_at: received,
            })
            .collect()
    };
    // From the cluster's `postgres` database, which stays open: the test's
    // own connection to the test database is cut too, and comes back.
    let (admin, connection) = tokio_postgres::connect(
        &db.url.replace(&format!("/{}", db.name), "/postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects to the cluster");
    tokio::spawn(connection);
    let mut client = client;
    let cut = |allow: bool| {
        let admin = &admin;
        let name = db.name.clone();
        async move {
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allow};
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
                ))
                .await
                .expect("the cluster takes the change");
        }
    };
    let (w1, w2, w3) = (wave(0), wave(100), wave(200));
    produce(&bootstrap, &w1, None).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-1", writer()).await;
    wait_caught_up(&client, GROUP, 40, CATCH_UP).await;

    // Connections cut: the next batch finds its connection closed and
    // reconnects.
    cut(true).await;
    client = db.connect().await;
    produce(&bootstrap, &w2, None).await;
    wait_caught_up(&client, GROUP, 80, CATCH_UP).await;
    assert!(
        sink.metrics.db_errors.get() >= 1,
        "the lost connection was seen"
    );

    // Connections cut and refused: the batch waits and is retried.
    cut(false).await;
    produce(&bootstrap, &w3, None).await;
    let deadline = std::time::Instant::now() + CATCH_UP;
    while sink.metrics.db_errors.get() < 4 {
        assert!(std::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored, 0,
        "no connection to the database while it refuses them"
    );
    tokio::time::timeout(Duration::from_secs(10), sink.stop())
        .await
        .expect("a stop during the outage returns");

    cut(true).await;
    client = db.connect().await;
    assert_eq!(
        stored_position(&client, GROUP).await,
        80,
        "the third wave waited"
    );
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-2", writer()).await;
    wait_caught_up(&client, GROUP, 120, CATCH_UP).await;
    assert_eq!(
        sink.metrics.consumed.get(),
        40,
        "only the third wave was left"
    );
    let all: Vec<Revision> = w1.iter().chain(&w2).chain(&w3).cloned().collect();
    assert_newest_revisions(&client, &all).await;
    sink.stop().await;
}

/// A TCP relay to PostgreSQL that, once, forwards a transaction's `COMMIT`
/// and then cuts the connection before PostgreSQL's answer comes back: the
/// commit lands, and the sink never hears of it.
async fn losing_one_commit_answer(db_url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    let upstream = db_url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the URL")
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let relayed = db_url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let armed = armed.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // Set before the COMMIT goes out, checked before each answer
                // is passed on: so no answer read after it reaches the sink
                // (`abort` would not do: a copy mid-poll on another worker
                // can still pass the COMMIT's answer on).
                let muted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mute = muted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // Dropping the write half: the sink reads EOF.
                        if muted.load(std::sync::atomic::Ordering::SeqCst)
                            || client_write.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                    // Only the first COMMIT after records were written.
                    let cut = commit && armed.swap(false, std::sync::atomic::Ordering::SeqCst);
                    if cut {
                        // No answer reaches the sink from here on.
                        mute.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if cut {
                        // Time for PostgreSQL to commit, then the line drops.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            });
        }
    });
    relayed
}

/// A commit whose answer was lost leaves the counters equal to what was
/// committed: the batch landed once and counts once (not as fenced, not
/// as nothing), and the undecodable record in it counts once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_counts_what_committed() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let records: Vec<Revision> = (0..20)
        .map(|i| Revision {
            spec: spec("l", i, base),
            revision: 1,
            received_at: at("2024-06-03T12:00:00Z"),
        })
        .collect();
    // One partition, so one lane and one transaction holds the batch.
    produce(&bootstrap, &records, Some(0)).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(unique_topic())
                .partition(0)
                .key("bad")
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let relayed = losing_one_commit_answer(&db.url).await;
    // The positions are read through the relay too, but no COMMIT precedes
    // the batch's: the first one cut is the batch's.
    let sink = start_sink(&bootstrap, &relayed, GROUP, "kafka-group", writer()).await;
    wait_caught_up(&client, GROUP, 21, CATCH_UP).await;
    let deadline = std::time::Instant::now() + CATCH_UP;
    while sink.metrics.consumed.get() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed stayed at {} after the batch landed (fenced {})",
            sink.metrics.consumed.get(),
            sink.metrics.fenced.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sink.metrics.db_errors.get() >= 1,
        "the lost answer was seen"
    );
    assert_eq!(sink.metrics.fenced.get(), 0, "its own commit is no fence");
    assert_eq!(sink.metrics.consumed.get(), 20);
    assert_eq!(sink.metrics.undecodable.get(), 1);
    assert_newest_revisions(&client, &records).await;
    sink.stop().await;
}
