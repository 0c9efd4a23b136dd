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
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use callstream_schemas::Topic;

use crate::client::durable;
use crate::settings::TopicNames;

/// A Kafka header: names are mostly constants, but records read back from
/// the spool carry owned names.
pub(crate) type HeaderPair = (Cow<'static, str>, Vec<u8>);

/// One record to publish; the publisher maps the logical topic to its name.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    pub topic: Topic,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<HeaderPair>,
}

impl OutRecord {
    /// An upper bound of the size librdkafka checks against
    /// `message.max.bytes`: payload, key, headers and their framing.
    pub fn wire_size(&self) -> usize {
        const RECORD_FRAMING: usize = 128;
        const HEADER_FRAMING: usize = 16;
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_FRAMING)
            .sum();
        self.payload.len() + self.key.len() + headers + RECORD_FRAMING
    }
}

/// A header from a constant name.
pub fn header(name: &'static str, value: impl Into<Vec<u8>>) -> HeaderPair {
    (Cow::Borrowed(name), value.into())
}

/// Why a publish failed, sorted by what sending the same records again
/// would do.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No answer within the deadline: the cluster may take it later.
    #[error("Kafka did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// The broker is away or busy: worth trying again later.
    #[error("Kafka refused the record (retriable): {0}")]
    Retriable(#[source] KafkaError),
    /// Not until the cluster's configuration changes (authorization, an
    /// unknown topic): the same records then go through.
    #[error("Kafka refused the record (fatal): {0}")]
    Misconfigured(#[source] KafkaError),
    /// Kafka refuses this record itself (too large, invalid), whatever the
    /// cluster's state: sending it again fails again.
    #[error("Kafka refused the record (fatal): {0}")]
    RecordRefused(#[source] KafkaError),
}

impl PublishError {
    fn from_kafka(err: KafkaError) -> PublishError {
        match kind_of(&err) {
            ErrorKind::Retriable => PublishError::Retriable(err),
            ErrorKind::Misconfigured => PublishError::Misconfigured(err),
            ErrorKind::RecordRefused => PublishError::RecordRefused(err),
        }
    }

    /// See [`PublishError::RecordRefused`].
    pub fn record_refused(&self) -> bool {
        matches!(self, PublishError::RecordRefused(_))
    }
}

/// The metrics a publisher counts into, each by `topic` (its label) and
/// errors by `kind` too ([`PRODUCE_ERROR_KINDS`]).
#[derive(Clone)]
pub struct PublishMetrics {
    /// Time for Kafka to acknowledge one record.
    pub produce_duration: HistogramVec,
    /// Records acknowledged.
    pub records_published: IntCounterVec,
    /// Records not acknowledged.
    pub produce_errors: IntCounterVec,
}

/// The `kind` label of produce errors: no answer in time, or
/// [`classify`]'s.
pub(crate) const PRODUCE_ERROR_KINDS: [&str; 3] = ["timeout", "retriable", "fatal"];

impl PublishMetrics {
    /// The publisher's series of `component` (`gateway`: the gateway's),
    /// registered in `registry`:
    /// `callstream_<component>_kafka_produce_duration_seconds`,
    /// `…_kafka_produce_errors_total` and `…_records_published_total`.
    pub fn register(
        registry: &prometheus::Registry,
        component: &str,
    ) -> prometheus::Result<PublishMetrics> {
        let produce_duration = HistogramVec::new(
            prometheus::HistogramOpts::new(
                format!("callstream_{component}_kafka_produce_duration_seconds"),
                "Time for Kafka to acknowledge one record, by topic.",
            ),
            &["topic"],
        )?;
        let produce_errors = IntCounterVec::new(
            prometheus::Opts::new(
                format!("callstream_{component}_kafka_produce_errors_total"),
                "Records Kafka did not acknowledge, by topic and kind (timeout, retriable, fatal).",
            ),
            &["topic", "kind"],
        )?;
        let records_published = IntCounterVec::new(
            prometheus::Opts::new(
                format!("callstream_{component}_records_published_total"),
                "Records acknowledged by Kafka, by topic.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(produce_duration.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(records_published.clone()))?;
        Ok(PublishMetrics {
            produce_duration,
            records_published,
            produce_errors,
        })
    }

    /// Creates every series of `topics`, so dashboards see them at 0.
    pub fn prepare(&self, topics: &[Topic]) {
        for topic in topics {
            let label = topic.label();
            self.produce_duration.with_label_values(&[label]);
            self.records_published.with_label_values(&[label]);
            for kind in PRODUCE_ERROR_KINDS {
                self.produce_errors.with_label_values(&[label, kind]);
            }
        }
    }
}

/// How a [`Publisher`] waits and how large a record it sends.
#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// librdkafka's `message.timeout.ms`: when a record has failed.
    pub timeout_ms: u64,
    /// Batching delay in milliseconds, fractions allowed.
    pub linger_ms: f64,
    /// The largest body a record carries; key and headers come on top.
    pub max_body_bytes: usize,
}

#[derive(Clone)]
pub struct Publisher {
    producer: Arc<ThreadedProducer<Deliveries>>,
    topics: TopicNames,
    timeout: Duration,
    max_record_bytes: usize,
}

/// librdkafka message size margin over the body for key and headers.
const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;
/// Extra wait beyond `message.timeout.ms` before giving up on librdkafka.
/// librdkafka checks message timeouts about once a second, so a failure
/// can be reported up to ~1 s late; the margin must cover that, or the
/// safety net would fire while the record is still queued.
const SAFETY_MARGIN: Duration = Duration::from_millis(2_000);

impl Publisher {
    /// A durable publisher of `written` over `config` (brokers and the
    /// configured properties; [`durable`] goes on top).
    pub fn new(
        mut config: ClientConfig,
        options: PublishOptions,
        topics: TopicNames,
        written: &[Topic],
        metrics: PublishMetrics,
    ) -> Result<Publisher, KafkaError> {
        let max_record_bytes = options.max_body_bytes + RECORD_OVERHEAD_BYTES;
        // Events are JSON, several times smaller compressed, on the broker's
        // disks and to every subscriber; the properties may choose another.
        if config.get("compression.type").is_none() {
            config.set("compression.type", "lz4");
        }
        durable(&mut config)
            .set("linger.ms", options.linger_ms.to_string())
            // Java clients' partitioner, so Kafka Streams / Java consumers
            // co-partition with us by key.
            .set("partitioner", "murmur2_random")
            .set("message.max.bytes", max_record_bytes.to_string())
            // librdkafka decides when a record has failed (see module docs).
            .set("message.timeout.ms", options.timeout_ms.to_string());
        metrics.prepare(written);
        let context = Deliveries {
            topics: written
                .iter()
                .map(|&topic| PublishedTopic {
                    topic,
                    name: topics.name(topic).to_string(),
                    produce_duration: metrics.produce_duration.with_label_values(&[topic.label()]),
                    records_published: metrics
                        .records_published
                        .with_label_values(&[topic.label()]),
                })
                .collect(),
            metrics,
        };
        Ok(Publisher {
            producer: Arc::new(config.create_with_context(context)?),
            topics,
            timeout: Duration::from_millis(options.timeout_ms) + SAFETY_MARGIN,
            max_record_bytes,
        })
    }

    /// The largest record the producer sends (`message.max.bytes`); a
    /// larger one is refused before it reaches a broker, every time.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    pub fn topics(&self) -> &TopicNames {
        &self.topics
    }

    /// Publishes all records concurrently and waits for every acknowledgement.
    pub async fn publish(&self, records: &[OutRecord]) -> Result<(), PublishError> {
        let batch = Arc::new(InFlight::new(records.len()));
        for (i, record) in records.iter().enumerate() {
            let headers = record.headers.iter().fold(
                OwnedHeaders::new_with_capacity(record.headers.len()),
                |h, (key, value)| {
                    h.insert(Header {
                        key: key.as_ref(),
                        value: Some(value.as_slice()),
                    })
                },
            );
            let base = BaseRecord::with_opaque_to(self.topics.name(record.topic), batch.clone())
                .key(record.key.as_bytes())
                .payload(record.payload.as_slice())
                .headers(headers);
            if let Err((err, _)) = self.producer.send(base) {
                // Neither this record nor the ones after it were enqueued;
                // the ones before it still settle through their reports, so
                // none is left to arrive after the delivery is spooled.
                let context = self.producer.context();
                context.count_error(record.topic, classify(&err));
                batch.settle(records.len() - i, Some(err));
                break;
            }
        }
        match tokio::time::timeout(self.timeout, Settled(&batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(PublishError::from_kafka(err)),
            Err(_) => {
                let context = self.producer.context();
                for r in records {
                    context.count_error(r.topic, "timeout");
                }
                Err(PublishError::Timeout(self.timeout))
            }
        }
    }

    /// Whether a broker answers a metadata request for the raw topic within
    /// `timeout` (one topic: a whole cluster's metadata can be large).
    pub async fn kafka_reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let raw = self.topics.name(Topic::Raw).to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&raw), timeout)
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Waits up to `timeout` for queued records to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

/// The records of one delivery that Kafka has not settled yet. Delivery
/// reports arrive on the producer's polling thread and count it down; the
/// last one wakes the waiting handler once. (rust-rdkafka's `FutureProducer`
/// allocates a channel per record and wakes the handler for each.)
struct InFlight {
    state: Mutex<InFlightState>,
    started: Instant,
}

struct InFlightState {
    remaining: usize,
    /// The first failure among the records.
    failure: Option<KafkaError>,
    waker: Option<Waker>,
}

impl InFlight {
    fn new(records: usize) -> InFlight {
        InFlight {
            state: Mutex::new(InFlightState {
                remaining: records,
                failure: None,
                waker: None,
            }),
            started: Instant::now(),
        }
    }

    /// `count` records are done with (acknowledged, failed, or never enqueued).
    fn settle(&self, count: usize, failure: Option<KafkaError>) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.remaining = state.remaining.saturating_sub(count);
            if state.failure.is_none() {
                state.failure = failure;
            }
            if state.remaining == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Resolves once every record of an [`InFlight`] is settled.
struct Settled<'a>(&'a InFlight);

impl Future for Settled<'_> {
    type Output = Result<(), KafkaError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.remaining == 0 {
            return Poll::Ready(state.failure.take().map_or(Ok(()), Err));
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The producer's context: takes each record's delivery report, counts it
/// in the metrics and settles its delivery.
struct Deliveries {
    /// The topics written, the first standing in for an unknown name.
    topics: Vec<PublishedTopic>,
    metrics: PublishMetrics,
}

/// A topic the gateway writes, with its metric children resolved once
/// rather than looked up by label for every delivery report.
struct PublishedTopic {
    topic: Topic,
    name: String,
    produce_duration: Histogram,
    records_published: IntCounter,
}

impl Deliveries {
    fn topic_of(&self, name: &str) -> &PublishedTopic {
        self.topics
            .iter()
            .find(|t| t.name == name)
            .unwrap_or(&self.topics[0])
    }

    fn count_error(&self, topic: Topic, kind: &str) {
        self.metrics
            .produce_errors
            .with_label_values(&[topic.label(), kind])
            .inc();
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<InFlight>) {
        match result {
            Ok(msg) => {
                let topic = self.topic_of(msg.topic());
                topic
                    .produce_duration
                    .observe(batch.started.elapsed().as_secs_f64());
                topic.records_published.inc();
                batch.settle(1, None);
            }
            Err((err, msg)) => {
                let topic = self.topic_of(msg.topic()).topic;
                self.count_error(topic, classify(err));
                batch.settle(1, Some(err.clone()));
            }
        }
    }
}

enum ErrorKind {
    Retriable,
    Misconfigured,
    RecordRefused,
}

fn kind_of(err: &KafkaError) -> ErrorKind {
    use RDKafkaErrorCode::*;
    match err.rdkafka_error_code() {
        Some(MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord) => {
            ErrorKind::RecordRefused
        }
        Some(
            TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | UnknownTopic
            | InvalidTopic
            | Fatal,
        ) => ErrorKind::Misconfigured,
        _ => ErrorKind::Retriable,
    }
}

/// Sorts a produce error into `retriable` (worth trying again later: the
/// broker is away or busy) or `fatal` (not until the record or the
/// cluster's configuration changes): the `kind` label of produce errors.
pub fn classify(err: &KafkaError) -> &'static str {
    match kind_of(err) {
        ErrorKind::Retriable => "retriable",
        ErrorKind::Misconfigured | ErrorKind::RecordRefused => "fatal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_sort_by_what_sending_again_would_do() {
        use RDKafkaErrorCode::*;
        let err = |code| KafkaError::MessageProduction(code);
        assert!(PublishError::from_kafka(err(MessageSizeTooLarge)).record_refused());
        assert!(matches!(
            PublishError::from_kafka(err(TopicAuthorizationFailed)),
            PublishError::Misconfigured(_)
        ));
        assert!(matches!(
            PublishError::from_kafka(err(AllBrokersDown)),
            PublishError::Retriable(_)
        ));
        assert_eq!(classify(&err(UnknownTopic)), "fatal");
        assert_eq!(classify(&err(QueueFull)), "retriable");
    }
}
