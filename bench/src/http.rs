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
    /// Gateway turns: the gateway's own request-duration histogram over the
    /// half-rate run (its warm-up included): the server's side of `half`.
    pub server_half: Option<ServerLatency>,
}

/// Latency as the gateway itself measured it, from its Prometheus histogram
/// (`callstream_gateway_request_duration_seconds`, all sources).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerLatency {
    pub requests: u64,
    /// Share of requests answered within 2 ms (a bucket bound).
    pub within_2ms: f64,
    /// Upper bound (ms) of the bucket holding the 99th percentile.
    pub p99_bucket_ms: f64,
}

const DURATION_BUCKET: &str = "callstream_gateway_request_duration_seconds_bucket{";

/// Cumulative counts per bucket bound (seconds), summed over sources.
fn duration_buckets(exposition: &str) -> Vec<(f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(DURATION_BUCKET) else {
            continue;
        };
        let Some((labels, count)) = rest.split_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|v| v.trim_end_matches('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(count) = count.trim().parse::<f64>() else {
            continue;
        };
        match buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, total)) => *total += count as u64,
            None => buckets.push((le, count as u64)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The requests counted between two scrapes of the histogram.
fn server_latency(before: &str, after: &str) -> Option<ServerLatency> {
    let before = duration_buckets(before);
    let after = duration_buckets(after);
    let cumulative: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let earlier = before.iter().find(|(b, _)| *b == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(earlier))
        })
        .collect();
    let requests = cumulative.last()?.1;
    if requests == 0 {
        return None;
    }
    // Cumulative: the count at the last bound up to 2 ms.
    let within_2ms = cumulative
        .iter()
        .take_while(|(le, _)| *le <= 0.002 + 1e-12)
        .last()
        .map_or(0, |b| b.1);
    let p99_bucket = cumulative
        .iter()
        .find(|(_, n)| *n as f64 >= 0.99 * requests as f64)
        .map_or(f64::INFINITY, |b| b.0);
    Some(ServerLatency {
        requests,
        within_2ms: within_2ms as f64 / requests as f64,
        p99_bucket_ms: p99_bucket * 1000.0,
    })
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
                turn.ceiling_at_half.as_ref().map(|c| format!(" (ceiling at that rate {:.2})", c.p99_ms)).unwrap_or_default()
                    + &turn.server_half.as_ref().map(|s| format!(" (own histogram: {:.1} % ≤ 2 ms, p99 ≤ {} ms)", 100.0 * s.within_2ms, s.p99_bucket_ms)).unwrap_or_default(),
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
    let own_histogram = matches!(system, System::Gateway | System::GatewaySpool);
    let scrape = || load::get(addr, "/metrics");
    let metrics_before = if own_histogram { Some(scrape()?) } else { None };
    let half_rate = Pace::Fixed(max.rps / 2.0);
    let half = load::run(spec(half_rate, max.next_index))?;
    let server_half = match metrics_before {
        Some(before) => server_latency(&before, &scrape()?),
        None => None,
    };
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
            ..spec(half_rate, 0)
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
        server_half,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(onoff: [u64; 4], xarios: [u64; 4]) -> String {
        let mut text =
            String::from("# TYPE callstream_gateway_request_duration_seconds histogram\n");
        for (source, counts) in [("onoff", onoff), ("xarios", xarios)] {
            for (le, n) in ["0.001", "0.002", "0.005", "+Inf"].iter().zip(counts) {
                text.push_str(&format!(
                    "callstream_gateway_request_duration_seconds_bucket{{source=\"{source}\",le=\"{le}\"}} {n}\n"
                ));
            }
            text.push_str(&format!(
                "callstream_gateway_request_duration_seconds_count{{source=\"{source}\"}} {}\n",
                counts[3]
            ));
        }
        text
    }

    #[test]
    fn server_latency_counts_only_the_requests_between_the_scrapes() {
        let before = exposition([10, 20, 30, 40], [0, 0, 0, 0]);
        // Between the scrapes: 1,000 requests, 500 within 1 ms, 985 within
        // 2 ms, 995 within 5 ms, 5 slower.
        let after = exposition([410, 820, 830, 840], [100, 185, 195, 200]);
        let latency = server_latency(&before, &after).expect("requests counted");
        assert_eq!(latency.requests, 1000);
        assert!((latency.within_2ms - 0.985).abs() < 1e-9, "{latency:?}");
        assert_eq!(latency.p99_bucket_ms, 5.0);
    }

    #[test]
    fn server_latency_is_none_without_requests() {
        let text = exposition([1, 2, 3, 4], [0, 0, 0, 0]);
        assert_eq!(server_latency(&text, &text), None);
        assert_eq!(server_latency("", ""), None);
    }
}
