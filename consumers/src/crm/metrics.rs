//! `callstream_crm_*` metrics. Labels come from small bounded sets: the
//! configured target names and fixed outcomes; never an event id, a number
//! or an error message.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// What happened to an event, for `callstream_crm_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    Delivered,
    DeadLettered,
    /// A kind the target does not take: committed without a request.
    Skipped,
}

impl EventOutcome {
    const ALL: [EventOutcome; 3] = [
        EventOutcome::Delivered,
        EventOutcome::DeadLettered,
        EventOutcome::Skipped,
    ];

    fn label(self) -> &'static str {
        match self {
            EventOutcome::Delivered => "delivered",
            EventOutcome::DeadLettered => "dead_lettered",
            EventOutcome::Skipped => "skipped",
        }
    }
}

/// Outcomes of one HTTP attempt, for `callstream_crm_requests_total`.
pub(crate) const REQUEST_OUTCOMES: [&str; 8] = [
    "success",
    "rate_limited",
    "server_error",
    "unauthorized",
    "client_error",
    "timeout",
    "connect_error",
    "transport_error",
];

/// The metric families, registered once per process.
pub(crate) struct CrmMetrics {
    events: IntCounterVec,
    requests: IntCounterVec,
    retries: IntCounterVec,
    rate_limit_waits: IntCounterVec,
    dlq_produce_errors: IntCounterVec,
    request_duration: HistogramVec,
    lag: IntGaugeVec,
}

/// The metrics of one target, its label already applied.
#[derive(Clone)]
pub(crate) struct TargetMetrics {
    target: String,
    events: IntCounterVec,
    requests: IntCounterVec,
    pub retries: IntCounter,
    pub(crate) rate_limit_waits: IntCounter,
    pub(crate) dlq_produce_errors: IntCounter,
    pub request_duration: Histogram,
    lag: IntGaugeVec,
}

impl CrmMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<CrmMetrics> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let c = IntCounterVec::new(Opts::new(format!("callstream_crm_{name}"), help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "callstream_crm_request_duration_seconds",
                "Time of one HTTP attempt to a CRM, until its answer or failure.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["target"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "callstream_crm_lag_records",
                "Records between the target's committed offsets and the end of its \
                 partitions (asked of the brokers every 2 s), per input topic: \
                 events, calls, recordings.",
            ),
            &["target", "input"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        Ok(CrmMetrics {
            events: counter(
                "events_total",
                "Events finished by a target: delivered, dead-lettered, or skipped (kind not delivered).",
                &["target", "outcome"],
            )?,
            requests: counter(
                "requests_total",
                "HTTP attempts by outcome.",
                &["target", "outcome"],
            )?,
            retries: counter(
                "retries_total",
                "Attempts scheduled again after a retriable failure.",
                &["target"],
            )?,
            rate_limit_waits: counter(
                "rate_limit_waits_total",
                "Requests that waited for the target's rate limit.",
                &["target"],
            )?,
            dlq_produce_errors: counter(
                "dlq_produce_errors_total",
                "Dead letters Kafka did not acknowledge (retried until it does).",
                &["target"],
            )?,
            request_duration,
            lag,
        })
    }

    /// The target's children, every outcome present from the start at 0.
    pub fn target(&self, target: &str) -> TargetMetrics {
        for outcome in EventOutcome::ALL {
            self.events.with_label_values(&[target, outcome.label()]);
        }
        for outcome in REQUEST_OUTCOMES {
            self.requests.with_label_values(&[target, outcome]);
        }
        TargetMetrics {
            target: target.to_string(),
            events: self.events.clone(),
            requests: self.requests.clone(),
            retries: self.retries.with_label_values(&[target]),
            rate_limit_waits: self.rate_limit_waits.with_label_values(&[target]),
            dlq_produce_errors: self.dlq_produce_errors.with_label_values(&[target]),
            request_duration: self.request_duration.with_label_values(&[target]),
            lag: self.lag.clone(),
        }
    }
}

impl TargetMetrics {
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The lag gauge of one of the target's inputs (`events`, `calls`,
    /// `recordings`).
    pub fn lag(&self, input: &str) -> IntGauge {
        self.lag.with_label_values(&[&self.target, input])
    }

    pub fn event(&self, outcome: EventOutcome) {
        self.events
            .with_label_values(&[&self.target, outcome.label()])
            .inc();
    }

    /// `outcome` is one of [`REQUEST_OUTCOMES`].
    pub fn request(&self, outcome: &'static str) {
        self.requests
            .with_label_values(&[&self.target, outcome])
            .inc();
    }
}
