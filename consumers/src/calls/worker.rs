//! The store's calls task: merges the calls the store's batches queued
//! (`calls_dirty`, [`crate::calls::merge_queued`]) into `calls`, then
//! publishes the changed ones to `callstream.calls.v1` (a transactional
//! outbox). A merge writes a call's new state and queues its key and
//! revision in `calls_outbox` in one transaction; the task then publishes
//! the current state of every call queued there, waits for Kafka's
//! acknowledgement (`acks=all`, idempotent producer), and only then takes
//! it out of the queue (unless it changed meanwhile).
//!
//! Guarantee: every committed state of a call reaches the topic at least
//! once, after Kafka and PostgreSQL outages and crashes alike (what is
//! still queued is merged or published at the next pass or start), and the
//! newest record of a key is never older than one before it: one task
//! merges and publishes at a time (a session advisory lock; a second store
//! instance waits its turn), and it publishes a row's *current* state, read
//! after the previous one was acknowledged. A state replaced before its
//! turn is skipped: the topic is compacted, readers want the newest.
//!
//! What breaks it: a `calls` row changed outside the store (its revision
//! not raised) is never published again.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Opts, Registry};
use secrecy::SecretString;
use tokio::sync::{watch, Notify};
use tokio_postgres::Client;

use callstream_kafka::publish::{OutRecord, Publisher};
use callstream_kafka::wire::call_record;
use callstream_kafka::{ClientSettings, TopicNames};
use callstream_runtime::error_chain;
use callstream_runtime::shutdown::pause;
use callstream_schemas::call::Call;

use crate::pg;

/// The session lock only one calls task holds (`call` `outb`, in ASCII).
const WORKER_LOCK: (i32, i32) = (0x6361_6c6c, 0x6f75_7462);
/// Calls per transaction: merged, or published and taken out.
const BATCH: i64 = 1000;
/// A pass runs at least this often, even without a nudge (a state another
/// instance committed, or a nudge lost to a restart).
const IDLE_PASS: Duration = Duration::from_secs(1);

/// The calls task's metrics: `callstream_store_calls_*`.
#[derive(Clone)]
pub struct CallsMetrics {
    pub merged: IntCounter,
    pub changed: IntCounter,
    pub published: IntCounter,
    pub pending: IntGauge,
    pub errors: IntCounter,
    pub refused: IntCounter,
}

impl CallsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<CallsMetrics> {
        let merged = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_merged_total",
            "Queued calls merged again from their events.",
        ))?;
        let changed = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_changed_total",
            "Merges that created a call or changed its state (each then published).",
        ))?;
        let published = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_published_total",
            "Call states published to callstream.calls.v1 and acknowledged.",
        ))?;
        let pending = IntGauge::with_opts(Opts::new(
            "callstream_store_calls_unpublished",
            "Call states committed and not yet published, as of the last outbox pass (at most one batch is counted).",
        ))?;
        let errors = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_publish_errors_total",
            "Passes of the calls task that failed (Kafka or PostgreSQL) and were retried.",
        ))?;
        let refused = IntCounter::with_opts(Opts::new(
            "callstream_store_calls_refused_total",
            "Call states Kafka refused for themselves (larger than the topic takes): not published, kept in the calls table.",
        ))?;
        registry.register(Box::new(merged.clone()))?;
        registry.register(Box::new(changed.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(CallsMetrics {
            merged,
            changed,
            published,
            pending,
            errors,
            refused,
        })
    }
}

/// The calls task.
pub struct CallsWorker {
    pub database_url: SecretString,
    pub publisher: Publisher,
    /// Nudged by the store after each commit that queued a call.
    pub nudge: Arc<Notify>,
    pub metrics: CallsMetrics,
}

impl CallsWorker {
    /// Merges and publishes until `shutdown`, then makes one last pass
    /// (what the last batches queued) before returning.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut backoff = pg::backoff(Duration::from_secs(10));
        let mut client: Option<Client> = None;
        loop {
            let stopping = *shutdown.borrow();
            let result = match client.as_mut() {
                Some(c) => match self.merge(c).await {
                    Ok(()) => self.drain(c).await,
                    Err(e) => Err(e),
                },
                None => match self.connect().await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        _ = self.nudge.notified() => {}
                        _ = pause(IDLE_PASS, &shutdown) => {}
                    }
                }
                Err(e) => {
                    self.metrics.errors.inc();
                    if client.as_ref().is_some_and(Client::is_closed) {
                        client = None;
                    }
                    if stopping {
                        tracing::warn!(error = %e, "calls not all merged and published before stopping; the rest is at the next start");
                        return;
                    }
                    let delay = backoff.delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "calls task pass failed; retrying");
                    if pause(delay, &shutdown).await {
                        continue; // one last pass
                    }
                }
            }
        }
    }

    /// A connection holding the calls task's lock (waiting for it while
    /// another instance holds it).
    async fn connect(&self) -> Result<Client, String> {
        let client = pg::connect(&self.database_url)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {}", error_chain(&e)))?;
        client
            .execute(
                "SELECT pg_advisory_lock($1, $2)",
                &[&WORKER_LOCK.0, &WORKER_LOCK.1],
            )
            .await
            .map_err(|e| format!("cannot take the calls task's lock: {}", error_chain(&e)))?;
        Ok(client)
    }

    /// Merges queued calls, a transaction per batch, until none is left
    /// (from the first key again while any is: a key queued again
    /// meanwhile is merged in the next round).
    async fn merge(&self, client: &mut Client) -> Result<(), String> {
        let failed = |e: tokio_postgres::Error| format!("cannot merge calls: {}", error_chain(&e));
        let mut after = String::new();
        loop {
            let tx = client.transaction().await.map_err(failed)?;
            let (merged, last) = crate::calls::merge_queued(&tx, &after, BATCH)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            self.metrics.merged.inc_by(merged.merged);
            self.metrics.changed.inc_by(merged.changed);
            match last {
                Some(last) if merged.merged as i64 == BATCH => after = last,
                _ => return Ok(()),
            }
        }
    }

    /// Publishes batches until the outbox is empty. Pages by call key, so
    /// a large backlog is read once, not from its start again each batch.
    async fn drain(&self, client: &mut Client) -> Result<(), String> {
        let mut after = String::new();
        loop {
            let rows = client
                .query(
                    // A look-up in `calls` per queued key: a merge join
                    // walked the whole of `calls` up to the last key.
                    "SELECT o.call_key, c.revision, c.call::text
                     FROM (SELECT call_key FROM calls_outbox WHERE call_key > $1
                           ORDER BY call_key LIMIT $2) AS o
                     JOIN LATERAL (SELECT revision, call FROM calls
                                   WHERE calls.call_key = o.call_key OFFSET 0) AS c ON true
                     ORDER BY o.call_key",
                    &[&after, &BATCH],
                )
                .await
                .map_err(|e| format!("cannot read the calls outbox: {}", error_chain(&e)))?;
            self.metrics.pending.set(rows.len() as i64);
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = last.get(0);
            let mut records: Vec<OutRecord> = Vec::with_capacity(rows.len());
            let mut keys: Vec<String> = Vec::with_capacity(rows.len());
            let mut revisions: Vec<i64> = Vec::with_capacity(rows.len());
            for row in &rows {
                let key: String = row.get(0);
                let revision: i64 = row.get(1);
                match serde_json::from_str::<Call>(row.get(2)) {
                    Ok(call) => records.push(call_record(&call, revision)),
                    // Written by the store from a `Call`: only a hand edit
                    // gets here. Taken out, so it cannot block the rest.
                    Err(e) => {
                        tracing::error!(call_key = %key, error = %e, "calls row is not a call; not published")
                    }
                }
                keys.push(key);
                revisions.push(revision);
            }
            self.publish(&records).await?;
            // A call changed since it was read stays queued, at its new
            // revision.
            client
                .execute(
                    "DELETE FROM calls_outbox o USING unnest($1::text[], $2::bigint[]) AS u(k, r)
                     WHERE o.call_key = u.k AND o.revision <= u.r",
                    &[&keys, &revisions],
                )
                .await
                .map_err(|e| format!("cannot mark calls published: {}", error_chain(&e)))?;
            if (rows.len() as i64) < BATCH {
                self.metrics.pending.set(0);
                return Ok(());
            }
        }
    }

    /// Publishes `records`, waiting for every acknowledgement. A record
    /// Kafka refuses for itself (larger than the topic takes) would fail
    /// every retry and hold every call behind it: when the batch fails
    /// that way, its records go one at a time and the refused ones are
    /// logged, counted and skipped (the `calls` row still holds them).
    async fn publish(&self, records: &[OutRecord]) -> Result<(), String> {
        let failed = match self.publisher.publish(records).await {
            Ok(()) => {
                self.metrics.published.inc_by(records.len() as u64);
                return Ok(());
            }
            Err(e) if e.record_refused() => e,
            Err(e) => return Err(format!("Kafka did not take the calls: {}", error_chain(&e))),
        };
        tracing::warn!(error = %error_chain(&failed), "Kafka refused a call in the batch; publishing one at a time");
        for record in records {
            match self.publisher.publish(std::slice::from_ref(record)).await {
                Ok(()) => self.metrics.published.inc(),
                Err(e) if e.record_refused() => {
                    self.metrics.refused.inc();
                    tracing::error!(call_key = %record.key, bytes = record.wire_size(), error = %error_chain(&e), "Kafka refuses this call's record; not published (the calls row has it)");
                }
                Err(e) => return Err(format!("Kafka did not take the calls: {}", error_chain(&e))),
            }
        }
        Ok(())
    }
}

impl CallsWorker {
    /// The calls task of the database at `database_url`: a durable
    /// producer of `callstream.calls.v1` (made compacted when missing),
    /// nudged by `nudge`, counting into `registry`. Blocking: asks the
    /// brokers for the topic.
    pub fn new(
        kafka: &ClientSettings,
        topics: &TopicNames,
        database_url: SecretString,
        nudge: Arc<Notify>,
        registry: &Registry,
    ) -> anyhow::Result<CallsWorker> {
        use anyhow::Context;
        use callstream_kafka::publish::{PublishMetrics, PublishOptions};
        use callstream_kafka::topics::{ensure_topic, Owned};
        use callstream_schemas::Topic;
        ensure_topic(
            kafka,
            topics.name(Topic::Calls),
            topics.name(Topic::EventsUnique),
            Owned::CompactedOutput,
        )?;
        let publisher = Publisher::new(
            callstream_kafka::client::client_config(
                kafka,
                callstream_kafka::client::Role::Producer,
            ),
            PublishOptions {
                timeout_ms: 30_000,
                linger_ms: 5.0,
                max_body_bytes: 1024 * 1024,
            },
            topics.clone(),
            &[Topic::Calls],
            PublishMetrics::register(registry, "store")?,
        )
        .context("cannot create the Kafka producer of callstream.calls.v1 (kafka.*)")?;
        Ok(CallsWorker {
            database_url,
            publisher,
            nudge,
            metrics: CallsMetrics::new(registry)?,
        })
    }
}
