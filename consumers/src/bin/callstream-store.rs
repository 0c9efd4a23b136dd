//! `callstream-store`: unique events into the PostgreSQL table `events`,
//! exactly once, each call merged into `calls` and published to
//! `callstream.calls.v1`. See `callstream_consumers::store` and
//! `callstream_consumers::calls`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;

use callstream_consumers::calls::worker::CallsWorker;
use callstream_consumers::store::StoreWriter;
use callstream_consumers::{cli, pg_consumer};

/// How long a stopping store gives its calls task to merge and publish
/// what the last batches queued (the rest is done at the next start).
const CALLS_DRAIN: Duration = Duration::from_secs(10);

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve` (or `pg_consumer::run`); only what differs is here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream store: `callstream.events.unique.v1` into PostgreSQL, exactly once; \
         calls into `calls` and `callstream.calls.v1`.",
    )?;
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
    let result = pg_consumer::run(&settings, "store", &settings.store, registry, writer).await;
    let _ = stop_calls.send(true);
    if tokio::time::timeout(CALLS_DRAIN, calls).await.is_err() {
        tracing::warn!(
            "calls task still merging or publishing at exit; the rest is done at the next start"
        );
    }
    result
}
