//! Spool drain after an outage: the gateway answers from its spool while
//! Kafka is down until the spool holds `--gib` of deliveries; then Kafka
//! comes back and the spool drains while live deliveries keep arriving at
//! `--live-rate`. Measured: how long the spool takes to empty, and how the
//! live deliveries were answered meanwhile (every one 2xx, and their
//! latency). Per-key order through an outage is asserted by the gateway's
//! fault tests (`kafka_outage_under_steady_load_loses_nothing_and_keeps_key_order`),
//! not here: the mock broker keeps ~5 MiB per partition, so most of a
//! GiB is acknowledged and then dropped by it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::load::{self, LoadReport, LoadSpec, Pace};
use crate::systems::{watermark_sums, Broker, Server};
use callstream_schemas::Topic;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainRun {
    pub spooled_bytes: u64,
    pub spooled_deliveries: u64,
    pub fill_seconds: f64,
    pub drain_seconds: f64,
    pub drain_mib_per_second: f64,
    pub drain_deliveries_per_second: f64,
    /// Live deliveries sent while the spool drained.
    pub live_requests: u64,
    pub live_non_2xx: u64,
    pub live_errors: u64,
    pub live_p50_ms: f64,
    pub live_p99_ms: f64,
    pub live_max_ms: f64,
}

const CONNECTIONS: usize = 32;

fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let page = load::get(addr, "/metrics")?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no {name} on /metrics"))
}

fn appended(bootstrap: &str) -> anyhow::Result<i64> {
    Ok(watermark_sums(bootstrap, Topic::Raw.default_name())?.1)
}

pub fn run(gib: f64, live_rate: f64, partitions: i32) -> anyhow::Result<DrainRun> {
    let target = (gib * (1u64 << 30) as f64) as u64;
    let broker = Broker::start(partitions)?;
    let bootstrap = broker.bootstrap();
    let server = Server::gateway(&bootstrap, &[])?;
    let addr = server.addr();
    let before = appended(&bootstrap)?;

    // Kafka down: the first delivery waits out the publish deadline and
    // switches the gateway to its spool.
    broker.down()?;
    let status = load::send_one(addr, "drain", 0)?;
    ensure!(status == 200, "priming delivery answered {status}");
    let mut next = 1;
    let mut acked = 1;
    let fill_started = Instant::now();
    while (metric(addr, "callstream_gateway_spool_bytes")? as u64) < target {
        ensure!(
            fill_started.elapsed() < Duration::from_secs(600),
            "the spool did not reach {target} bytes in 10 minutes"
        );
        let report = load::run(LoadSpec {
            addr,
            connections: CONNECTIONS,
            pace: Pace::FullSpeed,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(5),
            run: "drain".into(),
            first: next,
        })?;
        ensure!(
            report.non_2xx == 0 && report.errors == 0,
            "filling the spool: {} non-2xx, {} errors",
            report.non_2xx,
            report.errors
        );
        next = report.next_index;
        acked += report.ok_total;
    }
    let fill_seconds = fill_started.elapsed().as_secs_f64();
    let spooled_bytes = metric(addr, "callstream_gateway_spool_bytes")? as u64;
    let spooled_deliveries = acked;
    eprintln!(
        "drain: spooled {spooled_deliveries} deliveries, {:.2} GiB, in {fill_seconds:.1} s",
        spooled_bytes as f64 / (1u64 << 30) as f64
    );

    // Kafka back: the spool drains while live deliveries keep coming.
    broker.up()?;
    let started = Instant::now();
    let draining = Arc::new(AtomicBool::new(true));
    let live = {
        let draining = draining.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<LoadReport>> {
            let mut reports = Vec::new();
            let mut first = next;
            while draining.load(Ordering::SeqCst) {
                let report = load::run(LoadSpec {
                    addr,
                    connections: CONNECTIONS,
                    pace: Pace::Fixed(live_rate),
                    warmup: Duration::ZERO,
                    duration: Duration::from_secs(1),
                    run: "drain".into(),
                    first,
                })?;
                first = report.next_index;
                reports.push(report);
            }
            Ok(reports)
        })
    };
    let drained = loop {
        let left = metric(addr, "callstream_gateway_spool_bytes")?;
        if left == 0.0 {
            break started.elapsed().as_secs_f64();
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the spool still held {left} bytes after 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    draining.store(false, Ordering::SeqCst);
    let reports = live.join().expect("live load thread")?;
    let live_acked: u64 = reports.iter().map(|r| r.ok_total).sum();
    // Every acknowledged delivery is in Kafka (counted by offsets: the mock
    // broker drops old records, not offsets).
    let wait = Instant::now();
    while appended(&bootstrap)? - before < (spooled_deliveries + live_acked) as i64 {
        ensure!(
            wait.elapsed() < Duration::from_secs(60),
            "Kafka holds {} raw records of {} acknowledged",
            appended(&bootstrap)? - before,
            spooled_deliveries + live_acked
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.process.stop()?;
    let sum = |f: fn(&LoadReport) -> u64| reports.iter().map(f).sum::<u64>();
    let max_of = |f: fn(&LoadReport) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let run = DrainRun {
        spooled_bytes,
        spooled_deliveries,
        fill_seconds,
        drain_seconds: drained,
        drain_mib_per_second: spooled_bytes as f64 / (1u64 << 20) as f64 / drained,
        drain_deliveries_per_second: spooled_deliveries as f64 / drained,
        live_requests: sum(|r| r.requests),
        live_non_2xx: sum(|r| r.non_2xx),
        live_errors: sum(|r| r.errors),
        // Per one-second window: the median of the windows' p50s would hide
        // a bad window; the worst window is reported.
        live_p50_ms: max_of(|r| r.p50_ms),
        live_p99_ms: max_of(|r| r.p99_ms),
        live_max_ms: max_of(|r| r.max_ms),
    };
    eprintln!(
        "drain: {:.2} GiB in {:.1} s ({:.0} MiB/s, {:.0} deliveries/s); live: {} sent, {} non-2xx, {} errors, worst second p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        spooled_bytes as f64 / (1u64 << 30) as f64,
        run.drain_seconds,
        run.drain_mib_per_second,
        run.drain_deliveries_per_second,
        run.live_requests,
        run.live_non_2xx,
        run.live_errors,
        run.live_p50_ms,
        run.live_p99_ms,
        run.live_max_ms
    );
    ensure!(
        run.live_non_2xx == 0 && run.live_errors == 0,
        "live deliveries failed while the spool drained"
    );
    Ok(run)
}
