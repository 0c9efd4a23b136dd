//! Replay: re-deriving a backlog of raw deliveries after a parser fix
//! (`callstream-replay raw`). `callstream.raw.v1` and
//! `callstream.events.v1` are filled with the gateway's own records of the
//! workload (the raw delivery and the event it normalized to), then
//! `callstream-replay raw` runs over the whole raw topic as an operator
//! runs it (its own process), first as a dry run (judge everything,
//! publish nothing), then for real (re-normalize and publish to the events
//! topic, acknowledged); each run is timed from start to exit and its
//! report checked. The broker runs in a process of its own; each size gets
//! enough partitions for the mock broker's ~5 MiB per partition.

use std::time::{Duration, Instant};

use anyhow::ensure;

use crate::systems::{cpu_seconds_of, sibling, Broker};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayRun {
    pub records: u64,
    pub partitions: i32,
    pub dry_run_seconds: f64,
    pub dry_run_per_second: f64,
    /// CPU of the dry run's process per record.
    pub dry_run_cpu_us_per_record: f64,
    pub replay_seconds: f64,
    pub replay_per_second: f64,
    /// CPU of this process (reader, normalizer, producer) per record, in
    /// the real replay.
    pub cpu_us_per_record: f64,
    pub published: u64,
}

/// Partitions for `records` raw records and their events on the mock
/// broker (a few hundred bytes each; 5 MiB per partition), a power of two.
fn partitions_for(records: u64) -> i32 {
    records.div_ceil(5_000).max(8).next_power_of_two() as i32
}

pub fn runs(sizes: &[u64]) -> anyhow::Result<Vec<ReplayRun>> {
    let runtime = tokio::runtime::Runtime::new()?;
    sizes.iter().map(|&n| runtime.block_on(run(n))).collect()
}

async fn run(records: u64) -> anyhow::Result<ReplayRun> {
    let partitions = partitions_for(records);
    let broker = Broker::start(partitions)?;
    let bootstrap = broker.bootstrap();
    fill(&bootstrap, records).await?;
    let dry = replay_process(&bootstrap, true)?;
    ensure!(
        dry.count("read ") == Some(records)
            && dry.count("unchanged ") == Some(records)
            && dry.report.contains("published nothing"),
        "dry run of {records}:\n{}",
        dry.report
    );
    let real = replay_process(&bootstrap, false)?;
    ensure!(
        real.count("read ") == Some(records)
            && real.count("unchanged ") == Some(records)
            && real.count("published ") == Some(records),
        "replay of {records}:\n{}",
        real.report
    );
    let run = ReplayRun {
        records,
        partitions,
        dry_run_seconds: dry.seconds,
        dry_run_per_second: records as f64 / dry.seconds,
        dry_run_cpu_us_per_record: dry.cpu_seconds * 1e6 / records as f64,
        replay_seconds: real.seconds,
        replay_per_second: records as f64 / real.seconds,
        cpu_us_per_record: real.cpu_seconds * 1e6 / records as f64,
        published: records,
    };
    eprintln!(
        "replay: {records} raw records over {partitions} partitions: dry run {:.2} s ({:.0}/s, {:.1} µs CPU each), replay {:.2} s ({:.0}/s, {:.1} µs CPU each)",
        run.dry_run_seconds,
        run.dry_run_per_second,
        run.dry_run_cpu_us_per_record,
        run.replay_seconds,
        run.replay_per_second,
        run.cpu_us_per_record
    );
    Ok(run)
}

/// One `callstream-replay raw` run, as an operator starts it.
struct Finished {
    seconds: f64,
    cpu_seconds: f64,
    /// What it printed (its report).
    report: String,
}

impl Finished {
    /// The number after `label` in the report (`read 1000 records`).
    fn count(&self, label: &str) -> Option<u64> {
        let at = self.report.find(label)? + label.len();
        self.report[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

/// Runs `callstream-replay raw` over the whole raw topic (a dry run or
/// not) until it exits; its wall time and CPU (sampled every 10 ms).
fn replay_process(bootstrap: &str, dry_run: bool) -> anyhow::Result<Finished> {
    use std::io::Read;
    let mut command = std::process::Command::new(sibling("callstream-replay")?);
    command
        .args(["raw", "--from", "2000-01-01T00:00:00Z"])
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if dry_run {
        command.arg("--dry-run");
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    let pid = child.id().to_string();
    let mut cpu_seconds = 0.0;
    let status = loop {
        cpu_seconds = f64::max(cpu_seconds, cpu_seconds_of(&pid));
        if let Some(status) = child.try_wait()? {
            break status;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "callstream-replay ran for 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut report = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut report)?;
    }
    ensure!(
        status.success(),
        "callstream-replay failed ({status}):\n{report}"
    );
    Ok(Finished {
        seconds,
        cpu_seconds,
        report,
    })
}

/// Produces the gateway's two records of each of `records` deliveries.
async fn fill(bootstrap: &str, records: u64) -> anyhow::Result<()> {
    let producer = crate::consumers::bulk_producer(bootstrap)?;
    const CHUNK: u64 = 10_000;
    let mut i = 0;
    while i < records {
        let mut out = Vec::with_capacity(2 * CHUNK as usize);
        for k in i..(i + CHUNK).min(records) {
            out.extend(crate::consumers::records_of("replay", k)?);
        }
        crate::consumers::produce_all(&producer, &out).await?;
        i += CHUNK;
    }
    Ok(())
}
