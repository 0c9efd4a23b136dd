//! kill -9 of callstream-store and callstream-analytics mid-stream,
//! repeatedly, against a real Kafka-protocol broker and a real PostgreSQL:
//! afterwards every event is stored once in its newest revision and every
//! KPI row is exact (nothing lost, nothing counted twice).

use std::time::{Duration, Instant};

use callstream_kafka::embedded::EmbeddedBroker;
use callstream_testkit::expected::{
    actual, assert_calls, assert_counted_once, assert_kpis, assert_newest_revisions, expected,
    expected_calls,
};
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::{
    broker, produce, stored_position, wait_calls_settled, wait_caught_up,
};
use callstream_testkit::unique::{at, finals, scenario, unique_topic, Revision};
use callstream_testkit::{count_records, ServiceProcess};

const STORE: &str = env!("CARGO_BIN_EXE_callstream-store");
const ANALYTICS: &str = env!("CARGO_BIN_EXE_callstream-analytics");
/// Distinct events; with resends and updates about 20,000 records.
const EVENTS: usize = 14_000;
const KILLS: usize = 3;

/// A broker holding the load, a fresh database, and the environment of a
/// consumer binary pointed at both.
struct Setup {
    broker: EmbeddedBroker,
    db: tokio_postgres::Client,
    records: Vec<Revision>,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

async fn setup(section: &str) -> Setup {
    let broker = broker();
    let records = scenario(
        "crash",
        EVENTS,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:00:00Z"),
    );
    produce(&broker.bootstrap_servers(), &records, None).await;
    let database = TestDatabase::create().await;
    let db = database.connect().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("consumer.toml");
    // A killed member holds its partitions until its session times out;
    // keep that short so the rounds stay quick. Small batches: many
    // transactions, so a kill lands mid-batch.
    std::fs::write(
        &config,
        format!(
            "[{section}]\nbatch_max = 300\nbatch_linger_ms = 5\n[kafka.properties]\n\
             \"session.timeout.ms\" = \"3000\"\n\"heartbeat.interval.ms\" = \"300\"\n"
        ),
    )
    .expect("config written");
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("DATABASE_URL", database.url.clone()),
        ("CALLSTREAM_CONFIG", config.display().to_string()),
    ];
    Setup {
        broker,
        db,
        records,
        env,
        _dir: dir,
    }
}

async fn start(binary: &'static str, env: &[(&'static str, String)]) -> ServiceProcess {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || ServiceProcess::consumer(binary, &env))
        .await
        .expect("start task")
}

/// Runs `binary` (consumer group `group`) to the end of the topic, killed
/// with SIGKILL [`KILLS`] times on the way, each time after it stored some
/// progress and before it was done; then (for the store, once its calls
/// task has merged and published everything queued) stops it with SIGTERM.
async fn crash_until_done(binary: &'static str, group: &str, setup: &Setup) {
    let end = count_records(&setup.broker.bootstrap_servers(), unique_topic());
    assert_eq!(end, setup.records.len() as i64);
    let step = end / (KILLS as i64 + 2);
    let mut killed_at = Vec::new();
    for round in 0..KILLS {
        let process = start(binary, &setup.env).await;
        let from = stored_position(&setup.db, group).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = stored_position(&setup.db, group).await;
            if at >= from + step {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: stuck at {at}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::task::spawn_blocking(move || process.kill9())
            .await
            .expect("kill task");
        let at = stored_position(&setup.db, group).await;
        assert!(at < end, "round {round} finished before the kill");
        killed_at.push(at);
    }

    let process = start(binary, &setup.env).await;
    wait_caught_up(&setup.db, group, end, Duration::from_secs(120)).await;
    if binary == STORE {
        wait_calls_settled(&setup.db, Duration::from_secs(60)).await;
    }
    let health = reqwest::get(process.url("/healthz"))
        .await
        .expect("health answers");
    assert!(health.status().is_success());
    let metrics = reqwest::get(process.url("/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let prefix = group.replace('-', "_");
    assert!(
        metrics.contains(&format!("{prefix}_batches_total")),
        "{metrics}"
    );
    let status = tokio::task::spawn_blocking(move || process.terminate())
        .await
        .expect("terminate task");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    println!(
        "{group} crash test: {end} records, SIGKILL at stored positions {killed_at:?}, caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_killed_mid_batch_loses_and_duplicates_nothing() {
    let setup = setup("store").await;
    crash_until_done(STORE, "callstream-store", &setup).await;
    assert_newest_revisions(&setup.db, &setup.records).await;
    // One row per call, whole, and every call's newest state published.
    let calls = expected_calls(finals(&setup.records).values());
    assert_calls(&setup.db, &calls).await;
    let behind: i64 = setup
        .db
        .query_one("SELECT count(*) FROM calls_outbox", &[])
        .await
        .expect("calls is readable")
        .get(0);
    assert_eq!(behind, 0, "every call state published");
    let topic = callstream_schemas::Topic::Calls.default_name();
    let mut newest: std::collections::BTreeMap<String, (i64, serde_json::Value)> =
        std::collections::BTreeMap::new();
    for record in callstream_testkit::read_all(&setup.broker.bootstrap_servers(), topic) {
        let revision: i64 = record
            .header("cs_revision")
            .expect("a revision")
            .parse()
            .expect("a number");
        let key = String::from_utf8(record.key.clone()).expect("UTF-8");
        // Per key, never an older state after a newer one.
        if let Some((before, _)) = newest.insert(key.clone(), (revision, record.json())) {
            assert!(
                before <= revision,
                "{key}: revision {revision} after {before}"
            );
        }
    }
    assert_eq!(newest.len(), calls.len(), "one key per call in the topic");
    for (key, (_, json)) in &newest {
        let published: callstream_schemas::call::Call =
            serde_json::from_value(json.clone()).expect("a call");
        assert_eq!(&published, &calls[key], "{key}: the topic's newest state");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_killed_mid_batch_counts_every_event_exactly_once() {
    let setup = setup("analytics").await;
    crash_until_done(ANALYTICS, "callstream-analytics", &setup).await;
    let newest: Vec<Revision> = finals(&setup.records).into_values().collect();
    assert_kpis(&actual(&setup.db).await, &expected(&newest));
    assert_counted_once(&setup.db, &newest).await;
}
