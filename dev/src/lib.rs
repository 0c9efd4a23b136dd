//! `callstream-dev`: the whole pipeline in one process, for trying
//! callstream out. It starts, in this order, the embedded Kafka-protocol
//! broker, PostgreSQL, the gateway, `callstream-dedup`, `callstream-store`,
//! `callstream-analytics` and the console: tasks of this process, each
//! through the same library function its own binary runs. Once they all
//! listen it prints, after a line starting [`READY`], their addresses, the
//! console's sign-in and a `curl` line posting a sample call; the first
//! SIGINT or SIGTERM stops them all gracefully, a second exits at once.
//!
//! PostgreSQL is `DATABASE_URL`'s when that is set, else a throwaway
//! cluster from the system's binaries that does not outlive the process
//! (`database.rs`). Kafka is always the embedded, in-memory broker.
//!
//! Only these variables are read (the services' own settings are their
//! defaults; `settings.rs` says why): the addresses (`addresses.rs`:
//! `GATEWAY_LISTEN`, `GATEWAY_ADMIN_LISTEN`, `CONSOLE_LISTEN`,
//! `DEDUP_METRICS_LISTEN`, `STORE_METRICS_LISTEN`,
//! `ANALYTICS_METRICS_LISTEN`), `DATABASE_URL`, `PG_BIN`,
//! `CALLSTREAM_DEV_PASSWORD` (`login.rs`) and `RUST_LOG`. Any other
//! `CALLSTREAM_*` and `KAFKA_BOOTSTRAP_SERVERS` are named in a warning at
//! start, as ignored.

mod addresses;
mod database;
mod login;
mod services;
mod settings;
mod summary;

use std::time::Duration;

use anyhow::Context;

use callstream_console::Console;
use callstream_consumers::config::Settings as ConsumerSettings;
use callstream_gateway::startup::Application;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_kafka::TopicNames;

use addresses::Addresses;
use database::Database;
use login::Login;
use services::Services;
use summary::Summary;
pub use summary::READY;

/// The Onoff API key of the gateway (`sources.onoff.api_keys`).
pub const ONOFF_API_KEY: &str = "dev-key";

/// An answered inbound Onoff call, as Onoff posts it to `/v1/onoff/cdr`
/// (`../shared/providers/onoff-call-log-webhook.txt`); no single quotes, so
/// the `curl` line can quote it.
pub const SAMPLE_ONOFF_CDR: &str = r##"{"id":"dev-call-1","eventName":"CDR","onoffUserName":"Ana Lopez","onoffUserEmail":"ana.lopez@example.com","onoffUserNumber":"+33100000001","externalNumber":"+33612345678","externalName":"Marc Puig","callStarted":"2024-06-03T10:00:00Z","callEnded":"2024-06-03T10:02:00Z","callDuration":120,"callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"Tried callstream-dev","tags":[{"tagId":"t-1","tagName":"Lead","tagColor":"#00FF00"}]}"##;

/// Partitions per topic of the embedded broker (the gateway's default).
const PARTITIONS: i32 = 3;

/// How long the consumers may take to listen: dedup initialises its
/// transactions first; each binds its metrics before PostgreSQL and Kafka.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `curl` command that posts [`SAMPLE_ONOFF_CDR`] to the gateway at
/// `gateway` (`http://host:port`) with [`ONOFF_API_KEY`].
pub fn curl_line(gateway: &str) -> String {
    format!(
        "curl -s {gateway}/v1/onoff/cdr -H 'Authorization: x-api-key {ONOFF_API_KEY}' \
         -H 'content-type: application/json' -d '{SAMPLE_ONOFF_CDR}'"
    )
}

/// The variables `callstream-dev` reads, for `--help`.
pub fn environment_help() -> String {
    let mut text = String::from("Environment:\n");
    for (variable, default) in addresses::VARIABLES {
        text.push_str(&format!("  {variable:<26}default {default}\n"));
    }
    text.push_str(&format!(
        "  {:<26}PostgreSQL to use; unset: a throwaway cluster, deleted on exit\n\
         \x20 {:<26}PostgreSQL's bin directory for that cluster (default {})\n\
         \x20 {:<26}the console password of `{}`; unset: drawn at start and printed\n",
        "DATABASE_URL",
        "PG_BIN",
        callstream_consumers::pg::throwaway::DEFAULT_BIN,
        login::PASSWORD_VARIABLE,
        login::USER,
    ));
    text
}

/// Starts everything, prints the summary, serves until a signal or until a
/// service fails, then stops the services, the broker and PostgreSQL, in
/// that order (each needs the ones after it to stop cleanly).
pub async fn run() -> anyhow::Result<()> {
    let ignored = settings::ignored(std::env::vars());
    if !ignored.is_empty() {
        tracing::warn!(
            variables = ignored.join(", "),
            "callstream-dev ignores these: its services run on their defaults and the embedded \
             broker (see --help); run the binaries themselves to configure them"
        );
    }
    let addresses = Addresses::bind_from_env()?;
    let login = Login::from_env();
    let mut services = Services::new()?;
    let mut broker = EmbeddedBroker::start(PARTITIONS, &TopicNames::default())
        .context("cannot start the embedded broker")?;
    let database = Database::from_env().await?;
    // The gateway's spool, as deployed; deleted on exit.
    let spool = tempfile::Builder::new()
        .prefix("callstream-dev-spool-")
        .tempdir()
        .context("cannot create the gateway's spool directory")?;
    let served = start_and_serve(
        addresses,
        &login,
        &mut services,
        &mut broker,
        &database,
        spool.path(),
    )
    .await;
    let stopped = services.stop().await;
    drop(broker);
    drop(database);
    println!("stopped");
    match (served, stopped) {
        (Err(e), Err(also)) => {
            tracing::error!(error = format!("{also:#}"), "while stopping");
            Err(e)
        }
        (served, stopped) => served.and(stopped),
    }
}

async fn start_and_serve(
    addresses: Addresses,
    login: &Login,
    services: &mut Services,
    broker: &mut EmbeddedBroker,
    database: &Database,
    spool: &std::path::Path,
) -> anyhow::Result<()> {
    let bootstrap = broker.bootstrap_servers();
    let gateway_address = addresses.gateway.local_addr()?;
    let metrics = [
        ("gateway", addresses.gateway_admin.address()),
        ("dedup", addresses.dedup_metrics.address()),
        ("store", addresses.store_metrics.address()),
        ("analytics", addresses.analytics_metrics.address()),
    ];

    let gateway = settings::gateway(
        gateway_address,
        addresses.gateway_admin.release(),
        &bootstrap,
        spool,
    )?;
    let app = Application::build_with_shutdown(&gateway, addresses.gateway, services.shutdown())?;
    app.watch_embedded_broker(broker)?;
    services.spawn("gateway", async move {
        callstream_gateway::cli::serve(&gateway, app).await
    });

    let console_address = addresses.console.address();
    let shared = settings::consumers(
        &bootstrap,
        database.url(),
        console_address,
        login.console_users()?,
        &metrics,
    );
    let dedup = settings::consumer(&shared, addresses.dedup_metrics.release())?;
    let shutdown = services.shutdown();
    services.spawn("dedup", async move {
        callstream_consumers::services::dedup(&dedup, shutdown).await
    });
    let store = settings::consumer(&shared, addresses.store_metrics.release())?;
    let shutdown = services.shutdown();
    services.spawn("store", async move {
        callstream_consumers::services::store(&store, shutdown).await
    });
    let analytics = settings::consumer(&shared, addresses.analytics_metrics.release())?;
    let shutdown = services.shutdown();
    services.spawn("analytics", async move {
        callstream_consumers::services::analytics(&analytics, shutdown).await
    });

    // Console::build binds it.
    drop(addresses.console);
    let console = Console::build(ConsumerSettings::from_figment(shared)?)
        .await
        .context("the console did not start")?;
    services.spawn("console", console.run(services.shutdown()));

    if !services
        .wait_listening(&metrics[1..], START_TIMEOUT)
        .await?
    {
        return Ok(());
    }
    Summary {
        gateway: gateway_address,
        console: console_address,
        metrics: &metrics,
        kafka: &bootstrap,
        postgresql: database.describe(),
        login,
    }
    .print();
    services.until_stopped().await
}
