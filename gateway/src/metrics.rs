//! Prometheus metrics of the gateway. Labels come from small bounded sets
//! only (source, outcome, topic label, error kind): never an id, a number,
//! a key or a raw error message.

use callstream_kafka::publish::PublishMetrics;
use callstream_schemas::NormalizeError;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
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
    /// Kafka did not acknowledge in time; written to the local spool (200).
    Spooled,
    /// Kafka did not acknowledge in time and the spool could not take it (503).
    Unavailable,
    /// Over the in-flight limit (503).
    Overloaded,
    /// The client sent a body we could not read.
    BadRequest,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Published,
        Outcome::DeadLettered,
        Outcome::Unauthorized,
        Outcome::TooLarge,
        Outcome::Spooled,
        Outcome::Unavailable,
        Outcome::Overloaded,
        Outcome::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Unauthorized => "unauthorized",
            Outcome::TooLarge => "too_large",
            Outcome::Spooled => "spooled",
            Outcome::Unavailable => "unavailable",
            Outcome::Overloaded => "overloaded",
            Outcome::BadRequest => "bad_request",
        }
    }
}

/// A source's request metrics (see [`Metrics::source`]).
#[derive(Clone)]
pub struct SourceMetrics {
    /// Indexed like [`Outcome::ALL`].
    requests: [IntCounter; Outcome::ALL.len()],
    pub request_duration: Histogram,
    pub(crate) auth_failures: IntCounter,
}

impl SourceMetrics {
    pub fn request(&self, outcome: Outcome) -> &IntCounter {
        &self.requests[outcome as usize]
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub(crate) in_flight: IntGauge,
    pub(crate) body_bytes_held: IntGauge,
    pub(crate) auth_failures: IntCounterVec,
    pub(crate) dlq_records: IntCounterVec,
    /// Kafka's answers to the publisher, by topic.
    pub publish: PublishMetrics,
    pub(crate) embedded_broker_discarded: IntCounterVec,
    pub(crate) spool_records: IntGauge,
    pub(crate) spool_bytes: IntGauge,
    pub(crate) spool_oldest_age: Gauge,
    pub(crate) spool_appended: IntCounter,
    pub(crate) spool_drained: IntCounter,
    pub(crate) spool_corrupt: IntCounter,
    pub(crate) spool_lost: IntCounter,
    pub(crate) spool_quarantined_bytes: IntCounter,
    pub(crate) spool_unreadable: IntCounter,
    pub(crate) spool_set_aside: IntCounter,
    pub(crate) spool_undeleted: IntGauge,
    pub(crate) kafka_degraded: IntGauge,
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
        let publish = PublishMetrics::register(&registry, "gateway").expect("unique metrics");
        let embedded_broker_discarded = counter(
            "callstream_gateway_embedded_broker_discarded_records_total",
            "Records the embedded broker discarded to stay within its memory bound, by topic (only with the embedded broker).",
            &["topic"],
        );
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let in_flight = int_gauge(
            "callstream_gateway_requests_in_flight",
            "Webhook requests being processed.",
        );
        let body_bytes_held = int_gauge(
            "callstream_gateway_body_bytes_held",
            "Request body bytes held in memory, against max_buffered_body_bytes.",
        );
        let spool_records = int_gauge(
            "callstream_gateway_spool_records",
            "Deliveries waiting in the local spool for Kafka.",
        );
        let spool_bytes = int_gauge(
            "callstream_gateway_spool_bytes",
            "Bytes in the local spool.",
        );
        let spool_oldest_age = Gauge::new(
            "callstream_gateway_spool_oldest_age_seconds",
            "Age of the oldest delivery waiting in the spool (0 when empty).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(spool_oldest_age.clone()))
            .expect("unique metric");
        let spool_appended = plain_counter(
            "callstream_gateway_spool_appended_records_total",
            "Deliveries written to the spool because Kafka did not acknowledge in time.",
        );
        let spool_drained = plain_counter(
            "callstream_gateway_spool_drained_records_total",
            "Spooled deliveries acknowledged by Kafka (the drain rate).",
        );
        let spool_corrupt = plain_counter(
            "callstream_gateway_spool_corrupt_records_total",
            "Damaged spool segments found (torn writes, disk damage); their intact deliveries are replayed.",
        );
        let spool_lost = plain_counter(
            "callstream_gateway_spool_lost_deliveries_total",
            "Spooled deliveries whose own bytes were damaged (a torn last write, never acknowledged, counts too).",
        );
        let spool_quarantined_bytes = plain_counter(
            "callstream_gateway_spool_quarantined_bytes_total",
            "Damaged spool bytes copied to <spool.dir>/quarantine/.",
        );
        let spool_unreadable = plain_counter(
            "callstream_gateway_spool_unreadable_entries_total",
            "Spool entries that could not be read (I/O error, a directory in a segment's name) or whose damage could not be quarantined; skipped.",
        );
        let spool_set_aside = plain_counter(
            "callstream_gateway_spool_set_aside_records_total",
            "Spooled deliveries Kafka refused as records (too large, invalid), moved to the spool's rejected/ directory.",
        );
        let spool_undeleted = int_gauge(
            "callstream_gateway_spool_undeleted_segments",
            "Drained spool segments whose file could be neither deleted nor emptied: a restart would publish their deliveries again.",
        );
        let kafka_degraded = int_gauge(
            "callstream_gateway_kafka_degraded",
            "1 while Kafka is failing and new deliveries go to the spool.",
        );
        Metrics {
            registry,
            requests,
            request_duration,
            in_flight,
            body_bytes_held,
            auth_failures,
            dlq_records,
            publish,
            embedded_broker_discarded,
            spool_records,
            spool_bytes,
            spool_oldest_age,
            spool_appended,
            spool_drained,
            spool_corrupt,
            spool_lost,
            spool_quarantined_bytes,
            spool_unreadable,
            spool_set_aside,
            spool_undeleted,
            kafka_degraded,
        }
    }

    /// One source's request series, resolved once so the request path does
    /// no label look-up; resolving them makes them exist at 0.
    pub fn source(&self, source: &str) -> SourceMetrics {
        SourceMetrics {
            requests: Outcome::ALL
                .map(|outcome| self.requests.with_label_values(&[source, outcome.as_str()])),
            request_duration: self.request_duration.with_label_values(&[source]),
            auth_failures: self.auth_failures.with_label_values(&[source]),
        }
    }

    /// Creates the labelled series that no [`SourceMetrics`] holds (DLQ
    /// reasons per source, publishing per topic) at 0, so that dashboards
    /// and alerts (`rate()`, `increase()`, "absent") see a series before its
    /// first event: a first 503 or DLQ record then shows as an increase
    /// instead of a new series. Each source's request series exist once its
    /// routes resolved them with [`Metrics::source`].
    pub fn prepare<'a>(&self, sources: impl IntoIterator<Item = &'a str>) {
        for source in sources {
            for reason in NormalizeError::CODES {
                self.dlq_records.with_label_values(&[source, reason]);
            }
        }
        self.publish.prepare(&crate::PUBLISHED_TOPICS);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_counts_each_outcome_in_its_own_series() {
        let metrics = Metrics::new();
        let onoff = metrics.source("onoff");
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                onoff.request(outcome).inc();
            }
        }
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            let series = metrics
                .requests
                .with_label_values(&["onoff", outcome.as_str()]);
            assert_eq!(series.get(), i as u64 + 1, "{outcome:?}");
        }
    }
}
