//! `callstream-crm`: unique events to CRM targets over HTTP, at least once.
//! See `callstream_consumers::crm`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::crm::CrmConsumer;
use callstream_runtime::server::MetricsServer;
use callstream_runtime::shutdown::on_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream CRM: `callstream.events.unique.v1` to webhooks and HubSpot.",
    )?;
    let registry = Registry::new();
    let crm = CrmConsumer::build(&settings.crm, &settings.kafka, &settings.topics, &registry)?;
    let metrics_server = MetricsServer::bind(&settings.metrics_listen, registry)?;
    let port = metrics_server.port;
    let metrics_handle = metrics_server.spawn();
    let targets: Vec<_> = settings.crm.targets.keys().collect();
    tracing::info!(port, ?targets, "consumer running");
    let result = crm.run(on_signal()?).await;
    metrics_handle.stop(true).await;
    tracing::info!("consumer stopped");
    Ok(result?)
}
