//! `callstream-analytics`: call-centre KPIs from unique events into
//! PostgreSQL rollups, each event counted once. See
//! `callstream_consumers::analytics`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use callstream_consumers::{cli, services};
use callstream_runtime::shutdown::on_signal;

// What the service starts is `services::analytics`, which `callstream-dev`
// runs too; only the command line and the signals are here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream analytics: call-centre KPIs per tenant, interval, agent and number.",
    )?;
    services::analytics(&settings, on_signal()?).await
}
