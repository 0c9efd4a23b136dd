//! Consumer throughput: a topic pre-filled with normalized events (the
//! gateway's own records, built from the same workload, resends included)
//! is run through callstream-dedup, whose output then runs through
//! callstream-store into a durable PostgreSQL (rows, and the calls it merges
//! them into and publishes to `callstream.calls.v1`). Each consumer is
//! timed from its first consumed record to its last (the store then until
//! its outbox published every call), and its output is checked.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use callstream_kafka::wire::Records;
use callstream_schemas::{providers, Topic};
use callstream_testkit::postgres::{Durability, TestCluster};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::load;
use crate::systems::{consumer, Broker, Process};
use crate::workload;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerRun {
    pub events: u64,
    pub partitions: i32,
    pub resends: u64,
    pub dedup_seconds: f64,
    pub dedup_per_second: f64,
    pub dedup_peak_rss_mib: f64,
    /// CPU of the dedup process, and of the broker process meanwhile, per event.
    pub dedup_cpu_us_per_event: f64,
    pub dedup_broker_cpu_us_per_event: f64,
    pub forwarded: u64,
    pub store_seconds: f64,
    pub store_rows_per_second: f64,
    pub store_peak_rss_mib: f64,
    /// CPU of the store process per row (PostgreSQL's own is not included).
    pub store_cpu_us_per_row: f64,
    pub rows: i64,
    /// Calls the store merged its rows into (`calls` rows).
    pub calls: i64,
    /// After the store's last row, until its calls task had merged every
    /// queued call and published its newest state to `callstream.calls.v1`.
    pub calls_tail_seconds: f64,
    /// Unique events through the whole calls path (rows, calls merged and
    /// published) per second: `forwarded / (store_seconds + calls_tail_seconds)`.
    pub calls_path_events_per_second: f64,
}

/// Normalizes workload request `i` the way the gateway does: its event
/// record.
pub fn event_of(run: &str, i: u64) -> anyhow::Result<callstream_kafka::publish::OutRecord> {
    let [_, event] = records_of(run, i)?;
    Ok(event)
}

/// The gateway's two records of workload request `i`: the raw delivery and
/// its event.
pub fn records_of(run: &str, i: u64) -> anyhow::Result<[callstream_kafka::publish::OutRecord; 2]> {
    let providers = providers::all();
    let (provider, delivery, body) = workload::delivery(run, i, &providers)?;
    let Records {
        records,
        dead_lettered,
    } = delivery.records(
        &*providers[provider],
        body,
        Topic::Raw.default_name(),
        usize::MAX,
        |_| {},
    );
    match dead_lettered {
        None => Ok(records),
        Some(e) => bail!("request {i} does not normalize: {e}"),
    }
}

/// A producer for pre-filling topics fast: idempotent, lz4 as the gateway
/// and dedup produce, large batches.
pub fn bulk_producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create()?)
}

/// The runtime the consumer-side benchmarks run on: two workers, as the
/// machine has two cores.
pub fn two_worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Produces `events` normalized events (resends included) to the events topic.
pub async fn prefill(bootstrap: &str, run: &str, events: u64) -> anyhow::Result<()> {
    let producer = bulk_producer(bootstrap)?;
    const CHUNK: u64 = 20_000;
    let mut i = 0;
    while i < events {
        let records: Vec<_> = (i..(i + CHUNK).min(events))
            .map(|k| event_of(run, k))
            .collect::<anyhow::Result<_>>()?;
        produce_all(&producer, &records).await?;
        i += CHUNK;
    }
    Ok(())
}

/// Produces `records` (to their default topics) and waits for every
/// acknowledgement.
pub async fn produce_all(
    producer: &FutureProducer,
    records: &[callstream_kafka::publish::OutRecord],
) -> anyhow::Result<()> {
    let sends = records.iter().map(|r| {
        let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        });
        producer.send(
            FutureRecord::to(r.topic.default_name())
                .key(r.key.as_str())
                .payload(r.payload.as_slice())
                .headers(headers),
            Duration::from_secs(60),
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.map_err(|(e, _)| anyhow::anyhow!("prefill produce failed: {e}"))?;
    }
    Ok(())
}

/// Records a topic still holds (high − low watermarks over its partitions).
fn retained(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let (low, high) = crate::systems::watermark_sums(bootstrap, topic)?;
    Ok(high - low)
}

/// Reads a counter (or gauge) from a consumer's metrics page.
pub fn metric(process: &Process, name: &str) -> anyhow::Result<f64> {
    let addr = ([127, 0, 0, 1], process.port).into();
    let page = load::get(addr, "/metrics")?;
    Ok(page
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Polls `name` until it reaches `target`; returns seconds from the first
/// progress to `target` (start-up and group join are not the consumer's
/// throughput).
fn time_until(process: &Process, name: &str, target: f64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    loop {
        let value = metric(process, name)?;
        let now = Instant::now();
        if value > 0.0 && first.is_none() {
            first = Some((now, value));
        }
        if value >= target {
            let (t0, v0) = first.expect("progress seen");
            // The first sample already holds v0 records: extrapolate back to 0
            // at the rate measured after it.
            let secs = (now - t0).as_secs_f64();
            return Ok(if v0 < value && secs > 0.0 {
                secs * value / (value - v0)
            } else {
                // All of it in one step: no rate after the first sample, so
                // count from the start (group join included: conservative).
                started.elapsed().as_secs_f64()
            });
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!(
                "{name} reached {value} of {target} in 30 min:\n{}",
                process.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Partitions of the consumers' topics. The embedded broker keeps at most
/// 5 MB of record batches per partition and silently drops older ones
/// (librdkafka's mock cluster, `max_size`); the events are lz4-compressed,
/// as the gateway and dedup produce them, so a 1 M backlog fits in 64.
/// Every size runs with the same count, so sizes differ in nothing else;
/// each run checks that nothing was dropped.
pub const PARTITIONS: i32 = 64;

pub async fn run(
    events: u64,
    partitions: i32,
    extra: &[(String, String)],
) -> anyhow::Result<ConsumerRun> {
    let broker = Broker::start(partitions)?;
    let bootstrap = broker.bootstrap();
    let run = format!("c{events}");
    let t = Instant::now();
    prefill(&bootstrap, &run, events).await?;
    eprintln!(
        "prefilled {events} events into {partitions} partitions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let kept = tokio::task::block_in_place(|| retained(&bootstrap, Topic::Events.default_name()))?;
    ensure!(
        kept == events as i64,
        "the broker kept only {kept} of {events} events (retention): use more partitions"
    );
    let resends = (0..events).filter(|&i| workload::is_resend(i)).count() as u64;

    let extra = extra.iter().map(|(k, v)| (k.as_str(), v.clone()));
    let kafka: Vec<_> = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone())]
        .into_iter()
        .chain(extra.clone())
        .collect();
    let broker_cpu = broker.cpu_seconds();
    let dedup = tokio::task::block_in_place(|| consumer("callstream-dedup", &kafka))?;
    let dedup_seconds = tokio::task::block_in_place(|| {
        time_until(
            &dedup,
            "callstream_dedup_consumed_records_total",
            events as f64,
        )
    })?;
    let forwarded = metric(&dedup, "callstream_dedup_forwarded_records_total")? as u64;
    let dropped = metric(&dedup, "callstream_dedup_duplicates_dropped_total")? as u64;
    let dedup_peak_rss_mib = dedup.peak_rss_mib();
    let dedup_cpu_us_per_event = 1e6 * dedup.cpu_seconds() / events as f64;
    let dedup_broker_cpu_us_per_event = 1e6 * (broker.cpu_seconds() - broker_cpu) / events as f64;
    dedup.stop()?;
    ensure!(
        dropped == resends && forwarded == events - resends,
        "dedup dropped {dropped} and forwarded {forwarded}; the input held {resends} resends of {events}"
    );
    // Dedup's output is transactional (its offsets hold commit markers too),
    // so "nothing dropped" is: every partition still starts at offset 0.
    let (output_low, _) = tokio::task::block_in_place(|| {
        crate::systems::watermark_sums(&bootstrap, Topic::EventsUnique.default_name())
    })?;
    ensure!(
        output_low == 0,
        "the broker dropped dedup's oldest output (retention): use more partitions"
    );

    // A cluster of its own per run: a run of one size must not pay for the
    // rows, dirty buffers and WAL an earlier run left behind.
    let cluster = tokio::task::block_in_place(|| TestCluster::start(Durability::Durable));
    let db = cluster.database().await;
    let env: Vec<_> = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("DATABASE_URL", db.url.clone()),
    ]
    .into_iter()
    .chain(extra)
    .collect();
    let store = tokio::task::block_in_place(|| consumer("callstream-store", &env))?;
    let store_seconds = tokio::task::block_in_place(|| {
        time_until(
            &store,
            "callstream_store_consumed_records_total",
            forwarded as f64,
        )
    })?;
    // The calls path: the store queued calls in its transactions; its
    // calls task merges and publishes them, and may still be at it.
    let client = db.connect().await;
    let tail = Instant::now();
    loop {
        let behind: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM calls_dirty) + (SELECT count(*) FROM calls_outbox)",
                &[],
            )
            .await?
            .get(0);
        if behind == 0 {
            break;
        }
        ensure!(
            tail.elapsed() < Duration::from_secs(1800),
            "{behind} calls still unpublished after 30 min:\n{}",
            store.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls_tail_seconds = tail.elapsed().as_secs_f64();
    let store_peak_rss_mib = store.peak_rss_mib();
    let store_cpu_us_per_row = 1e6 * store.cpu_seconds() / forwarded as f64;
    let published = metric(&store, "callstream_store_calls_published_total")?;
    store.stop()?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    ensure!(
        rows == forwarded as i64,
        "the store holds {rows} rows for {forwarded} unique events"
    );
    let (calls, keyed): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM calls),
                        (SELECT count(DISTINCT call_key) FROM events WHERE call_key IS NOT NULL)",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    ensure!(
        calls == keyed && calls > 0,
        "the store holds {calls} calls for {keyed} call keys among its events"
    );
    ensure!(
        published >= calls as f64,
        "the outbox published {published} call states for {calls} calls"
    );
    drop(client);
    tokio::task::block_in_place(|| drop(cluster));
    Ok(ConsumerRun {
        events,
        partitions,
        resends,
        dedup_seconds,
        dedup_per_second: events as f64 / dedup_seconds,
        dedup_peak_rss_mib,
        dedup_cpu_us_per_event,
        dedup_broker_cpu_us_per_event,
        forwarded,
        store_seconds,
        store_rows_per_second: forwarded as f64 / store_seconds,
        store_peak_rss_mib,
        store_cpu_us_per_row,
        rows,
        calls,
        calls_tail_seconds,
        calls_path_events_per_second: forwarded as f64 / (store_seconds + calls_tail_seconds),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_workload_request_normalizes_like_the_gateway_would() {
        for i in 0..5_000 {
            super::event_of("t", i).unwrap();
        }
    }
}
