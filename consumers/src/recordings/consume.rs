//! The archiver's work on a unique record: every recording and voicemail
//! of the event downloaded, stored and announced on the recordings topic,
//! or the record dead-lettered. The loop around it
//! (`callstream_kafka::per_record`) runs up to `recordings.concurrency`
//! records at once, one at a time per key (so an event's revisions stay in
//! order), and commits a partition only below its oldest record not
//! finished; a record is finished only once every recordings event for it,
//! or its dead letter, was acknowledged. A link that is not ready holds its
//! own record, not the archiver.

use callstream_kafka::dead_letter::DeadLetters;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use callstream_schemas::recording::{Media, RecordingArchived};

use super::fetch::{Downloader, Job, Outcome};
use super::metrics::{MediaOutcome, Metrics};
use super::settings::MAX_MEDIA_PER_EVENT;
use super::source;
use super::template::{Redactor, Resolver};
use callstream_kafka::per_record::RecordHandler;
use callstream_kafka::wire::{decode_unique, recording_record, By, GaveUp};
use callstream_runtime::shutdown::pause;

/// Pause after a Kafka error before trying again.
pub(crate) const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Records held back behind an earlier record of their key or a busy
/// archiver, at most: past it, the partitions are paused. A few MB of
/// unique events; enough that a burst of revisions of one event, whose
/// first waits on a link that is not ready, does not hold the other events
/// back.
pub(crate) const MAX_QUEUED: usize = 1024;

pub struct ArchiveHandler {
    pub(crate) recordings_topic: String,
    pub dead_letters: DeadLetters,
    pub producer: FutureProducer,
    pub(crate) resolver: Resolver,
    pub(crate) downloader: Downloader,
    pub(crate) redactor: Redactor,
    pub metrics: Metrics,
}

/// A handle that could not be archived.
struct Failure {
    text: String,
    attempts: u32,
}

/// What became of a record's media, counted once the record is finished
/// (its recordings events, or its dead letter, acknowledged), so a record
/// handled again after an interruption is not counted for the try that
/// did not finish.
#[derive(Default)]
pub struct Tally {
    media: Vec<(Media, MediaOutcome)>,
    /// Failure reasons, one per media (or the record) that failed.
    failures: Vec<&'static str>,
    dead_lettered: bool,
}

impl RecordHandler for ArchiveHandler {
    type Outcome = Tally;

    fn handle<'a>(
        &'a self,
        msg: &'a OwnedMessage,
        shutdown: &'a watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = Option<Tally>> + Send + 'a {
        self.process(msg, shutdown)
    }

    fn finished(&self, tally: Tally) {
        for (media, outcome) in tally.media {
            self.metrics.media(media, outcome);
        }
        for reason in tally.failures {
            self.metrics.failure(reason);
        }
        if tally.dead_lettered {
            self.metrics.dead_letters.inc();
        }
    }
}

impl ArchiveHandler {
    /// Archives the record's media; `None` if shutdown interrupted it.
    async fn process(&self, msg: &OwnedMessage, shutdown: &watch::Receiver<bool>) -> Option<Tally> {
        let mut tally = Tally::default();
        let unique = match decode_unique(msg) {
            Ok(unique) => unique,
            Err(e) => {
                tally.failures.push("undecodable");
                return self
                    .dead_letter(msg, &format!("undecodable record: {e}"), 0, tally, shutdown)
                    .await;
            }
        };
        let event = &unique.event;
        let mut failures = Vec::new();
        for (position, item) in source::items(event).iter().enumerate() {
            let mut fail = |reason: &'static str, text: String, attempts: u32| {
                tally.failures.push(reason);
                tally.media.push((item.media, MediaOutcome::Failed));
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
            let resolved = match self.resolver.resolve(event, item) {
                Ok(Some(resolved)) => resolved,
                Ok(None) => {
                    tally.media.push((item.media, MediaOutcome::Unconfigured));
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
                url: &resolved.url,
                private_ok: resolved.private_ok,
            };
            match self.downloader.run(&job, shutdown).await {
                Outcome::Archived(record) => {
                    self.publish(&record, shutdown).await?;
                    tally.media.push((item.media, MediaOutcome::Archived));
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
                    tally
                        .media
                        .push((item.media, MediaOutcome::AlreadyArchived));
                    tracing::info!(event_id = %event.event_id, media = %item.label(), "already archived: event published again");
                }
                Outcome::Skipped => tally.media.push((item.media, MediaOutcome::Skipped)),
                Outcome::Failed { error, attempts } => {
                    failures.push(fail(error.reason(), error.to_string(), attempts));
                }
                Outcome::Abandoned => return None,
            }
        }
        if failures.is_empty() {
            return Some(tally);
        }
        let text = failures
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let attempts = failures.iter().map(|f| f.attempts).sum();
        tracing::warn!(event_id = %event.event_id, attempts, error = %text, "media not archived; dead-lettering");
        self.dead_letter(msg, &text, attempts, tally, shutdown)
            .await
    }

    /// Publishes one recordings event, keyed by identity, and waits for
    /// Kafka's acknowledgement, retrying until it comes (or shutdown: `None`).
    async fn publish(
        &self,
        record: &RecordingArchived,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let record = recording_record(record);
        loop {
            let out = FutureRecord::to(&self.recordings_topic)
                .key(record.key.as_bytes())
                .payload(&record.payload);
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
    /// [`callstream_kafka::dead_letter::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        error: &str,
        attempts: u32,
        mut tally: Tally,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<Tally> {
        let why = GaveUp {
            by: By::Recordings,
            error: error.into(),
            attempts,
        };
        let acked = self
            .dead_letters
            .write(msg, &why, shutdown, |_| {
                self.metrics.produce_error("recordings_dlq")
            })
            .await;
        tally.dead_lettered = true;
        acked.then_some(tally)
    }
}
