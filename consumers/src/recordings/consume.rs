//! The archiver's loop: unique records in order, each committed only after
//! every recordings event for it, or its dead letter, was acknowledged.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use callstream_schemas::recording::RecordingArchived;

use super::fetch::{Downloader, Job, Outcome};
use super::metrics::{MediaOutcome, Metrics};
use super::settings::MAX_MEDIA_PER_EVENT;
use super::source;
use super::template::{Redactor, Resolver};
use crate::kafka::{decode_unique, LagReporter};
use crate::runtime::{pause, wait_for};

/// Headers added to a dead letter, besides the original ones.
pub const ERROR_HEADER: &str = "cs_recordings_error";
pub const ATTEMPTS_HEADER: &str = "cs_recordings_attempts";

/// Pause after a Kafka error before trying again.
const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct ArchiveLoop {
    pub group: String,
    pub consumer: Arc<StreamConsumer>,
    pub topic: String,
    pub recordings_topic: String,
    pub dlq_topic: String,
    pub producer: FutureProducer,
    pub resolver: Resolver,
    pub downloader: Downloader,
    pub redactor: Redactor,
    pub metrics: Metrics,
}

/// A handle that could not be archived.
struct Failure {
    text: String,
    attempts: u32,
}

impl ArchiveLoop {
    /// Runs until `shutdown`; then commits what is finished and leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])?;
        tracing::info!(group = %self.group, topic = %self.topic, "recordings archiver consuming");
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
                    tracing::warn!(error = %e, "Kafka consume error");
                    if pause(KAFKA_ERROR_PAUSE, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if self.process(&msg, &shutdown).await.is_none() {
                tracing::info!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "shutdown with a record unfinished: not committed, it is processed again after the restart"
                );
                break;
            }
            self.store(&msg);
        }
        lag.stop().await;
        self.close().await;
        Ok(())
    }

    /// Archives the record's media; `None` if shutdown interrupted it.
    async fn process(
        &self,
        msg: &BorrowedMessage<'_>,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let unique = match decode_unique(msg) {
            Ok(unique) => unique,
            Err(e) => {
                self.metrics.failure("undecodable");
                return self
                    .dead_letter(msg, &format!("undecodable record: {e}"), 0, shutdown)
                    .await;
            }
        };
        let event = &unique.event;
        let mut failures = Vec::new();
        for (position, item) in source::items(event).iter().enumerate() {
            let fail = |reason: &'static str, text: String, attempts: u32| {
                self.metrics.failure(reason);
                self.metrics.media(item.media, MediaOutcome::Failed);
                Failure {
                    text: format!("{}: {}", item.label(), self.redactor.scrub(&text)),
                    attempts,
                }
            };
            if position >= MAX_MEDIA_PER_EVENT {
                let text = format!("more than {MAX_MEDIA_PER_EVENT} media in one event");
                failures.push(fail("too_many_media", text, 0));
                continue;
            }
            let url = match self.resolver.resolve(event, item) {
                Ok(Some(url)) => url,
                Ok(None) => {
                    self.metrics.media(item.media, MediaOutcome::Unconfigured);
                    tracing::debug!(event_id = %event.event_id, media = %item.label(), "no URL template for this handle");
                    continue;
                }
                Err(e) => {
                    failures.push(fail(e.reason(), e.to_string(), 0));
                    continue;
                }
            };
            let job = Job {
                event,
                revision: unique.revision,
                item,
                url: &url,
            };
            match self.downloader.run(&job, shutdown).await {
                Outcome::Archived(record) => {
                    self.publish(&record, shutdown).await?;
                    self.metrics.media(item.media, MediaOutcome::Archived);
                    tracing::info!(
                        event_id = %event.event_id,
                        media = %item.label(),
                        size_bytes = record.size_bytes,
                        location = %record.location,
                        "recording archived"
                    );
                }
                Outcome::AlreadyArchived(record) => {
                    self.publish(&record, shutdown).await?;
                    self.metrics
                        .media(item.media, MediaOutcome::AlreadyArchived);
                    tracing::info!(event_id = %event.event_id, media = %item.label(), "already archived: event published again");
                }
                Outcome::Skipped => self.metrics.media(item.media, MediaOutcome::Skipped),
                Outcome::Failed { error, attempts } => {
                    failures.push(fail(error.reason(), error.to_string(), attempts));
                }
                Outcome::Abandoned => return None,
            }
        }
        if failures.is_empty() {
            return Some(());
        }
        let text = failures
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let attempts = failures.iter().map(|f| f.attempts).sum();
        tracing::warn!(event_id = %event.event_id, attempts, error = %text, "media not archived; dead-lettering");
        self.dead_letter(msg, &text, attempts, shutdown).await
    }

    /// Publishes one recordings event, keyed by identity, and waits for
    /// Kafka's acknowledgement, retrying until it comes (or shutdown: `None`).
    async fn publish(
        &self,
        record: &RecordingArchived,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let payload = serde_json::to_vec(record).expect("a RecordingArchived always serializes");
        loop {
            let out = FutureRecord::to(&self.recordings_topic)
                .key(record.identity.as_bytes())
                .payload(&payload);
            match self.producer.send(out, KAFKA_ERROR_PAUSE).await {
                Ok(_) => return Some(()),
                Err((e, _)) => {
                    self.metrics.produce_error("recordings");
                    tracing::warn!(error = %e, "recordings event not acknowledged; retrying");
                    if pause(KAFKA_ERROR_PAUSE, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Copies the record to the dead-letter topic with why it failed; see
    /// [`crate::kafka::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let attempts = attempts.to_string();
        let extra = [(ERROR_HEADER, error), (ATTEMPTS_HEADER, attempts.as_str())];
        let acked = crate::kafka::dead_letter(
            &self.producer,
            &self.dlq_topic,
            msg,
            &extra,
            KAFKA_ERROR_PAUSE,
            shutdown,
            |_| self.metrics.produce_error("recordings_dlq"),
        )
        .await;
        acked.then(|| self.metrics.dead_letters.inc())
    }

    fn store(&self, msg: &BorrowedMessage<'_>) {
        crate::kafka::commit_after(&self.consumer, msg);
    }

    async fn close(self) {
        crate::kafka::commit_and_close(self.consumer).await;
        tracing::info!("recordings archiver stopped");
    }
}
