//! `callstream-analytics`: call-centre KPIs from `callstream.events.unique.v1`,
//! rolled up into PostgreSQL (`kpi_rollups`, migration `V3__analytics.sql`)
//! per tenant × interval (1 and 15 minutes) × provider × direction, for the
//! whole centre, per agent and per external-facing number (views
//! `kpi_by_interval`, `kpi_by_agent`, `kpi_by_number`, with rates).
//!
//! Guarantee: every call is counted exactly once, in the merge of its
//! events' newest contents ([`calls`]: two Xarios triggers, an Onoff CDR and
//! its voicemail update, a TeleCMI step and its CDR are one call each), and
//! every event that names no call (SMS) once, in its newest content.
//! The rollups change in the transaction that stores the partition
//! positions ([`crate::pg_sink`]), so a crash or a replay never applies a
//! batch twice. Independently of Kafka positions, `kpi_events` keeps what
//! each `event_id` contributed and from which content (revision,
//! `received_at`, fingerprint): a resend (even one the dedup window let
//! through again) or an older revision changes nothing, and newer content
//! (received later, then a higher revision: [`crate::unique::content_order`],
//! so an update after the window counts too) first takes the old
//! contribution back, then adds its own, so an update that changes the
//! status or the times moves the counts.
//!
//! Counting rules, per event that names no call (`kpi_events`) and per
//! merged call (`kpi_calls`, [`Counters::of_call`]):
//!
//! * bucket: the event's own time, `started_at`, else `received_at`, floored
//!   to the interval; a late event lands in its own interval, not "now".
//! * calls are kinds `call`, `recording` and `voicemail` (Onoff sends a
//!   `recording` *instead of* the call's CDR, so it is the call). Each is
//!   one call offered, and exactly one of: answered (status `answered`), to
//!   voicemail (status or kind `voicemail`), or missed (anything else:
//!   `missed`, `busy`, `failed`, `unknown`). "Offered" means every call of
//!   the row's direction: inbound rows are calls offered to the centre,
//!   outbound rows are calls placed.
//! * talk time: answered calls only, `talk_seconds`, else `duration_seconds`
//!   (Onoff reports only the duration); ring time: every call that reports
//!   `ring_seconds`. Averages divide by the counts of calls that had one.
//! * the agent leg of a TeleCMI click-to-call (leg `a`, outbound, no customer
//!   on it) is the platform ringing the agent's own phone before leg `b`
//!   dials the customer: not a call of its own, not counted.
//! * `sms`: sent (outbound) or received (inbound); other directions are
//!   stored but count nowhere. `call_progress` (live steps) is not counted.
//! * agent: the internal party's id, else email, else number, else name.
//!   External-facing number: the internal party's number, i.e. the Onoff
//!   user's number or the TeleCMI virtual number the customer dialled; Xarios
//!   events carry no DID, so there it is the agent's extension. Events
//!   without one count for the whole centre only.
//!
//! Prometheus counters carry bounded labels only (tenant, provider,
//! direction, status), never an agent or a number. Tenants come from
//! payloads, so the `tenant` label names only the tenants configured in
//! `analytics.metric_tenants` and the gateway's `default`; every other
//! tenant counts as [`OTHER_TENANTS`] (the tables keep every tenant). They
//! count first countings after commit; a counter cannot go down, so an
//! update that changes a status moves the tables but not the counters.
//!
//! What would break it: changing these rules without rebuilding the tables
//! (old events keep their old contributions), or writing the tables outside
//! the transaction the sink hands over.

use std::collections::HashSet;

use prometheus::{CounterVec, IntCounter, IntCounterVec, Opts, Registry};
use tokio_postgres::Transaction;
use uuid::Uuid;

use callstream_schemas::call::call_key;

use crate::pg_sink::PgWriter;
use crate::unique::latest_revisions;
use callstream_kafka::wire::UniqueEvent;

mod calls;
mod rules;
mod settings;
mod tables;

pub use rules::{agent_of, bucket_start, number_of, Counters, INTERVALS_MINUTES};
pub use settings::AnalyticsSettings;

use rules::Contribution;
use tables::{Counted, Rollup, Statements};

/// The `tenant` label of every tenant not named in
/// `analytics.metric_tenants`.
pub(crate) const OTHER_TENANTS: &str = "other";

/// The tenants that keep their own `tenant` label.
struct TenantLabels(HashSet<String>);

impl TenantLabels {
    fn new(metric_tenants: &[String]) -> TenantLabels {
        let default = callstream_schemas::DEFAULT_TENANT.to_string();
        TenantLabels(metric_tenants.iter().cloned().chain([default]).collect())
    }

    fn label<'a>(&self, tenant: &'a str) -> &'a str {
        if self.0.contains(tenant) {
            tenant
        } else {
            OTHER_TENANTS
        }
    }
}

/// Live counters for operations; bounded labels only.
struct LiveMetrics {
    events: IntCounterVec,
    talk_seconds: CounterVec,
    recounted: IntCounter,
    tenants: TenantLabels,
}

/// A first counting, for the live counters.
struct FirstCount {
    labels: [String; 4],
    talk_seconds: f64,
}

/// Metric changes of a batch, applied once it commits.
#[derive(Default)]
pub struct Pending {
    counted: Vec<FirstCount>,
    recounted: u64,
}

impl Pending {
    /// `new` counted for the first time (if it counts for anything), for
    /// the live counters.
    fn first_count(&mut self, new: &Contribution) {
        if !new.counters.is_zero() {
            self.counted.push(FirstCount {
                labels: [
                    new.tenant.clone(),
                    new.provider.clone(),
                    new.direction.clone(),
                    new.status.clone(),
                ],
                talk_seconds: new.counters.talk_seconds_sum,
            });
        }
    }
}

/// The analytics [`PgWriter`].
pub struct AnalyticsWriter {
    statements: Statements,
    metrics: LiveMetrics,
}

impl AnalyticsWriter {
    /// `metric_tenants`: `analytics.metric_tenants`, the tenants the live
    /// metrics name (every other one is [`OTHER_TENANTS`]).
    pub fn new(
        registry: &Registry,
        metric_tenants: &[String],
    ) -> prometheus::Result<AnalyticsWriter> {
        let events = IntCounterVec::new(
            Opts::new(
                "callstream_analytics_events_counted_total",
                "Calls and SMS counted into the KPI tables, by the status they were first counted with.",
            ),
            &["tenant", "provider", "direction", "status"],
        )?;
        let talk_seconds = CounterVec::new(
            Opts::new(
                "callstream_analytics_talk_seconds_total",
                "Talk time of the answered calls counted.",
            ),
            &["tenant", "provider", "direction"],
        )?;
        let recounted = IntCounter::with_opts(Opts::new(
            "callstream_analytics_recounted_events_total",
            "Updates (newer revisions) that changed what an event counts for.",
        ))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(talk_seconds.clone()))?;
        registry.register(Box::new(recounted.clone()))?;
        Ok(AnalyticsWriter {
            statements: Statements::default(),
            metrics: LiveMetrics {
                events,
                talk_seconds,
                recounted,
                tenants: TenantLabels::new(metric_tenants),
            },
        })
    }
}

impl PgWriter for AnalyticsWriter {
    /// Every partition adds into the same KPI rows: one connection.
    const PARTITION_PARALLEL: bool = false;

    type Applied = Pending;

    async fn write<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        batch: &'a [UniqueEvent],
    ) -> Result<Pending, tokio_postgres::Error> {
        let latest = latest_revisions(batch);
        let ids: Vec<Uuid> = latest.iter().map(|r| r.event.event_id).collect();
        let before = self.statements.load_counted(tx, &ids).await?;
        let mut rollup = Rollup::default();
        let mut counted = Vec::new();
        let mut pending = Pending::default();
        // Events of a call count as their call (`calls`); an event counted
        // on its own before calls were (migration V8) is taken back first.
        let mut of_calls = Vec::new();
        let mut forget = Vec::new();
        let mut singles = Vec::new();
        for record in latest {
            match call_key(&record.event) {
                Some(key) => {
                    if let Some(counted) = before.get(&record.event.event_id) {
                        rollup.add(&counted.contribution, -1);
                        forget.push(record.event.event_id);
                    }
                    of_calls.push((key, record));
                }
                None => singles.push(record),
            }
        }
        self.statements.forget_events(tx, &forget).await?;
        calls::count(&self.statements, tx, of_calls, &mut rollup, &mut pending).await?;
        for record in singles {
            let mut new = Contribution::of(&record.event);
            match before.get(&record.event.event_id) {
                Some(counted) if !counted.is_replaced_by(record) => continue,
                Some(counted) => {
                    let old = &counted.contribution;
                    // Without a time of its own an event stays in the
                    // interval it was first counted in: an update (notes
                    // added later) is not a call at the update's time.
                    if record.event.started_at.is_none() {
                        new.event_at = old.event_at;
                    }
                    if *old != new {
                        rollup.add(old, -1);
                        rollup.add(&new, 1);
                        pending.recounted += 1;
                    }
                }
                None => {
                    rollup.add(&new, 1);
                    pending.first_count(&new);
                }
            }
            counted.push((
                record.event.event_id,
                Counted {
                    revision: record.revision,
                    received_at: Some(record.event.received_at),
                    fingerprint: Some(record.event.fingerprint.clone()),
                    contribution: new,
                },
            ));
        }
        self.statements.apply(tx, &rollup).await?;
        self.statements.store_counted(tx, &counted).await?;
        Ok(pending)
    }

    fn committed(&self, pending: Pending) {
        for first in &pending.counted {
            let [tenant, provider, direction, status] = &first.labels;
            let tenant = self.metrics.tenants.label(tenant);
            self.metrics
                .events
                .with_label_values(&[tenant, provider, direction, status])
                .inc();
            if first.talk_seconds > 0.0 {
                self.metrics
                    .talk_seconds
                    .with_label_values(&[tenant, provider, direction])
                    .inc_by(first.talk_seconds);
            }
        }
        self.metrics.recounted.inc_by(pending.recounted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_tenants_and_the_default_keep_their_label() {
        let labels = TenantLabels::new(&["acme".to_string()]);
        assert_eq!(labels.label("acme"), "acme");
        assert_eq!(labels.label("default"), "default");
        assert_eq!(labels.label("globex"), OTHER_TENANTS);
        assert_eq!(labels.label("Acme"), OTHER_TENANTS);
        assert_eq!(labels.label(""), OTHER_TENANTS);
    }
}
