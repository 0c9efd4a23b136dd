use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use callstream_gateway::config::Settings;
use callstream_gateway::embedded::EmbeddedBroker;
use callstream_gateway::startup::Application;
use callstream_gateway::telemetry;

/// callstream webhook gateway: provider webhooks in, durable Kafka records out.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, env = "CALLSTREAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run only the embedded in-memory broker (for consumers or benchmarks).
    Broker,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format);

    // Kept alive for the whole process: dropping it stops the broker.
    let embedded = if settings.embedded_broker() || matches!(cli.command, Some(Command::Broker)) {
        let broker = EmbeddedBroker::start(settings.kafka.embedded_partitions, &settings.topics)
            .context("could not start the embedded broker")?;
        settings.kafka.bootstrap_servers = broker.bootstrap_servers();
        tracing::warn!(
            bootstrap_servers = %settings.kafka.bootstrap_servers,
            "embedded Kafka-protocol broker started: IN-MEMORY, data is lost on exit; for trying things out only \
             (set KAFKA_BOOTSTRAP_SERVERS for a real cluster)"
        );
        Some(broker)
    } else {
        None
    };

    if let Some(Command::Broker) = cli.command {
        shutdown_signal().await?;
        drop(embedded);
        return Ok(());
    }

    let app = Application::build(&settings)?;
    tracing::info!(listen = %settings.listen, port = app.port(), admin_port = app.admin_port(), "gateway listening");
    app.run_until_stopped().await?;
    drop(embedded);
    Ok(())
}

/// SIGINT or SIGTERM (the HTTP server listens for these itself).
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
