//! `callstream-dedup`: each distinct event once, updates as revisions,
//! exactly-once with Kafka transactions. See `callstream_consumers::dedup`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_runtime::server::MetricsServer;
use callstream_runtime::shutdown::on_signal;

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
    let metrics_server = MetricsServer::bind(&settings.metrics_listen, registry)?;
    let port = metrics_server.port;
    let metrics_handle = metrics_server.spawn();
    tracing::info!(port, group = %settings.dedup.group_id, "consumer running");
    let result = dedup.run(on_signal()?).await;
    metrics_handle.stop(true).await;
    tracing::info!("consumer stopped");
    result
}
