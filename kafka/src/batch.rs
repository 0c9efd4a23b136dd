//! The loop of the consumers that apply records in batches, each batch in
//! one transaction with its input positions: dedup (a Kafka transaction),
//! store and analytics (a PostgreSQL one). A consumer supplies a
//! [`BatchHandler`]; the loop owns subscribe, batching, rebalances, error
//! events, lag and shutdown.
//!
//! **Guarantee: exactly-once, as far as the handler's transaction goes.**
//! The loop commits nothing itself: a handler's `apply` commits the batch's
//! effects and positions together, and counts its metrics only once that
//! commit is known to have landed. Between two batches, the handler hears
//! the assignment's net change ([`AssignmentChanges`]) before it sees a
//! record of a new partition, so it can drop or rebuild what it keeps per
//! partition.
//!
//! Error events librdkafka recovers from by itself are logged and waited
//! on; records already taken stay in their batch (their positions moved
//! on). A fatal one ends the loop. Shutdown lets the batch in hand commit
//! (or be dropped, uncommitted, if the handler says to stop), then returns.
//!
//! What breaks it: a handler that commits effects and positions separately,
//! or counts before its commit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio::sync::watch;

use callstream_runtime::shutdown::wait_for;

use crate::consume::{next_batch, AssignmentChanges, TrackingContext};
use crate::lag::LagReporter;

/// Whether the loop goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The handler gave the batch up uncommitted (shutdown came while its
    /// store was failing): it is read again at the next start.
    Stop,
}

/// What a batch consumer does; everything else is the loop's.
pub trait BatchHandler: Send {
    /// A record as the handler keeps it across awaits.
    type Record: Send;
    /// The handler's errors; a Kafka error of the loop becomes one.
    type Error: From<KafkaError> + Send;

    /// Takes a record out of librdkafka's buffer.
    fn take(msg: &BorrowedMessage<'_>) -> Self::Record;

    /// The assignment changed since the last batch (net effect).
    fn rebalanced(
        &mut self,
        changes: AssignmentChanges,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies a batch: effects and positions in one transaction, metrics
    /// after its commit.
    fn apply(
        &mut self,
        batch: Vec<Self::Record>,
        shutdown: &watch::Receiver<bool>,
    ) -> impl Future<Output = Result<Flow, Self::Error>> + Send;
}

/// The consumer and how it batches.
pub struct BatchLoop {
    /// For logs: which consumer this is.
    pub name: String,
    pub consumer: Arc<StreamConsumer<TrackingContext>>,
    pub topic: String,
    /// Largest batch.
    pub batch_max: usize,
    /// How long a batch waits to fill after its first record.
    pub linger: Duration,
    /// Records between the consumer's positions and the partitions' ends.
    pub lag: IntGauge,
}

impl BatchLoop {
    /// Runs `handler` until `shutdown` (the batch in hand is applied
    /// first) or an error.
    pub async fn run<H: BatchHandler>(
        self,
        mut handler: H,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), H::Error> {
        self.consumer.subscribe(&[&self.topic])?;
        let lag = LagReporter::spawn(self.consumer.clone(), self.lag.clone());
        let result = async {
            while !*shutdown.borrow() {
                let batch = tokio::select! {
                    batch = next_batch(&self.consumer, self.batch_max, self.linger, H::take) => batch?,
                    _ = wait_for(&mut shutdown) => break,
                };
                handler
                    .rebalanced(self.consumer.context().take_changes())
                    .await?;
                if batch.is_empty() {
                    continue;
                }
                if handler.apply(batch, &shutdown).await? == Flow::Stop {
                    tracing::info!(consumer = %self.name, "stopped with a batch uncommitted; it is read again at the next start");
                    return Ok(());
                }
            }
            tracing::info!(consumer = %self.name, "stopped after the last committed batch");
            Ok(())
        }
        .await;
        lag.stop().await;
        result
    }
}
