//! Publishing to Kafka. Guarantee: `publish` returns `Ok` only after Kafka
//! has acknowledged *every* record of the delivery with `acks=all` from an
//! idempotent producer; only then may the HTTP handler answer 2xx.
//!
//! The deadline is librdkafka's own `message.timeout.ms`: when `publish`
//! fails, librdkafka has already given the record up, so a delivery that is
//! then spooled cannot also arrive late through the producer and overtake
//! newer records for its key. (The outer timer is a safety net only.)
//!
//! What breaks it: a broker configured with `min.insync.replicas=1` on a
//! single replica acknowledges a write that one disk failure can lose. A
//! record that timed out after reaching the broker may still have been
//! written ("possibly persisted"); its retry or spooled copy is then a
//! duplicate, which the dedup consumer drops. Never the other way round:
//! nothing unacknowledged gets 2xx.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use callstream_schemas::Topic;

use crate::config::{KafkaSettings, TopicNames};
use crate::metrics::Metrics;

/// A Kafka header: names are mostly constants, but records read back from
/// the spool carry owned names.
pub type HeaderPair = (Cow<'static, str>, Vec<u8>);

/// One record to publish; the publisher maps the logical topic to its name.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: Topic,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<HeaderPair>,
}

/// A header from a constant name.
pub fn header(name: &'static str, value: impl Into<Vec<u8>>) -> HeaderPair {
    (Cow::Borrowed(name), value.into())
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kafka did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("Kafka refused the record ({kind}): {source}")]
    Kafka {
        /// `retriable` (broker down, queue full, ...) or `fatal` (too large, not authorized, ...).
        kind: &'static str,
        #[source]
        source: KafkaError,
    },
}

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topics: TopicNames,
    timeout: Duration,
    metrics: Metrics,
}

/// librdkafka message size margin over the body for key and headers.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;
/// Extra wait beyond `message.timeout.ms` before giving up on librdkafka.
/// librdkafka checks message timeouts about once a second, so a failure
/// can be reported up to ~1 s late; the margin must cover that, or the
/// safety net would fire while the record is still queued.
const SAFETY_MARGIN: Duration = Duration::from_millis(2_000);

impl Publisher {
    pub fn new(
        kafka: &KafkaSettings,
        bootstrap_servers: &str,
        topics: TopicNames,
        max_body_bytes: usize,
        metrics: Metrics,
    ) -> Result<Publisher, KafkaError> {
        let mut config = ClientConfig::new();
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", kafka.linger_ms.to_string())
            // Java clients' partitioner, so Kafka Streams / Java consumers
            // co-partition with us by key.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set(
                "message.max.bytes",
                (max_body_bytes + RECORD_OVERHEAD_BYTES).to_string(),
            )
            // librdkafka decides when a record has failed (see module docs).
            .set("message.timeout.ms", kafka.publish_timeout_ms.to_string());
        Ok(Publisher {
            producer: config.create()?,
            topics,
            timeout: Duration::from_millis(kafka.publish_timeout_ms) + SAFETY_MARGIN,
            metrics,
        })
    }

    pub fn topics(&self) -> &TopicNames {
        &self.topics
    }

    /// Publishes all records concurrently and waits for every acknowledgement.
    pub async fn publish(&self, records: &[OutRecord]) -> Result<(), PublishError> {
        let sends = records.iter().map(|r| self.publish_one(r));
        match tokio::time::timeout(self.timeout, join_all(sends)).await {
            Ok(results) => results.into_iter().collect(),
            Err(_) => {
                for r in records {
                    self.count_error(r.topic, "timeout");
                }
                Err(PublishError::Timeout(self.timeout))
            }
        }
    }

    async fn publish_one(&self, record: &OutRecord) -> Result<(), PublishError> {
        let started = Instant::now();
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key: key.as_ref(),
                    value: Some(value.as_slice()),
                })
            });
        let future_record = FutureRecord::to(self.topics.name(record.topic))
            .key(record.key.as_bytes())
            .payload(record.payload.as_slice())
            .headers(headers);
        let delivery = match self.producer.send_result(future_record) {
            Ok(delivery) => delivery,
            Err((err, _)) => return Err(self.fail(record.topic, err)),
        };
        match delivery.await {
            Ok(Ok(_)) => {
                let label = record.topic.label();
                self.metrics
                    .produce_duration
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .records_published
                    .with_label_values(&[label])
                    .inc();
                Ok(())
            }
            Ok(Err((err, _))) => Err(self.fail(record.topic, err)),
            Err(_canceled) => Err(self.fail(record.topic, KafkaError::Canceled)),
        }
    }

    fn fail(&self, topic: Topic, err: KafkaError) -> PublishError {
        let kind = classify(&err);
        self.count_error(topic, kind);
        PublishError::Kafka { kind, source: err }
    }

    fn count_error(&self, topic: Topic, kind: &str) {
        self.metrics
            .produce_errors
            .with_label_values(&[topic.label(), kind])
            .inc();
    }

    /// Whether a broker answers a metadata request within `timeout`.
    pub async fn kafka_reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// Waits up to `timeout` for queued records to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

/// Sorts a produce error into `retriable` (worth trying again later: the
/// broker is away or busy) or `fatal` (this record will never be accepted).
pub fn classify(err: &KafkaError) -> &'static str {
    use RDKafkaErrorCode::*;
    match err.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidMessage
            | InvalidRecord
            | UnknownTopic
            | InvalidTopic
            | Fatal,
        ) => "fatal",
        _ => "retriable",
    }
}
