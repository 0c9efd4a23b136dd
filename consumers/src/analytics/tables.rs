//! The KPI tables of `V3__analytics.sql`: what a batch changes in them, and
//! the two statements (from arrays, one each per batch) that change them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use super::rules::{bucket_start, Contribution, Counters, INTERVALS_MINUTES};
use crate::pg::RawJsonb;
use crate::unique::content_order;
use callstream_kafka::wire::UniqueEvent;

/// The additive counters of every KPI table, in column order.
const COUNTER_COLUMNS: [(&str, &str); 10] = [
    ("calls_offered", "bigint"),
    ("calls_answered", "bigint"),
    ("calls_missed", "bigint"),
    ("calls_voicemail", "bigint"),
    ("talk_seconds_sum", "float8"),
    ("talk_count", "bigint"),
    ("ring_seconds_sum", "float8"),
    ("ring_count", "bigint"),
    ("sms_sent", "bigint"),
    ("sms_received", "bigint"),
];

/// Columns of `kpi_events` besides the contribution.
const EVENT_COLUMNS: [(&str, &str); 4] = [
    ("event_id", "uuid"),
    ("revision", "int"),
    ("received_at", "timestamptz"),
    ("fingerprint", "text"),
];

/// Columns of `kpi_calls` besides the contribution.
const CALL_COLUMNS: [(&str, &str); 2] = [("call_key", "text"), ("members", "jsonb")];

/// What a contribution is keyed by, in `kpi_events` and `kpi_calls`,
/// before its counters.
const CONTRIBUTION_COLUMNS: [(&str, &str); 8] = [
    ("tenant", "text"),
    ("provider", "text"),
    ("kind", "text"),
    ("direction", "text"),
    ("status", "text"),
    ("event_at", "timestamptz"),
    ("agent", "text"),
    ("number", "text"),
];

/// A `kpi_rollups` row's key, in primary key order, so every transaction
/// updates rows in the same order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    tenant: String,
    /// `all`, `agent` or `number`.
    dimension: &'static str,
    interval_minutes: i32,
    bucket_start: DateTime<Utc>,
    provider: String,
    direction: String,
    /// The agent or the number; "" for `all`.
    value: String,
}

/// The changes one batch makes to the rollups.
#[derive(Default)]
pub(crate) struct Rollup(BTreeMap<Key, Counters>);

impl Rollup {
    /// Counts `c` (`sign` 1) or takes it back (`sign` -1).
    pub fn add(&mut self, c: &Contribution, sign: i64) {
        if c.counters.is_zero() {
            return;
        }
        let dimensions = [
            ("all", Some("")),
            ("agent", c.agent.as_deref()),
            ("number", c.number.as_deref()),
        ];
        for minutes in INTERVALS_MINUTES {
            for (dimension, value) in dimensions {
                let Some(value) = value else { continue };
                let key = Key {
                    tenant: c.tenant.clone(),
                    dimension,
                    interval_minutes: minutes,
                    bucket_start: bucket_start(c.event_at, minutes),
                    provider: c.provider.clone(),
                    direction: c.direction.clone(),
                    value: value.to_string(),
                };
                self.0.entry(key).or_default().add(&c.counters, sign);
            }
        }
    }
}

/// The counter columns of many rows, one array each.
#[derive(Default)]
struct CounterArrays {
    calls_offered: Vec<i64>,
    calls_answered: Vec<i64>,
    calls_missed: Vec<i64>,
    calls_voicemail: Vec<i64>,
    talk_seconds_sum: Vec<f64>,
    talk_count: Vec<i64>,
    ring_seconds_sum: Vec<f64>,
    ring_count: Vec<i64>,
    sms_sent: Vec<i64>,
    sms_received: Vec<i64>,
}

impl CounterArrays {
    fn push(&mut self, c: &Counters) {
        self.calls_offered.push(c.calls_offered);
        self.calls_answered.push(c.calls_answered);
        self.calls_missed.push(c.calls_missed);
        self.calls_voicemail.push(c.calls_voicemail);
        self.talk_seconds_sum.push(c.talk_seconds_sum);
        self.talk_count.push(c.talk_count);
        self.ring_seconds_sum.push(c.ring_seconds_sum);
        self.ring_count.push(c.ring_count);
        self.sms_sent.push(c.sms_sent);
        self.sms_received.push(c.sms_received);
    }

    /// In [`COUNTER_COLUMNS`] order.
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.calls_offered,
            &self.calls_answered,
            &self.calls_missed,
            &self.calls_voicemail,
            &self.talk_seconds_sum,
            &self.talk_count,
            &self.ring_seconds_sum,
            &self.ring_count,
            &self.sms_sent,
            &self.sms_received,
        ]
    }
}

/// `INSERT INTO table AS t (columns + counters) SELECT * FROM unnest(...)`,
/// numbering the array parameters from 1.
fn insert_from_arrays(table: &str, columns: &[(&str, &str)]) -> String {
    let all: Vec<(&str, &str)> = columns.iter().chain(&COUNTER_COLUMNS).copied().collect();
    insert_all_from_arrays(table, &all)
}

/// Like [`insert_from_arrays`], for a row of `own` columns, then a
/// contribution.
fn insert_contribution(table: &str, own: &[(&str, &str)]) -> String {
    let all: Vec<(&str, &str)> = own
        .iter()
        .chain(&CONTRIBUTION_COLUMNS)
        .chain(&COUNTER_COLUMNS)
        .copied()
        .collect();
    insert_all_from_arrays(table, &all)
}

fn insert_all_from_arrays(table: &str, all: &[(&str, &str)]) -> String {
    let names: Vec<&str> = all.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
        .collect();
    format!(
        "INSERT INTO {table} AS t ({}) SELECT * FROM unnest({})",
        names.join(", "),
        arrays.join(", ")
    )
}

/// Adds deltas to `kpi_rollups`.
fn rollup_sql() -> String {
    let key = [
        ("tenant", "text"),
        ("dimension", "text"),
        ("interval_minutes", "int"),
        ("bucket_start", "timestamptz"),
        ("provider", "text"),
        ("direction", "text"),
        ("dimension_value", "text"),
    ];
    let names: Vec<&str> = key.iter().map(|(name, _)| *name).collect();
    let increments: Vec<String> = COUNTER_COLUMNS
        .iter()
        .map(|(name, _)| format!("{name} = t.{name} + EXCLUDED.{name}"))
        .collect();
    format!(
        "{} ON CONFLICT ({}) DO UPDATE SET {}",
        insert_from_arrays("kpi_rollups", &key),
        names.join(", "),
        increments.join(", ")
    )
}

/// Records contributions in `kpi_events`, replacing only older content
/// (received earlier, then a lower revision; a row counted before
/// `V7__content_age.sql` has no `received_at` and compares by revision).
fn counted_sql() -> String {
    format!(
        "{} ON CONFLICT (event_id) DO UPDATE SET {}, counted_at = now()
         WHERE CASE WHEN t.received_at IS NULL THEN t.revision < EXCLUDED.revision
                    ELSE (t.received_at, t.revision) < (EXCLUDED.received_at, EXCLUDED.revision) END",
        insert_contribution("kpi_events", &EVENT_COLUMNS),
        replace_all(&EVENT_COLUMNS[1..]),
    )
}

/// Records calls in `kpi_calls`; the caller decided the new content wins.
fn calls_sql() -> String {
    format!(
        "{} ON CONFLICT (call_key) DO UPDATE SET {}, counted_at = now()",
        insert_contribution("kpi_calls", &CALL_COLUMNS),
        replace_all(&CALL_COLUMNS[1..]),
    )
}

/// `name = EXCLUDED.name` for `own`, the contribution and the counters.
fn replace_all(own: &[(&str, &str)]) -> String {
    own.iter()
        .chain(&CONTRIBUTION_COLUMNS)
        .chain(&COUNTER_COLUMNS)
        .map(|(name, _)| format!("{name} = EXCLUDED.{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements, built once.
pub(crate) struct Statements {
    rollup: String,
    counted: String,
    calls: String,
}

impl Default for Statements {
    fn default() -> Statements {
        Statements {
            rollup: rollup_sql(),
            counted: counted_sql(),
            calls: calls_sql(),
        }
    }
}

impl Statements {
    /// What `ids` have contributed so far, and which content of each.
    pub(crate) async fn load_counted(
        &self,
        tx: &Transaction<'_>,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Counted>, tokio_postgres::Error> {
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = tx
            .query("SELECT * FROM kpi_events WHERE event_id = ANY($1)", &[&ids])
            .await?;
        for row in rows {
            out.insert(row.try_get("event_id")?, counted_from_row(&row)?);
        }
        Ok(out)
    }

    /// Applies a batch's deltas to the rollups; zero deltas are skipped.
    pub async fn apply(
        &self,
        tx: &Transaction<'_>,
        rollup: &Rollup,
    ) -> Result<(), tokio_postgres::Error> {
        let mut tenant = Vec::new();
        let mut dimension = Vec::new();
        let mut interval = Vec::new();
        let mut bucket = Vec::new();
        let mut provider = Vec::new();
        let mut direction = Vec::new();
        let mut value = Vec::new();
        let mut counters = CounterArrays::default();
        for (key, delta) in rollup.0.iter().filter(|(_, delta)| !delta.is_zero()) {
            tenant.push(key.tenant.as_str());
            dimension.push(key.dimension);
            interval.push(key.interval_minutes);
            bucket.push(key.bucket_start);
            provider.push(key.provider.as_str());
            direction.push(key.direction.as_str());
            value.push(key.value.as_str());
            counters.push(delta);
        }
        if tenant.is_empty() {
            return Ok(());
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &tenant, &dimension, &interval, &bucket, &provider, &direction, &value,
        ];
        params.extend(counters.params());
        tx.execute(self.rollup.as_str(), &params).await?;
        Ok(())
    }

    /// Records what each event now contributes, and from which content.
    pub(crate) async fn store_counted(
        &self,
        tx: &Transaction<'_>,
        counted: &[(Uuid, Counted)],
    ) -> Result<(), tokio_postgres::Error> {
        if counted.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = counted.iter().map(|(id, _)| *id).collect();
        let revisions: Vec<i32> = counted.iter().map(|(_, c)| c.revision).collect();
        let received: Vec<Option<DateTime<Utc>>> =
            counted.iter().map(|(_, c)| c.received_at).collect();
        let fingerprints: Vec<Option<&str>> = counted
            .iter()
            .map(|(_, c)| c.fingerprint.as_deref())
            .collect();
        let contributions = ContributionArrays::of(counted.iter().map(|(_, c)| &c.contribution));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids, &revisions, &received, &fingerprints];
        params.extend(contributions.params());
        tx.execute(self.counted.as_str(), &params).await?;
        Ok(())
    }

    /// Forgets what `ids` contributed as events: counted before calls were
    /// (migration V8), they count as their call's now.
    pub(crate) async fn forget_events(
        &self,
        tx: &Transaction<'_>,
        ids: &[Uuid],
    ) -> Result<(), tokio_postgres::Error> {
        if !ids.is_empty() {
            tx.execute("DELETE FROM kpi_events WHERE event_id = ANY($1)", &[&ids])
                .await?;
        }
        Ok(())
    }

    /// The events and contribution `kpi_calls` holds for each of `keys`.
    pub(crate) async fn load_calls(
        &self,
        tx: &Transaction<'_>,
        keys: &[&str],
    ) -> Result<HashMap<String, (String, Contribution)>, tokio_postgres::Error> {
        let mut out = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let rows = tx
            .query(
                "SELECT *, members::text AS members_json FROM kpi_calls WHERE call_key = ANY($1)",
                &[&keys],
            )
            .await?;
        for row in rows {
            out.insert(
                row.try_get("call_key")?,
                (row.try_get("members_json")?, contribution_from_row(&row)?),
            );
        }
        Ok(out)
    }

    /// Records each call's events (JSON bytes) and what it now contributes.
    pub(crate) async fn store_calls(
        &self,
        tx: &Transaction<'_>,
        calls: &[(String, Vec<u8>, Contribution)],
    ) -> Result<(), tokio_postgres::Error> {
        if calls.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = calls.iter().map(|(k, _, _)| k.as_str()).collect();
        let members: Vec<RawJsonb<'_>> = calls.iter().map(|(_, m, _)| RawJsonb(m)).collect();
        let contributions = ContributionArrays::of(calls.iter().map(|(_, _, c)| c));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys, &members];
        params.extend(contributions.params());
        tx.execute(self.calls.as_str(), &params).await?;
        Ok(())
    }
}

/// The columns of many contributions, one array each, in
/// [`CONTRIBUTION_COLUMNS`] then [`COUNTER_COLUMNS`] order.
struct ContributionArrays<'a> {
    tenant: Vec<&'a str>,
    provider: Vec<&'a str>,
    kind: Vec<&'a str>,
    direction: Vec<&'a str>,
    status: Vec<&'a str>,
    event_at: Vec<DateTime<Utc>>,
    agent: Vec<Option<&'a str>>,
    number: Vec<Option<&'a str>>,
    counters: CounterArrays,
}

impl<'a> ContributionArrays<'a> {
    fn of(contributions: impl Iterator<Item = &'a Contribution>) -> ContributionArrays<'a> {
        let mut a = ContributionArrays {
            tenant: Vec::new(),
            provider: Vec::new(),
            kind: Vec::new(),
            direction: Vec::new(),
            status: Vec::new(),
            event_at: Vec::new(),
            agent: Vec::new(),
            number: Vec::new(),
            counters: CounterArrays::default(),
        };
        for c in contributions {
            a.tenant.push(&c.tenant);
            a.provider.push(&c.provider);
            a.kind.push(&c.kind);
            a.direction.push(&c.direction);
            a.status.push(&c.status);
            a.event_at.push(c.event_at);
            a.agent.push(c.agent.as_deref());
            a.number.push(c.number.as_deref());
            a.counters.push(&c.counters);
        }
        a
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.tenant,
            &self.provider,
            &self.kind,
            &self.direction,
            &self.status,
            &self.event_at,
            &self.agent,
            &self.number,
        ];
        params.extend(self.counters.params());
        params
    }
}

/// What `kpi_events` holds for one event: the content counted (its
/// revision, and its `received_at` and fingerprint, absent on rows counted
/// before `V7__content_age.sql`) and what it contributes.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    pub revision: i32,
    pub received_at: Option<DateTime<Utc>>,
    pub fingerprint: Option<String>,
    pub contribution: Contribution,
}

impl Counted {
    /// Whether `record` is newer content than this ([`content_order`]:
    /// received later, then a higher revision (by revision alone for a row without
    /// `received_at`). The same content again (an exact resend, even after
    /// dedup's window) never is.
    pub fn is_replaced_by(&self, record: &UniqueEvent) -> bool {
        if self.fingerprint.as_deref() == Some(record.event.fingerprint.as_str()) {
            return false;
        }
        match self.received_at {
            None => self.revision < record.revision,
            Some(at) => (at, self.revision) < content_order(record),
        }
    }
}

/// A `kpi_events` row.
fn counted_from_row(row: &Row) -> Result<Counted, tokio_postgres::Error> {
    Ok(Counted {
        revision: row.try_get("revision")?,
        received_at: row.try_get("received_at")?,
        fingerprint: row.try_get("fingerprint")?,
        contribution: contribution_from_row(row)?,
    })
}

/// The contribution of a `kpi_events` or `kpi_calls` row. (Two struct
/// literals of `row.try_get` lines: alike in shape, one column each.)
fn contribution_from_row(row: &Row) -> Result<Contribution, tokio_postgres::Error> {
    let counters = Counters {
        calls_offered: row.try_get("calls_offered")?,
        calls_answered: row.try_get("calls_answered")?,
        calls_missed: row.try_get("calls_missed")?,
        calls_voicemail: row.try_get("calls_voicemail")?,
        talk_seconds_sum: row.try_get("talk_seconds_sum")?,
        talk_count: row.try_get("talk_count")?,
        ring_seconds_sum: row.try_get("ring_seconds_sum")?,
        ring_count: row.try_get("ring_count")?,
        sms_sent: row.try_get("sms_sent")?,
        sms_received: row.try_get("sms_received")?,
    };
    let contribution = Contribution {
        tenant: row.try_get("tenant")?,
        provider: row.try_get("provider")?,
        kind: row.try_get("kind")?,
        direction: row.try_get("direction")?,
        status: row.try_get("status")?,
        event_at: row.try_get("event_at")?,
        agent: row.try_get("agent")?,
        number: row.try_get("number")?,
        counters,
    };
    Ok(contribution)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_number_one_parameter_per_column() {
        let sql = rollup_sql();
        assert!(sql.contains("$17::bigint[]") && !sql.contains("$18"));
        assert!(sql.contains(
            "ON CONFLICT (tenant, dimension, interval_minutes, bucket_start, provider, direction, dimension_value)"
        ));
        let sql = counted_sql();
        assert!(sql.contains("$22::bigint[]") && !sql.contains("$23"));
        let sql = calls_sql();
        assert!(
            sql.contains("$2::jsonb[]") && sql.contains("$20::bigint[]") && !sql.contains("$21")
        );
        assert!(!sql.contains("call_key = EXCLUDED"));
    }
}
