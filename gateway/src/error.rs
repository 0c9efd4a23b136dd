//! Every error answer is a short JSON `{"error": "..."}` a person can act on.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or invalid API key: send it as `Authorization: x-api-key <key>`, `x-api-key: <key>` or `?token=<key>`")]
    Unauthorized,
    #[error("invalid signature ({scheme}): {reason}")]
    BadSignature {
        scheme: &'static str,
        reason: String,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BadRequest(String),
    #[error("request body not received within {timeout_ms} ms")]
    BodyTimeout { timeout_ms: u64 },
    #[error("event not stored: {reason}; retry after {retry_after_secs} s")]
    Unavailable {
        retry_after_secs: u64,
        reason: &'static str,
    },
    #[error("gateway overloaded: {reason}; retry after {retry_after_secs} s")]
    Overloaded {
        retry_after_secs: u64,
        reason: Overload,
    },
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed { method: String, allowed: String },
    // The three below are answered by the HTTP server before a request
    // reaches a handler; `crate::server::answers` gives them these bodies.
    #[error("malformed request: the request line or a header cannot be parsed")]
    MalformedRequest,
    #[error("request headers not received within {timeout_ms} ms")]
    HeadTimeout { timeout_ms: u64 },
    #[error("request head too large: at most 128 KiB and 96 headers")]
    HeadTooLarge,
}

/// Which limit an overloaded gateway hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overload {
    /// `max_in_flight` requests are being processed.
    InFlight,
    /// `max_buffered_body_bytes` of request bodies are held.
    BodyBytes,
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overload::InFlight => "too many requests in flight",
            Overload::BodyBytes => "too many request body bytes held in memory",
        })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::BadSignature { .. } => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) | ApiError::MalformedRequest => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } | ApiError::HeadTimeout { .. } => {
                StatusCode::REQUEST_TIMEOUT
            }
            ApiError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable { .. } | ApiError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(allowed) {
                    response.insert_header((header::ALLOW, value));
                }
            }
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "x-api-key"));
            }
            _ => {}
        }
        response.json(self.body())
    }
}

impl ApiError {
    /// The JSON body of the answer.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string() })
    }
}
