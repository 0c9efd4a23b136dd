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

mod changelog;
mod metrics;
mod settings;
mod state;

pub use changelog::{restore, Restored};
pub use metrics::DedupMetrics;
pub use settings::DedupSettings;
pub use state::{PartitionState, Seen, Verdict};

use changelog::{forward, send, write_state, Acks, Position, POSITION_KEY, TXN_TIMEOUT};
use metrics::Tally;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::watch;

use callstream_schemas::Topic;

use callstream_kafka::batch::{BatchHandler, BatchLoop, Flow};
use callstream_kafka::client::{client_config_with, consumer_config, durable, Role};
use callstream_kafka::consume::{AssignmentChanges, TrackingContext};
use callstream_kafka::topics::{ensure_topic, Owned};
use callstream_kafka::{ClientSettings, TopicNames};

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
    pub fn new(
        d: &DedupSettings,
        kafka: &ClientSettings,
        topics: &TopicNames,
        metrics: DedupMetrics,
    ) -> anyhow::Result<Dedup> {
        let consumer: StreamConsumer<TrackingContext> =
            consumer_config(kafka, &d.group_id).create_with_context(TrackingContext::default())?;
        // lz4 as the gateway's: events are JSON, several times smaller
        // compressed, on the broker's disks and to every subscriber.
        let mut config = client_config_with(kafka, Role::Producer, &[("compression.type", "lz4")]);
        let producer: ThreadedProducer<Acks> = durable(&mut config)
            .set("transactional.id", &d.transactional_id)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create_with_context(Acks::default())?;
        producer.init_transactions(TXN_TIMEOUT)?;
        let dedup = Dedup {
            consumer: Arc::new(consumer),
            producer,
            input: topics.name(Topic::Events).to_string(),
            output: topics.name(Topic::EventsUnique).to_string(),
            changelog: topics.name(Topic::DedupState).to_string(),
            kafka: kafka.clone(),
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
        self.producer
            .context()
            .all_acknowledged_within(TXN_TIMEOUT)
            .await?;
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
        let _ = self
            .producer
            .context()
            .all_acknowledged_within(TXN_TIMEOUT)
            .await;
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
