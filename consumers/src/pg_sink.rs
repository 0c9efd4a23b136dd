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
//! What breaks it: a writer whose effect depends on anything but the batch
//! and the database (a clock, an outside service), or rows written outside
//! the transaction it is given.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryFutureExt;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_postgres::{Client, Transaction};

use crate::kafka::{decode_unique, TrackingContext, UniqueEvent};
use crate::pg;

/// What a PostgreSQL consumer does with a batch, inside the transaction.
pub trait PgWriter: Send + Sync {
    /// Whether the records of different partitions may be written by
    /// concurrent transactions, one per connection (`connections` > 1).
    /// True only when records of different partitions never touch the same
    /// rows: the store's rows are keyed by `event_id`, and the topic is keyed
    /// by the identity it derives from. Analytics adds every event into KPI
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
        anyhow::ensure!(!self.clients.is_empty(), "a sink needs a connection");
        anyhow::ensure!(
            W::PARTITION_PARALLEL || self.clients.len() == 1,
            "this consumer's rows are shared by all partitions: it writes through one connection"
        );
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
        let mut lanes: Vec<Lane> = (0..self.clients.len()).map(|_| Lane::default()).collect();
        let mut reseeked = Vec::new();
        for r in batch {
            if reseeked.contains(&r.partition) {
                continue;
            }
            let stored = match positions.get(&r.partition) {
                Some(stored) => *stored,
                None => {
                    let stored = pg::load_offset(
                        self.client_of(r.partition),
                        &self.group,
                        &self.topic,
                        r.partition,
                    )
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
            let lane = &mut lanes[self.lane_of(r.partition)];
            lane.ranges
                .entry(r.partition)
                .and_modify(|range| range.2 = r.offset + 1)
                .or_insert((stored, r.offset, r.offset + 1));
            match r.event {
                Some(e) => lane.events.push(e),
                None => self.metrics.undecodable.inc(),
            }
        }
        // Each lane with records is one transaction on its own connection,
        // all at once: a lane's rows and its partitions' positions commit
        // together, so lanes need not commit together.
        let (writer, group, topic) = (&self.writer, &self.group, &self.topic);
        let outcomes = futures_util::future::try_join_all(
            self.clients
                .iter_mut()
                .zip(&lanes)
                .filter(|(_, lane)| !lane.ranges.is_empty())
                .map(|(client, lane)| {
                    commit_lane(client, writer, group, topic, lane).map_ok(move |o| (lane, o))
                }),
        )
        .await?;
        let mut tpl = TopicPartitionList::new();
        for (lane, outcome) in outcomes {
            match outcome {
                LaneOutcome::Committed(applied) => {
                    self.writer.committed(applied);
                    for (partition, (_, _, to)) in &lane.ranges {
                        positions.insert(*partition, Some(*to));
                        tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*to))?;
                    }
                    self.metrics.consumed.inc_by(lane.events.len() as u64);
                }
                LaneOutcome::Fenced => {
                    self.metrics.fenced.inc();
                    tracing::warn!(group = %self.group, partitions = ?lane.ranges.keys().collect::<Vec<_>>(), "batch fenced: another instance advanced a partition; re-reading positions");
                    for (partition, (_, first, _)) in &lane.ranges {
                        // Resume where the other instance left the partition
                        // now, not at this partition's next record: none may come.
                        let stored = pg::load_offset(
                            self.client_of(*partition),
                            &self.group,
                            &self.topic,
                            *partition,
                        )
                        .await?;
                        positions.insert(*partition, stored);
                        self.seek(*partition, stored.unwrap_or(*first));
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
        Ok(())
    }

    fn lane_of(&self, partition: i32) -> usize {
        partition.unsigned_abs() as usize % self.clients.len()
    }

    fn client_of(&self, partition: i32) -> &Client {
        &self.clients[self.lane_of(partition)]
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

/// The part of a batch written through one connection.
#[derive(Default)]
struct Lane {
    events: Vec<UniqueEvent>,
    /// partition → (stored position before, first offset, next offset after)
    ranges: BTreeMap<i32, (Option<i64>, i64, i64)>,
}

enum LaneOutcome<A> {
    Committed(A),
    /// Another instance moved one of the lane's positions first: rolled back.
    Fenced,
}

/// Writes a lane and moves its partitions' positions in one transaction.
async fn commit_lane<W: PgWriter>(
    client: &mut Client,
    writer: &W,
    group: &str,
    topic: &str,
    lane: &Lane,
) -> anyhow::Result<LaneOutcome<W::Applied>> {
    let tx = client.transaction().await?;
    let applied = writer.write(&tx, &lane.events).await?;
    let moves: Vec<pg::OffsetMove> = lane
        .ranges
        .iter()
        .map(|(partition, (from, _, to))| pg::OffsetMove {
            partition: *partition,
            from: *from,
            to: *to,
        })
        .collect();
    if !pg::advance_offsets(&tx, group, topic, &moves).await? {
        tx.rollback().await?;
        return Ok(LaneOutcome::Fenced);
    }
    tx.commit().await?;
    Ok(LaneOutcome::Committed(applied))
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
