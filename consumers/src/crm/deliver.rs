//! One event to one target over HTTP: rate limit, attempt, classify, back
//! off, and try again until it is delivered, cannot be, or attempts run out.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use callstream_schemas::Event;

use super::metrics::TargetMetrics;
use super::settings::{IdempotencyKey, TargetSettings};
use super::{Mapping, Outgoing};
use callstream_runtime::shutdown::wait_for;

use crate::http_failure::{classify, Failure};

/// Longest excerpt of an error response kept for the dead letter.
const EXCERPT_CHARS: usize = 200;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
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
            AttemptError::Timeout(_) | AttemptError::Connect(_) | AttemptError::Transport(_) => {
                true
            }
            AttemptError::Encode(_) | AttemptError::ShuttingDown => false,
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
            AttemptError::Transport(_) | AttemptError::Encode(_) | AttemptError::ShuttingDown => {
                "transport_error"
            }
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

/// How delivering one event ended.
#[derive(Debug)]
pub enum Delivery {
    /// The target answered 2xx.
    Delivered,
    /// Not retriable, or attempts exhausted: dead-letter it.
    Failed { error: AttemptError, attempts: u32 },
    /// Shutdown began before it finished: do not commit it.
    Abandoned,
}

/// Delivers events to one target.
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

    /// Delivers `event`, retrying as configured. Once `shutdown` is set, the
    /// attempt in flight may finish (it is bounded by `timeout_ms`) but no
    /// new one starts: the event is then [`Delivery::Abandoned`].
    pub async fn deliver(
        &self,
        event: &Event,
        revision: i32,
        shutdown: &watch::Receiver<bool>,
    ) -> Delivery {
        let outgoing = match self.mapping.request(event, revision) {
            Ok(outgoing) => outgoing,
            Err(e) => {
                return Delivery::Failed {
                    error: e.into(),
                    attempts: 0,
                }
            }
        };
        let attempts = AtomicU32::new(0);
        let (this, outgoing, attempts_ref) = (self, &outgoing, &attempts);
        let key = match self.idempotency_key {
            IdempotencyKey::Event => event.event_id.to_string(),
            IdempotencyKey::Revision => format!("{}:{revision}", event.event_id),
        };
        let key = key.as_str();
        let sleep_shutdown = shutdown.clone();
        let result = (move || async move {
            this.pace(shutdown).await?;
            attempts_ref.fetch_add(1, Ordering::Relaxed);
            this.attempt(outgoing, key, revision).await
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
                event_id = %event.event_id,
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

    async fn attempt(
        &self,
        outgoing: &Outgoing,
        idempotency_key: &str,
        revision: i32,
    ) -> Result<(), AttemptError> {
        let started = Instant::now();
        let result = self
            .client
            .post(outgoing.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", idempotency_key)
            .header("x-callstream-revision", revision.to_string())
            .body(outgoing.body.clone())
            .send()
            .await;
        let result = match result {
            Ok(response) if response.status().is_success() => {
                // Read to the end so the connection can be reused; the
                // CRM has accepted the event whatever happens to its body.
                let _ = response.bytes().await;
                Ok(())
            }
            Ok(response) => Err(AttemptError::from_response(response).await),
            Err(e) => Err(AttemptError::from_reqwest(e, self.timeout_ms)),
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.request(
            result
                .as_ref()
                .map_or_else(AttemptError::outcome, |()| "success"),
        );
        result
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
