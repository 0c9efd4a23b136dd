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
//! A writer whose records of different partitions never share rows (the
//! store) may use several connections: a batch is split by partition into
//! one transaction per connection, run concurrently, each holding its
//! partitions' rows and positions; a partition always goes through the same
//! connection. One PostgreSQL backend per connection then shares the work
//! (one backend was the store's bottleneck, see BENCHMARKS.md).
//!
//! PostgreSQL going away does not stop the consumer: a failed transaction
//! rolls back and is retried, with backoff (0.1 s doubling to 30 s), on a
//! new connection when the old one closed, until it commits or the process
//! is told to stop (then the batch is simply read again at the next start).
//! A commit whose answer was lost is safe to retry: the retry first reads
//! the positions, and when they are already after the lane, the lost
//! commit landed and counts as committed (its metrics, once); otherwise the
//! lane is written again. Metrics count only what committed. A record PostgreSQL refuses for its
//! content (SQLSTATE classes 22, 23, 54: a NUL character, an identifier too
//! long for an index entry) would fail every retry; when a batch fails that
//! way it is written again one record at a time, each in a savepoint, and
//! the records refused are set aside in `rejected_events` (migration V6) in
//! the same transaction that moves the positions past them.
//!
//! What breaks it: a writer whose effect depends on anything but the batch
//! and the database (a clock, an outside service), or rows written outside
//! the transaction it is given.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use secrecy::SecretString;
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::pg;

mod lane;

use callstream_kafka::batch::{BatchHandler, BatchLoop, Flow};
use callstream_kafka::consume::{AssignmentChanges, TrackingContext};
use callstream_kafka::wire::{decode_unique, UniqueEvent};
use lane::{commit_lane_retrying, Lane, LaneOutcome, Retry};

/// What a PostgreSQL consumer does with a batch, inside the transaction.
pub trait PgWriter: Send + Sync {
    /// Whether the records of different partitions may be written by
    /// concurrent transactions, one per connection (`connections` > 1).
    /// True only when records of different partitions never touch the same
    /// rows: the store's rows are keyed by `event_id`, and the topic is keyed
    /// by the identity it derives from (the `calls` rows they share are
    /// serialized by a lock per call, taken in one order). Analytics adds every event into KPI
    /// rows shared by all partitions, so it writes through one connection.
    const PARTITION_PARALLEL: bool = false;

    /// What a `write` leaves for `committed` (metric increments).
    type Applied: Send;

    /// Applies `batch`. May be called again with the same records after a
    /// rollback, so it must depend only on the batch and the database.
    fn write<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        batch: &'a [UniqueEvent],
    ) -> impl Future<Output = Result<Self::Applied, tokio_postgres::Error>> + Send + 'a;

    /// Called with what `write` returned once its transaction committed: the
    /// place for effects outside the database (metrics), which a
    /// rolled-back or re-applied batch must not repeat.
    fn committed(&self, applied: Self::Applied);
}

/// Per-consumer metrics: `callstream_<consumer>_...`.
#[derive(Clone)]
pub struct SinkMetrics {
    pub consumed: IntCounter,
    pub undecodable: IntCounter,
    pub batches: IntCounter,
    pub fenced: IntCounter,
    pub rejected: IntCounter,
    pub db_errors: IntCounter,
    pub(crate) batch_duration: Histogram,
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
            rejected: counter(
                "rejected_records_total",
                "Records PostgreSQL refused for their content, set aside in rejected_events.",
            ),
            db_errors: counter(
                "db_errors_total",
                "PostgreSQL errors that rolled a batch back to be retried (lost connections, a database refusing connections).",
            ),
            batch_duration,
            lag,
        }
    }
}

pub struct PgSink<W> {
    pub consumer: Arc<StreamConsumer<TrackingContext>>,
    /// One or more connections; partition `p` is always written through
    /// `clients[p % clients.len()]`, each in its own transaction. More than
    /// one only for a [`PgWriter::PARTITION_PARALLEL`] writer.
    pub clients: Vec<Client>,
    pub writer: W,
    pub group: String,
    pub topic: String,
    pub batch_max: usize,
    pub linger: Duration,
    pub metrics: SinkMetrics,
    /// Where a connection that closed is opened again.
    pub database_url: SecretString,
}

/// A record read from Kafka, decoded or not.
struct Received {
    partition: i32,
    offset: i64,
    event: Option<UniqueEvent>,
}

impl<W: PgWriter> PgSink<W> {
    /// Runs until `shutdown`; returns after the batch in progress committed.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        anyhow::ensure!(!self.clients.is_empty(), "a sink needs a connection");
        anyhow::ensure!(
            W::PARTITION_PARALLEL || self.clients.len() == 1,
            "this consumer's rows are shared by all partitions: it writes through one connection"
        );
        let batches = BatchLoop {
            name: format!("PostgreSQL sink {}", self.group),
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            batch_max: self.batch_max,
            linger: self.linger,
            lag: self.metrics.lag.clone(),
        };
        let applier = Applier {
            sink: self,
            positions: HashMap::new(),
        };
        batches.run(applier, shutdown).await
    }

    /// Applies a batch. False when it gave up on (part of) it because
    /// shutdown began while PostgreSQL was failing: the sink must stop
    /// then, and the part not committed is read again at the next start.
    async fn apply(
        &mut self,
        batch: Vec<Received>,
        positions: &mut HashMap<i32, Option<i64>>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let mut lanes: Vec<Lane> = (0..self.clients.len()).map(|_| Lane::default()).collect();
        let mut reseeked = Vec::new();
        for r in batch {
            if reseeked.contains(&r.partition) {
                continue;
            }
            let stored = match positions.get(&r.partition) {
                Some(stored) => *stored,
                None => {
                    let Some(stored) = self.load_offset(r.partition, shutdown).await else {
                        return Ok(false);
                    };
                    positions.insert(r.partition, stored);
                    // The database decides: with no stored position the
                    // partition is read from its beginning, whatever offset
                    // Kafka still has committed for the group.
                    if stored != Some(r.offset) {
                        let to = stored.map_or(Offset::Beginning, Offset::Offset);
                        if !self.seek_to(r.partition, to) {
                            // Unchecked again at its next record: never
                            // accept records from where Kafka happens to be.
                            positions.remove(&r.partition);
                        }
                        reseeked.push(r.partition);
                        continue;
                    }
                    stored
                }
            };
            if stored.is_some_and(|next| r.offset < next) {
                continue; // already applied
            }
            let lane = &mut lanes[self.lane_of(r.partition)];
            lane.ranges
                .entry(r.partition)
                .and_modify(|range| range.2 = r.offset + 1)
                .or_insert((stored, r.offset, r.offset + 1));
            match r.event {
                Some(e) => lane.events.push(e),
                // Counted once the lane commits past it.
                None => lane.undecodable += 1,
            }
        }
        // Each lane with records is one transaction on its own connection,
        // all at once: a lane's rows and its partitions' positions commit
        // together, so lanes need not commit together.
        let retry = Retry {
            url: &self.database_url,
            errors: &self.metrics.db_errors,
            shutdown,
        };
        let (writer, group, topic) = (&self.writer, &self.group, &self.topic);
        let outcomes = futures_util::future::join_all(
            self.clients
                .iter_mut()
                .zip(&lanes)
                .filter(|(_, lane)| !lane.ranges.is_empty())
                .map(|(client, lane)| {
                    commit_lane_retrying(&retry, client, writer, group, topic, lane)
                        .map(move |outcome| (lane, outcome))
                }),
        )
        .await;
        let mut tpl = TopicPartitionList::new();
        let mut complete = true;
        for (lane, outcome) in outcomes {
            match outcome {
                // Stopping: this lane rolled back and is read again later.
                None => complete = false,
                Some(LaneOutcome::Committed { applied, rejected }) => {
                    for applied in applied {
                        self.writer.committed(applied);
                    }
                    for (event, error) in &rejected {
                        tracing::error!(group = %self.group, partition = event.partition, offset = event.offset, event_id = %event.event.event_id, revision = event.revision, sqlstate = error.code, error = %error.message, "record refused by PostgreSQL, set aside in rejected_events");
                    }
                    self.metrics.rejected.inc_by(rejected.len() as u64);
                    self.metrics.undecodable.inc_by(lane.undecodable);
                    for (partition, (_, _, to)) in &lane.ranges {
                        positions.insert(*partition, Some(*to));
                        tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*to))?;
                    }
                    self.metrics
                        .consumed
                        .inc_by((lane.events.len() - rejected.len()) as u64);
                }
                Some(LaneOutcome::Fenced) => {
                    self.metrics.fenced.inc();
                    tracing::warn!(group = %self.group, partitions = ?lane.ranges.keys().collect::<Vec<_>>(), "batch fenced: another instance advanced a partition; re-reading positions");
                    for (partition, (_, first, _)) in &lane.ranges {
                        // Resume where the other instance left the partition
                        // now, not at this partition's next record: none may come.
                        let Some(stored) = self.load_offset(*partition, shutdown).await else {
                            return Ok(false);
                        };
                        positions.insert(*partition, stored);
                        if !self.seek_to(*partition, Offset::Offset(stored.unwrap_or(*first))) {
                            positions.remove(partition);
                        }
                    }
                }
            }
        }
        if tpl.count() > 0 {
            // Informational only: lets Kafka tools show this group's lag.
            let _ = self.consumer.commit(&tpl, CommitMode::Async);
            self.metrics.batches.inc();
            self.metrics
                .batch_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(complete)
    }

    /// A partition's stored position, retried like a batch; `None` when
    /// stopping.
    async fn load_offset(
        &mut self,
        partition: i32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Option<i64>> {
        let lane = self.lane_of(partition);
        let retry = Retry {
            url: &self.database_url,
            errors: &self.metrics.db_errors,
            shutdown,
        };
        let mut backoff = retry.backoff();
        let client = &mut self.clients[lane];
        loop {
            match pg::load_offset(client, &self.group, &self.topic, partition).await {
                Ok(stored) => return Some(stored),
                Err(e) => {
                    if !retry.recover(client, &e, &mut backoff).await {
                        return None;
                    }
                }
            }
        }
    }

    fn lane_of(&self, partition: i32) -> usize {
        partition.unsigned_abs() as usize % self.clients.len()
    }

    /// Moves the partition's fetch position; false if librdkafka failed to
    /// (the caller then forgets the partition's position, so its next
    /// record is checked against the database and sought again).
    fn seek_to(&self, partition: i32, offset: Offset) -> bool {
        match self
            .consumer
            .seek(&self.topic, partition, offset, Duration::from_secs(5))
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(partition, ?offset, error = %e, "seek failed; the partition's next record is checked against its stored position again");
                false
            }
        }
    }
}

/// The sink as the batch loop's handler.
struct Applier<W> {
    sink: PgSink<W>,
    /// Partition → stored next offset; absent = not read from the database yet.
    positions: HashMap<i32, Option<i64>>,
}

impl<W: PgWriter> BatchHandler for Applier<W> {
    type Record = Received;
    type Error = anyhow::Error;

    fn take(msg: &rdkafka::message::BorrowedMessage<'_>) -> Received {
        received(msg)
    }

    async fn rebalanced(&mut self, changes: AssignmentChanges) -> anyhow::Result<()> {
        // Read again from the database before the partition's next record.
        for p in changes.assigned.iter().chain(&changes.revoked) {
            self.positions.remove(p);
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        batch: Vec<Received>,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<Flow> {
        let complete = self
            .sink
            .apply(batch, &mut self.positions, shutdown)
            .await?;
        Ok(if complete { Flow::Continue } else { Flow::Stop })
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
