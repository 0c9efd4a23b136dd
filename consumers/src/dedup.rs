//! `callstream-dedup`: `callstream.events.v1` → `callstream.events.unique.v1`,
//! each distinct event once.
//!
//! An exact resend (same `identity`, a `fingerprint` already seen for it) is
//! dropped. The same identity with new content is an update: it is
//! forwarded with the next revision number in the `cs_revision` header, so
//! nothing is lost. Output records keep the input's key, value and headers.
//!
//! Guarantee: exactly-once. Each batch is one Kafka transaction holding the
//! output records, the state changes (a compacted changelog topic,
//! co-partitioned with the input: state of input partition `p` lives in
//! changelog partition `p`) and the partition's next input offset (a
//! position record in the same changelog partition). A crash at any point
//! commits all of it or none; on assignment a partition's state *and
//! position* are rebuilt from its changelog before any of its records are
//! processed. The offsets are also sent to the group's transaction
//! (KIP-447) so Kafka tools show the lag, but the changelog decides.
//!
//! State is bounded by a window of event time (`dedup.window_secs`, default
//! 7 days): an identity not seen for that long is forgotten (a tombstone in
//! the changelog), so memory follows traffic within the window, not all
//! history. Using event time, not the wall clock, keeps a replay identical.
//!
//! What breaks it: a changelog topic with fewer partitions than the input
//! (checked at start-up), a changelog that is not compacted (restore time
//! grows without bound), readers of the output that do not use
//! `isolation.level=read_committed`, or two running instances sharing one
//! `transactional_id` (they fence each other).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Gauge, IntCounter, IntGauge, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use callstream_schemas::Topic;

use crate::config::{ClientSettings, Settings};
use callstream_kafka::batch::{BatchHandler, BatchLoop, Flow};
use callstream_kafka::client::{client_config, client_config_with, consumer_config, durable, Role};
use callstream_kafka::consume::{AssignmentChanges, TrackingContext};
use callstream_kafka::topics::{ensure_topic, Owned};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Changelog key of a partition's position record; no identity starts with NUL.
const POSITION_KEY: &str = "\u{0}position";

/// A partition's restored state and the next input offset to process.
#[derive(Debug, Default)]
pub struct Restored {
    pub state: PartitionState,
    pub next_offset: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct Position {
    next: i64,
}

/// What the dedup remembers about one identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Revision last forwarded (1 = first content).
    #[serde(rename = "r")]
    pub revision: u32,
    /// Event time (ms) the identity was last seen; drives the window.
    #[serde(rename = "s")]
    pub last_seen_ms: i64,
    /// Fingerprints forwarded so far (first 64 bits, hex); a few per identity.
    #[serde(rename = "f")]
    pub fingerprints: Vec<u64>,
}

/// The decision for one incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First content of the identity: forward as revision 1.
    New,
    /// New content for a known identity: forward with this revision.
    Update(u32),
    /// Content already forwarded: drop.
    Duplicate,
}

/// Dedup state of one input partition. Pure logic, no I/O.
#[derive(Debug, Default)]
pub struct PartitionState {
    seen: HashMap<String, Seen>,
    /// Highest event time seen; the window is measured back from it.
    high_water_ms: i64,
    /// The window's cutoff must reach this before the next sweep.
    next_sweep_ms: i64,
}

/// Sweeps for expired identities run each time the cutoff has advanced by
/// this share of the window (so identities are remembered for the window and
/// at most 1/64 longer). Sweeping on every batch scanned the whole state each
/// time, which made the cost per event grow with the state (BENCHMARKS.md).
const SWEEP_EVERY_WINDOW_SHARE: i64 = 64;

impl PartitionState {
    /// Decides on an event and records it. Returns the verdict and, unless
    /// it is a duplicate, the new state to write to the changelog.
    pub fn observe(
        &mut self,
        identity: &str,
        fingerprint: &str,
        event_ms: i64,
    ) -> (Verdict, Option<Seen>) {
        let fp = fingerprint_bits(fingerprint);
        self.high_water_ms = self.high_water_ms.max(event_ms);
        match self.seen.get_mut(identity) {
            Some(seen) if seen.fingerprints.contains(&fp) => (Verdict::Duplicate, None),
            Some(seen) => {
                seen.revision += 1;
                seen.fingerprints.push(fp);
                seen.last_seen_ms = seen.last_seen_ms.max(event_ms);
                (Verdict::Update(seen.revision), Some(seen.clone()))
            }
            None => {
                let seen = Seen {
                    revision: 1,
                    last_seen_ms: event_ms,
                    fingerprints: vec![fp],
                };
                self.seen.insert(identity.to_string(), seen.clone());
                (Verdict::New, Some(seen))
            }
        }
    }

    /// Forgets identities not seen within `window_ms` of the newest event
    /// (in sweeps: see [`SWEEP_EVERY_WINDOW_SHARE`]); returns them so
    /// tombstones can be written.
    pub fn evict(&mut self, window_ms: i64) -> Vec<String> {
        let cutoff = self.high_water_ms.saturating_sub(window_ms);
        if cutoff < self.next_sweep_ms {
            return Vec::new();
        }
        self.next_sweep_ms = cutoff + (window_ms / SWEEP_EVERY_WINDOW_SHARE).max(1);
        let old: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, s)| s.last_seen_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.seen.remove(k);
        }
        old
    }

    /// Applies one changelog record (restore).
    pub fn restore(&mut self, identity: &str, seen: Option<Seen>) {
        match seen {
            Some(seen) => {
                self.high_water_ms = self.high_water_ms.max(seen.last_seen_ms);
                self.seen.insert(identity.to_string(), seen);
            }
            None => {
                self.seen.remove(identity);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The first 64 bits of a hex fingerprint: enough to tell one identity's
/// few contents apart.
fn fingerprint_bits(fingerprint: &str) -> u64 {
    fingerprint
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            // Not a SHA-256 hex: hash whatever it is, deterministically.
            fingerprint.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        })
}

#[derive(Clone)]
pub struct DedupMetrics {
    pub consumed: IntCounter,
    pub forwarded: IntCounter,
    pub duplicates: IntCounter,
    pub updates: IntCounter,
    pub undecodable: IntCounter,
    pub evicted: IntCounter,
    pub aborted: IntCounter,
    pub state_size: IntGauge,
    pub restore_seconds: Gauge,
    pub lag: IntGauge,
}

impl DedupMetrics {
    pub fn new(registry: &Registry) -> DedupMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(format!("callstream_dedup_{name}"), help))
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("callstream_dedup_{name}"), help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let restore_seconds = Gauge::new(
            "callstream_dedup_restore_duration_seconds",
            "Time the last state restore (partition assignment) took.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(restore_seconds.clone()))
            .expect("unique metric");
        DedupMetrics {
            consumed: counter("consumed_records_total", "Events read."),
            forwarded: counter(
                "forwarded_records_total",
                "Events written to the unique topic (new and updates).",
            ),
            duplicates: counter("duplicates_dropped_total", "Exact resends dropped."),
            updates: counter(
                "updates_forwarded_total",
                "Updates (new content for a known identity) forwarded.",
            ),
            undecodable: counter(
                "undecodable_records_total",
                "Records skipped: not a normalized event.",
            ),
            evicted: counter(
                "evicted_identities_total",
                "Identities forgotten after the window.",
            ),
            aborted: counter(
                "aborted_transactions_total",
                "Transactions aborted and replayed.",
            ),
            state_size: gauge(
                "state_identities",
                "Identities remembered in assigned partitions.",
            ),
            restore_seconds,
            lag: gauge(
                "lag_records",
                "Records between this consumer's position and the end of its partitions.",
            ),
        }
    }
}

/// Counts of one batch, added to the metrics once it commits.
#[derive(Default)]
struct Tally {
    consumed: u64,
    forwarded: u64,
    duplicates: u64,
    updates: u64,
    undecodable: u64,
    evicted: u64,
}

impl Tally {
    /// `consumed` last: whoever sees it grow sees the outcomes that add up to it.
    fn record(&self, m: &DedupMetrics) {
        m.forwarded.inc_by(self.forwarded);
        m.duplicates.inc_by(self.duplicates);
        m.updates.inc_by(self.updates);
        m.undecodable.inc_by(self.undecodable);
        m.evicted.inc_by(self.evicted);
        m.consumed.inc_by(self.consumed);
    }
}

/// Only what dedup needs from an event; the value is forwarded untouched.
#[derive(Deserialize)]
struct EventKey {
    identity: String,
    fingerprint: String,
    received_at: chrono::DateTime<chrono::Utc>,
}

pub struct Dedup {
    consumer: Arc<StreamConsumer<TrackingContext>>,
    producer: ThreadedProducer<Acks>,
    input: String,
    output: String,
    changelog: String,
    kafka: ClientSettings,
    window_ms: i64,
    batch_max: usize,
    linger: Duration,
    partitions: HashMap<i32, PartitionState>,
    /// Next input offset per partition, from the changelog; older records
    /// (fetched before the seek took effect) are skipped.
    next_offsets: HashMap<i32, i64>,
    metrics: DedupMetrics,
}

impl Dedup {
    pub fn new(settings: &Settings, metrics: DedupMetrics) -> anyhow::Result<Dedup> {
        let d = &settings.dedup;
        let consumer: StreamConsumer<TrackingContext> =
            consumer_config(&settings.kafka, &d.group_id)
                .create_with_context(TrackingContext::default())?;
        // lz4 as the gateway's: events are JSON, several times smaller
        // compressed, on the broker's disks and to every subscriber.
        let mut config = client_config_with(
            &settings.kafka,
            Role::Producer,
            &[("compression.type", "lz4")],
        );
        let producer: ThreadedProducer<Acks> = durable(&mut config)
            .set("transactional.id", &d.transactional_id)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create_with_context(Acks::default())?;
        producer.init_transactions(TXN_TIMEOUT)?;
        let dedup = Dedup {
            consumer: Arc::new(consumer),
            producer,
            input: settings.topics.name(Topic::Events).to_string(),
            output: settings.topics.name(Topic::EventsUnique).to_string(),
            changelog: settings.topics.name(Topic::DedupState).to_string(),
            kafka: settings.kafka.clone(),
            window_ms: i64::try_from(d.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            batch_max: d.batch_max,
            linger: Duration::from_millis(d.batch_linger_ms),
            partitions: HashMap::new(),
            next_offsets: HashMap::new(),
            metrics,
        };
        dedup.check_co_partitioning()?;
        Ok(dedup)
    }

    fn check_co_partitioning(&self) -> anyhow::Result<()> {
        let count = |topic: &str| -> anyhow::Result<usize> {
            let md = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
        };
        let input = count(&self.input)?;
        anyhow::ensure!(
            input > 0,
            "input topic `{}` does not exist (topics.events)",
            self.input
        );
        // Created like the input when missing; one that exists is checked below.
        let changelog =
            ensure_topic(&self.kafka, &self.changelog, &self.input, Owned::Changelog)?.unwrap_or(0);
        ensure_topic(&self.kafka, &self.output, &self.input, Owned::Output)?;
        anyhow::ensure!(
            changelog >= input,
            "changelog topic `{}` has {changelog} partitions but `{}` has {input}; they must be co-partitioned (topics.dedup_state)",
            self.changelog,
            self.input
        );
        Ok(())
    }

    /// Runs until `shutdown`; the batch in hand is committed first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let batches = BatchLoop {
            name: "dedup".into(),
            consumer: self.consumer.clone(),
            topic: self.input.clone(),
            batch_max: self.batch_max,
            linger: self.linger,
            lag: self.metrics.lag.clone(),
        };
        batches.run(self, shutdown).await
    }

    async fn apply_assignment_changes(&mut self, changes: AssignmentChanges) -> anyhow::Result<()> {
        for p in &changes.revoked {
            self.partitions.remove(p);
            self.next_offsets.remove(p);
        }
        if !changes.assigned.is_empty() {
            let started = Instant::now();
            let assigned: Vec<i32> = changes.assigned.iter().copied().collect();
            let restored = restore(&self.kafka, &self.changelog, &assigned).await?;
            let identities: usize = restored.values().map(|r| r.state.len()).sum();
            tracing::info!(partitions = ?changes.assigned, identities, took = ?started.elapsed(), "state restored");
            self.metrics
                .restore_seconds
                .set(started.elapsed().as_secs_f64());
            self.install(restored)?;
        }
        self.update_state_size();
        Ok(())
    }

    /// Takes restored partitions into use, moving each to its stored position.
    fn install(&mut self, restored: HashMap<i32, Restored>) -> anyhow::Result<()> {
        for (p, r) in restored {
            if let Some(next) = r.next_offset {
                self.consumer.seek(
                    &self.input,
                    p,
                    Offset::Offset(next),
                    Duration::from_secs(10),
                )?;
                self.next_offsets.insert(p, next);
            }
            self.partitions.insert(p, r.state);
        }
        Ok(())
    }

    fn update_state_size(&self) {
        let size: usize = self.partitions.values().map(PartitionState::len).sum();
        self.metrics.state_size.set(size as i64);
    }

    /// One transaction: outputs, changelog, offsets. State in memory is
    /// changed as records are decided; on failure `recover` rebuilds it.
    async fn process(&mut self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.producer.begin_transaction()?;
        let mut offsets: HashMap<i32, i64> = HashMap::new();
        let mut touched: Vec<i32> = Vec::new();
        // Counted only once the transaction commits, so a replay after an
        // abort does not count twice.
        let mut tally = Tally::default();
        for msg in batch {
            let p = msg.partition();
            let Some(state) = self.partitions.get_mut(&p) else {
                continue; // revoked during this batch: its new owner will process it
            };
            if self
                .next_offsets
                .get(&p)
                .is_some_and(|next| msg.offset() < *next)
            {
                continue; // fetched before the seek to the stored position: already done
            }
            offsets.insert(p, msg.offset() + 1);
            tally.consumed += 1;
            let Some(key) = msg
                .payload()
                .and_then(|v| serde_json::from_slice::<EventKey>(v).ok())
            else {
                tally.undecodable += 1;
                tracing::warn!(
                    partition = p,
                    offset = msg.offset(),
                    "skipping a record that is not an event"
                );
                continue;
            };
            let (verdict, seen) = state.observe(
                &key.identity,
                &key.fingerprint,
                key.received_at.timestamp_millis(),
            );
            let revision = match verdict {
                Verdict::Duplicate => {
                    tally.duplicates += 1;
                    continue;
                }
                Verdict::New => 1,
                Verdict::Update(r) => {
                    tally.updates += 1;
                    r
                }
            };
            forward(&self.producer, &self.output, msg, revision)?;
            tally.forwarded += 1;
            if let Some(seen) = seen {
                write_state(
                    &self.producer,
                    &self.changelog,
                    p,
                    &key.identity,
                    Some(&seen),
                )?;
            }
            if !touched.contains(&p) {
                touched.push(p);
            }
        }
        for p in touched {
            if let Some(state) = self.partitions.get_mut(&p) {
                for identity in state.evict(self.window_ms) {
                    write_state(&self.producer, &self.changelog, p, &identity, None)?;
                    tally.evicted += 1;
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, next) in &offsets {
            tpl.add_partition_offset(&self.input, *p, Offset::Offset(*next))?;
            let position =
                serde_json::to_vec(&Position { next: *next }).expect("position serializes");
            send(
                &self.producer,
                BaseRecord::<str, Vec<u8>>::to(&self.changelog)
                    .key(POSITION_KEY)
                    .payload(&position)
                    .partition(*p),
            )?;
        }
        // Wait for every acknowledgement here, without blocking the thread.
        // commit_transaction flushes too, but rust-rdkafka's flush polls in
        // 100 ms steps while the producer's own polling thread takes the
        // delivery reports, so it slept ~100 ms per transaction: dedup ran
        // at ~4k events/s (BENCHMARKS.md). With nothing left in flight its
        // flush returns at once. The acknowledgements are counted in the
        // producer's context rather than awaited as a future per record
        // (an allocation, a channel and a wake-up each).
        self.producer.context().all_acknowledged().await?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("the consumer has no group metadata yet"))?;
        self.producer
            .send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)?;
        self.producer.commit_transaction(TXN_TIMEOUT)?;
        self.next_offsets.extend(offsets);
        tally.record(&self.metrics);
        self.update_state_size();
        Ok(())
    }

    /// After a failed transaction: abort it, rewind every assigned partition
    /// to its committed offset and rebuild its state from the changelog, so
    /// the batch is decided again from committed state only.
    async fn recover(&mut self, err: anyhow::Error) -> anyhow::Result<()> {
        if let Some(KafkaError::Transaction(e)) = err.downcast_ref::<KafkaError>() {
            if e.is_fatal() {
                // Not aborted and replayed here: this instance stops.
                anyhow::bail!("fatal transaction error (fenced by another instance?): {err}");
            }
        }
        tracing::warn!(error = %err, "transaction failed: aborting and replaying from committed state");
        self.metrics.aborted.inc();
        self.producer.abort_transaction(TXN_TIMEOUT)?;
        // The aborted records' reports (purged or failed) settle them; their
        // failure is this transaction's, not the next one's.
        let _ = self.producer.context().all_acknowledged().await;
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        let restored = restore(&self.kafka, &self.changelog, &partitions).await?;
        self.partitions.clear();
        for p in &partitions {
            // No position stored yet: start the partition over from the beginning.
            if restored.get(p).is_none_or(|r| r.next_offset.is_none()) {
                self.consumer
                    .seek(&self.input, *p, Offset::Beginning, Duration::from_secs(10))?;
                self.next_offsets.remove(p);
            }
        }
        self.install(restored)?;
        self.update_state_size();
        Ok(())
    }
}

impl BatchHandler for Dedup {
    // Detached (copied), so a batch can be held across awaits.
    type Record = OwnedMessage;
    type Error = anyhow::Error;

    fn take(msg: &BorrowedMessage<'_>) -> OwnedMessage {
        msg.detach()
    }

    async fn rebalanced(&mut self, changes: AssignmentChanges) -> anyhow::Result<()> {
        self.apply_assignment_changes(changes).await
    }

    async fn apply(
        &mut self,
        batch: Vec<OwnedMessage>,
        _shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<Flow> {
        if let Err(err) = self.process(&batch).await {
            self.recover(err).await?;
        }
        Ok(Flow::Continue)
    }
}

fn forward(
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

fn write_state(
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
fn send<K, P>(
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
struct Acks {
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

/// Rebuilds the state and position of `partitions` by reading their
/// changelog partitions from the beginning to the end (committed records only).
pub async fn restore(
    kafka: &ClientSettings,
    changelog: &str,
    partitions: &[i32],
) -> anyhow::Result<HashMap<i32, Restored>> {
    let kafka = kafka.clone();
    let changelog = changelog.to_string();
    let partitions = partitions.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<HashMap<i32, Restored>> {
        let consumer: BaseConsumer<RestoreContext> = client_config(&kafka, Role::Consumer)
            .set("group.id", "callstream-dedup-restore")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create_with_context(RestoreContext)?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&changelog, *p, Offset::Beginning)?;
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
                            restored.next_offset =
                                Some(serde_json::from_slice::<Position>(v)?.next);
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
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP1: &str = "aaaaaaaaaaaaaaaa0000";
    const FP2: &str = "bbbbbbbbbbbbbbbb0000";

    #[test]
    fn resends_are_dropped_and_new_content_is_the_next_revision() {
        let mut s = PartitionState::default();
        assert_eq!(s.observe("a", FP1, 1_000).0, Verdict::New);
        assert_eq!(s.observe("a", FP1, 2_000).0, Verdict::Duplicate);
        let (verdict, seen) = s.observe("a", FP2, 3_000);
        assert_eq!(verdict, Verdict::Update(2));
        assert_eq!(seen.unwrap().fingerprints.len(), 2);
        // An earlier content arriving again (a retried chunk) is still a duplicate.
        assert_eq!(s.observe("a", FP1, 4_000).0, Verdict::Duplicate);
        assert_eq!(
            s.observe("b", FP1, 4_000).0,
            Verdict::New,
            "identities are independent"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_window_is_measured_in_event_time() {
        let mut s = PartitionState::default();
        s.observe("old", FP1, 0);
        s.observe("recent", FP1, 9_000);
        s.observe("new", FP1, 10_000);
        assert_eq!(s.evict(5_000), vec!["old".to_string()]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.observe("old", FP1, 10_001).0,
            Verdict::New,
            "forgotten after the window"
        );
    }

    #[test]
    fn sweeps_wait_for_the_cutoff_to_move_a_64th_of_the_window() {
        let mut s = PartitionState::default();
        s.observe("a", FP1, 0);
        s.observe("b", FP1, 100);
        s.observe("now", FP1, 6_400);
        assert_eq!(s.evict(6_400), Vec::<String>::new(), "nothing older than 0");
        s.observe("later", FP1, 6_450);
        // Cutoff 50: "a" is expired but the next sweep waits for cutoff 100.
        assert!(s.evict(6_400).is_empty());
        s.observe("later2", FP1, 6_600);
        // Cutoff 200 passed 100: one sweep takes both.
        let mut gone = s.evict(6_400);
        gone.sort();
        assert_eq!(gone, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn restore_replays_the_changelog_including_tombstones() {
        let mut live = PartitionState::default();
        let mut log = Vec::new();
        for (id, fp, t) in [("a", FP1, 1), ("b", FP1, 2), ("a", FP2, 3)] {
            if let (_, Some(seen)) = live.observe(id, fp, t) {
                log.push((id.to_string(), Some(seen)));
            }
        }
        log.push(("b".to_string(), None));
        let mut restored = PartitionState::default();
        for (id, seen) in log {
            restored.restore(&id, seen);
        }
        assert_eq!(restored.len(), 1);
        assert_eq!(restored.observe("a", FP2, 4).0, Verdict::Duplicate);
        assert_eq!(
            restored.observe("a", "cccccccccccccccc", 5).0,
            Verdict::Update(3)
        );
        assert_eq!(restored.observe("b", FP1, 6).0, Verdict::New);
    }

    #[test]
    fn state_round_trips_through_its_changelog_encoding() {
        let seen = Seen {
            revision: 3,
            last_seen_ms: 1_700_000_000_000,
            fingerprints: vec![1, u64::MAX],
        };
        let bytes = serde_json::to_vec(&seen).unwrap();
        assert_eq!(serde_json::from_slice::<Seen>(&bytes).unwrap(), seen);
    }
}
