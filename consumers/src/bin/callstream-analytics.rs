//! `callstream-analytics`: call-centre KPIs from unique events into
//! PostgreSQL rollups, each event counted once. See
//! `callstream_consumers::analytics`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::analytics::AnalyticsWriter;
use callstream_consumers::{cli, pg_consumer};

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve` (or `pg_consumer::run`); only what differs is here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream analytics: call-centre KPIs per tenant, interval, agent and number.",
    )?;
    let registry = Registry::new();
    let writer = AnalyticsWriter::new(&registry, &settings.analytics.metric_tenants)?;
    pg_consumer::run(
        &settings,
        "analytics",
        &settings.analytics.batch(),
        registry,
        writer,
    )
    .await
}
