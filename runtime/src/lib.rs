//! What every callstream binary shares, so none of them depends on
//! another's internals: layered settings and their errors ([`config`]),
//! logging ([`telemetry`]), the `/metrics` and `/healthz` endpoint
//! ([`server`]), one shutdown signal ([`shutdown`]) and back-off
//! ([`backoff`]).

pub mod backoff;
pub mod config;
pub mod server;
pub mod shutdown;
pub mod telemetry;

/// An error and all its causes on one line, `outer: cause: root`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
