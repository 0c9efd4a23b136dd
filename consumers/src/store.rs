//! `callstream-store`: `callstream.events.unique.v1` into the PostgreSQL
//! table `events` (migration `V2__events.sql`), one row per `event_id`.
//!
//! Guarantee: exactly-once into the database, from [`crate::pg_sink`]: a
//! batch's rows and the partition positions after it commit in one
//! transaction. On top of that the write is an idempotent upsert that
//! replaces a row only with *newer, different* content (received later,
//! then a higher revision: [`crate::unique::content_order`]), so the table
//! holds the newest content of every event whatever order revisions arrive
//! in: an older revision after a newer one, or an exact resend (even one
//! after dedup's window), changes nothing, and an update after the window
//! (revision 1 again, received later) is not lost.
//!
//! Each batch is one statement (`INSERT ... SELECT FROM unnest(arrays)`),
//! after keeping only the newest content of each event in the batch.
//!
//! Calls: each row names its call (`call_key`), and the calls of the events
//! a batch changed are queued for merging in the same transaction
//! ([`crate::calls`]); the binary's calls task merges them into `calls` and
//! publishes them to `callstream.calls.v1` ([`crate::calls::worker`]).
//!
//! What would break it: writing rows outside the transaction the sink
//! hands over. A platform that resends an *old* version of an event after
//! dedup's window would have it stored over the newer one: nothing in a
//! delivery says which content is older.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, Opts, Registry};
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;
use uuid::Uuid;

use callstream_schemas::call::call_key;

use crate::calls;
use crate::pg::settings::BatchSettings;
use crate::pg::RawJsonb;
use crate::pg_sink::PgWriter;
use crate::unique::{direction_str, latest_revisions, status_str};
use callstream_kafka::wire::UniqueEvent;

/// The defaults of the `store` section.
pub(crate) fn default_settings() -> BatchSettings {
    BatchSettings {
        group_id: "callstream-store".into(),
        batch_max: 2000,
        batch_linger_ms: 50,
        connections: 4,
    }
}

/// Columns written from a record, with their array types for `unnest`.
/// `stored_at` is left to its default.
const COLUMNS: &[(&str, &str)] = &[
    ("event_id", "uuid"),
    ("identity", "text"),
    ("revision", "int"),
    ("fingerprint", "text"),
    ("provider", "text"),
    ("tenant", "text"),
    ("kind", "text"),
    ("direction", "text"),
    ("status", "text"),
    ("provider_status", "text"),
    ("started_at", "timestamptz"),
    ("answered_at", "timestamptz"),
    ("ended_at", "timestamptz"),
    ("duration_seconds", "float8"),
    ("ring_seconds", "float8"),
    ("talk_seconds", "float8"),
    ("hold_seconds", "float8"),
    ("user_id", "text"),
    ("user_name", "text"),
    ("user_email", "text"),
    ("user_number", "text"),
    ("external_number", "text"),
    ("external_name", "text"),
    ("external_company", "text"),
    ("call_id", "text"),
    ("call_key", "text"),
    ("received_at", "timestamptz"),
    ("event", "jsonb"),
];

/// The batched upsert: insert new events, replace a row only with newer,
/// different content.
fn upsert_sql() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
        .collect();
    let updates: Vec<String> = names
        .iter()
        .filter(|name| **name != "event_id")
        .map(|name| format!("{name} = EXCLUDED.{name}"))
        .collect();
    format!(
        "INSERT INTO events ({}) SELECT * FROM unnest({})
         ON CONFLICT (event_id) DO UPDATE SET {}, stored_at = now()
         WHERE (events.received_at, events.revision) < (EXCLUDED.received_at, EXCLUDED.revision)
           AND events.fingerprint <> EXCLUDED.fingerprint
         RETURNING call_key",
        names.join(", "),
        arrays.join(", "),
        updates.join(", "),
    )
}

/// The store's [`PgWriter`].
pub struct StoreWriter {
    sql: String,
    /// Records that changed nothing (resends, contents not newer than the
    /// row): how out of order the input is.
    stale: IntCounter,
    /// Calls queued for merging.
    calls_queued: IntCounter,
    /// Told when a commit queued calls: the calls task merges them.
    nudge: Arc<Notify>,
}

impl StoreWriter {
    pub fn new(registry: &Registry) -> prometheus::Result<StoreWriter> {
        let stale = IntCounter::with_opts(Opts::new(
            "callstream_store_stale_records_total",
            "Records that changed no row: resends, or contents not newer than the stored one.",
        ))?;
        let calls_queued = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_queued_total",
            "Calls queued for merging because a batch changed one of their events.",
        ))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(calls_queued.clone()))?;
        Ok(StoreWriter {
            sql: upsert_sql(),
            stale,
            calls_queued,
            nudge: Arc::new(Notify::new()),
        })
    }

    /// What the calls task ([`calls::worker::CallsWorker`]) waits on.
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }
}

/// The batch as one array per column.
#[derive(Default)]
struct Columns<'a> {
    event_id: Vec<Uuid>,
    identity: Vec<&'a str>,
    revision: Vec<i32>,
    fingerprint: Vec<&'a str>,
    provider: Vec<&'static str>,
    tenant: Vec<&'a str>,
    kind: Vec<&'static str>,
    direction: Vec<&'static str>,
    status: Vec<&'static str>,
    provider_status: Vec<Option<&'a str>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    answered_at: Vec<Option<DateTime<Utc>>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
    duration_seconds: Vec<Option<f64>>,
    ring_seconds: Vec<Option<f64>>,
    talk_seconds: Vec<Option<f64>>,
    hold_seconds: Vec<Option<f64>>,
    user_id: Vec<Option<&'a str>>,
    user_name: Vec<Option<&'a str>>,
    user_email: Vec<Option<&'a str>>,
    user_number: Vec<Option<&'a str>>,
    external_number: Vec<Option<&'a str>>,
    external_name: Vec<Option<&'a str>>,
    external_company: Vec<Option<&'a str>>,
    call_id: Vec<Option<&'a str>>,
    call_key: Vec<Option<String>>,
    received_at: Vec<DateTime<Utc>>,
    event: Vec<RawJsonb<'a>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, record: &'a UniqueEvent) {
        let e = &record.event;
        self.event_id.push(e.event_id);
        self.identity.push(&e.identity);
        self.revision.push(record.revision);
        self.fingerprint.push(&e.fingerprint);
        self.provider.push(e.provider.as_str());
        self.tenant.push(&e.tenant);
        self.kind.push(e.kind.as_str());
        self.direction.push(direction_str(e.direction));
        self.status.push(status_str(e.status));
        self.provider_status.push(e.provider_status.as_deref());
        self.started_at.push(e.started_at);
        self.answered_at.push(e.answered_at);
        self.ended_at.push(e.ended_at);
        self.duration_seconds.push(e.duration_seconds);
        self.ring_seconds.push(e.ring_seconds);
        self.talk_seconds.push(e.talk_seconds);
        self.hold_seconds.push(e.hold_seconds);
        self.user_id.push(e.internal.id.as_deref());
        self.user_name.push(e.internal.name.as_deref());
        self.user_email.push(e.internal.email.as_deref());
        self.user_number.push(e.internal.number.as_deref());
        self.external_number.push(e.external.number.as_deref());
        self.external_name.push(e.external.name.as_deref());
        self.external_company.push(e.external.company.as_deref());
        self.call_id.push(e.correlation.call_id.as_deref());
        self.call_key.push(call_key(e));
        self.received_at.push(e.received_at);
        self.event.push(RawJsonb(&record.json));
    }

    /// The parameters, in [`COLUMNS`] order.
    fn params(&self) -> [&(dyn ToSql + Sync); 28] {
        [
            &self.event_id,
            &self.identity,
            &self.revision,
            &self.fingerprint,
            &self.provider,
            &self.tenant,
            &self.kind,
            &self.direction,
            &self.status,
            &self.provider_status,
            &self.started_at,
            &self.answered_at,
            &self.ended_at,
            &self.duration_seconds,
            &self.ring_seconds,
            &self.talk_seconds,
            &self.hold_seconds,
            &self.user_id,
            &self.user_name,
            &self.user_email,
            &self.user_number,
            &self.external_number,
            &self.external_name,
            &self.external_company,
            &self.call_id,
            &self.call_key,
            &self.received_at,
            &self.event,
        ]
    }
}

// The trait's signature repeats in `analytics/mod.rs`; the bodies differ.
impl PgWriter for StoreWriter {
    /// Rows are keyed by `event_id`, derived from the identity the topic is
    /// keyed by: partitions never share a row. They may queue the same
    /// call (`calls_dirty`), an upsert taken in key order.
    const PARTITION_PARALLEL: bool = true;

    /// Stale records of the batch and calls queued, counted once it commits.
    type Applied = (u64, u64);

    async fn write<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        batch: &'a [UniqueEvent],
    ) -> Result<(u64, u64), tokio_postgres::Error> {
        let mut latest = latest_revisions(batch);
        // Rows locked in one order by every transaction: should partitions
        // ever share an event (a topic whose partition count changed), two
        // concurrent transactions wait for each other instead of deadlocking.
        latest.sort_unstable_by_key(|record| record.event.event_id);
        let mut columns = Columns::default();
        for record in &latest {
            columns.push(record);
        }
        if latest.is_empty() {
            return Ok((batch.len() as u64, 0));
        }
        let changed = tx.query(self.sql.as_str(), &columns.params()).await?;
        // The calls of the events that changed are queued for the calls
        // task, in this transaction (see `crate::calls`).
        let mut keys = BTreeSet::new();
        for row in &changed {
            if let Some(key) = row.try_get::<_, Option<String>>(0)? {
                keys.insert(key);
            }
        }
        calls::queue(tx, &keys).await?;
        Ok((
            (batch.len() as u64).saturating_sub(changed.len() as u64),
            keys.len() as u64,
        ))
    }

    fn committed(&self, (stale, calls): (u64, u64)) {
        self.stale.inc_by(stale);
        if calls > 0 {
            self.calls_queued.inc_by(calls);
            self.nudge.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parameter_per_column() {
        let sql = upsert_sql();
        assert_eq!(Columns::default().params().len(), COLUMNS.len());
        assert!(sql.contains(&format!("${}::jsonb[]", COLUMNS.len())));
        assert!(sql.contains(
            "WHERE (events.received_at, events.revision) < (EXCLUDED.received_at, EXCLUDED.revision)"
        ));
    }
}
