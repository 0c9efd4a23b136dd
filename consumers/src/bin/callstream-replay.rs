//! `callstream-replay`: re-derive normalized events from `callstream.raw.v1`
//! after a normalizer fix, or re-publish DLQ records that parse now. A
//! command-line tool: it reads a bounded range, prints one line per changed
//! record and a summary on stdout, and exits. See
//! `callstream_consumers::replay` for the guarantee.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use callstream_consumers::config::Settings;
use callstream_consumers::replay::range::Bound;
use callstream_consumers::replay::{self, ReplayOptions, Source, TenantOverride};

#[derive(Parser)]
#[command(
    version,
    about = "callstream replay: normalize raw or dead-lettered deliveries again and publish them to `callstream.events.v1` (dedup drops what did not change)."
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    // Stdout is the report; logs (Kafka's complaints, say, while a broker
    // cannot be reached) go to stderr.
    callstream_gateway::telemetry::init_stderr(settings.log_format);
    let (source, from, common) = match cli.command {
        Command::Raw { from, common } => (Source::Raw, Some(from), common),
        Command::Dlq { from, common } => (Source::Dlq, from, common),
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
    let report = replay::run(&settings, &options, |outcome| {
        if outcome.is_change() {
            let _ = writeln!(std::io::stdout(), "{outcome}");
        }
    })
    .await?;
    let _ = write!(std::io::stdout(), "{report}");
    Ok(())
}
