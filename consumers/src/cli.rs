//! The command line every consumer binary takes, and the first steps of
//! its `main`: settings (`--config FILE` or `CALLSTREAM_CONFIG`, then the
//! environment), then logging.

pub mod replay;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

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
