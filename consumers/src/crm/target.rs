//! One target's work on a record, in its own consumer group: records in
//! order, each committed only once it was delivered, dead-lettered, or
//! skipped (the loop is `callstream_kafka::per_record`).

use callstream_kafka::dead_letter::DeadLetters;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use tokio::sync::watch;

use callstream_schemas::Kind;

use super::deliver::{Deliverer, Delivery};
use super::metrics::{EventOutcome, TargetMetrics};
use callstream_kafka::per_record::RecordHandler;
use callstream_kafka::wire::{decode_unique, By, GaveUp};

/// Pause after a Kafka error before trying again to dead-letter.
pub(crate) const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// One target's work on a record: deliver it, or dead-letter it. The loop
/// around it is [`PerRecordLoop`].
pub(crate) struct TargetHandler {
    pub name: String,
    pub dead_letters: DeadLetters,
    pub deliverer: Deliverer,
    pub kinds: Vec<Kind>,
    pub metrics: TargetMetrics,
}

impl RecordHandler for TargetHandler {
    type Outcome = EventOutcome;

    /// Delivers or dead-letters one record; `None` if shutdown interrupted it.
    async fn handle(
        &self,
        msg: &OwnedMessage,
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

    fn finished(&self, outcome: EventOutcome) {
        self.metrics.event(outcome);
    }
}

impl TargetHandler {
    /// Copies the record to the dead-letter topic with why it failed; see
    /// [`callstream_kafka::dead_letter::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
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
        let acked = self
            .dead_letters
            .write(msg, &why, shutdown, |_| {
                self.metrics.dlq_produce_errors.inc()
            })
            .await;
        acked.then_some(EventOutcome::DeadLettered)
    }
}
