//! The one handler every provider route shares: authenticate, read the body
//! within the limit, normalize, publish the raw record plus the normalized
//! (or DLQ) record, and answer.
//!
//! Guarantee: 200 only after both records are durable: acknowledged by
//! Kafka, or fsynced to the local spool while Kafka cannot take them (see
//! [`crate::deliver`]). A delivery that authenticates but cannot be
//! normalized still gets 200 once it is in the DLQ: a 4xx would only make the
//! provider retry the same bytes and then drop them.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{SubsecRound, Utc};
use futures_util::StreamExt;
use tokio::sync::SemaphorePermit;
use tracing_actix_web::RequestId;

use callstream_schemas::raw::{self as h, redact_query};
use callstream_schemas::{Provider, Route, Topic};

use crate::auth::Auth;
use crate::body::{Body, OverBudget};
use crate::deliver::{DeliverError, Deliverer, Stored};
use crate::error::{ApiError, Overload};
use crate::metrics::{Metrics, Outcome, SourceMetrics};
use crate::signature::{unix_now, Signed, Verifier};
use callstream_kafka::wire::{Delivery, Records};

/// Everything a provider route needs, attached to its actix resource.
pub(crate) struct SourceRoute {
    pub provider: Arc<dyn Provider>,
    pub route: &'static Route,
    pub auth: Arc<Auth>,
    /// The source's signature scheme, if it has one.
    pub signature: Option<Arc<Verifier>>,
    pub called: Arc<CalledUrl>,
    pub tenant: String,
    pub metrics: SourceMetrics,
}

/// How to rebuild the URL a platform called, which some signatures cover
/// (`sources.<name>.public_url`, `trust_forwarded_headers`).
pub(crate) struct CalledUrl {
    pub public_url: Option<String>,
    pub trust_forwarded: bool,
}

impl CalledUrl {
    /// `public_url` followed by the request's path and query; else, when
    /// trusted, what `X-Forwarded-Proto`, `-Host` and `-Prefix` say; else
    /// `http://` and the `Host` header (the gateway itself speaks plain
    /// HTTP). The query is the one received, byte for byte.
    pub fn url(&self, req: &HttpRequest) -> String {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or(v).trim())
                .filter(|v| !v.is_empty())
        };
        let base = match &self.public_url {
            Some(public) => public.trim_end_matches('/').to_string(),
            None => {
                let forwarded = |name| header(name).filter(|_| self.trust_forwarded);
                let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
                let host = forwarded("x-forwarded-host")
                    .or_else(|| header("host"))
                    .unwrap_or_default();
                let prefix = forwarded("x-forwarded-prefix").unwrap_or_default();
                format!("{scheme}://{host}{}", prefix.trim_end_matches('/'))
            }
        };
        match req.query_string() {
            "" => format!("{base}{}", req.path()),
            query => format!("{base}{}?{query}", req.path()),
        }
    }
}

/// Shared by all routes.
pub(crate) struct Ingest {
    pub deliverer: Arc<Deliverer>,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    /// Body bytes held across all requests, one permit a byte (see
    /// `max_buffered_body_bytes`): taken as bytes arrive, never from a
    /// declared length, and given back when the request ends.
    pub(crate) body_budget: tokio::sync::Semaphore,
    /// The budget's size, for the gauge.
    pub(crate) body_budget_bytes: usize,
    pub(crate) body_read_timeout: Duration,
    /// Bounds the requests being processed; over it, 503 at once.
    pub(crate) in_flight: tokio::sync::Semaphore,
    /// `Retry-After` seconds on a 503.
    pub(crate) retry_after_secs: u64,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

pub async fn handle(
    req: HttpRequest,
    body: web::Payload,
    source: web::Data<SourceRoute>,
    ingest: web::Data<Ingest>,
    request_id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let request_id = request_id.to_string();
    // Over the limit, refuse at once: queueing would grow memory without bound.
    let result = match ingest.in_flight.try_acquire() {
        Ok(_permit) => {
            let _in_flight = InFlight::start(&ingest.metrics);
            ingest.accept(&req, body, &source, &request_id).await
        }
        Err(_) => Err(ApiError::Overloaded {
            retry_after_secs: ingest.retry_after_secs,
            reason: Overload::InFlight,
        }),
    };
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(ApiError::Unauthorized | ApiError::BadSignature { .. }) => Outcome::Unauthorized,
        Err(ApiError::PayloadTooLarge { .. }) => Outcome::TooLarge,
        Err(ApiError::Unavailable { .. }) => Outcome::Unavailable,
        Err(ApiError::Overloaded { .. }) => Outcome::Overloaded,
        Err(_) => Outcome::BadRequest,
    };
    source.metrics.request(outcome).inc();
    source
        .metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    result.map(|outcome| {
        HttpResponse::Ok().json(Answer {
            status: outcome.as_str(),
            request_id: &request_id,
        })
    })
}

/// The body of a 2xx answer.
#[derive(serde::Serialize)]
struct Answer<'a> {
    status: &'static str,
    request_id: &'a str,
}

impl Ingest {
    /// Refreshes the gauges read at scrape time.
    pub(crate) fn update_gauges(&self) {
        let held = self.body_budget_bytes - self.body_budget.available_permits();
        self.metrics.body_bytes_held.set(held as i64);
        if let Some(spool) = self.deliverer.spool() {
            spool.update_gauges();
        }
    }

    async fn accept(
        &self,
        req: &HttpRequest,
        body: web::Payload,
        source: &SourceRoute,
        request_id: &str,
    ) -> Result<Outcome, ApiError> {
        let source_name = source.provider.id().as_str();
        if !source.auth.verify(req.headers(), req.query_string()) {
            source.metrics.auth_failures.inc();
            tracing::warn!(
                source = source_name,
                request_id,
                "refused: missing or invalid API key"
            );
            return Err(ApiError::Unauthorized);
        }
        // `_held` keeps the body's share of the budget until the answer:
        // the body, and the records made from it, live until then.
        let (mut body, _held) =
            tokio::time::timeout(self.body_read_timeout, self.read_body(req, body))
                .await
                .map_err(|_| ApiError::BodyTimeout {
                    timeout_ms: self.body_read_timeout.as_millis() as u64,
                })??;
        if let Some(verifier) = &source.signature {
            // Only Twilio's scheme signs the URL: the others skip building it.
            let url = if verifier.signs_url() {
                source.called.url(req)
            } else {
                String::new()
            };
            let checked = verifier.verify(&Signed {
                url: &url,
                headers: req.headers(),
                content_type: req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
                body: &body,
                now: unix_now(),
            });
            if let Err(refused) = checked {
                source.metrics.auth_failures.inc();
                tracing::warn!(
                    source = source_name,
                    request_id,
                    scheme = verifier.scheme(),
                    reason = %refused,
                    "refused: signature does not verify"
                );
                return Err(ApiError::BadSignature {
                    scheme: verifier.scheme(),
                    reason: refused.to_string(),
                });
            }
            // A credential carried in the body does not go to Kafka.
            if let Some(redacted) = verifier.redact(&body) {
                body = redacted.into();
            }
        }
        // Microseconds, as in the cs_received_at header: a replay rebuilds
        // the event from that header and must produce the same bytes.
        let received_at = Utc::now().trunc_subsecs(6);
        let query = redact_query(req.query_string());
        let delivery = Delivery {
            request_id: request_id.into(),
            source: source_name.into(),
            route: source.route.name.into(),
            method: req.method().as_str().into(),
            path: req.path().into(),
            query: query.as_str().into(),
            content_type: req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(Into::into),
            received_at,
            source_tenant: Some(source.tenant.as_str().into()),
            copied: copied_headers(req).collect(),
        };
        let publisher = self.deliverer.publisher();
        // The read buffer itself: not copied.
        let Records {
            records,
            dead_lettered,
        } = delivery.records(
            &*source.provider,
            Vec::from(body),
            publisher.topics().name(Topic::Raw),
            publisher.max_record_bytes(),
            |event| {
                // On the request's span: its one line (see telemetry) says
                // what the delivery was.
                let span = tracing::Span::current();
                span.record("source", source_name);
                span.record("kind", event.kind.as_str());
                span.record("event_id", tracing::field::display(&event.event_id));
            },
        );
        let outcome = match dead_lettered {
            None => Outcome::Published,
            Some(err) => {
                tracing::warn!(source = source_name, request_id, reason = err.code(), error = %err, "not normalized: dead-lettering");
                self.metrics
                    .dlq_records
                    .with_label_values(&[source_name, err.code()])
                    .inc();
                Outcome::DeadLettered
            }
        };

        match self.deliverer.deliver(&records).await {
            Ok(Stored::Kafka) => Ok(outcome),
            Ok(Stored::Spool) => Ok(Outcome::Spooled),
            Err(err) => {
                tracing::error!(source = source_name, request_id, error = %err, "not stored: answering 503");
                Err(ApiError::Unavailable {
                    retry_after_secs: self.retry_after_secs,
                    reason: match err {
                        DeliverError::Spool(_) => {
                            "Kafka did not acknowledge in time and the local spool is full"
                        }
                        DeliverError::Kafka(_) => "Kafka did not acknowledge in time",
                    },
                })
            }
        }
    }

    /// Reads the body, refusing early on a declared length over the limit and
    /// stopping as soon as the streamed body passes it. Memory is taken for
    /// bytes that arrived, never for a length the client declared, and
    /// only within the shared budget: past it, 503 at once.
    async fn read_body(
        &self,
        req: &HttpRequest,
        mut body: web::Payload,
    ) -> Result<(web::Bytes, Option<SemaphorePermit<'_>>), ApiError> {
        let limit = self.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let mut bytes = Body::new(&self.body_budget, limit);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            bytes
                .push(chunk)
                .map_err(|OverBudget| ApiError::Overloaded {
                    retry_after_secs: self.retry_after_secs,
                    reason: Overload::BodyBytes,
                })?;
        }
        Ok(bytes.finish())
    }
}

fn copied_headers(req: &HttpRequest) -> impl Iterator<Item = (&'static str, Cow<'_, [u8]>)> + '_ {
    h::COPIED_HEADERS.iter().filter_map(|(name, key)| {
        req.headers()
            .get(*name)
            .map(|v| (*key, Cow::Borrowed(v.as_bytes())))
    })
}
