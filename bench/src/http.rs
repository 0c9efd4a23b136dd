//! The HTTP comparison: ceiling, peer, gateway and gateway-on-spool, each
//! started fresh, in a rotating order each round, against one broker process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use callstream_schemas::Topic;

use crate::load::{self, LoadReport, LoadSpec, Pace};
use crate::systems::{Broker, Server, PEER_TOPIC};

#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    /// mq-bridge-app's binary; `None` leaves the peer out (smoke runs only).
    pub peer: Option<PathBuf>,
    /// Only these systems (all when empty; the ceiling always runs).
    pub only: Vec<System>,
    /// Extra environment for the gateway.
    pub gateway_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum System {
    Ceiling,
    Peer,
    Gateway,
    GatewaySpool,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Ceiling => "ceiling (bare actix-web, 200 only)",
            System::Peer => "peer: mq-bridge-app 1.3.0 (HTTP → Kafka, acks=all)",
            System::Gateway => "callstream-gateway (Kafka acks=all)",
            System::GatewaySpool => "callstream-gateway, Kafka down (spool, fsync)",
        }
    }
}

/// One system's turn in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Turn {
    pub round: usize,
    pub system: System,
    pub max: LoadReport,
    /// At half of `max.rps`.
    pub half: LoadReport,
    pub peak_rss_mib: f64,
    /// CPU time of the server process, and of the broker process, per
    /// request of the full-speed run (warm-up included in both).
    pub cpu_us_per_request: f64,
    pub broker_cpu_us_per_request: f64,
    /// 2xx answers over both runs (warm-ups included), and records that
    /// reached Kafka meanwhile; `None` for the ceiling (it stores nothing).
    pub acked: u64,
    pub in_kafka: Option<i64>,
    /// Spool path: seconds from Kafka's return until Kafka held every
    /// acknowledged delivery.
    pub drain_seconds: Option<f64>,
    /// Gateway turns: the ceiling, started afresh, at the same fixed rate as
    /// `half`; what the machine's scheduling alone costs a request there.
    pub ceiling_at_half: Option<LoadReport>,
}

pub fn run(opts: &HttpOptions) -> anyhow::Result<Vec<Turn>> {
    // Three partitions per topic, as the gateway's embedded broker has.
    let broker = Broker::start(3).context("starting the broker")?;
    let bootstrap = broker.bootstrap();
    eprintln!("broker (own process) at {bootstrap}");
    let mut systems = vec![System::Ceiling];
    if opts.peer.is_some() {
        systems.push(System::Peer);
    }
    systems.extend([System::Gateway, System::GatewaySpool]);
    systems.retain(|s| *s == System::Ceiling || opts.only.is_empty() || opts.only.contains(s));

    let mut turns = Vec::new();
    for round in 0..opts.rounds {
        // Rotate the order so no system always runs first (or last).
        let mut order = systems.clone();
        order.rotate_left(round % systems.len());
        for system in order {
            let turn = one_turn(opts, &broker, &bootstrap, round, system)
                .with_context(|| format!("round {round}, {system:?}"))?;
            eprintln!(
                "round {round} {system:?}: max {:.0} req/s ({:.1} µs CPU/req, broker {:.1}), half-rate p99 {:.2} ms{}, RSS {:.1} MiB, acked {} in Kafka {:?}",
                turn.max.rps, turn.cpu_us_per_request, turn.broker_cpu_us_per_request, turn.half.p99_ms,
                turn.ceiling_at_half.as_ref().map(|c| format!(" (ceiling at that rate {:.2})", c.p99_ms)).unwrap_or_default(),
                turn.peak_rss_mib, turn.acked, turn.in_kafka
            );
            turns.push(turn);
        }
    }
    Ok(turns)
}

fn one_turn(
    opts: &HttpOptions,
    broker: &Broker,
    bootstrap: &str,
    round: usize,
    system: System,
) -> anyhow::Result<Turn> {
    let (server, topic) = match system {
        System::Ceiling => (Server::ceiling()?, None),
        System::Peer => (
            Server::peer(opts.peer.as_deref().expect("peer binary"), bootstrap)?,
            Some(PEER_TOPIC.to_string()),
        ),
        System::Gateway | System::GatewaySpool => (
            Server::gateway(bootstrap, &opts.gateway_env)?,
            Some(Topic::Raw.default_name().to_string()),
        ),
    };
    let before = topic.as_deref().map(|t| appended(bootstrap, t));
    let run = format!("r{round}{}", system_tag(system));
    let mut first = 0;
    if system == System::GatewaySpool {
        broker.down()?;
        // The first delivery waits out the publish deadline, spools, and
        // switches the gateway to spool-first; the measured runs start then.
        let status = load::send_one(server.addr(), &run, 0)?;
        ensure!(status == 200, "priming delivery answered {status}");
        let metrics = load::get(server.addr(), "/metrics")?;
        ensure!(
            metrics.contains("callstream_gateway_kafka_degraded 1"),
            "the gateway did not switch to its spool"
        );
        first = 1;
    }
    let addr = server.addr();
    let spec = |pace, first| LoadSpec {
        addr,
        connections: opts.connections,
        pace,
        warmup: opts.warmup,
        duration: opts.duration,
        run: run.clone(),
        first,
    };
    let cpu_before = (server.process.cpu_seconds(), broker.cpu_seconds());
    let max = load::run(spec(Pace::FullSpeed, first))?;
    let max_requests = (max.next_index - first) as f64;
    let cpu_us_per_request = 1e6 * (server.process.cpu_seconds() - cpu_before.0) / max_requests;
    let broker_cpu_us_per_request = 1e6 * (broker.cpu_seconds() - cpu_before.1) / max_requests;
    ensure!(max.ok > 0, "{system:?} answered no request with 2xx");
    let half = load::run(spec(Pace::Fixed(max.rps / 2.0), max.next_index))?;
    let peak_rss_mib = server.process.peak_rss_mib();
    let acked = max.ok_total + half.ok_total + u64::from(first > 0);

    let mut drain_seconds = None;
    if system == System::GatewaySpool {
        broker.up()?;
        let since = Instant::now();
        let topic = topic.as_deref().expect("raw topic");
        let deadline = Duration::from_secs(300);
        while appended(bootstrap, topic) - before.expect("counted") < acked as i64 {
            if since.elapsed() > deadline {
                bail!("the spool did not drain into Kafka within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drain_seconds = Some(since.elapsed().as_secs_f64());
    }
    let in_kafka = topic
        .as_deref()
        .zip(before)
        .map(|(t, before)| appended(bootstrap, t) - before);
    server.process.stop().context("stopping")?;
    let ceiling_at_half = if system == System::Gateway {
        let ceiling = Server::ceiling()?;
        let report = load::run(LoadSpec {
            addr: ceiling.addr(),
            run: format!("{run}c"),
            ..spec(Pace::Fixed(max.rps / 2.0), 0)
        })?;
        ceiling
            .process
            .stop()
            .context("stopping the reference ceiling")?;
        Some(report)
    } else {
        None
    };
    Ok(Turn {
        round,
        system,
        max,
        half,
        peak_rss_mib,
        cpu_us_per_request,
        broker_cpu_us_per_request,
        acked,
        in_kafka,
        drain_seconds,
        ceiling_at_half,
    })
}

fn system_tag(system: System) -> &'static str {
    match system {
        System::Ceiling => "c",
        System::Peer => "p",
        System::Gateway => "g",
        System::GatewaySpool => "s",
    }
}

/// Records ever appended to `topic`: the sum of its high watermarks. (Not
/// high − low: the embedded broker keeps only ~5 MB per partition and drops
/// the oldest records beyond that, which moves the low watermark.)
fn appended(bootstrap: &str, topic: &str) -> i64 {
    crate::systems::watermark_sums(bootstrap, topic)
        .expect("topic watermarks")
        .1
}
