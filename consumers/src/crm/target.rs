//! The loop of one target: its own consumer group, records in order, each
//! committed only once it was delivered, dead-lettered, or skipped.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use callstream_schemas::Kind;

use super::deliver::{Deliverer, Delivery};
use super::metrics::{EventOutcome, TargetMetrics};
use crate::kafka::decode_unique;
use crate::runtime::wait_for;

/// Headers added to a dead letter, besides the original ones.
pub const TARGET_HEADER: &str = "cs_crm_target";
pub const ERROR_HEADER: &str = "cs_crm_error";
pub const ATTEMPTS_HEADER: &str = "cs_crm_attempts";

/// Pause after a Kafka error before trying again (consume or dead-letter).
const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct TargetLoop {
    pub name: String,
    pub group: String,
    pub consumer: StreamConsumer,
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

    /// Copies the record to the dead-letter topic with why it failed, and
    /// waits for Kafka's acknowledgement, retrying until it comes (or
    /// shutdown: then `None`, and the record stays uncommitted).
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<EventOutcome> {
        let mut headers = OwnedHeaders::new();
        for h in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
            headers = headers.insert(h);
        }
        let attempts = attempts.to_string();
        for (key, value) in [
            (TARGET_HEADER, self.name.as_str()),
            (ERROR_HEADER, error),
            (ATTEMPTS_HEADER, attempts.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        loop {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.dlq_topic).headers(headers.clone());
            if let Some(key) = msg.key() {
                record = record.key(key);
            }
            if let Some(payload) = msg.payload() {
                record = record.payload(payload);
            }
            match self.producer.send(record, KAFKA_ERROR_PAUSE).await {
                Ok(_) => return Some(EventOutcome::DeadLettered),
                Err((e, _)) => {
                    self.metrics.dlq_produce_errors.inc();
                    tracing::warn!(crm_target = %self.name, error = %e, "dead letter not acknowledged; retrying");
                    if pause(KAFKA_ERROR_PAUSE, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Marks the record finished; the offset after it is committed in the
    /// background. A lost commit only means the record is delivered again.
    fn store(&self, msg: &BorrowedMessage<'_>) {
        let stored = self
            .consumer
            .store_offset_from_message(msg)
            .and_then(|()| self.consumer.commit_consumer_state(CommitMode::Async));
        if let Err(e) = stored {
            // After a rebalance took the partition away: its new owner
            // starts from the last commit and delivers the record again.
            tracing::warn!(crm_target = %self.name, partition = msg.partition(), error = %e, "offset not committed");
        }
    }

    /// Commits the stored offsets synchronously, then leaves the group.
    async fn close(self) {
        let name = self.name;
        let consumer = self.consumer;
        let closed = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(crm_target = %name, error = %e, "final commit failed"),
            }
            // Dropping the consumer closes it: it leaves the group at once.
            drop(consumer);
            name
        })
        .await;
        if let Ok(name) = closed {
            tracing::info!(crm_target = %name, "CRM target stopped");
        }
    }
}

/// Sleeps `duration`; true if shutdown began meanwhile.
async fn pause(duration: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = wait_for(&mut shutdown) => true,
    }
}
