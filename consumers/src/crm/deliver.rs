//! One piece of work (a call, an event, an archived recording) to one
//! target over HTTP: rate limit, attempt, classify, back off, and try
//! again until it is delivered, cannot be, or attempts run out. An attempt
//! may be several requests (HubSpot looks up a contact and an owner before
//! it writes); each is paced and counted on its own.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use callstream_schemas::call::Call;
use callstream_schemas::recording::RecordingArchived;
use callstream_schemas::Event;

use super::metrics::TargetMetrics;
use super::settings::{IdempotencyKey, TargetSettings};
use super::Mapping;
use callstream_runtime::shutdown::wait_for;

use crate::http_failure::{classify, Failure};

/// Longest excerpt of an error response kept for the dead letter.
const EXCERPT_CHARS: usize = 200;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("HTTP {}: {excerpt}", status.as_u16())]
    Status {
        status: StatusCode,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    #[error("timeout after {0} ms")]
    Timeout(u64),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("event cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// A 2xx answer that does not say what the API documents.
    #[error("unexpected answer: {0}")]
    Answer(String),
    /// Not done yet, for a reason that passes: an object HubSpot holds but
    /// does not find yet (its search lags its writes).
    #[error("{0}")]
    NotYet(String),
    /// The target's own state (PostgreSQL) could not be read or written.
    #[error("mapping store: {0}")]
    Store(String),
    /// Shutdown began: the event is left uncommitted for the next start.
    #[error("shutting down")]
    ShuttingDown,
}

impl AttemptError {
    /// Whether another attempt can succeed: transport failures, timeouts,
    /// `408`, `429` and `5xx`, and `401`/`403`. Any other answer (a `400`,
    /// a `422`, a redirect) will be the same next time: dead-letter it at
    /// once.
    ///
    /// `401` and `403` refuse our credentials (a rotated token, a missing
    /// scope), not the event: every following event would get the same
    /// answer. Dead-lettered at once, a revoked token would empty the
    /// target's backlog into the dead-letter topic at `rate_per_second`;
    /// retried with back-off, the target slows to one event per
    /// `max_attempts` back-offs, and few events reach the dead letters
    /// before someone fixes the credentials.
    pub(crate) fn is_retriable(&self) -> bool {
        match self {
            AttemptError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || is_refused_credentials(*status)
            }
            AttemptError::Timeout(_)
            | AttemptError::Connect(_)
            | AttemptError::Transport(_)
            | AttemptError::NotYet(_)
            | AttemptError::Store(_) => true,
            AttemptError::Encode(_) | AttemptError::Answer(_) | AttemptError::ShuttingDown => false,
        }
    }

    /// The `outcome` label of `callstream_crm_requests_total`.
    fn outcome(&self) -> &'static str {
        match self {
            AttemptError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                "rate_limited"
            }
            AttemptError::Status { status, .. } if status.is_server_error() => "server_error",
            AttemptError::Status { status, .. } if is_refused_credentials(*status) => {
                "unauthorized"
            }
            AttemptError::Status { .. } => "client_error",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Connect(_) => "connect_error",
            AttemptError::Transport(_)
            | AttemptError::Encode(_)
            | AttemptError::Answer(_)
            | AttemptError::NotYet(_)
            | AttemptError::Store(_)
            | AttemptError::ShuttingDown => "transport_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    async fn from_response(response: Response) -> AttemptError {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        AttemptError::Status {
            status,
            excerpt: excerpt(response).await,
            retry_after,
        }
    }

    fn from_reqwest(error: reqwest::Error, timeout_ms: u64) -> AttemptError {
        match classify(error) {
            Failure::Timeout => AttemptError::Timeout(timeout_ms),
            Failure::Connect(text) => AttemptError::Connect(text),
            Failure::Transport(text) => AttemptError::Transport(text),
        }
    }
}

/// `401 Unauthorized` or `403 Forbidden`: the target refuses who we are.
fn is_refused_credentials(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The start of an error body, on one line, for logs and the dead letter.
async fn excerpt(mut response: Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < EXCERPT_CHARS * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut one_line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(EXCERPT_CHARS)
        .collect();
    if one_line.is_empty() {
        one_line.push_str("(empty body)");
    }
    one_line
}

/// A header value kept out of `Debug` output.
fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// How delivering one piece of work ended.
#[derive(Debug)]
pub enum Delivery {
    /// The target answered 2xx.
    Delivered,
    /// Not retriable, or attempts exhausted: dead-letter it.
    Failed { error: AttemptError, attempts: u32 },
    /// Shutdown began before it finished: do not commit it.
    Abandoned,
}

/// What a target is given to deliver.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// A call's merged state, from `callstream.calls.v1`.
    Call { call: &'a Call, revision: i64 },
    /// An event that names no call (an SMS), from
    /// `callstream.events.unique.v1`.
    Event { event: &'a Event, revision: i64 },
    /// An archived recording, from `callstream.recordings.v1`.
    Recording(&'a RecordingArchived),
}

impl Work<'_> {
    /// What it is about, for logs: a call key or an event id.
    pub fn subject(&self) -> String {
        match self {
            Work::Call { call, .. } => call.call_key.clone(),
            Work::Event { event, .. } => event.event_id.to_string(),
            Work::Recording(r) => r.event_id.to_string(),
        }
    }

    fn revision(&self) -> i64 {
        match self {
            Work::Call { revision, .. } | Work::Event { revision, .. } => *revision,
            Work::Recording(r) => i64::from(r.revision),
        }
    }
}

/// A target's requests for one piece of work: each paced by the rate
/// limit, timed, counted, and sent with the work's `Idempotency-Key` and
/// `X-Callstream-Revision`.
pub struct Session<'a> {
    deliverer: &'a Deliverer,
    shutdown: &'a watch::Receiver<bool>,
    idempotency_key: &'a str,
    revision: i64,
}

/// A 2xx answer, or one of the statuses the caller said it expects.
pub struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as `T`; an answer that is not is not retried.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, AttemptError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            AttemptError::Answer(format!(
                "HTTP {} body is not the expected JSON: {e}",
                self.status.as_u16()
            ))
        })
    }
}

impl Session<'_> {
    /// One request: a 2xx answer, or one in `expected`; any other status is
    /// an error classified by [`AttemptError::is_retriable`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        expected: &[StatusCode],
    ) -> Result<Answer, AttemptError> {
        let d = self.deliverer;
        d.pace(self.shutdown).await?;
        let started = Instant::now();
        let mut request = d
            .client
            .request(method, url)
            .header("idempotency-key", self.idempotency_key)
            .header("x-callstream-revision", self.revision.to_string());
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let result = match request.send().await {
            Ok(response)
                if response.status().is_success() || expected.contains(&response.status()) =>
            {
                let status = response.status();
                // Read to the end so the connection can be reused.
                match response.bytes().await {
                    Ok(body) => Ok(Answer { status, body }),
                    // The target acted on a 2xx whatever happens to its body.
                    Err(_) if status.is_success() => Ok(Answer {
                        status,
                        body: bytes::Bytes::new(),
                    }),
                    Err(e) => Err(AttemptError::from_reqwest(e, d.timeout_ms)),
                }
            }
            Ok(response) => Err(AttemptError::from_response(response).await),
            Err(e) => Err(AttemptError::from_reqwest(e, d.timeout_ms)),
        };
        d.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        d.metrics.request(
            result
                .as_ref()
                .map_or_else(AttemptError::outcome, |_| "success"),
        );
        result
    }

    /// `send` with a JSON body.
    pub async fn send_json(
        &self,
        method: Method,
        url: &str,
        body: &impl serde::Serialize,
        expected: &[StatusCode],
    ) -> Result<Answer, AttemptError> {
        self.send(method, url, Some(serde_json::to_vec(body)?), expected)
            .await
    }
}

/// Delivers work to one target.
pub struct Deliverer {
    client: reqwest::Client,
    mapping: Box<dyn Mapping>,
    limiter: DefaultDirectRateLimiter,
    backoff: ExponentialBuilder,
    max_backoff: Duration,
    timeout_ms: u64,
    idempotency_key: IdempotencyKey,
    metrics: TargetMetrics,
}

impl Deliverer {
    pub fn new(
        settings: &TargetSettings,
        mapping: Box<dyn Mapping>,
        metrics: TargetMetrics,
    ) -> Result<Deliverer, reqwest::Error> {
        let mut headers = HeaderMap::new();
        // Validated at start-up; a value that still fails is left out.
        for (name, value) in &settings.headers {
            if let (Ok(name), Some(value)) = (
                HeaderName::try_from(name.as_str()),
                sensitive(value.expose_secret()),
            ) {
                headers.insert(name, value);
            }
        }
        let bearer = settings.bearer_token.as_ref();
        if let Some(value) =
            bearer.and_then(|t| sensitive(&format!("Bearer {}", t.expose_secret())))
        {
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("callstream-crm/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .timeout(settings.timeout())
            .connect_timeout(settings.timeout())
            // A redirected POST turns into a GET: report it as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let interval = settings.request_interval().max(Duration::from_nanos(1));
        let limiter = RateLimiter::direct(Quota::with_period(interval).expect("a non-zero period"));
        let backoff = callstream_runtime::backoff::retries(
            settings.initial_backoff(),
            settings.max_backoff(),
            settings.max_attempts,
        );
        Ok(Deliverer {
            client,
            mapping,
            limiter,
            backoff,
            max_backoff: settings.max_backoff(),
            timeout_ms: settings.timeout_ms,
            idempotency_key: settings.idempotency_key,
            metrics,
        })
    }

    /// Whether this target takes archived recordings.
    pub fn takes_recordings(&self) -> bool {
        self.mapping.takes_recordings()
    }

    /// Delivers `work`, retrying as configured. Once `shutdown` is set, the
    /// request in flight may finish (it is bounded by `timeout_ms`) but no
    /// new one starts: the work is then [`Delivery::Abandoned`].
    async fn attempts(&self, work: Work<'_>, shutdown: &watch::Receiver<bool>) -> Delivery {
        let attempts = AtomicU32::new(0);
        let revision = work.revision();
        let key = match (self.idempotency_key, &work) {
            (_, Work::Recording(r)) => format!("{}:{}:{}", r.event_id, r.media.as_str(), r.index),
            (IdempotencyKey::Event, _) => work.subject(),
            (IdempotencyKey::Revision, _) => format!("{}:{revision}", work.subject()),
        };
        let session = Session {
            deliverer: self,
            shutdown,
            idempotency_key: &key,
            revision,
        };
        let (this, session, work, attempts_ref) = (self, &session, &work, &attempts);
        let sleep_shutdown = shutdown.clone();
        let result = (move || async move {
            if *session.shutdown.borrow() {
                return Err(AttemptError::ShuttingDown);
            }
            attempts_ref.fetch_add(1, Ordering::Relaxed);
            this.mapping.send(session, work).await
        })
        .retry(self.backoff)
        .sleep(move |delay| {
            let mut shutdown = sleep_shutdown.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = wait_for(&mut shutdown) => {}
                }
            }
        })
        .when(AttemptError::is_retriable)
        .adjust(|error, backoff| self.next_delay(error, backoff))
        .notify(|error, delay| {
            self.metrics.retries.inc();
            tracing::warn!(
                crm_target = self.metrics.target(),
                subject = %work.subject(),
                %error,
                retry_in_ms = delay.as_millis() as u64,
                "CRM request failed; retrying"
            );
        })
        .await;
        match result {
            Ok(()) => Delivery::Delivered,
            Err(AttemptError::ShuttingDown) => Delivery::Abandoned,
            Err(error) => Delivery::Failed {
                error,
                attempts: attempts.load(Ordering::Relaxed),
            },
        }
    }

    /// [`Self::attempts`] until they end in something other than the
    /// target's own database failing: that holds the target (the work is
    /// not the problem, and every following record would fail the same
    /// way), it never dead-letters the work.
    pub async fn deliver(&self, work: Work<'_>, shutdown: &watch::Receiver<bool>) -> Delivery {
        loop {
            match self.attempts(work, shutdown).await {
                Delivery::Failed {
                    error: AttemptError::Store(error),
                    ..
                } => {
                    tracing::warn!(
                        crm_target = self.metrics.target(),
                        subject = %work.subject(),
                        %error,
                        retry_in_ms = self.max_backoff.as_millis() as u64,
                        "CRM state unavailable; holding the target until it is back"
                    );
                    let mut stop = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(self.max_backoff) => {}
                        _ = wait_for(&mut stop) => return Delivery::Abandoned,
                    }
                }
                other => return other,
            }
        }
    }

    /// The back-off, or the `Retry-After` the target asked for when longer;
    /// never more than `max_backoff_ms`. `None` when attempts are exhausted.
    fn next_delay(&self, error: &AttemptError, backoff: Option<Duration>) -> Option<Duration> {
        let backoff = backoff?;
        let wanted = error
            .retry_after()
            .map_or(backoff, |asked| asked.max(backoff));
        Some(wanted.min(self.max_backoff))
    }

    /// Waits for the rate limit; gives up when shutdown begins.
    async fn pace(&self, shutdown: &watch::Receiver<bool>) -> Result<(), AttemptError> {
        if *shutdown.borrow() {
            return Err(AttemptError::ShuttingDown);
        }
        if self.limiter.check().is_ok() {
            return Ok(());
        }
        self.metrics.rate_limit_waits.inc();
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = self.limiter.until_ready() => Ok(()),
            _ = wait_for(&mut shutdown) => Err(AttemptError::ShuttingDown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let parse = |v| parse_retry_after(v, now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse("Wed, 21 Oct 2015 07:27:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("-5"), None);
    }
}
