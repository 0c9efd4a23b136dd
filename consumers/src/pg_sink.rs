//! Exactly-once from `callstream.events.unique.v1` into PostgreSQL, shared by
//! the store and analytics consumers.
//!
//! Guarantee: a batch's rows and the partition positions after it are
//! committed in one PostgreSQL transaction, and the database, not Kafka's
//! committed offsets, decides where a partition resumes (Kafka commits are
//! informational, for lag tools; a partition with no stored position is read
//! from its beginning). A crash before the commit re-delivers the batch;
//! after it, the stored position skips it. Each transaction also
//! checks that the stored position is still where this instance read it
//! ([`crate::pg::advance_offsets`]), so two instances briefly owning one
//! partition during a rebalance cannot both apply a range.
//!
//! What breaks it: a writer whose effect depends on anything but the batch
//! and the database (a clock, an outside service), or rows written outside
//! the transaction it is given.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::kafka::{decode_unique, TrackingContext, UniqueEvent};
use crate::pg;

/// What a PostgreSQL consumer does with a batch, inside the transaction.
pub trait PgWriter: Send + Sync {
    /// Applies `batch`. May be called again with the same batch after a
    /// rollback, so it must depend only on the batch and the database.
    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        batch: &'a [UniqueEvent],
    ) -> impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a;

    /// Called once the transaction of the last `write` committed: the place
    /// for effects outside the database (metrics), which a rolled-back or
    /// re-applied batch must not repeat.
    fn committed(&self) {}
}

/// What a writer's `write` leaves for `committed` (metric increments):
/// each `write` replaces it, so a rolled-back batch's is dropped unseen.
#[derive(Debug, Default)]
pub struct AfterCommit<T>(Mutex<T>);

impl<T: Default> AfterCommit<T> {
    /// Replaces what the previous batch left.
    pub fn set(&self, value: T) {
        *self.lock() = value;
    }

    /// Takes what the committed batch left.
    pub fn take(&self) -> T {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        // A panic elsewhere cannot leave a plain value half-written.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Per-consumer metrics: `callstream_<consumer>_...`.
#[derive(Clone)]
pub struct SinkMetrics {
    pub consumed: IntCounter,
    pub undecodable: IntCounter,
    pub batches: IntCounter,
    pub fenced: IntCounter,
    pub batch_duration: Histogram,
    pub lag: IntGauge,
}

impl SinkMetrics {
    pub fn new(registry: &Registry, consumer: &str) -> SinkMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(format!("callstream_{consumer}_{name}"), help))
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new(
                format!("callstream_{consumer}_batch_duration_seconds"),
                "Time to apply one batch and commit it with its offsets.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_duration.clone()))
            .expect("unique metric");
        let lag = IntGauge::new(
            format!("callstream_{consumer}_lag_records"),
            "Records between this consumer's position and the end of its partitions.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag.clone()))
            .expect("unique metric");
        SinkMetrics {
            consumed: counter("consumed_records_total", "Records read and applied."),
            undecodable: counter(
                "undecodable_records_total",
                "Records skipped because they are not events.",
            ),
            batches: counter("batches_total", "Batches committed."),
            fenced: counter(
                "fenced_batches_total",
                "Batches rolled back because another instance had advanced the partition.",
            ),
            batch_duration,
            lag,
        }
    }
}

pub struct PgSink<W> {
    pub consumer: Arc<StreamConsumer<TrackingContext>>,
    pub client: Client,
    pub writer: W,
    pub group: String,
    pub topic: String,
    pub batch_max: usize,
    pub linger: Duration,
    pub metrics: SinkMetrics,
}

/// A record read from Kafka, decoded or not.
struct Received {
    partition: i32,
    offset: i64,
    event: Option<UniqueEvent>,
}

impl<W: PgWriter> PgSink<W> {
    /// Runs until `shutdown`; returns after the batch in progress committed.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        self.consumer.subscribe(&[&self.topic])?;
        // Partition → stored next offset; absent = not read from the database yet.
        let mut positions: HashMap<i32, Option<i64>> = HashMap::new();
        let _lag =
            crate::kafka::LagReporter::spawn(self.consumer.clone(), self.metrics.lag.clone());
        while !*shutdown.borrow() {
            let batch = tokio::select! {
                batch = self.next_batch() => batch?,
                _ = crate::runtime::wait_for(&mut shutdown) => break,
            };
            let changes = self.consumer.context().take_changes();
            for p in changes.assigned.iter().chain(&changes.revoked) {
                positions.remove(p);
            }
            if !batch.is_empty() {
                self.apply(batch, &mut positions).await?;
            }
        }
        tracing::info!(group = %self.group, "stopped after the last committed batch");
        Ok(())
    }

    async fn next_batch(&self) -> anyhow::Result<Vec<Received>> {
        let first = self.consumer.recv().await?;
        let mut batch = vec![received(&first)];
        drop(first);
        let deadline = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.batch_max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(msg) => batch.push(received(&msg?)),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    async fn apply(
        &mut self,
        batch: Vec<Received>,
        positions: &mut HashMap<i32, Option<i64>>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut events = Vec::with_capacity(batch.len());
        // partition → (stored position before, first offset, next offset after)
        let mut ranges: BTreeMap<i32, (Option<i64>, i64, i64)> = BTreeMap::new();
        let mut reseeked = Vec::new();
        for r in batch {
            if reseeked.contains(&r.partition) {
                continue;
            }
            let stored = match positions.get(&r.partition) {
                Some(stored) => *stored,
                None => {
                    let stored =
                        pg::load_offset(&self.client, &self.group, &self.topic, r.partition)
                            .await?;
                    positions.insert(r.partition, stored);
                    // The database decides: with no stored position the
                    // partition is read from its beginning, whatever offset
                    // Kafka still has committed for the group.
                    if stored != Some(r.offset) {
                        self.seek_to(
                            r.partition,
                            stored.map_or(Offset::Beginning, Offset::Offset),
                        );
                        reseeked.push(r.partition);
                        continue;
                    }
                    stored
                }
            };
            if stored.is_some_and(|next| r.offset < next) {
                continue; // already applied
            }
            ranges
                .entry(r.partition)
                .and_modify(|range| range.2 = r.offset + 1)
                .or_insert((stored, r.offset, r.offset + 1));
            match r.event {
                Some(e) => events.push(e),
                None => self.metrics.undecodable.inc(),
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        let tx = self.client.transaction().await?;
        self.writer.write(&tx, &events).await?;
        let moves: Vec<pg::OffsetMove> = ranges
            .iter()
            .map(|(partition, (from, _, to))| pg::OffsetMove {
                partition: *partition,
                from: *from,
                to: *to,
            })
            .collect();
        let fenced = !pg::advance_offsets(&tx, &self.group, &self.topic, &moves).await?;
        if fenced {
            tx.rollback().await?;
            self.metrics.fenced.inc();
            tracing::warn!(group = %self.group, "batch fenced: another instance advanced a partition; re-reading positions");
            for (partition, (_, first, _)) in &ranges {
                // Resume where the other instance left the partition now,
                // not at this partition's next record: none may come.
                let stored =
                    pg::load_offset(&self.client, &self.group, &self.topic, *partition).await?;
                positions.insert(*partition, stored);
                self.seek(*partition, stored.unwrap_or(*first));
            }
            return Ok(());
        }
        tx.commit().await?;
        self.writer.committed();
        let mut tpl = TopicPartitionList::new();
        for (partition, (_, _, to)) in &ranges {
            positions.insert(*partition, Some(*to));
            tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*to))?;
        }
        // Informational only: lets Kafka tools show this group's lag.
        let _ = self.consumer.commit(&tpl, CommitMode::Async);
        self.metrics.consumed.inc_by(events.len() as u64);
        self.metrics.batches.inc();
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn seek(&self, partition: i32, offset: i64) {
        self.seek_to(partition, Offset::Offset(offset));
    }

    fn seek_to(&self, partition: i32, offset: Offset) {
        if let Err(e) = self
            .consumer
            .seek(&self.topic, partition, offset, Duration::from_secs(5))
        {
            tracing::warn!(partition, ?offset, error = %e, "seek failed; the partition will be re-read after reassignment");
        }
    }
}

fn received(msg: &rdkafka::message::BorrowedMessage<'_>) -> Received {
    let event = match decode_unique(msg) {
        Ok(e) => Some(e),
        Err(err) => {
            tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %err, "skipping undecodable record");
            None
        }
    };
    Received {
        partition: msg.partition(),
        offset: msg.offset(),
        event,
    }
}
