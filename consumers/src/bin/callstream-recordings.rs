//! `callstream-recordings`: recordings and voicemails of unique events into
//! object storage, announced on `callstream.recordings.v1`, at least once.
//! See `callstream_consumers::recordings`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::cli;
use callstream_consumers::recordings::RecordingsConsumer;
use callstream_runtime::shutdown::on_signal;

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve`; only what differs is here.
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
    tracing::info!(store = %archiver.location(), "archiver starting");
    cli::serve(&settings.metrics_listen, registry, on_signal()?, |stop| {
        archiver.run(stop)
    })
    .await
}
