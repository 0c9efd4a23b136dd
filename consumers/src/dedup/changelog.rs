//! The changelog: writing state and positions into the transaction, and
//! reading them back when partitions are assigned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use callstream_kafka::client::{client_config_with, Role, FETCH_QUEUE_BACKOFF_MS};
use callstream_kafka::ClientSettings;

use super::state::{PartitionState, Seen};

pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Changelog key of a partition's position record; no identity starts with NUL.
pub(super) const POSITION_KEY: &str = "\u{0}position";

/// A partition's restored state and the next input offset to process.
#[derive(Debug, Default)]
pub struct Restored {
    pub state: PartitionState,
    pub next_offset: Option<i64>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Position {
    pub(super) next: i64,
}

pub(super) fn forward(
    producer: &ThreadedProducer<Acks>,
    topic: &str,
    msg: &OwnedMessage,
    revision: u32,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic)
        .headers(callstream_kafka::wire::unique_headers(msg, revision));
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    if let Some(value) = msg.payload() {
        record = record.payload(value);
    }
    send(producer, record)
}

pub(super) fn write_state(
    producer: &ThreadedProducer<Acks>,
    changelog: &str,
    partition: i32,
    identity: &str,
    seen: Option<&Seen>,
) -> Result<(), KafkaError> {
    let value = seen.map(|s| serde_json::to_vec(s).expect("state always serializes"));
    let mut record = BaseRecord::<str, Vec<u8>>::to(changelog)
        .key(identity)
        .partition(partition);
    if let Some(value) = &value {
        record = record.payload(value);
    }
    send(producer, record)
}

/// Enqueues `record` in the transaction, counted as awaiting its
/// acknowledgement. A full local queue (a transaction larger than
/// `queue.buffering.max.messages`) waits for room.
pub(super) fn send<K, P>(
    producer: &ThreadedProducer<Acks>,
    record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    let acks = producer.context();
    acks.outstanding.fetch_add(1, Ordering::SeqCst);
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((err, _)) => {
                acks.settle(None);
                return Err(err);
            }
        }
    }
}

/// The dedup producer's context: counts the records of the transaction in
/// progress that Kafka has not acknowledged yet, and keeps the first
/// failure. Delivery reports arrive on the producer's polling thread.
#[derive(Default)]
pub(super) struct Acks {
    outstanding: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    settled: tokio::sync::Notify,
}

impl Acks {
    /// One record is done with (acknowledged, failed, or never enqueued).
    fn settle(&self, failure: Option<KafkaError>) {
        if let Some(err) = failure {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(err);
        }
        if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// [`Acks::all_acknowledged`], bounded: a record still unacknowledged
    /// after `limit` fails the transaction (it is aborted and its batch
    /// decided again) instead of holding the consumer with no sign. A
    /// transactional producer's own `message.timeout.ms` is as long as
    /// `transaction.timeout.ms` (60 s by default), and nothing is logged
    /// while it waits.
    pub(super) async fn all_acknowledged_within(&self, limit: Duration) -> anyhow::Result<()> {
        match tokio::time::timeout(limit, self.all_acknowledged()).await {
            Ok(result) => Ok(result?),
            Err(_) => anyhow::bail!(
                "{} records of the transaction not acknowledged within {limit:?}",
                self.outstanding.load(Ordering::SeqCst)
            ),
        }
    }

    /// Waits until every record sent so far is settled; the first failure
    /// among them, if any (the transaction must then abort).
    async fn all_acknowledged(&self) -> Result<(), KafkaError> {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a notification between the
            // check and the await is not missed.
            settled.as_mut().enable();
            if self.outstanding.load(Ordering::SeqCst) == 0 {
                break;
            }
            settled.await;
        }
        match self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl rdkafka::ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.settle(result.as_ref().err().map(|(err, _)| err.clone()));
    }
}

/// The restore reader's context: reaching the end of a partition is how it
/// knows it is done, not an error worth logging.
struct RestoreContext;

impl rdkafka::ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "changelog reader error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreContext {}

/// Readers restoring at once, at most: each reads its share of the
/// partitions with a consumer of its own and decodes on its own thread.
const MAX_READERS: usize = 4;

/// Rebuilds the state and position of `partitions` by reading their
/// changelog partitions from the beginning to the end (committed records
/// only). The partitions are split between up to [`MAX_READERS`] readers
/// (one per core), each decoding its own share.
pub async fn restore(
    kafka: &ClientSettings,
    changelog: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, Restored>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let readers = cores.min(MAX_READERS).min(partitions.len()).max(1);
    let mut shares = vec![Vec::new(); readers];
    for (i, p) in partitions.iter().enumerate() {
        shares[i % readers].push(*p);
    }
    let reads = shares.into_iter().map(|share| {
        let kafka = kafka.clone();
        let changelog = changelog.to_string();
        tokio::task::spawn_blocking(move || read_partitions(&kafka, &changelog, &share))
    });
    let mut states = HashMap::with_capacity(partitions.len());
    for read in futures_util::future::join_all(reads).await {
        states.extend(read??);
    }
    Ok(states)
}

/// One reader: `partitions` of the changelog from their beginning to their
/// end.
fn read_partitions(
    kafka: &ClientSettings,
    changelog: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, Restored>> {
    // A short fetch back-off: with the default (1 s) a reader that empties
    // its local queue faster than that waits for the rest of it, and a
    // restore spent most of its time waiting. A short fetch wait: the end
    // of a partition is known from a fetch that comes back empty, which the
    // broker holds for `fetch.wait.max.ms` (500 ms by default), a fixed
    // cost of every restore (BENCHMARKS.md, Recovery).
    let consumer: BaseConsumer<RestoreContext> = client_config_with(
        kafka,
        Role::Consumer,
        &[
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ("fetch.wait.max.ms", "10"),
        ],
    )
    .set("group.id", "callstream-dedup-restore")
    .set("enable.auto.commit", "false")
    .set("isolation.level", "read_committed")
    .set("enable.partition.eof", "true")
    .create_with_context(RestoreContext)?;
    // Leaders known and connected before the assignment: a partition
    // assigned while its leader is not yet known has its start offset
    // looked up again only after librdkafka's 500 ms back-off, a fixed
    // cost of every restore (BENCHMARKS.md, Recovery).
    consumer.fetch_metadata(Some(changelog), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(changelog, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut states: HashMap<i32, Restored> = partitions
        .iter()
        .map(|p| (*p, Restored::default()))
        .collect();
    let mut done = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.len() < partitions.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "restoring {changelog} took over 5 minutes"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let (Some(restored), Some(key)) = (
                    states.get_mut(&msg.partition()),
                    msg.key().and_then(|k| std::str::from_utf8(k).ok()),
                ) else {
                    continue;
                };
                match (key, msg.payload()) {
                    (POSITION_KEY, Some(v)) => {
                        restored.next_offset = Some(serde_json::from_slice::<Position>(v)?.next);
                    }
                    (identity, Some(v)) => restored
                        .state
                        .restore(identity, Some(serde_json::from_slice(v)?)),
                    (identity, None) => restored.state.restore(identity, None),
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(states)
}
