//! Catch-up: `callstream-store` starts on a backlog of unique events (dedup
//! already forwarded them) while live deliveries keep arriving through
//! dedup at `live_rate` per second, as after an hour-long store outage in
//! the morning peak. Measured: the store's rows per second on the backlog
//! (with the live traffic beside it), and each live event's delay from its
//! produce to its row (`events.stored_at`, PostgreSQL's clock on this
//! machine; the store's transaction start, so a batch's own time is not in
//! it), during the catch-up and after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use callstream_schemas::Topic;
use callstream_testkit::postgres::{Durability, TestCluster};
use chrono::{DateTime, Utc};

use crate::consumers::{bulk_producer, event_of, metric, prefill, produce_all};
use crate::systems::{consumer, watermark_sums, Broker};
use crate::workload;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CatchupRun {
    pub backlog: u64,
    pub partitions: i32,
    pub live_rate: f64,
    /// Unique events waiting when the store started.
    pub backlog_rows: u64,
    /// From the store's first row to its last backlog row.
    pub catchup_seconds: f64,
    pub rows_per_second: f64,
    /// Live events sent (resends left out: dedup drops them).
    pub live_sent: usize,
    /// Delay of the live events sent while the store was catching up.
    pub during_p50_s: f64,
    pub during_p99_s: f64,
    pub during_max_s: f64,
    /// Delay of the live events sent after it caught up.
    pub after_p50_s: f64,
    pub after_p99_s: f64,
    pub after_max_s: f64,
}

/// Seconds the live traffic goes on after the backlog is stored.
const AFTER: Duration = Duration::from_secs(10);

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One catch-up per backlog size, each on a broker and a database of its own.
pub fn runs(backlogs: &[u64], live_rate: f64, partitions: i32) -> anyhow::Result<Vec<CatchupRun>> {
    let rt = crate::consumers::two_worker_runtime()?;
    let mut runs = Vec::new();
    for &n in backlogs {
        let run = rt
            .block_on(run(n, live_rate, partitions))
            .with_context(|| format!("catch-up of {n} events"))?;
        eprintln!(
            "catch-up {n}: {:.0} rows/s; live delay during p99 {:.2} s, after p99 {:.3} s",
            run.rows_per_second, run.during_p99_s, run.after_p99_s
        );
        runs.push(run);
    }
    Ok(runs)
}

async fn run(backlog: u64, live_rate: f64, partitions: i32) -> anyhow::Result<CatchupRun> {
    let broker = Broker::start(partitions)?;
    let bootstrap = broker.bootstrap();
    let run_id = format!("k{backlog}");
    prefill(&bootstrap, &run_id, backlog).await?;
    let kafka = [("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone())];
    let dedup = tokio::task::block_in_place(|| consumer("callstream-dedup", &kafka))?;
    // The backlog: dedup forwards it all before the store starts.
    let deadline = Instant::now() + Duration::from_secs(1800);
    while metric(&dedup, "callstream_dedup_consumed_records_total")? < backlog as f64 {
        ensure!(
            Instant::now() < deadline,
            "dedup did not finish the backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let backlog_rows = metric(&dedup, "callstream_dedup_forwarded_records_total")? as u64;
    let (low, _) = tokio::task::block_in_place(|| {
        watermark_sums(&bootstrap, Topic::EventsUnique.default_name())
    })?;
    ensure!(
        low == 0,
        "the broker dropped unique events (retention): use more partitions"
    );

    let cluster = tokio::task::block_in_place(|| TestCluster::start(Durability::Durable));
    let db = cluster.database().await;
    let client = db.connect().await;
    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("DATABASE_URL", db.url.clone()),
    ];

    // Live traffic from now on, through dedup: identity → when it was sent.
    let sent: Arc<Mutex<HashMap<String, DateTime<Utc>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = {
        let (sent, stop, bootstrap) = (sent.clone(), stop.clone(), bootstrap.clone());
        tokio::spawn(async move {
            let producer = bulk_producer(&bootstrap)?;
            // Paced by the clock, not by ticks: a tick that waits for its
            // acknowledgements longer than the tick sends more next time.
            let started = Instant::now();
            let mut produced = 0u64;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let due = (started.elapsed().as_secs_f64() * live_rate) as u64;
                let mut records = Vec::new();
                while produced + (records.len() as u64) < due {
                    if !workload::is_resend(i) {
                        records.push(event_of("live", i)?);
                    }
                    i += 1;
                }
                produced += records.len() as u64;
                let now = Utc::now();
                sent.lock()
                    .unwrap()
                    .extend(records.iter().map(|r| (r.key.clone(), now)));
                produce_all(&producer, &records).await?;
            }
            anyhow::Ok(())
        })
    };

    let store = tokio::task::block_in_place(|| consumer("callstream-store", &env))?;
    // From the store's first row to the backlog's last.
    let mut first: Option<(Instant, f64)> = None;
    let caught_up_at;
    loop {
        let stored = metric(&store, "callstream_store_consumed_records_total")?;
        let now = Instant::now();
        if stored > 0.0 && first.is_none() {
            first = Some((now, stored));
        }
        if stored >= backlog_rows as f64 {
            caught_up_at = Utc::now();
            break;
        }
        ensure!(
            now < deadline,
            "the store did not catch up:\n{}",
            store.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t0, v0) = first.expect("progress seen");
    let secs = t0.elapsed().as_secs_f64();
    let catchup_seconds = if secs > 0.0 && v0 < backlog_rows as f64 {
        secs * backlog_rows as f64 / (backlog_rows as f64 - v0)
    } else {
        secs
    };
    tokio::time::sleep(AFTER).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    live.await??;

    // Every live event stored, then each one's delay.
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let identities: Vec<String> = sent.keys().cloned().collect();
    let rows = loop {
        let rows = client
            .query(
                "SELECT identity, stored_at FROM events WHERE identity = ANY($1)",
                &[&identities],
            )
            .await?;
        if rows.len() == identities.len() {
            break rows;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} live events stored",
            rows.len(),
            identities.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    store.stop()?;
    dedup.stop()?;
    let (mut during, mut after) = (Vec::new(), Vec::new());
    for r in &rows {
        let identity: String = r.get(0);
        let stored: DateTime<Utc> = r.get(1);
        let at = sent[&identity];
        let delay = (stored - at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if at < caught_up_at {
            during.push(delay.max(0.0));
        } else {
            after.push(delay.max(0.0));
        }
    }
    during.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    drop(client);
    tokio::task::block_in_place(|| drop(cluster));
    Ok(CatchupRun {
        backlog,
        partitions,
        live_rate,
        backlog_rows,
        catchup_seconds,
        rows_per_second: backlog_rows as f64 / catchup_seconds,
        live_sent: rows.len(),
        during_p50_s: quantile(&during, 0.5),
        during_p99_s: quantile(&during, 0.99),
        during_max_s: during.last().copied().unwrap_or(0.0),
        after_p50_s: quantile(&after, 0.5),
        after_p99_s: quantile(&after, 0.99),
        after_max_s: after.last().copied().unwrap_or(0.0),
    })
}
