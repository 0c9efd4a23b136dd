//! Kafka plumbing shared by the consumers: client configuration, decoding
//! of unique events, and a context that reports partition (re)assignments
//! to the processing loop.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset};

use callstream_schemas::event::REVISION_HEADER;
use callstream_schemas::Event;

use crate::config::KafkaSettings;

/// Which of a process's clients a configuration is for: each gets
/// `kafka.properties` and then its own `kafka.consumer_properties` or
/// `kafka.producer_properties` (so a consumer-only property does not make
/// librdkafka warn on the producers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// Base configuration of a client: brokers plus configured extras.
pub fn client_config(kafka: &KafkaSettings, role: Role) -> ClientConfig {
    client_config_with(kafka, role, &[])
}

/// [`client_config`] over `defaults`, which the configured properties may
/// override.
pub fn client_config_with(
    kafka: &KafkaSettings,
    role: Role,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in kafka.properties_for(role) {
        config.set(k, v);
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config
}

/// How long librdkafka pauses fetching a partition once its local queue is
/// over `queued.max.messages.kbytes`/`queued.min.messages`, unless
/// `kafka.properties` sets it. librdkafka's default (1000 ms) starves a
/// consumer that drains its queue faster than that: with a backlog, dedup
/// emptied the queue in a fraction of the pause and then waited, and ran at
/// ~90k instead of ~140k events/s at 1M (BENCHMARKS.md).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// A consumer in `group` that never commits on its own and reads only
/// committed transactional data (the dedup output is transactional).
pub fn consumer_config(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = client_config_with(
        kafka,
        Role::Consumer,
        &[("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)],
    );
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    config
}

/// One event from `callstream.events.unique.v1`.
#[derive(Debug, Clone)]
pub struct UniqueEvent {
    pub event: Event,
    /// The record's value as received: `event` before parsing (the store
    /// keeps it as is, rather than serializing `event` again).
    pub json: Vec<u8>,
    /// 1 for the first content of an identity, then 2, 3, ... per update.
    pub revision: i32,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no value")]
    Empty,
    #[error("value is not a normalized event: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a header's value as UTF-8.
pub fn header<'a, M: Message>(msg: &'a M, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

pub fn decode_unique<M: Message>(msg: &M) -> Result<UniqueEvent, DecodeError> {
    let json = msg.payload().ok_or(DecodeError::Empty)?;
    let event: Event = serde_json::from_slice(json)?;
    let revision = header(msg, REVISION_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Ok(UniqueEvent {
        event,
        json: json.to_vec(),
        revision,
        partition: msg.partition(),
        offset: msg.offset(),
    })
}

/// Pause after a Kafka error event before waiting for records again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Up to `max` records, waiting at most `linger` after the first, each
/// turned into a `T` by `take` (so the batch can be held across awaits).
///
/// librdkafka reports trouble it recovers from by itself (a broker gone,
/// all brokers down, `max.poll.interval.ms` exceeded and the group joined
/// again) as error events, which `recv` returns: those are logged, and the
/// wait goes on. Records already taken are kept: their position has moved
/// on, so dropping them would skip them. Only a fatal error is returned
/// (and a batch collected before it is dropped with it: the caller exits,
/// and what was not committed is read again at the next start).
pub async fn next_batch<C, T>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    linger: Duration,
    mut take: impl FnMut(&BorrowedMessage<'_>) -> T,
) -> Result<Vec<T>, rdkafka::error::KafkaError>
where
    C: ConsumerContext + 'static,
{
    let first = loop {
        match consumer.recv().await {
            Ok(msg) => break take(&msg),
            Err(e) => {
                recoverable(e)?;
                tokio::time::sleep(CONSUME_ERROR_PAUSE).await;
            }
        }
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(msg)) => batch.push(take(&msg)),
            Ok(Err(e)) => {
                recoverable(e)?;
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

/// Logs a consume error librdkafka recovers from; returns a fatal one.
fn recoverable(e: rdkafka::error::KafkaError) -> Result<(), rdkafka::error::KafkaError> {
    if matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_)) {
        return Err(e);
    }
    tracing::warn!(error = %e, "Kafka consume error; librdkafka retries by itself");
    Ok(())
}

/// What changed in the assignment since the loop last looked, as its net
/// effect: drop what the loop held of every `revoked` partition, then take
/// up every `assigned` one. Several rebalances can pass between two looks
/// (a rolling restart while input is idle): a partition revoked and
/// assigned again is in both (its state is stale: rebuild it), one assigned
/// and revoked again only in `revoked`, and none is listed twice.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AssignmentChanges {
    pub assigned: BTreeSet<i32>,
    pub revoked: BTreeSet<i32>,
}

impl AssignmentChanges {
    fn note_revoked(&mut self, parts: &[i32]) {
        for p in parts {
            self.assigned.remove(p);
            self.revoked.insert(*p);
        }
    }

    fn note_assigned(&mut self, parts: &[i32]) {
        self.assigned.extend(parts);
    }
}

/// Records partition assignments and revocations for the processing loop,
/// which owns all state: the callbacks only note what happened.
#[derive(Default)]
pub struct TrackingContext {
    changes: Mutex<AssignmentChanges>,
}

impl TrackingContext {
    /// Takes the changes noted since the last call.
    pub fn take_changes(&self) -> AssignmentChanges {
        std::mem::take(&mut *self.changes.lock().expect("assignment lock"))
    }
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions revoked");
            self.changes
                .lock()
                .expect("assignment lock")
                .note_revoked(&parts);
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.changes
                .lock()
                .expect("assignment lock")
                .note_assigned(&parts);
        }
    }
}

/// Where a consumer's lag counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagFrom {
    /// The next record the loop will receive: for loops that finish one
    /// record before taking the next.
    Position,
    /// The committed offsets: for loops that work on several records at
    /// once, where the position runs ahead of what is finished.
    Committed,
}

/// Records between `consumer`'s positions (or committed offsets, see
/// [`LagFrom`]) and the ends of its assigned partitions, asked of the
/// brokers (one `ListOffsets` request per leader for all partitions; with
/// `read_committed`, the last stable offsets). Blocking: call off the async
/// workers. A partition without a position counts from its committed
/// offset, and without that from its first offset. `None` if the brokers
/// did not answer within `timeout`.
///
/// (It used the high watermarks librdkafka caches from its fetch responses
/// before: no request, but stale while librdkafka's prefetch queue is full
/// and it does not fetch, which is exactly when a stuck consumer's lag
/// should rise; and a partition not consumed from counted as 0.)
pub fn consumer_lag<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    from: LagFrom,
    timeout: Duration,
) -> Option<i64> {
    let positions = match from {
        LagFrom::Position => consumer.position().ok()?,
        LagFrom::Committed => consumer.committed(timeout).ok()?,
    };
    if positions.count() == 0 {
        return Some(0);
    }
    // `offsets_for_times` with the "timestamp" -1 (`Offset::End`) asks
    // for each partition's end.
    let mut ends = positions.clone();
    ends.set_all_offsets(Offset::End).ok()?;
    let ends = consumer.offsets_for_times(ends, timeout).ok()?;
    let unread = |e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
        !matches!(e.offset(), Offset::Offset(_))
    };
    let committed = if from == LagFrom::Position && positions.elements().iter().any(unread) {
        Some(consumer.committed(timeout).ok()?)
    } else {
        None
    };
    let mut lag = 0;
    for e in positions.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let Some(Offset::Offset(end)) = ends.find_partition(topic, partition).map(|e| e.offset())
        else {
            continue;
        };
        let from = match e.offset() {
            Offset::Offset(at) => at,
            _ => match committed
                .as_ref()
                .and_then(|c| c.find_partition(topic, partition))
                .map(|c| c.offset())
            {
                Some(Offset::Offset(at)) => at,
                _ => match consumer.fetch_watermarks(topic, partition, timeout) {
                    Ok((low, _)) => low,
                    Err(_) => continue,
                },
            },
        };
        lag += (end - from).max(0);
    }
    Some(lag)
}

/// How often [`LagReporter`] measures.
pub const LAG_EVERY: Duration = Duration::from_secs(2);
/// How long [`LagReporter`] waits for the brokers' answers.
const LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Measures a consumer's lag into `gauge` every [`LAG_EVERY`], on a task of
/// its own, so the gauge also moves while the consumer is idle or stuck (it
/// used to be measured only after a batch). Stops when dropped. When the
/// brokers do not answer, the gauge keeps its last value.
pub struct LagReporter {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl LagReporter {
    pub fn spawn<X, C>(consumer: Arc<C>, gauge: prometheus::IntGauge) -> LagReporter
    where
        X: ConsumerContext,
        C: Consumer<X> + Send + Sync + 'static,
    {
        Self::spawn_from(consumer, gauge, LagFrom::Position)
    }

    pub fn spawn_from<X, C>(
        consumer: Arc<C>,
        gauge: prometheus::IntGauge,
        from: LagFrom,
    ) -> LagReporter
    where
        X: ConsumerContext,
        C: Consumer<X> + Send + Sync + 'static,
    {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let measured = consumer.clone();
                let lag = tokio::task::spawn_blocking(move || {
                    consumer_lag(measured.as_ref(), from, LAG_TIMEOUT)
                })
                .await;
                if let Ok(Some(lag)) = lag {
                    gauge.set(lag);
                }
                tokio::select! {
                    _ = tokio::time::sleep(LAG_EVERY) => {}
                    _ = stopped.notified() => return,
                }
            }
        });
        LagReporter { stop, task }
    }

    /// Stops it after the measurement in flight (a request to the brokers,
    /// at most [`LAG_TIMEOUT`]) and waits until its task, and so its
    /// references to the consumer, are gone.
    pub async fn stop(mut self) {
        self.stop.notify_one();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LagReporter {
    /// Without [`LagReporter::stop`] (an error path): a measurement in
    /// flight keeps its reference to the consumer until it ends.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `msg` (key, value, headers) to `topic` with `extra` headers and
/// waits for Kafka's acknowledgement, retrying every `retry_every` until it
/// comes. Returns false if shutdown began first: the record then stays
/// uncommitted and is handled again after the restart. `on_error` sees each
/// failed attempt (for metrics).
pub async fn dead_letter<M: Message>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    msg: &M,
    extra: &[(&str, &str)],
    retry_every: Duration,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    mut on_error: impl FnMut(&rdkafka::error::KafkaError),
) -> bool {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let mut headers = OwnedHeaders::new();
    for h in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
        headers = headers.insert(h);
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers.clone());
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        match producer.send(record, retry_every).await {
            Ok(_) => return true,
            Err((e, _)) => {
                on_error(&e);
                tracing::warn!(%topic, error = %e, "dead letter not acknowledged; retrying");
                if crate::runtime::pause(retry_every, shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Marks `msg` finished: stores the offset after it and commits in the
/// background. A lost commit only means the record is handled again.
pub fn commit_after<C: ConsumerContext + 'static>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    msg: &BorrowedMessage<'_>,
) {
    let stored = consumer
        .store_offset_from_message(msg)
        .and_then(|()| consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async));
    if let Err(e) = stored {
        // After a rebalance took the partition away: its new owner starts
        // from the last commit and handles the record again.
        tracing::warn!(partition = msg.partition(), error = %e, "offset not committed");
    }
}

/// Commits the stored offsets synchronously, then closes the consumer,
/// which leaves the group at once (if this was its last reference: stop
/// its [`LagReporter`] first).
pub async fn commit_and_close<C: ConsumerContext + 'static>(
    consumer: Arc<rdkafka::consumer::StreamConsumer<C>>,
) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let _ = tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
        drop(consumer);
    })
    .await;
}

/// A consumer whose loop may hold one record for up to `worst_case` (long
/// retries): `max.poll.interval.ms` is raised to cover it, unless the
/// operator set it, so the group does not evict a member that is working.
pub fn slow_record_consumer_config(
    kafka: &KafkaSettings,
    group: &str,
    worst_case: Duration,
) -> ClientConfig {
    const INTERVAL: &str = "max.poll.interval.ms";
    let mut config = consumer_config(kafka, group);
    if !kafka
        .properties_for(Role::Consumer)
        .any(|(k, _)| k == INTERVAL)
    {
        let worst_ms = worst_case.as_millis() as u64;
        config.set(INTERVAL, (worst_ms + 60_000).max(300_000).to_string());
    }
    config
}

/// A producer for records that must be durable before the record they came
/// from is committed (dead letters, derived events).
pub fn durable_producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(kafka, Role::Producer);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    config
}

/// What a consumer keeps in a topic it writes, which decides how
/// [`ensure_topic`] makes the topic when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// State the consumer reads back (dedup's changelog): compacted
    /// (`cleanup.policy=compact`), and required: a changelog that cannot be
    /// made is an error.
    Changelog,
    /// Records for others (dedup's output, dead letters, archived
    /// recordings): the brokers' default cleanup policy. One that cannot be
    /// made is logged, not an error: a broker may create it on the first
    /// write (`auto.create.topics.enable`), or an operator must, and each
    /// write is retried until it is there.
    Output,
}

/// How long [`ensure_topic`] waits for the brokers' answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure `topic`, which this process writes, exists, creating it if
/// it is missing, as Kafka Streams does with its internal topics: with as
/// many partitions as `input` (the topic its records come from, so that a
/// key keeps its partition number), the brokers' default replication factor
/// (`default.replication.factor`; Kafka 2.4 or later), and compacted for
/// [`Owned::Changelog`]. Returns the partition count of `topic`, found or
/// created (another instance creating it first is fine).
///
/// When the topic cannot be found or made (brokers unreachable, creation
/// not allowed or not supported, `input` missing too): an error for a
/// [`Owned::Changelog`], naming the topic and how to create it by hand; for
/// an [`Owned::Output`] a warning and `Ok(None)`. A topic that exists is
/// left as it is, whatever its shape: checking it is the caller's business
/// (dedup requires its changelog to have at least the input's partitions).
/// Blocking: a few requests to the brokers.
pub fn ensure_topic(
    kafka: &KafkaSettings,
    topic: &str,
    input: &str,
    owned: Owned,
) -> anyhow::Result<Option<usize>> {
    match find_or_create(kafka, topic, input, owned) {
        Ok(n) => Ok(Some(n)),
        Err(why) => match owned {
            Owned::Changelog => anyhow::bail!(
                "topic `{topic}` does not exist and could not be created ({why}); create it \
                 with `cleanup.policy=compact` and as many partitions as `{input}`"
            ),
            Owned::Output => {
                tracing::warn!(%topic, reason = %why, "topic does not exist and could not be created; writes to it are retried until it does");
                Ok(None)
            }
        },
    }
}

fn find_or_create(
    kafka: &KafkaSettings,
    topic: &str,
    input: &str,
    owned: Owned,
) -> Result<usize, String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, Role::Producer)
        // Looking a topic up must not create it with the brokers' defaults.
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let partitions = |name: &str| -> Result<usize, String> {
        let md = admin
            .inner()
            .fetch_metadata(Some(name), ADMIN_TIMEOUT)
            .map_err(|e| format!("no metadata from the brokers: {e}"))?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
    };
    let found = partitions(topic)?;
    if found > 0 {
        return Ok(found);
    }
    let wanted = partitions(input)?;
    if wanted == 0 {
        return Err(format!("its input topic `{input}` does not exist either"));
    }
    let new = new_topic(topic, wanted as i32, owned);
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| format!("CreateTopics failed: {e}"))?;
    match results.into_iter().next() {
        Some(Ok(_)) | None | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => return Err(format!("CreateTopics refused: {code}")),
    }
    // A new topic reaches every broker's metadata shortly after.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let n = partitions(topic)?;
        if n > 0 {
            tracing::info!(%topic, partitions = n, ?owned, "created missing topic");
            return Ok(n);
        }
        if std::time::Instant::now() > deadline {
            return Err("created, but not in the brokers' metadata".to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What [`ensure_topic`] asks the brokers for: `partitions` (the input's),
/// their default replication factor (-1), compacted for a changelog.
fn new_topic(topic: &str, partitions: i32, owned: Owned) -> rdkafka::admin::NewTopic<'_> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    match owned {
        Owned::Changelog => new.set("cleanup.policy", "compact"),
        Owned::Output => new,
    }
}

/// Runs `future` to completion on this thread: the admin client's answers
/// come from its own thread, so no runtime is needed to wait for them.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalances_between_two_looks_add_up_to_their_net_effect() {
        let set = |parts: &[i32]| parts.iter().copied().collect::<BTreeSet<i32>>();
        // A second member joins and leaves again before the loop looks.
        let mut changes = AssignmentChanges::default();
        changes.note_revoked(&[0, 1, 2, 3]);
        changes.note_assigned(&[0, 1]);
        changes.note_revoked(&[0, 1]);
        changes.note_assigned(&[0, 1, 2, 3]);
        assert_eq!(changes.assigned, set(&[0, 1, 2, 3]), "each once");
        assert_eq!(changes.revoked, set(&[0, 1, 2, 3]), "stale state dropped");
        // Assigned, then taken away again: nothing to take up.
        let mut changes = AssignmentChanges::default();
        changes.note_assigned(&[4, 5]);
        changes.note_revoked(&[4]);
        assert_eq!(changes.assigned, set(&[5]));
        assert_eq!(changes.revoked, set(&[4]));
    }

    #[test]
    fn missing_topics_are_asked_for_like_the_input_and_changelogs_compacted() {
        use rdkafka::admin::TopicReplication;
        let changelog = new_topic("state", 12, Owned::Changelog);
        assert_eq!((changelog.name, changelog.num_partitions), ("state", 12));
        assert!(matches!(changelog.replication, TopicReplication::Fixed(-1)));
        assert_eq!(changelog.config, [("cleanup.policy", "compact")]);
        let output = new_topic("dlq", 4, Owned::Output);
        assert_eq!(output.num_partitions, 4);
        assert!(matches!(output.replication, TopicReplication::Fixed(-1)));
        assert!(
            output.config.is_empty(),
            "the brokers' default cleanup policy"
        );
    }

    #[test]
    fn consumers_back_off_briefly_unless_configured() {
        let mut kafka = KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            ..Default::default()
        };
        let config = consumer_config(&kafka, "g");
        assert_eq!(
            config.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        kafka
            .properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        let config = consumer_config(&kafka, "g");
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("500"));
    }

    #[test]
    fn role_properties_reach_only_their_role() {
        let kafka = KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            properties: [("client.id".into(), "all".into())].into(),
            consumer_properties: [("session.timeout.ms".into(), "6000".into())].into(),
            producer_properties: [
                ("linger.ms".into(), "20".into()),
                ("client.id".into(), "producer".into()),
            ]
            .into(),
        };
        let consumer = consumer_config(&kafka, "g");
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("client.id"), Some("all"));
        let producer = durable_producer_config(&kafka);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(
            producer.get("client.id"),
            Some("producer"),
            "the role's own wins"
        );
    }
}
