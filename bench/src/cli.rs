//! The command line of `callstream-bench`: one subcommand per benchmark,
//! and writing the report; `main` only calls [`run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::{catchup, consumers, drain, http, recovery, replay, report, send, systems};

#[derive(Parser)]
#[command(about = "Benchmarks callstream against a bare actix-web ceiling and a peer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything: the HTTP comparison and the consumer figures.
    All {
        #[command(flatten)]
        http: HttpArgs,
        /// Input sizes for the consumer figures.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        events: Vec<u64>,
        /// Partitions of the consumers' topics.
        #[arg(long, default_value_t = consumers::PARTITIONS)]
        partitions: i32,
        /// Where to write the report (markdown) and the raw figures (JSON beside it).
        #[arg(long, default_value = "bench/results.md")]
        out: PathBuf,
    },
    /// Only the HTTP comparison.
    Http {
        #[command(flatten)]
        http: HttpArgs,
        #[arg(long, default_value = "bench/results-http.md")]
        out: PathBuf,
    },
    /// Only the consumer figures.
    Consumers {
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        events: Vec<u64>,
        /// Partitions of the consumers' topics.
        #[arg(long, default_value_t = consumers::PARTITIONS)]
        partitions: i32,
        /// Extra environment for both consumers, `NAME=value` (tuning experiments).
        #[arg(long = "consumer-env", value_parser = parse_env)]
        consumer_env: Vec<(String, String)>,
        #[arg(long, default_value = "bench/results-consumers.md")]
        out: PathBuf,
    },
    /// Recovery: dedup's state restore at each size (identities), each on a
    /// fresh broker with enough partitions to hold it.
    Recovery {
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        identities: Vec<u64>,
        #[arg(long, default_value = "bench/results-recovery.md")]
        out: PathBuf,
    },
    /// Replay: re-deriving raw deliveries (a dry run, then for real) at
    /// each size, each on a fresh broker.
    Replay {
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        records: Vec<u64>,
        #[arg(long, default_value = "bench/results-replay.md")]
        out: PathBuf,
    },
    /// Catch-up: the store starts on a backlog of `--backlog` events (dedup
    /// forwarded them first) while live events arrive through dedup at
    /// `--live-rate` per second; the store's rows/s and each live event's
    /// delay from produce to row, during and after the catch-up.
    Catchup {
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        backlog: Vec<u64>,
        #[arg(long, default_value_t = 1000.0)]
        live_rate: f64,
        #[arg(long, default_value_t = 128)]
        partitions: i32,
        #[arg(long, default_value = "bench/results-catchup.md")]
        out: PathBuf,
    },
    /// Spool drain: the gateway spools `--gib` while Kafka is down, then
    /// drains it while live deliveries arrive at `--live-rate` per second.
    Drain {
        #[arg(long, default_value_t = 1.0)]
        gib: f64,
        #[arg(long, default_value_t = 200.0)]
        live_rate: f64,
        #[arg(long, default_value_t = 64)]
        partitions: i32,
        #[arg(long, default_value = "bench/results-drain.md")]
        out: PathBuf,
    },
    /// A few seconds of everything, without the peer; fails on any non-2xx,
    /// lost delivery or wrong consumer output (not on speed).
    Smoke,
    /// (internal) The embedded broker in a process of its own; SIGUSR1 takes
    /// it down, SIGUSR2 brings it back.
    Broker {
        #[arg(long, default_value_t = 3)]
        partitions: i32,
    },
    /// (internal, bench/callgrind) A counted load: `--count` requests,
    /// then one JSON line (answers, records appended to `--topic`).
    Send(send::SendArgs),
    /// (internal) The ceiling: a bare actix-web server answering 200.
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(clap::Args, Clone)]
struct HttpArgs {
    /// Rounds; every system runs once per round, in a rotating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured seconds per run (each system gets a full-speed run and a
    /// fixed-rate run at half of that).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections of the load generator. Many: webhooks come
    /// from many senders at once, and a system that answers only after a
    /// broker's acknowledgement needs concurrency to reach its maximum.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// mq-bridge-app's binary (default: $MQ_BRIDGE_APP, then PATH).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// Extra environment for the gateway, `NAME=value` (tuning experiments).
    #[arg(long = "gateway-env", value_parser = parse_env)]
    gateway_env: Vec<(String, String)>,
    /// Only these systems besides the ceiling (for investigating one).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<http::System>,
}

impl HttpArgs {
    fn options(&self, peer_required: bool) -> anyhow::Result<http::HttpOptions> {
        let peer = systems::find_peer(self.peer.clone());
        let wants_peer = self.only.is_empty() || self.only.contains(&http::System::Peer);
        if peer.is_none() && peer_required && wants_peer {
            bail!(
                "mq-bridge-app not found (--peer, MQ_BRIDGE_APP or PATH). Install it with:\n  \
                 cargo install mq-bridge-app --version 1.3.0 --no-default-features --features kafka,http,mimalloc"
            );
        }
        Ok(http::HttpOptions {
            rounds: self.rounds,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.seconds),
            connections: self.connections,
            peer: peer.filter(|_| wants_peer),
            only: self.only.clone(),
            gateway_env: self.gateway_env.clone(),
        })
    }
}

/// Parses the command line and runs the benchmark it names.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Broker { partitions } => broker(partitions),
        Command::Ceiling { listen } => ceiling(&listen),
        Command::Send(args) => send::run(&args),
        Command::Http { http, out } => {
            let turns = http::run(&http.options(true)?)?;
            finish(&out, &turns, &[], false)
        }
        Command::Consumers {
            events,
            partitions,
            consumer_env,
            out,
        } => {
            let runs = consumer_runs(&events, partitions, &consumer_env)?;
            finish(&out, &[], &runs, false)
        }
        Command::All {
            http,
            events,
            partitions,
            out,
        } => {
            let turns = http::run(&http.options(true)?)?;
            let runs = consumer_runs(&events, partitions, &[])?;
            finish(&out, &turns, &runs, false)
        }
        Command::Recovery { identities, out } => {
            let runs = recovery::runs(&identities)?;
            write_report(&out, &report::restore_table(&runs), &runs)
        }
        Command::Drain {
            gib,
            live_rate,
            partitions,
            out,
        } => {
            let run = drain::run(gib, live_rate, partitions)?;
            write_report(&out, &report::drain_table(&run), &run)
        }
        Command::Catchup {
            backlog,
            live_rate,
            partitions,
            out,
        } => {
            let runs = catchup::runs(&backlog, live_rate, partitions)?;
            write_report(&out, &report::catchup_table(&runs), &runs)
        }
        Command::Replay { records, out } => {
            let runs = replay::runs(&records)?;
            write_report(&out, &report::replay_table(&runs), &runs)
        }
        Command::Smoke => {
            let opts = http::HttpOptions {
                rounds: 1,
                warmup: Duration::from_millis(300),
                duration: Duration::from_secs(2),
                connections: 8,
                peer: None,
                only: Vec::new(),
                gateway_env: Vec::new(),
            };
            let turns = http::run(&opts)?;
            let runs = consumer_runs(&[5_000], consumers::PARTITIONS, &[])?;
            // The restore part too: it checks every identity comes back.
            recovery::runs(&[20_000])?;
            replay::runs(&[2_000])?;
            drain::run(0.005, 20.0, 8)?;
            // And a catch-up: every live event behind the backlog is stored.
            catchup::runs(&[5_000], 200.0, 8)?;
            let out = std::env::temp_dir().join("callstream-bench-smoke.md");
            finish(&out, &turns, &runs, true)
        }
    }
}

/// Prints `table` under the machine line and writes it to `out`, the runs
/// as JSON beside it.
fn write_report(
    out: &std::path::Path,
    table: &str,
    runs: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let text = format!("Machine: {}\n\n{table}", machine());
    println!("{text}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, text)?;
    std::fs::write(out.with_extension("json"), serde_json::to_vec_pretty(runs)?)?;
    Ok(())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=value, got {s:?}"))
}

fn consumer_runs(
    sizes: &[u64],
    partitions: i32,
    env: &[(String, String)],
) -> anyhow::Result<Vec<consumers::ConsumerRun>> {
    let rt = consumers::two_worker_runtime()?;
    let mut runs = Vec::new();
    for &events in sizes {
        let run = rt
            .block_on(consumers::run(events, partitions, env))
            .with_context(|| format!("consumer run of {events} events"))?;
        eprintln!(
            "consumers, {events} events: dedup {:.0}/s, store {:.0} rows/s, calls path {:.0} events/s",
            run.dedup_per_second, run.store_rows_per_second, run.calls_path_events_per_second
        );
        runs.push(run);
    }
    Ok(runs)
}

/// Prints and writes the report; fails on a correctness problem (and, in a
/// smoke run, only on those: speed on a CI machine means nothing).
fn finish(
    out: &std::path::Path,
    turns: &[http::Turn],
    runs: &[consumers::ConsumerRun],
    smoke: bool,
) -> anyhow::Result<()> {
    let summaries = report::summarize(turns);
    let mut text = String::new();
    text.push_str(&format!("Machine: {}\n\n", machine()));
    if !summaries.is_empty() {
        text.push_str(&report::http_table(&summaries));
        text.push('\n');
    }
    if !runs.is_empty() {
        text.push_str(&report::consumer_table(runs));
        text.push('\n');
        text.push_str(&report::calls_table(runs));
        text.push('\n');
    }
    let targets = report::targets(&summaries, runs);
    let mut failed = Vec::new();
    for (what, ok) in &targets {
        text.push_str(&format!("- {} {what}\n", if *ok { "MET " } else { "MISS" }));
        let correctness = what.contains("in Kafka") || what.contains("non-2xx");
        if !ok && correctness {
            failed.push(what.clone());
        }
    }
    println!("{text}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &text)?;
    let json = serde_json::json!({ "http": turns, "consumers": runs });
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    eprintln!("report written to {}", out.display());
    if !failed.is_empty() {
        bail!("correctness checks failed: {failed:?}");
    }
    if smoke {
        eprintln!("smoke run passed (speed is not judged here)");
    }
    Ok(())
}

/// CPU model and count, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} × {model}, Linux, loopback")
}

fn broker(partitions: i32) -> anyhow::Result<()> {
    use callstream_kafka::embedded::EmbeddedBroker;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let broker = EmbeddedBroker::start(partitions, &Default::default())?;
        broker
            .cluster()
            .create_topic(systems::PEER_TOPIC, partitions, 1)?;
        let bootstrap = broker.bootstrap_servers();
        let port: u16 = bootstrap
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port in the bootstrap address")?;
        println!(
            "{}",
            serde_json::json!({"message": systems::BROKER_READY, "port": port, "bootstrap": bootstrap})
        );
        let mut down = signal(SignalKind::user_defined1())?;
        let mut up = signal(SignalKind::user_defined2())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = down.recv() => {
                    broker.cluster().broker_down(-1)?;
                    println!("{}", serde_json::json!({"message": "broker down"}));
                }
                _ = up.recv() => {
                    broker.cluster().broker_up(-1)?;
                    println!("{}", serde_json::json!({"message": "broker up"}));
                }
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    })
}

fn ceiling(listen: &str) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    async fn ok(_body: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().finish()
    }
    actix_web::rt::System::new().block_on(async {
        let server = HttpServer::new(|| App::new().default_service(web::to(ok))).bind(listen)?;
        let port = server.addrs()[0].port();
        println!(
            "{}",
            serde_json::json!({"message": systems::CEILING_READY, "port": port})
        );
        server.run().await?;
        Ok(())
    })
}
