//! `callstream-recordings`: recordings and voicemails of unique events into
//! object storage, announced on `callstream.recordings.v1`, at least once.
//! See `callstream_consumers::recordings`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::recordings::RecordingsConsumer;
use callstream_runtime::server::MetricsServer;
use callstream_runtime::shutdown::on_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream recordings: audio of `callstream.events.unique.v1` into object storage.",
    )?;
    let registry = Registry::new();
    let archiver = RecordingsConsumer::build(
        &settings.recordings,
        &settings.kafka,
        &settings.topics,
        &registry,
    )?;
    let metrics_server = MetricsServer::bind(&settings.metrics_listen, registry)?;
    let port = metrics_server.port;
    let metrics_handle = metrics_server.spawn();
    let store = archiver.location().to_string();
    tracing::info!(port, %store, "consumer running");
    let result = archiver.run(on_signal()?).await;
    metrics_handle.stop(true).await;
    tracing::info!("consumer stopped");
    Ok(result?)
}
