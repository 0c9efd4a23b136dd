//! `callstream-dev`: the whole pipeline in one process, for trying
//! callstream out. See `callstream_dev`.

use clap::Parser;

use callstream_runtime::config::LogFormat;

#[derive(Parser)]
#[command(
    version,
    about = "callstream's whole pipeline in one process, for trying it out: embedded Kafka-protocol \
             broker, PostgreSQL (DATABASE_URL, or a throwaway cluster), gateway, dedup, store, \
             analytics and the console. Prints the addresses, the console's password and a curl \
             line; Ctrl-C stops everything.",
    after_help = callstream_dev::environment_help()
)]
struct Cli {}

// Four workers: the services share this runtime, and some of their Kafka
// calls (dedup's transaction commits) block the worker they run on.
#[tokio::main(worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    // Logs on stderr: stdout is the summary, readable on its own.
    callstream_runtime::telemetry::init_stderr(LogFormat::Auto);
    callstream_dev::run().await
}
