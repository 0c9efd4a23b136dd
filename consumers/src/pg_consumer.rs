//! The process around a [`PgWriter`], shared by `callstream-store` and
//! `callstream-analytics`: metrics and health endpoint, PostgreSQL and its
//! migrations, the Kafka consumer in the configured group, and a graceful
//! stop (the shutdown flag, SIGTERM/SIGINT in the binaries: the batch in
//! progress commits, then the consumer closes, which leaves the group so
//! the partitions move on at once).
//!
//! A crash (or SIGKILL) skips all of that and loses nothing: positions live
//! in PostgreSQL with the rows ([`crate::pg_sink`]), and the group notices
//! the dead member after `session.timeout.ms`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus::{IntCounter, Registry};
use rdkafka::consumer::StreamConsumer;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_postgres::Client;

use callstream_schemas::Topic;

use crate::config::Settings;
use crate::pg;
use crate::pg::settings::BatchSettings;
use crate::pg_sink::{PgSink, PgWriter, SinkMetrics};
use callstream_kafka::client::consumer_config;
use callstream_kafka::consume::TrackingContext;
use callstream_runtime::error_chain;
use callstream_runtime::server::MetricsServer;
use callstream_runtime::shutdown::{pause, wait_for};

/// Runs `writer` over `callstream.events.unique.v1` until `shutdown` turns
/// true (the binaries flip it on SIGTERM/SIGINT, `callstream-dev` on its
/// own stop). `name` prefixes the metrics (`callstream_<name>_...`);
/// `batch` is the consumer's section of the settings; `registry` is served
/// on `metrics_listen` and may already hold the writer's own metrics.
pub async fn run<W: PgWriter>(
    settings: &Settings,
    name: &str,
    batch: &BatchSettings,
    registry: Registry,
    writer: W,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let database_url = settings.require_database_url()?;
    let metrics_server = MetricsServer::bind(&settings.metrics_listen, registry.clone())?;
    let metrics_port = metrics_server.port;
    let metrics_handle = metrics_server.spawn();

    let metrics = SinkMetrics::new(&registry, name);
    let Some(mut clients) = connect_all(
        database_url,
        batch.connections,
        &metrics.db_errors,
        &shutdown,
    )
    .await?
    else {
        metrics_handle.stop(true).await;
        tracing::info!("stopped before PostgreSQL could be reached");
        return Ok(());
    };
    // Waiting for another process's migrations may take long (or for
    // ever, if it hangs): a stop must not wait for them.
    let mut stopping = shutdown.clone();
    tokio::select! {
        migrated = pg::migrate(&mut clients[0]) => {
            migrated.context("cannot apply the database migrations")?;
        }
        () = wait_for(&mut stopping) => {
            metrics_handle.stop(true).await;
            tracing::info!("stopped before the database migrations could run");
            return Ok(());
        }
    }

    let consumer: StreamConsumer<TrackingContext> =
        consumer_config(&settings.kafka, &batch.group_id)
            .create_with_context(TrackingContext::default())
            .context("cannot create the Kafka consumer (kafka.*)")?;
    let consumer = Arc::new(consumer);
    let topic = settings.topics.name(Topic::EventsUnique).to_string();
    tracing::info!(
        port = metrics_port,
        group = %batch.group_id,
        topic = %topic,
        connections = batch.connections,
        "consumer running"
    );

    let result = PgSink {
        consumer: consumer.clone(),
        clients,
        writer,
        group: batch.group_id.clone(),
        topic,
        batch_max: batch.batch_max,
        linger: Duration::from_millis(batch.batch_linger_ms),
        metrics,
        database_url: database_url.clone(),
    }
    .run(shutdown)
    .await;

    // Dropping the last handle closes the consumer: it leaves the group.
    // That blocks until the broker answers, so off the async workers.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    metrics_handle.stop(true).await;
    tracing::info!(group = %batch.group_id, "consumer stopped");
    result
}

/// `connections` connections to `url`. A database that cannot be reached
/// yet (down, starting, refusing connections for now) is waited for, with
/// backoff, each failed attempt counted in `errors`: started alongside its
/// database, or during an outage, the consumer begins once it is back
/// instead of exiting into a supervisor's restart loop. A login refused or
/// a database that does not exist ends it with that error at once. `None`
/// when shutdown began while waiting.
async fn connect_all(
    url: &SecretString,
    connections: usize,
    errors: &IntCounter,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Vec<Client>>> {
    pg::config(url.expose_secret()).context("database_url is not a valid PostgreSQL URL")?;
    let mut backoff = pg::backoff(Duration::from_secs(10));
    let mut clients = Vec::with_capacity(connections);
    while clients.len() < connections {
        match pg::connect(url).await {
            Ok(client) => clients.push(client),
            Err(e) if pg::connect_error_is_transient(&e) => {
                errors.inc();
                let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "cannot reach PostgreSQL yet; waiting for it");
                if pause(delay, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => {
                return Err(e).context("PostgreSQL refused the connection (database_url)");
            }
        }
    }
    Ok(Some(clients))
}
