//! `callstream-store`: unique events into the PostgreSQL table `events`,
//! exactly once, each call merged into `calls` and published to
//! `callstream.calls.v1`. See `callstream_consumers::store` and
//! `callstream_consumers::calls`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;

use callstream_consumers::calls::outbox::Outbox;
use callstream_consumers::store::StoreWriter;
use callstream_consumers::{cli, pg_consumer};

/// How long a stopping store gives the outbox to publish what the last
/// batches committed (the rest is published at the next start).
const OUTBOX_DRAIN: Duration = Duration::from_secs(10);

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
    let outbox = tokio::task::block_in_place(|| {
        Outbox::new(
            &settings.kafka,
            &settings.topics,
            settings.require_database_url()?.clone(),
            writer.nudge(),
            &registry,
        )
    })?;
    // Stopped after the sink, so its last pass sees the last commits.
    let (stop_outbox, stopping) = watch::channel(false);
    let outbox = tokio::spawn(outbox.run(stopping));
    let result = pg_consumer::run(&settings, "store", &settings.store, registry, writer).await;
    let _ = stop_outbox.send(true);
    if tokio::time::timeout(OUTBOX_DRAIN, outbox).await.is_err() {
        tracing::warn!(
            "calls outbox still publishing at exit; the rest is published at the next start"
        );
    }
    result
}
