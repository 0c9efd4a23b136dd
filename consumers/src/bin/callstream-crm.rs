//! `callstream-crm`: unique events to CRM targets over HTTP, at least once.
//! See `callstream_consumers::crm`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::crm::CrmConsumer;
use callstream_runtime::shutdown::on_signal;

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve`; only what differs is here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream CRM: calls (`callstream.calls.v1`) and SMS (`callstream.events.unique.v1`) to webhooks and HubSpot.",
    )?;
    let registry = Registry::new();
    let crm = CrmConsumer::build(
        &settings.crm,
        &settings.kafka,
        &settings.topics,
        settings.database_url.as_ref(),
        &registry,
    )
    .await?;
    let targets: Vec<_> = settings.crm.targets.keys().collect();
    tracing::info!(?targets, "CRM delivery starting");
    cli::serve(&settings.metrics_listen, registry, on_signal()?, |stop| {
        crm.run(stop)
    })
    .await
}
