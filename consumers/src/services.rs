//! The long-running consumers as functions of their settings and a
//! shutdown flag: what `callstream-dedup`, `callstream-store` and
//! `callstream-analytics` run (their `main` is `cli::start`, then one of
//! these with `on_signal()`), and what `callstream-dev` runs side by side
//! in one process with one shutdown of its own. One path for both, so the
//! pipeline tried out is the one deployed.
//!
//! Each one serves its metrics on its settings' `metrics_listen` and
//! returns once `shutdown` turns true and its work in hand is committed.

use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;

use crate::analytics::AnalyticsWriter;
use crate::calls::worker::CallsWorker;
use crate::cli;
use crate::config::Settings;
use crate::dedup::{Dedup, DedupMetrics};
use crate::pg_consumer;
use crate::store::StoreWriter;

/// How long a stopping store gives its calls task to merge and publish
/// what the last batches queued (the rest is done at the next start).
const CALLS_DRAIN: Duration = Duration::from_secs(10);

/// `callstream-dedup`: `callstream.events.v1` into
/// `callstream.events.unique.v1`, exactly once.
pub async fn dedup(settings: &Settings, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let registry = Registry::new();
    // Blocking: initialises the transactions and checks the topics with
    // the brokers; off the worker the other services may share.
    let dedup = tokio::task::block_in_place(|| {
        Dedup::new(
            &settings.dedup,
            &settings.kafka,
            &settings.topics,
            DedupMetrics::new(&registry),
        )
    })?;
    tracing::info!(group = %settings.dedup.group_id, "dedup starting");
    cli::serve(&settings.metrics_listen, registry, shutdown, |stop| {
        dedup.run(stop)
    })
    .await
}

/// `callstream-store`: unique events into the table `events`, exactly once,
/// with its calls task merging each call into `calls` and
/// `callstream.calls.v1`.
pub async fn store(settings: &Settings, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let registry = Registry::new();
    let writer = StoreWriter::new(&registry)?;
    // Asks the brokers for the calls topic: a few blocking requests.
    let calls = tokio::task::block_in_place(|| {
        CallsWorker::new(
            &settings.kafka,
            &settings.topics,
            settings.require_database_url()?.clone(),
            writer.nudge(),
            &registry,
        )
    })?;
    // Stopped after the sink, so its last pass sees the last commits.
    let (stop_calls, stopping) = watch::channel(false);
    let calls = tokio::spawn(calls.run(stopping));
    let result = pg_consumer::run(
        settings,
        "store",
        &settings.store,
        registry,
        writer,
        shutdown,
    )
    .await;
    let _ = stop_calls.send(true);
    if tokio::time::timeout(CALLS_DRAIN, calls).await.is_err() {
        tracing::warn!(
            "calls task still merging or publishing at exit; the rest is done at the next start"
        );
    }
    result
}

/// `callstream-analytics`: call-centre KPIs from unique events into the
/// PostgreSQL rollups, each event counted once.
pub async fn analytics(settings: &Settings, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let registry = Registry::new();
    let writer = AnalyticsWriter::new(&registry, &settings.analytics.metric_tenants)?;
    pg_consumer::run(
        settings,
        "analytics",
        &settings.analytics.batch(),
        registry,
        writer,
        shutdown,
    )
    .await
}
