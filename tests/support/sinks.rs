//! Running the PostgreSQL consumers' sinks in tests: producing unique
//! records with their `cs_revision` header, waiting until a consumer's
//! stored positions reach the end of the topic, and a sink as a task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;

use callstream_consumers::pg_sink::{PgSink, PgWriter, SinkMetrics};
use callstream_gateway::config::Settings;
use callstream_kafka::client::consumer_config;
use callstream_kafka::consume::TrackingContext;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_kafka::ClientSettings;
use callstream_schemas::event::REVISION_HEADER;
use callstream_schemas::Event;

use crate::postgres::TestDatabase;
use crate::unique::{unique_topic, Revision};
use crate::PARTITIONS;

/// A broker with every callstream topic under its default name.
pub fn broker() -> EmbeddedBroker {
    let topics = Settings::from_figment(Settings::defaults())
        .expect("default settings")
        .topics;
    EmbeddedBroker::start(PARTITIONS, &topics).expect("broker starts")
}

/// A broker, a fresh database with the consumers' migrations applied, and a
/// connection to it.
pub async fn setup() -> (EmbeddedBroker, TestDatabase, tokio_postgres::Client) {
    let broker = broker();
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    callstream_consumers::pg::migrate(&mut client)
        .await
        .expect("migrations apply");
    (broker, db, client)
}

/// Produces `records` in order (order is kept per partition) with the
/// `cs_revision` header, keyed by identity, or all to `partition` when
/// given; waits for every acknowledgement.
pub async fn produce(bootstrap: &str, records: &[Revision], partition: Option<i32>) {
    let events: Vec<(Event, i32)> = records.iter().map(|r| (r.event(), r.revision)).collect();
    produce_events(bootstrap, &events, partition).await;
}

/// [`produce`] for ready-made events.
pub async fn produce_events(bootstrap: &str, events: &[(Event, i32)], partition: Option<i32>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer builds");
    let encoded: Vec<(String, Vec<u8>, String)> = events
        .iter()
        .map(|(event, revision)| {
            let value = serde_json::to_vec(event).expect("events serialize");
            (event.identity.clone(), value, revision.to_string())
        })
        .collect();
    let sends = encoded.iter().map(|(key, value, revision)| {
        let headers = OwnedHeaders::new().insert(Header {
            key: REVISION_HEADER,
            value: Some(revision.as_str()),
        });
        let mut record = FutureRecord::to(unique_topic())
            .key(key.as_str())
            .payload(value.as_slice())
            .headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer.send(record, Duration::from_secs(30))
    });
    for result in futures_util::future::join_all(sends).await {
        if let Err((e, _)) = result {
            panic!("produce failed: {e}");
        }
    }
}

/// Sum of the next offsets `group` stored for the unique topic.
pub async fn stored_position(db: &tokio_postgres::Client, group: &str) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets
         WHERE consumer_group = $1 AND topic = $2",
        &[&group, &unique_topic()],
    )
    .await
    .expect("consumer_offsets is readable")
    .get(0)
}

/// Waits until `group`'s stored positions reach `end` (the sum of the high
/// watermarks: every record produced by a non-transactional producer).
pub async fn wait_caught_up(
    db: &tokio_postgres::Client,
    group: &str,
    end: i64,
    deadline: Duration,
) {
    let start = Instant::now();
    loop {
        let at = stored_position(db, group).await;
        if at == end {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{group} stored position {at} did not reach {end} within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A [`PgSink`] running as a task of this test.
pub struct RunningSink {
    pub metrics: SinkMetrics,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts `writer` as `group` (its positions in the database) with the
/// Kafka consumer group `kafka_group` (which only decides where a partition
/// starts before the database corrects it), writing through one connection
/// per partition when the writer allows it (so every lane is exercised),
/// else one.
pub async fn start_sink<W: PgWriter + 'static>(
    bootstrap: &str,
    db_url: &str,
    group: &str,
    kafka_group: &str,
    writer: W,
) -> RunningSink {
    let connections = if W::PARTITION_PARALLEL {
        PARTITIONS as usize
    } else {
        1
    };
    let kafka = ClientSettings {
        bootstrap_servers: bootstrap.to_string(),
        ..Default::default()
    };
    let consumer = consumer_config(&kafka, kafka_group)
        .create_with_context(TrackingContext::default())
        .expect("consumer builds");
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
            .await
            .expect("connects to the test database");
        tokio::spawn(connection);
        clients.push(client);
    }
    let metrics = SinkMetrics::new(&prometheus::Registry::new(), "test");
    let sink = PgSink {
        consumer: Arc::new(consumer),
        clients,
        writer,
        group: group.to_string(),
        topic: unique_topic().to_string(),
        batch_max: 100,
        linger: Duration::from_millis(20),
        metrics: metrics.clone(),
        database_url: db_url.to_string().into(),
    };
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(sink.run(rx));
    RunningSink {
        metrics,
        shutdown,
        task,
    }
}

impl RunningSink {
    /// Whether the sink has stopped by itself (an error, or a panic).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops after the batch in progress and closes the consumer.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .expect("sink task did not panic")
            .expect("sink ran without error");
    }
}

/// Waits until the store's calls task has merged and published everything
/// queued (`calls_dirty` and `calls_outbox` empty); panics after `timeout`.
pub async fn wait_calls_settled(db: &tokio_postgres::Client, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left: i64 = db
            .query_one(
                "SELECT (SELECT count(*) FROM calls_dirty) + (SELECT count(*) FROM calls_outbox)",
                &[],
            )
            .await
            .expect("the calls queues are readable")
            .get(0);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} calls still queued after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
