//! The command line of `callstream-replay` (`raw`, `dlq` and `crm`) and
//! what each command prints; the binary only calls [`run`]. It lives here,
//! not in [`crate::replay`], because `crm` uses [`crate::crm::redeliver`],
//! which itself reads ranges with `replay`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Settings;
use crate::crm::redeliver::{self, RedeliverOptions};
use crate::replay::range::Bound;
use crate::replay::{self, ReplayOptions, Source, TenantOverride};

#[derive(Parser)]
#[command(
    version,
    about = "callstream replay: normalize raw or dead-lettered deliveries again and publish them to `callstream.events.v1` (dedup drops what did not change), or send a CRM target's dead letters again."
)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, env = "CALLSTREAM_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Re-derive events from `callstream.raw.v1` (every delivery).
    Raw {
        /// First record: an RFC 3339 time (by Kafka timestamp) or
        /// `partition:offset,...` (only those partitions are read).
        #[arg(long)]
        from: Bound,
        #[command(flatten)]
        common: Common,
    },
    /// Re-publish `callstream.dlq.v1` records that normalize now.
    Dlq {
        /// First record, as for `raw`; default: the first one kept.
        #[arg(long)]
        from: Option<Bound>,
        #[command(flatten)]
        common: Common,
    },
    /// Send one CRM target's dead letters (`callstream.crm.dlq.v1`) to it
    /// again, once what made them fail is fixed. Exits non-zero if any
    /// fails again (its dead letter stays where it is).
    Crm {
        /// The target, as configured (`crm.targets.<name>`).
        #[arg(long)]
        target: String,
        /// First dead letter, as for `raw`; default: the first one kept.
        #[arg(long)]
        from: Option<Bound>,
        /// End, excluded, as for `raw`; default: the end of each partition
        /// when the run starts.
        #[arg(long)]
        to: Option<Bound>,
        /// Read and count the target's dead letters, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args)]
struct Common {
    /// End, excluded: an RFC 3339 time or `partition:offset,...`; default:
    /// the end of each partition when the replay starts.
    #[arg(long)]
    to: Option<Bound>,
    /// Read and judge everything, publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// The tenant for a provider's deliveries whose payload names none,
    /// over the one the gateway recorded (`cs_source_tenant`); needed only
    /// for records written before that header, when the gateway's
    /// `sources.<provider>.tenant` was not `default`. Repeat per provider.
    #[arg(long = "tenant", value_name = "PROVIDER=TENANT")]
    tenants: Vec<TenantOverride>,
    /// The gateway's TOML configuration file: its declarative sources
    /// (`sources.<name>.declared`) are replayed with the mapping it holds.
    #[arg(long, env = "CALLSTREAM_GATEWAY_CONFIG", value_name = "FILE")]
    gateway_config: Option<PathBuf>,
}

/// The whole of `callstream-replay`: parses the command line, loads the
/// settings, logs to stderr, runs the command and prints its report.
pub async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    // Stdout is the report; logs (Kafka's complaints, say, while a broker
    // cannot be reached) go to stderr.
    callstream_runtime::telemetry::init_stderr(settings.log_format);
    let (source, from, common) = match cli.command {
        Command::Raw { from, common } => (Source::Raw, Some(from), common),
        Command::Dlq { from, common } => (Source::Dlq, from, common),
        Command::Crm {
            target,
            from,
            to,
            dry_run,
        } => {
            let options = RedeliverOptions {
                target,
                from,
                to,
                dry_run,
            };
            return crm(&settings, &options).await;
        }
    };
    let options = ReplayOptions {
        source,
        from,
        to: common.to,
        dry_run: common.dry_run,
        tenants: common
            .tenants
            .into_iter()
            .map(|t| (t.provider, t.tenant))
            .collect(),
        gateway_config: common.gateway_config,
    };
    let show = |b: &Option<Bound>| b.as_ref().map_or_else(|| "-".to_string(), Bound::to_string);
    tracing::info!(
        topic = settings.topics.name(options.source.topic()),
        from = %show(&options.from),
        to = %show(&options.to),
        dry_run = options.dry_run,
        "replay starting"
    );
    // A closed stdout (`| head`) must not stop a replay half-published.
    let report = replay::run(&settings.kafka, &settings.topics, &options, |outcome| {
        if outcome.is_change() {
            let _ = writeln!(std::io::stdout(), "{outcome}");
        }
    })
    .await?;
    let _ = write!(std::io::stdout(), "{report}");
    Ok(())
}

async fn crm(settings: &Settings, options: &RedeliverOptions) -> anyhow::Result<()> {
    tracing::info!(
        target = %options.target,
        dry_run = options.dry_run,
        "CRM redelivery starting"
    );
    let shutdown = callstream_runtime::shutdown::on_signal()?;
    let report = redeliver::redeliver(
        &settings.crm,
        &settings.kafka,
        &settings.topics,
        settings.database_url.as_ref(),
        options,
        shutdown,
        |letter| {
            let _ = writeln!(std::io::stdout(), "{letter}");
        },
    )
    .await?;
    let _ = write!(std::io::stdout(), "{report}");
    if report.failed > 0 {
        anyhow::bail!(
            "{} dead letters failed again; they stay in {} (the lines above name them)",
            report.failed,
            report.topic
        );
    }
    if report.interrupted {
        anyhow::bail!("interrupted before the end of the range: run it again");
    }
    Ok(())
}
