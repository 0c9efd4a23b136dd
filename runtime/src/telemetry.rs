//! Logging: JSON lines in production, readable text on a terminal. Every line
//! logged while serving a request carries its `request_id` (the same id that
//! is stored on the raw Kafka record). Bodies, keys and query strings (which
//! may hold `?token=`) are never logged.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stdout. `RUST_LOG` overrides
/// the default `info`.
pub fn init(format: LogFormat) {
    init_with(format, std::io::stdout, std::io::stdout().is_terminal());
}

/// As [`init`], writing to stderr: for tools whose stdout is their output
/// (`callstream-replay`'s report).
pub fn init_stderr(format: LogFormat) {
    init_with(format, std::io::stderr, std::io::stderr().is_terminal());
}

fn init_with<W>(format: LogFormat, writer: W, terminal: bool)
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let client_faults = ClientFaults::from_env();
    // try_init: tests may install a subscriber more than once per process.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .finish()
            .with(client_faults)
            .try_init()
    } else {
        builder.finish().with(client_faults).try_init()
    };
}

/// actix-http answers a request it cannot parse itself (a malformed
/// request line or header: 400; a head over 128 KiB: 431), before any
/// request reaches the gateway, and logs `stream error: …` at ERROR; it
/// does the same when a client goes away or dawdles mid-request. Anyone
/// can cause those, and at ERROR they would let anyone flood the log and
/// page whoever watches for errors. This layer drops them unless `RUST_LOG`
/// enables DEBUG for `actix_http` (`RUST_LOG=info,actix_http=debug`; they
/// still read ERROR then). Stream errors that are the server's own (a
/// response body or the service failing) stay at ERROR.
struct ClientFaults {
    shown: bool,
}

/// Where actix-http logs the end of a connection, and the causes a client
/// can bring about (`actix_http::error::DispatchError`'s texts).
const DISPATCHER: &str = "actix_http::h1::dispatcher";
const CLIENT_STREAM_ERRORS: [&str; 5] = [
    "stream error: request parse error",
    "stream error: I/O error",
    "stream error: request did not complete within the specified timeout",
    "stream error: connection shutdown timeout",
    "stream error: handler dropped payload before reading EOF",
];

impl ClientFaults {
    fn from_env() -> ClientFaults {
        let shown = std::env::var("RUST_LOG")
            .ok()
            .and_then(|filter| filter.parse::<tracing_subscriber::filter::Targets>().ok())
            .is_some_and(|targets| targets.would_enable(DISPATCHER, &tracing::Level::DEBUG));
        ClientFaults { shown }
    }
}

fn is_client_fault(event: &tracing::Event<'_>) -> bool {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    let meta = event.metadata();
    if meta.target() != DISPATCHER || *meta.level() != tracing::Level::ERROR {
        return false;
    }
    let mut message = Message(String::new());
    event.record(&mut message);
    CLIENT_STREAM_ERRORS
        .iter()
        .any(|cause| message.0.starts_with(cause))
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientFaults {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.shown || !is_client_fault(event)
    }
}
