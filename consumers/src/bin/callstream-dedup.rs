//! `callstream-dedup`: each distinct event once, updates as revisions,
//! exactly-once with Kafka transactions. See `callstream_consumers::dedup`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use callstream_consumers::{cli, services};
use callstream_runtime::shutdown::on_signal;

// What the service starts is `services::dedup`, which `callstream-dev`
// runs too; only the command line and the signals are here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream dedup: `callstream.events.v1` into `callstream.events.unique.v1`, exactly once.",
    )?;
    services::dedup(&settings, on_signal()?).await
}
