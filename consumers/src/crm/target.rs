//! The loop of one target: its own consumer group, records in order, each
//! committed only once it was delivered, dead-lettered, or skipped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use callstream_schemas::Kind;

use super::deliver::{Deliverer, Delivery};
use super::metrics::{EventOutcome, TargetMetrics};
use callstream_kafka::lag::LagReporter;
use callstream_kafka::wire::{decode_unique, By, GaveUp};
use callstream_runtime::shutdown::{pause, wait_for};

/// Pause after a Kafka error before trying again (consume or dead-letter).
const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct TargetLoop {
    pub name: String,
    pub group: String,
    pub consumer: Arc<StreamConsumer>,
    pub topic: String,
    pub dlq_topic: String,
    pub producer: FutureProducer,
    pub deliverer: Deliverer,
    pub kinds: Vec<Kind>,
    pub metrics: TargetMetrics,
}

impl TargetLoop {
    /// Runs until `shutdown`; then commits what is finished and leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])?;
        tracing::info!(crm_target = %self.name, group = %self.group, "CRM target consuming");
        let lag = LagReporter::spawn(self.consumer.clone(), self.metrics.lag.clone());
        loop {
            let msg = tokio::select! {
                biased;
                _ = wait_for(&mut shutdown) => break,
                msg = self.consumer.recv() => msg,
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::warn!(crm_target = %self.name, error = %e, "Kafka consume error");
                    if pause(KAFKA_ERROR_PAUSE, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(outcome) = self.process(&msg, &shutdown).await else {
                tracing::info!(
                    crm_target = %self.name,
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "shutdown with an event unfinished: not committed, it is delivered after the restart"
                );
                break;
            };
            self.metrics.event(outcome);
            self.store(&msg);
        }
        lag.stop().await;
        self.close().await;
        Ok(())
    }

    /// Delivers or dead-letters one record; `None` if shutdown interrupted it.
    async fn process(
        &self,
        msg: &BorrowedMessage<'_>,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<EventOutcome> {
        let unique = match decode_unique(msg) {
            Ok(unique) => unique,
            Err(e) => {
                let error = format!("undecodable record: {e}");
                return self.dead_letter(msg, &error, 0, shutdown).await;
            }
        };
        if !self.kinds.contains(&unique.event.kind) {
            return Some(EventOutcome::Skipped);
        }
        match self
            .deliverer
            .deliver(&unique.event, unique.revision, shutdown)
            .await
        {
            Delivery::Delivered => Some(EventOutcome::Delivered),
            Delivery::Abandoned => None,
            Delivery::Failed { error, attempts } => {
                tracing::warn!(
                    crm_target = %self.name,
                    event_id = %unique.event.event_id,
                    attempts,
                    %error,
                    "CRM delivery failed; dead-lettering"
                );
                self.dead_letter(msg, &error.to_string(), attempts, shutdown)
                    .await
            }
        }
    }

    /// Copies the record to the dead-letter topic with why it failed; see
    /// [`callstream_kafka::dead_letter::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<EventOutcome> {
        let why = GaveUp {
            by: By::Crm {
                target: self.name.as_str().into(),
            },
            error: error.into(),
            attempts,
        };
        let acked = callstream_kafka::dead_letter::dead_letter(
            &self.producer,
            &self.dlq_topic,
            msg,
            &why,
            KAFKA_ERROR_PAUSE,
            shutdown,
            |_| self.metrics.dlq_produce_errors.inc(),
        )
        .await;
        acked.then_some(EventOutcome::DeadLettered)
    }

    fn store(&self, msg: &BorrowedMessage<'_>) {
        callstream_kafka::consume::commit_after(&self.consumer, msg);
    }

    async fn close(self) {
        let name = self.name;
        callstream_kafka::consume::commit_and_close(self.consumer).await;
        tracing::info!(crm_target = %name, "CRM target stopped");
    }
}
