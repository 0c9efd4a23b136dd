//! The command line of `callstream-gateway` (serve, or `broker`: only the
//! embedded broker) and what it starts; the binary only calls [`run`],
//! `callstream-dev` [`serve`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::startup::Application;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_runtime::telemetry;

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

/// The whole of `callstream-gateway`: parses the command line, loads the
/// settings, starts the embedded broker if asked, then serves until a
/// signal (or, for `broker`, only keeps the broker up).
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format);

    // Kept alive for the whole process: dropping it stops the broker.
    let mut embedded = if settings.embedded_broker() || matches!(cli.command, Some(Command::Broker))
    {
        let broker = EmbeddedBroker::start(settings.kafka.embedded_partitions, &settings.topics)
            .context("could not start the embedded broker")?;
        settings.kafka.bootstrap_servers = broker.bootstrap_servers();
        tracing::warn!(
            bootstrap_servers = %settings.kafka.bootstrap_servers,
            "embedded Kafka-protocol broker started, for trying things out only: IN-MEMORY, it keeps about \
             5 MiB or 100,000 batches per partition and discards older records, even acknowledged ones; \
             everything is lost on exit; the gateway listens on loopback unless GATEWAY_LISTEN says otherwise \
             (set KAFKA_BOOTSTRAP_SERVERS for a real cluster)"
        );
        Some(broker)
    } else {
        None
    };

    if let Some(Command::Broker) = cli.command {
        if let Some(broker) = embedded.as_mut() {
            // Nothing serves metrics here: the warnings are the signal.
            broker
                .watch_discards(Metrics::new().embedded_broker_discarded)
                .context("could not watch the embedded broker")?;
        }
        shutdown_signal().await?;
        drop(embedded);
        return Ok(());
    }

    let app = Application::build(&settings)?;
    if let Some(broker) = embedded.as_mut() {
        app.watch_embedded_broker(broker)?;
    }
    serve(&settings, app).await?;
    drop(embedded);
    Ok(())
}

/// Serves a built gateway until it stops: logs the ready line
/// (`gateway listening`, with its ports, which tests and operators wait
/// for), then runs it. `callstream-dev` serves its gateway this way too.
pub async fn serve(settings: &Settings, app: Application) -> anyhow::Result<()> {
    tracing::info!(
        listen = %settings.listen,
        port = app.port(),
        admin_listen = %settings.admin_listen,
        admin_port = app.admin_port(),
        "gateway listening"
    );
    app.run_until_stopped().await
}

/// SIGINT or SIGTERM (the HTTP server listens for these itself).
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
