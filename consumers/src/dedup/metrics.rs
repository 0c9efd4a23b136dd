//! `callstream_dedup_*`, and the tally of a transaction, counted once it
//! committed.

use prometheus::{Gauge, IntCounter, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct DedupMetrics {
    pub consumed: IntCounter,
    pub forwarded: IntCounter,
    pub duplicates: IntCounter,
    pub updates: IntCounter,
    pub undecodable: IntCounter,
    pub evicted: IntCounter,
    pub aborted: IntCounter,
    pub state_size: IntGauge,
    pub restore_seconds: Gauge,
    pub lag: IntGauge,
}

impl DedupMetrics {
    pub fn new(registry: &Registry) -> DedupMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(format!("callstream_dedup_{name}"), help))
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(format!("callstream_dedup_{name}"), help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let restore_seconds = Gauge::new(
            "callstream_dedup_restore_duration_seconds",
            "Time the last state restore (partition assignment) took.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(restore_seconds.clone()))
            .expect("unique metric");
        DedupMetrics {
            consumed: counter("consumed_records_total", "Events read."),
            forwarded: counter(
                "forwarded_records_total",
                "Events written to the unique topic (new and updates).",
            ),
            duplicates: counter("duplicates_dropped_total", "Exact resends dropped."),
            updates: counter(
                "updates_forwarded_total",
                "Updates (new content for a known identity) forwarded.",
            ),
            undecodable: counter(
                "undecodable_records_total",
                "Records skipped: not a normalized event.",
            ),
            evicted: counter(
                "evicted_identities_total",
                "Identities forgotten after the window.",
            ),
            aborted: counter(
                "aborted_transactions_total",
                "Transactions aborted and replayed.",
            ),
            state_size: gauge(
                "state_identities",
                "Identities remembered in assigned partitions.",
            ),
            restore_seconds,
            lag: gauge(
                "lag_records",
                "Records between this consumer's position and the end of its partitions.",
            ),
        }
    }
}

/// Counts of one batch, added to the metrics once it commits.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) consumed: u64,
    pub(super) forwarded: u64,
    pub(super) duplicates: u64,
    pub(super) updates: u64,
    pub(super) undecodable: u64,
    pub(super) evicted: u64,
}

impl Tally {
    /// `consumed` last: whoever sees it grow sees the outcomes that add up to it.
    pub(super) fn record(&self, m: &DedupMetrics) {
        m.forwarded.inc_by(self.forwarded);
        m.duplicates.inc_by(self.duplicates);
        m.updates.inc_by(self.updates);
        m.undecodable.inc_by(self.undecodable);
        m.evicted.inc_by(self.evicted);
        m.consumed.inc_by(self.consumed);
    }
}
