//! `callstream-store`: unique events into the PostgreSQL table `events`,
//! exactly once, each call merged into `calls` and published to
//! `callstream.calls.v1`. See `callstream_consumers::store` and
//! `callstream_consumers::calls`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use callstream_consumers::{cli, services};
use callstream_runtime::shutdown::on_signal;

// What the service starts is `services::store`, which `callstream-dev`
// runs too; only the command line and the signals are here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream store: `callstream.events.unique.v1` into PostgreSQL, exactly once; \
         calls into `calls` and `callstream.calls.v1`.",
    )?;
    services::store(&settings, on_signal()?).await
}
