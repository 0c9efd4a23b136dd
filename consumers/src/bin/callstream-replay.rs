//! `callstream-replay`: re-derive normalized events from `callstream.raw.v1`
//! after a normalizer fix, re-publish DLQ records that parse now, or send a
//! CRM target's dead letters again. A command-line tool: it reads a bounded
//! range, prints one line per changed record (or dead letter) and a summary
//! on stdout, and exits. See `callstream_consumers::replay` and
//! `callstream_consumers::crm::redeliver` for the guarantees.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    callstream_consumers::cli::replay::run().await
}
