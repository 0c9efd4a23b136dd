//! Recording archiver (`callstream-recordings`): reads unique events
//! (`callstream.events.unique.v1`) that carry a recording or voicemail,
//! downloads the audio into object storage (a local directory, or an
//! S3-compatible bucket) and publishes one `callstream.recordings.v1` event
//! per stored file (schema: `callstream_schemas::recording`). Onoff's links
//! expire; TeleCMI file names and Xarios recording ids become URLs through
//! configured templates.
//!
//! **Guarantee: every media handle of every unique record is archived and
//! announced, or its record is dead-lettered; at least once, in order per
//! key.** A record's offset is stored and committed only after each
//! of its recordings events, or its dead letter
//! (`callstream.recordings.dlq.v1`: the unique record plus
//! `cs_recordings_error` and `cs_recordings_attempts`), was acknowledged by
//! Kafka (`acks=all`, idempotent producer). The audio and its manifest are
//! stored (and, locally, fsynced) before the event that points to them is
//! published. Shutdown cancels a download in progress and leaves its record
//! uncommitted, to be processed again after the restart.
//!
//! **Downloaded once.** The manifest beside each audio object names the
//! handle and revision it came from. A record seen again (a redelivery
//! after a crash or rebalance, a replay under a new group, or the same
//! event twice) finds it and republishes the *identical* event without a
//! download, which also heals a crash between storing and publishing. An
//! update (revision ≥ 2) whose handle did not change is skipped without a
//! new event; one with a new link is downloaded again. So a consumer of
//! `callstream.recordings.v1` may see the same event more than once, always
//! byte-for-byte equal, and should key on (`event_id`, `media`, `index`).
//!
//! **Retries.** Timeouts, connection errors, `408`, `429`, `5xx` and
//! storage errors: exponential back-off with jitter, up to `max_attempts`.
//! `404` means "not ready yet" (Onoff sends recordings minutes after the
//! call): polled for `not_ready_retry_secs`. Other answers, refused targets,
//! bodies over `max_bytes` and text/JSON pages served as audio are
//! dead-lettered at once.
//!
//! **Concurrency.** Up to `concurrency` records are archived at once, one
//! at a time per key (an event's revisions stay in order), so a link that
//! is not ready, or slow, holds only its own record while the others are
//! archived before their links expire. A partition's offset is committed
//! only below its oldest record in progress: after a crash, that record
//! and the finished ones after it are processed again (and found already
//! archived). When every slot holds a waiting record, records read ahead
//! wait in a bounded queue; past it the partitions are paused, and still
//! polled, so a rebalance never waits for a download
//! (`callstream_kafka::per_record`). A revoked partition's downloads are
//! cancelled.
//!
//! **Never fetched** ([`guard`]): other schemes than http(s), and
//! loopback, private, link-local and other non-public addresses, unless
//! `allow_private_targets` (or, for URLs built from a template with a
//! fixed host, `allow_private_templates`). **Never published or logged**: template secrets,
//! URL query values and user info.
//!
//! What breaks it: committing before the outcome (`enable.auto.commit` or
//! `enable.auto.offset.store` in `kafka.properties`); two archivers with
//! different stores in one group; deleting manifests but not audio (the
//! audio is fetched again, possibly from an expired link); a dead-letter
//! topic deleted before someone replays it; a crash mid-download in the
//! local directory leaves a `<key>#<n>` staging file (never a visible
//! partial object); and once a provider's link has expired, nothing brings
//! that audio back, so a long outage of this consumer loses recordings.

mod archive;
mod consume;
mod fetch;
pub mod guard;
mod metrics;
pub mod settings;
pub mod source;
pub mod template;

use callstream_kafka::dead_letter::DeadLetters;
use std::sync::Arc;

use prometheus::Registry;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use callstream_schemas::Topic;

use archive::Archive;
use callstream_kafka::consume::TrackingContext;
use callstream_kafka::per_record::PerRecordLoop;
use callstream_kafka::{ClientSettings, TopicNames};
use callstream_runtime::config::ConfigError;
use consume::{ArchiveHandler, MAX_QUEUED};
use fetch::Downloader;
use metrics::Metrics;
use template::{Redactor, Resolver};

pub use settings::RecordingsSettings;

#[derive(Debug, thiserror::Error)]
pub enum RecordingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] archive::OpenError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The archiver, ready to run.
pub struct RecordingsConsumer {
    archive_loop: PerRecordLoop<ArchiveHandler>,
    location: String,
}

impl RecordingsConsumer {
    /// Opens the store, builds the consumer, producer and HTTP client, and
    /// registers `callstream_recordings_*` in `registry`.
    pub fn build(
        recordings: &RecordingsSettings,
        kafka: &ClientSettings,
        topics: &TopicNames,
        registry: &Registry,
    ) -> Result<RecordingsConsumer, RecordingsError> {
        let metrics = Metrics::register(registry)?;
        let resolver = Resolver::new(recordings);
        let redactor = Redactor::new(resolver.secrets());
        let archive = Archive::open(&recordings.store)?;
        let location = archive.describe();
        let downloader = Downloader::new(recordings, archive, metrics.clone(), redactor.clone())?;
        let consumer = callstream_kafka::client::consumer_config(kafka, &recordings.group_id)
            .create_with_context(TrackingContext::committing_on_revoke())?;
        let producer: FutureProducer =
            callstream_kafka::client::durable_producer_config(kafka).create()?;
        for output in [Topic::Recordings, Topic::RecordingsDlq] {
            // Never an error for an output: logged when it cannot be made.
            let _ = callstream_kafka::topics::ensure_topic(
                kafka,
                topics.name(output),
                topics.name(Topic::EventsUnique),
                callstream_kafka::topics::Owned::Output,
            );
        }
        Ok(RecordingsConsumer {
            archive_loop: PerRecordLoop {
                name: format!("recordings archiver (group {})", recordings.group_id),
                consumer: Arc::new(consumer),
                topic: topics.name(Topic::EventsUnique).to_string(),
                concurrency: recordings.concurrency,
                max_queued: MAX_QUEUED,
                lag: metrics.lag.clone(),
                in_progress: Some(metrics.in_progress.clone()),
                handler: ArchiveHandler {
                    recordings_topic: topics.name(Topic::Recordings).to_string(),
                    dead_letters: DeadLetters::new(
                        producer.clone(),
                        topics.name(Topic::RecordingsDlq),
                        consume::KAFKA_ERROR_PAUSE,
                    ),
                    producer,
                    resolver,
                    downloader,
                    redactor,
                    metrics,
                },
            },
            location,
        })
    }

    /// Where audio is stored (`file:///…/` or `s3://bucket/`), for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Runs until `shutdown`, then commits what is finished and leaves the
    /// group. A record in progress is left uncommitted (a download is
    /// cancelled) and processed again after the restart.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), RecordingsError> {
        Ok(self.archive_loop.run(shutdown).await?)
    }
}
