//! The command line every consumer binary takes, and the steps of its
//! `main` around the consumer: settings (`--config FILE` or
//! `CALLSTREAM_CONFIG`, then the environment) and logging ([`start`]), then
//! the metrics server for the consumer's run until it is told to stop
//! ([`serve`]). What each service starts is in `services`.

pub mod replay;

use std::future::Future;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use prometheus::Registry;
use tokio::sync::watch;

use callstream_runtime::server::MetricsServer;

use crate::config::Settings;

#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, env = "CALLSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

/// Parses the command line of binary `name` (described by `about` in
/// `--help`), loads and validates the settings, and installs logging.
pub fn start(name: &'static str, about: &'static str) -> anyhow::Result<Settings> {
    let matches = Cli::command().name(name).about(about).get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let settings = Settings::load(cli.config.as_deref())?;
    callstream_runtime::telemetry::init(settings.log_format);
    Ok(settings)
}

/// Serves `registry` on `metrics_listen` (with `/healthz`) while `run`
/// runs, handed `shutdown` (which the binaries turn `true` on
/// SIGTERM/SIGINT: [`callstream_runtime::shutdown::on_signal`]); then stops
/// the server. `run`'s error is the process's.
pub async fn serve<F, Fut, E>(
    metrics_listen: &str,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let metrics_server = MetricsServer::bind(metrics_listen, registry)?;
    let port = metrics_server.port;
    let metrics_handle = metrics_server.spawn();
    tracing::info!(port, "consumer running");
    let result = run(shutdown).await;
    metrics_handle.stop(true).await;
    tracing::info!("consumer stopped");
    result.map_err(Into::into)
}
