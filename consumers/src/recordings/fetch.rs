//! One media handle: look up its manifest, and unless it is already
//! archived, download it (streamed, size-bounded, hashed as it arrives)
//! into the store, retrying as configured, then write the manifest.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{SubsecRound, Utc};
use object_store::path::Path;
use object_store::WriteMultipart;
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use callstream_schemas::recording::RecordingArchived;
use callstream_schemas::Event;

use super::archive::{Archive, Manifest};
use super::guard::{self, GuardedResolver, Refused};
use super::metrics::Metrics;
use super::settings::RecordingsSettings;
use super::source::{self, hex, Item};
use super::template::Redactor;
use callstream_runtime::shutdown::wait_for;

use crate::http_failure::{classify, Failure};

/// Upload part size: the smallest S3 accepts. At most this plus two parts
/// in flight are held in memory per download.
const CHUNK_BYTES: usize = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Why an attempt failed. Texts never hold a URL (it may carry a credential).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ItemError {
    #[error("HTTP 404: not ready")]
    NotReady,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timeout after {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("download failed: {0}")]
    Transport(String),
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("larger than max_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("served `{0}`, not audio")]
    ContentType(String),
    #[error("empty body")]
    Empty,
    #[error("storage: {0}")]
    Storage(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    NotReady,
    Transient,
    Never,
}

impl ItemError {
    fn retry(&self) -> Retry {
        match self {
            ItemError::NotReady => Retry::NotReady,
            ItemError::Status(s) => {
                if *s == 408 || *s == 429 || (500..600).contains(s) {
                    Retry::Transient
                } else {
                    Retry::Never
                }
            }
            ItemError::Timeout(_)
            | ItemError::Connect(_)
            | ItemError::Transport(_)
            | ItemError::Empty
            | ItemError::Storage(_) => Retry::Transient,
            ItemError::Refused(_) | ItemError::TooLarge { .. } | ItemError::ContentType(_) => {
                Retry::Never
            }
        }
    }

    /// The `reason` label of `callstream_recordings_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ItemError::NotReady => "not_ready",
            ItemError::Status(_) => "http_status",
            ItemError::Timeout(_) => "timeout",
            ItemError::Connect(_) => "connect",
            ItemError::Transport(_) => "transport",
            ItemError::Refused(_) => "refused",
            ItemError::TooLarge { .. } => "too_large",
            ItemError::ContentType(_) => "content_type",
            ItemError::Empty => "empty",
            ItemError::Storage(_) => "storage",
        }
    }

    fn from_reqwest(error: reqwest::Error, timeout_ms: u64) -> ItemError {
        if let Some(refused) = guard::find_refusal(&error) {
            return ItemError::Refused(refused);
        }
        match classify(error) {
            Failure::Timeout => ItemError::Timeout(timeout_ms),
            Failure::Connect(text) => ItemError::Connect(text),
            Failure::Transport(text) => ItemError::Transport(text),
        }
    }
}

fn storage(error: object_store::Error) -> ItemError {
    ItemError::Storage(error.to_string())
}

/// How one handle ended.
#[derive(Debug)]
pub enum Outcome {
    /// Downloaded and stored now: publish this.
    Archived(RecordingArchived),
    /// Stored before by this same revision: publish this (the same) again.
    AlreadyArchived(RecordingArchived),
    /// Stored before, and this revision changes nothing (or is older).
    Skipped,
    /// Not retriable, or retries exhausted: dead-letter.
    Failed { error: ItemError, attempts: u32 },
    /// Shutdown began first: leave the record uncommitted.
    Abandoned,
}

/// One handle of one event revision to archive.
pub(crate) struct Job<'a> {
    pub event: &'a Event,
    pub revision: i32,
    pub item: &'a Item,
    pub url: &'a Url,
    /// The URL may reach a non-public address ([`super::template::Resolved`]).
    pub(crate) private_ok: bool,
}

/// What to do given an existing manifest.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Republish,
    Skip,
    Fetch,
}

/// Same handle and revision: the earlier run's event is published again
/// (this is a redelivery). Same handle, other revision: nothing new. A
/// changed handle in a newer revision (a new link): fetched again; in an
/// older revision: ignored, the newer archive stays.
fn decide(manifest: &Manifest, revision: i32, digest: &str) -> Decision {
    let same = manifest.source_sha256 == digest;
    match (same, revision.cmp(&manifest.record.revision)) {
        (true, std::cmp::Ordering::Equal) => Decision::Republish,
        (true, _) | (false, std::cmp::Ordering::Less) => Decision::Skip,
        (false, _) => Decision::Fetch,
    }
}

pub struct Downloader {
    /// Refuses non-public addresses, at every redirect and DNS answer too
    /// (unless `allow_private_targets`).
    client: reqwest::Client,
    /// For template URLs with `allow_private_templates` (only then, and
    /// only when `client` is not already unguarded): reaches any address.
    private_client: Option<reqwest::Client>,
    archive: Archive,
    prefix: String,
    max_bytes: u64,
    timeout_ms: u64,
    backoff: ExponentialBuilder,
    not_ready_backoff: ExponentialBuilder,
    not_ready_window: Duration,
    metrics: Metrics,
    redactor: Redactor,
}

impl Downloader {
    pub fn new(
        settings: &RecordingsSettings,
        archive: Archive,
        metrics: Metrics,
        redactor: Redactor,
    ) -> Result<Downloader, reqwest::Error> {
        let client = |allow_private: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("callstream-recordings/", env!("CARGO_PKG_VERSION")))
                .timeout(settings.timeout())
                .connect_timeout(settings.timeout().min(Duration::from_secs(10)))
                .redirect(guard::redirect_policy(allow_private))
                .dns_resolver(std::sync::Arc::new(GuardedResolver { allow_private }))
                .no_proxy()
                .build()
        };
        let backoff = callstream_runtime::backoff::retries(
            settings.initial_backoff(),
            settings.max_backoff(),
            settings.max_attempts,
        );
        Ok(Downloader {
            client: client(settings.allow_private_targets)?,
            private_client: (settings.allow_private_templates && !settings.allow_private_targets)
                .then(|| client(true))
                .transpose()?,
            archive,
            prefix: settings.store.prefix.clone(),
            max_bytes: settings.max_bytes,
            timeout_ms: settings.timeout_ms,
            not_ready_backoff: backoff.without_max_times(),
            backoff,
            not_ready_window: settings.not_ready_window(),
            metrics,
            redactor,
        })
    }

    /// Archives one handle, retrying as configured, until `shutdown`.
    pub async fn run(&self, job: &Job<'_>, shutdown: &watch::Receiver<bool>) -> Outcome {
        let started = Instant::now();
        let mut transient = self.backoff.build();
        let mut not_ready = self.not_ready_backoff.build();
        let mut attempts = 0;
        loop {
            if *shutdown.borrow() {
                return Outcome::Abandoned;
            }
            attempts += 1;
            // A download can take up to timeout_ms: shutdown cancels it.
            // Every write is atomic, so what is left is either nothing, or
            // audio without a manifest (fetched again after the restart).
            let mut stop = shutdown.clone();
            let attempt = tokio::select! {
                attempt = self.attempt(job) => attempt,
                _ = wait_for(&mut stop) => return Outcome::Abandoned,
            };
            let error = match attempt {
                Ok(outcome) => return outcome,
                Err(error) => error,
            };
            let delay = match error.retry() {
                Retry::NotReady => {
                    let left = self.not_ready_window.saturating_sub(started.elapsed());
                    (!left.is_zero())
                        .then(|| not_ready.next().map(|d| d.min(left)))
                        .flatten()
                }
                Retry::Transient => transient.next(),
                Retry::Never => None,
            };
            let Some(delay) = delay else {
                return Outcome::Failed { error, attempts };
            };
            let error_text = self.redactor.scrub(&error.to_string());
            if error.retry() == Retry::NotReady {
                self.metrics.not_ready_retries.inc();
                tracing::info!(
                    event_id = %job.event.event_id,
                    media = %job.item.label(),
                    attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "recording not ready yet"
                );
            } else {
                self.metrics.retries.inc();
                tracing::warn!(
                    event_id = %job.event.event_id,
                    media = %job.item.label(),
                    attempts,
                    error = %error_text,
                    retry_in_ms = delay.as_millis() as u64,
                    "download failed; retrying"
                );
            }
            let mut shutdown = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_for(&mut shutdown) => return Outcome::Abandoned,
            }
        }
    }

    async fn attempt(&self, job: &Job<'_>) -> Result<Outcome, ItemError> {
        let base = source::object_base(&self.prefix, job.event, job.item);
        let manifest_key = Path::from(format!("{base}.manifest.json"));
        let digest = job.item.handle.digest();
        if let Some(manifest) = self
            .archive
            .manifest(&manifest_key)
            .await
            .map_err(storage)?
        {
            match decide(&manifest, job.revision, &digest) {
                Decision::Republish => return Ok(Outcome::AlreadyArchived(manifest.record)),
                Decision::Skip => return Ok(Outcome::Skipped),
                Decision::Fetch => {}
            }
        }
        let started = Instant::now();
        let client = match &self.private_client {
            Some(private) if job.private_ok => private,
            _ => &self.client,
        };
        let response = client
            .get(job.url.clone())
            .send()
            .await
            .map_err(|e| ItemError::from_reqwest(e, self.timeout_ms))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ItemError::NotReady);
        }
        if !status.is_success() {
            return Err(ItemError::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(ItemError::TooLarge {
                limit: self.max_bytes,
            });
        }
        let content_type = content_type(&response)?;
        let ext = source::extension(&content_type, &job.item.handle);
        // One object per handle: a new link never overwrites what an
        // earlier event points to.
        let audio_key = Path::from(format!("{base}-{}.{ext}", &digest[..16]));
        let upload = self.archive.upload(&audio_key).await.map_err(storage)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
        let streamed = self.stream(response, &mut writer).await;
        let (size_bytes, sha256) = match streamed {
            Ok(done) => done,
            Err(error) => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(key = %audio_key, error = %e, "partial upload not removed");
                }
                return Err(error);
            }
        };
        writer.finish().await.map_err(storage)?;
        self.archive.sync(&audio_key).await.map_err(storage)?;
        self.metrics.downloaded_bytes.inc_by(size_bytes);
        self.metrics
            .download_duration
            .observe(started.elapsed().as_secs_f64());
        let record = RecordingArchived {
            event_id: job.event.event_id,
            identity: job.event.identity.clone(),
            provider: job.event.provider,
            tenant: job.event.tenant.clone(),
            revision: job.revision,
            media: job.item.media,
            index: job.item.index,
            source: job.item.handle.source(),
            location: self.archive.location(&audio_key),
            size_bytes,
            content_type,
            sha256,
            archived_at: Utc::now().trunc_subsecs(3),
        };
        let manifest = Manifest {
            source_sha256: digest,
            record: record.clone(),
        };
        self.archive
            .put_manifest(&manifest_key, &manifest)
            .await
            .map_err(storage)?;
        Ok(Outcome::Archived(record))
    }

    /// Copies the body into the upload, counting and hashing; stops as soon
    /// as it passes `max_bytes`.
    async fn stream(
        &self,
        mut response: reqwest::Response,
        writer: &mut WriteMultipart,
    ) -> Result<(u64, String), ItemError> {
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ItemError::from_reqwest(e, self.timeout_ms))?
        {
            size = size.saturating_add(chunk.len() as u64);
            if size > self.max_bytes {
                return Err(ItemError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(storage)?;
            writer.put(chunk);
        }
        if size == 0 {
            return Err(ItemError::Empty);
        }
        Ok((size, hex(&hasher.finalize())))
    }
}

/// The served media type without parameters; refuses text and structured
/// documents, which are error or login pages served with a 200.
fn content_type(response: &reqwest::Response) -> Result<String, ItemError> {
    let value = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() {
        return Ok("application/octet-stream".into());
    }
    let document = essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json" | "application/xml" | "application/xhtml+xml"
        )
        || essence.ends_with("+json")
        || essence.ends_with("+xml");
    if document || essence.len() > 100 {
        let shown: String = essence.chars().take(100).collect();
        return Err(ItemError::ContentType(shown));
    }
    Ok(essence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_schemas::recording::{Media, MediaSource};
    use callstream_schemas::ProviderId;

    fn manifest(revision: i32, digest: &str) -> Manifest {
        Manifest {
            source_sha256: digest.into(),
            record: RecordingArchived {
                event_id: uuid::Uuid::nil(),
                identity: "i".into(),
                provider: ProviderId::Onoff,
                tenant: "t".into(),
                revision,
                media: Media::Recording,
                index: 0,
                source: MediaSource::Id { id: "1".into() },
                location: "file:///k.mp3".into(),
                size_bytes: 1,
                content_type: "audio/mpeg".into(),
                sha256: "00".into(),
                archived_at: Utc::now(),
            },
        }
    }

    #[test]
    fn redeliveries_republish_updates_skip_new_links_fetch() {
        let m = manifest(2, "a");
        assert_eq!(decide(&m, 2, "a"), Decision::Republish);
        assert_eq!(decide(&m, 3, "a"), Decision::Skip);
        assert_eq!(decide(&m, 1, "a"), Decision::Skip);
        assert_eq!(decide(&m, 3, "b"), Decision::Fetch);
        assert_eq!(decide(&m, 2, "b"), Decision::Fetch);
        assert_eq!(decide(&m, 1, "b"), Decision::Skip);
    }

    #[test]
    fn error_classes() {
        assert_eq!(ItemError::NotReady.retry(), Retry::NotReady);
        for s in [408, 429, 500, 503] {
            assert_eq!(ItemError::Status(s).retry(), Retry::Transient, "{s}");
        }
        for s in [400, 401, 403, 410, 302] {
            assert_eq!(ItemError::Status(s).retry(), Retry::Never, "{s}");
        }
        assert_eq!(ItemError::TooLarge { limit: 1 }.retry(), Retry::Never);
        assert_eq!(ItemError::Refused(Refused::NoHost).retry(), Retry::Never);
        assert_eq!(ItemError::Storage("x".into()).retry(), Retry::Transient);
    }
}
