//! `callstream-dedup`: each distinct event once, updates as revisions,
//! exactly-once with Kafka transactions. See `callstream_consumers::dedup`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::dedup::{Dedup, DedupMetrics};

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve` (or `pg_consumer::run`); only what differs is here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream dedup: `callstream.events.v1` into `callstream.events.unique.v1`, exactly once.",
    )?;
    let registry = Registry::new();
    let dedup = Dedup::new(
        &settings.dedup,
        &settings.kafka,
        &settings.topics,
        DedupMetrics::new(&registry),
    )?;
    tracing::info!(group = %settings.dedup.group_id, "dedup starting");
    cli::serve(&settings.metrics_listen, registry, |stop| dedup.run(stop)).await
}
