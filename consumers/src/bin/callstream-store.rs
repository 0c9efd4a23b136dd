//! `callstream-store`: unique events into the PostgreSQL table `events`,
//! exactly once. See `callstream_consumers::store`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use prometheus::Registry;

use callstream_consumers::store::StoreWriter;
use callstream_consumers::{cli, pg_consumer};

// The steps every consumer's `main` shares are `cli::start` and
// `cli::serve` (or `pg_consumer::run`); only what differs is here.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = cli::start(
        env!("CARGO_BIN_NAME"),
        "callstream store: `callstream.events.unique.v1` into PostgreSQL, exactly once.",
    )?;
    let registry = Registry::new();
    let writer = StoreWriter::new(&registry)?;
    pg_consumer::run(&settings, "store", &settings.store, registry, writer).await
}
