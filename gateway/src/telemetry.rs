//! The root span of each webhook request; the subscriber itself is
//! `callstream_runtime::telemetry`'s, shared with every binary.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// Root span per request: method, path (no query: it may carry a token),
/// request id, then source, event kind and id once normalized, and the
/// status when the answer goes out. The span is `debug`: at the default
/// level nothing per request is formatted (a JSON line and span per request
/// cost ~35 % of the gateway's CPU at full load, BENCHMARKS.md). Refusals
/// and failures are still logged, with the request id, method and path;
/// successful deliveries are counted in metrics and carry their request id
/// on their Kafka records. `RUST_LOG=info,callstream_gateway::telemetry=debug`
/// logs every request.
pub(crate) struct RedactingRootSpan;

impl RootSpanBuilder for RedactingRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request.extensions().get::<RequestId>().copied();
        tracing::debug_span!(
            "request",
            request_id = %request_id.map(|id| id.to_string()).unwrap_or_default(),
            method = %request.method(),
            path = %request.path(),
            status = tracing::field::Empty,
            source = tracing::field::Empty,
            kind = tracing::field::Empty,
            event_id = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, request) = match outcome {
            Ok(response) => (response.status().as_u16(), Some(response.request())),
            Err(error) => (error.as_response_error().status_code().as_u16(), None),
        };
        span.record("status", status);
        let _entered = span.enter();
        if status < 400 {
            tracing::debug!(status, "request done");
            return;
        }
        let request_id = request
            .and_then(|r| r.extensions().get::<RequestId>().map(|id| id.to_string()))
            .unwrap_or_default();
        let method = request.map(|r| r.method().to_string()).unwrap_or_default();
        let path = request.map(|r| r.path().to_string()).unwrap_or_default();
        if status >= 500 {
            tracing::warn!(status, request_id, method, path, "request failed");
        } else {
            tracing::info!(status, request_id, method, path, "request refused");
        }
    }
}
