//! Recovery: how fast `callstream-dedup` rebuilds its state when it is
//! given partitions (a restart, a rebalance). The changelog
//! (`callstream.dedup.state.v1`) is filled with the state records dedup
//! writes (`Seen` as JSON, keyed by identity, lz4 as dedup's producer
//! sends them, plus each partition's position record), then
//! `callstream_consumers::dedup::restore` reads every partition back, as
//! an instance does on assignment, in this process. The broker runs in a
//! process of its own.
//!
//! The mock broker keeps about 5 MiB per partition (older records vanish),
//! so a size needs enough partitions to hold it; every run checks that the
//! restored identities are exactly the ones written.

use std::time::{Duration, Instant};

use anyhow::ensure;
use rdkafka::producer::FutureRecord;

use callstream_consumers::dedup::{restore, Seen};
use callstream_kafka::ClientSettings;
use callstream_schemas::Topic;

use crate::systems::Broker;

/// Identities per partition the mock broker holds comfortably (a state
/// record is about 110 bytes on the wire; 5 MiB per partition).
const PER_PARTITION: u64 = 25_000;

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreRun {
    pub identities: u64,
    pub partitions: i32,
    pub seconds: f64,
    pub identities_per_second: f64,
    /// CPU of this process (the restoring reader) per identity.
    pub cpu_us_per_identity: f64,
    /// CPU of the broker process meanwhile, per identity.
    pub broker_cpu_us_per_identity: f64,
}

/// The partitions a run of `identities` needs on the mock broker (a power
/// of two, at least 8).
pub fn partitions_for(identities: u64) -> i32 {
    let needed = identities.div_ceil(PER_PARTITION).max(8);
    needed.next_power_of_two() as i32
}

/// One restore per size, each on a fresh broker.
pub fn runs(sizes: &[u64]) -> anyhow::Result<Vec<RestoreRun>> {
    let runtime = tokio::runtime::Runtime::new()?;
    sizes.iter().map(|&n| runtime.block_on(run(n))).collect()
}

async fn run(identities: u64) -> anyhow::Result<RestoreRun> {
    let partitions = partitions_for(identities);
    let broker = Broker::start(partitions)?;
    let bootstrap = broker.bootstrap();
    let changelog = Topic::DedupState.default_name();
    fill(&bootstrap, changelog, identities, partitions).await?;
    let kafka = ClientSettings {
        bootstrap_servers: bootstrap.clone(),
        ..ClientSettings::default()
    };
    let all: Vec<i32> = (0..partitions).collect();
    let (cpu_before, broker_before) = (own_cpu_seconds(), broker.cpu_seconds());
    let started = Instant::now();
    let restored = restore(&kafka, changelog, &all).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu_before;
    let broker_cpu = broker.cpu_seconds() - broker_before;
    let got: usize = restored.values().map(|r| r.state.len()).sum();
    ensure!(
        got as u64 == identities,
        "restored {got} identities of {identities} (the mock broker drops records past ~5 MiB per partition)"
    );
    ensure!(
        restored.values().all(|r| r.next_offset == Some(1_000)),
        "a partition's position was not restored"
    );
    let per = |cpu: f64| cpu * 1e6 / identities as f64;
    eprintln!(
        "restore: {identities} identities over {partitions} partitions in {seconds:.2} s ({:.0}/s, {:.2} µs CPU each, broker {:.2} µs)",
        identities as f64 / seconds,
        per(cpu),
        per(broker_cpu),
    );
    Ok(RestoreRun {
        identities,
        partitions,
        seconds,
        identities_per_second: identities as f64 / seconds,
        cpu_us_per_identity: per(cpu),
        broker_cpu_us_per_identity: per(broker_cpu),
    })
}

/// Writes `identities` state records, spread over the partitions, and a
/// position record per partition, as dedup's producer does.
async fn fill(
    bootstrap: &str,
    changelog: &str,
    identities: u64,
    partitions: i32,
) -> anyhow::Result<()> {
    let producer = crate::consumers::bulk_producer(bootstrap)?;
    const CHUNK: u64 = 20_000;
    let t0 = 1_716_215_400_000_i64;
    let mut i = 0;
    while i < identities {
        let records: Vec<(String, Vec<u8>, i32)> = (i..(i + CHUNK).min(identities))
            .map(|k| {
                let seen: Seen = serde_json::from_value(serde_json::json!({
                    "r": 1 + (k % 3) as u32,
                    "s": t0 + k as i64,
                    "f": [k.wrapping_mul(0x9E37_79B9_7F4A_7C15), k],
                }))
                .expect("a state record");
                (
                    format!("onoff:acme:call:2222223-{k:012}"),
                    serde_json::to_vec(&seen).expect("serializes"),
                    (k % partitions as u64) as i32,
                )
            })
            .collect();
        let sends = records.iter().map(|(key, value, partition)| {
            producer.send(
                FutureRecord::to(changelog)
                    .key(key.as_str())
                    .payload(value.as_slice())
                    .partition(*partition),
                Duration::from_secs(60),
            )
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(e, _)| anyhow::anyhow!("changelog produce failed: {e}"))?;
        }
        i += CHUNK;
    }
    let position = br#"{"next":1000}"#;
    for p in 0..partitions {
        producer
            .send(
                FutureRecord::to(changelog)
                    .key("\u{0}position")
                    .payload(position.as_slice())
                    .partition(p),
                Duration::from_secs(60),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("position produce failed: {e}"))?;
    }
    Ok(())
}

/// User + system CPU of this process so far.
fn own_cpu_seconds() -> f64 {
    crate::systems::cpu_seconds_of("self")
}
