//! Prometheus metrics of the gateway. Labels come from small bounded sets
//! only (source, outcome, topic label, error kind): never an id, a number,
//! a key or a raw error message.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Answers that a request can end with; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Normalized and published.
    Published,
    /// Could not be normalized; published to the DLQ (still 200).
    DeadLettered,
    Unauthorized,
    TooLarge,
    /// Kafka did not acknowledge in time (503).
    Unavailable,
    /// The client sent a body we could not read.
    BadRequest,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
            Outcome::BadRequest => "bad_request",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub auth_failures: IntCounterVec,
    pub dlq_records: IntCounterVec,
    pub produce_duration: HistogramVec,
    pub produce_errors: IntCounterVec,
    pub records_published: IntCounterVec,
}

/// Latency buckets in seconds, dense below 10 ms where the gateway should live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let requests = counter(
            "callstream_gateway_requests_total",
            "Webhook requests by source and outcome.",
            &["source", "outcome"],
        );
        let request_duration = histogram(
            "callstream_gateway_request_duration_seconds",
            "Time from request start to answer, by source.",
            &["source"],
        );
        let auth_failures = counter(
            "callstream_gateway_auth_failures_total",
            "Requests refused for a missing or wrong key.",
            &["source"],
        );
        let dlq_records = counter(
            "callstream_gateway_dlq_records_total",
            "Deliveries that could not be normalized and went to the DLQ, by reason.",
            &["source", "reason"],
        );
        let produce_duration = histogram(
            "callstream_gateway_kafka_produce_duration_seconds",
            "Time for Kafka to acknowledge one record, by topic.",
            &["topic"],
        );
        let produce_errors = counter(
            "callstream_gateway_kafka_produce_errors_total",
            "Records Kafka did not acknowledge, by topic and kind (timeout, retriable, fatal).",
            &["topic", "kind"],
        );
        let records_published = counter(
            "callstream_gateway_records_published_total",
            "Records acknowledged by Kafka, by topic.",
            &["topic"],
        );
        let in_flight = IntGauge::new(
            "callstream_gateway_requests_in_flight",
            "Webhook requests being processed.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            requests,
            request_duration,
            in_flight,
            auth_failures,
            dlq_records,
            produce_duration,
            produce_errors,
            records_published,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
