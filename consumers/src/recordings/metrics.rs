//! `callstream_recordings_*` metrics. Labels come from small fixed sets
//! (media, outcome, reason, topic); never an event id, a URL or an error
//! message.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use callstream_schemas::recording::Media;

/// What happened to one media handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaOutcome {
    /// Downloaded, stored, and its event published.
    Archived,
    /// Stored earlier by the same revision: its event published again, no download.
    AlreadyArchived,
    /// Stored earlier, and this revision has nothing new: no download, no event.
    Skipped,
    /// A file name or id of a provider without a URL template.
    Unconfigured,
    /// Dead-lettered.
    Failed,
}

impl MediaOutcome {
    const ALL: [MediaOutcome; 5] = [
        MediaOutcome::Archived,
        MediaOutcome::AlreadyArchived,
        MediaOutcome::Skipped,
        MediaOutcome::Unconfigured,
        MediaOutcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            MediaOutcome::Archived => "archived",
            MediaOutcome::AlreadyArchived => "already_archived",
            MediaOutcome::Skipped => "skipped",
            MediaOutcome::Unconfigured => "unconfigured",
            MediaOutcome::Failed => "failed",
        }
    }
}

/// Reasons of `callstream_recordings_failures_total` (one per failed handle).
pub(crate) const FAILURE_REASONS: [&str; 15] = [
    "not_ready",
    "http_status",
    "timeout",
    "connect",
    "transport",
    "refused",
    "too_large",
    "content_type",
    "empty",
    "storage",
    "invalid_url",
    "invalid_value",
    "config",
    "too_many_media",
    "undecodable",
];

/// Topics of `callstream_recordings_kafka_produce_errors_total`.
pub(crate) const TOPICS: [&str; 2] = ["recordings", "recordings_dlq"];

#[derive(Clone)]
pub struct Metrics {
    media: IntCounterVec,
    failures: IntCounterVec,
    produce_errors: IntCounterVec,
    pub(crate) not_ready_retries: IntCounter,
    pub retries: IntCounter,
    pub(crate) downloaded_bytes: IntCounter,
    pub dead_letters: IntCounter,
    pub(crate) download_duration: Histogram,
    pub lag: IntGauge,
    pub in_progress: IntGauge,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        // The same small registering closures as `crm/metrics.rs`, under
        // this consumer's prefix: shorter than a shared helper's call.
        let vec = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let c = IntCounterVec::new(
                Opts::new(format!("callstream_recordings_{name}"), help),
                labels,
            )?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<_> {
            let c = IntCounter::new(format!("callstream_recordings_{name}"), help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let download_duration = Histogram::with_opts(
            HistogramOpts::new(
                "callstream_recordings_download_duration_seconds",
                "Time of one successful download, from request to stored object.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
        )?;
        registry.register(Box::new(download_duration.clone()))?;
        let lag = IntGauge::new(
            "callstream_recordings_lag_records",
            "Records between the archiver's committed offsets and the end of its partitions: \
             the records in progress and everything after them (asked of the brokers every 2 s).",
        )?;
        registry.register(Box::new(lag.clone()))?;
        let in_progress = IntGauge::new(
            "callstream_recordings_in_progress_records",
            "Records being archived at once (at most recordings.concurrency).",
        )?;
        registry.register(Box::new(in_progress.clone()))?;
        let metrics = Metrics {
            media: vec(
                "media_total",
                "Media handles finished: archived, already_archived (event published again), \
                 skipped (nothing new), unconfigured (no URL template), failed (dead-lettered).",
                &["media", "outcome"],
            )?,
            failures: vec(
                "failures_total",
                "Media handles dead-lettered, by the reason of their last attempt.",
                &["reason"],
            )?,
            produce_errors: vec(
                "kafka_produce_errors_total",
                "Records Kafka did not acknowledge (retried until it does).",
                &["topic"],
            )?,
            not_ready_retries: counter(
                "not_ready_retries_total",
                "Downloads tried again after a 404 (link not ready yet).",
            )?,
            retries: counter(
                "retries_total",
                "Downloads tried again after a retriable failure (timeout, connection, 408, 429, 5xx, storage).",
            )?,
            downloaded_bytes: counter(
                "downloaded_bytes_total",
                "Bytes of audio downloaded and stored.",
            )?,
            dead_letters: counter(
                "dead_letters_total",
                "Unique records copied to the recordings dead-letter topic.",
            )?,
            download_duration,
            lag,
            in_progress,
        };
        for media in Media::ALL {
            for outcome in MediaOutcome::ALL {
                metrics
                    .media
                    .with_label_values(&[media.as_str(), outcome.label()]);
            }
        }
        for reason in FAILURE_REASONS {
            metrics.failures.with_label_values(&[reason]);
        }
        for topic in TOPICS {
            metrics.produce_errors.with_label_values(&[topic]);
        }
        Ok(metrics)
    }

    pub fn media(&self, media: Media, outcome: MediaOutcome) {
        self.media
            .with_label_values(&[media.as_str(), outcome.label()])
            .inc();
    }

    /// `reason` is one of [`FAILURE_REASONS`].
    pub fn failure(&self, reason: &'static str) {
        self.failures.with_label_values(&[reason]).inc();
    }

    /// `topic` is one of [`TOPICS`].
    pub(crate) fn produce_error(&self, topic: &'static str) {
        self.produce_errors.with_label_values(&[topic]).inc();
    }
}
