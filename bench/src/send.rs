//! `callstream-bench send`: a counted load for `bench/callgrind`, which
//! measures instructions per acknowledged record under valgrind. Time-boxed
//! runs (`load.rs`) do not fit there: the count of requests in a window must
//! be exact, and a server under valgrind is ~50× slower. Sends `count`
//! requests of the workload over `connections` keep-alive connections (each
//! sends when its previous request answered), and prints one JSON line:
//! the answers and, with `--bootstrap`, the records `--topic` gained
//! meanwhile (sums of high watermarks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use http_body_util::BodyExt;

use crate::workload::{self, Kind};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// The benchmark's mix (every provider and kind, 10 % resends).
    Mix,
    /// Only first deliveries of Onoff CDRs (no resends).
    OnoffCdr,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Requests to send.
    #[arg(long)]
    pub count: u64,
    /// Keep-alive connections, each sequential.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Keeps ids unique across the sends of one broker's life.
    #[arg(long, default_value = "cg")]
    pub run: String,
    /// First workload index (successive sends continue the sequence).
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    #[arg(long, value_enum, default_value = "mix")]
    pub workload: Workload,
    /// Broker to count the records appended to `--topic` on.
    #[arg(long)]
    pub bootstrap: Option<String>,
    #[arg(long)]
    pub topic: Vec<String>,
}

/// The workload indices a send of `args` posts.
fn indices(args: &SendArgs) -> Vec<u64> {
    let wanted = |i: &u64| match args.workload {
        Workload::Mix => true,
        Workload::OnoffCdr => {
            !workload::is_resend(*i) && workload::kind_of_request(*i) == Kind::OnoffCdr
        }
    };
    (args.first..)
        .filter(wanted)
        .take(args.count as usize)
        .collect()
}

fn appended(bootstrap: &str, topics: &[String]) -> anyhow::Result<i64> {
    let mut sum = 0;
    for topic in topics {
        sum += crate::systems::watermark_sums(bootstrap, topic)
            .with_context(|| format!("watermarks of {topic}"))?
            .1;
    }
    Ok(sum)
}

/// Sends, prints the JSON line; fails on any answer that is not a 2xx.
pub fn run(args: &SendArgs) -> anyhow::Result<()> {
    let indices = Arc::new(indices(args));
    let count = |b: &Option<String>| b.as_deref().map(|b| appended(b, &args.topic)).transpose();
    let before = count(&args.bootstrap)?;
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ok, failed) = rt.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..args.connections.max(1) {
            let (indices, next, addr, run) =
                (indices.clone(), next.clone(), args.addr, args.run.clone());
            workers.push(tokio::spawn(async move {
                worker(addr, &run, &indices, &next).await
            }));
        }
        let (mut ok, mut failed) = (0u64, Vec::new());
        for w in workers {
            let (o, f) = w.await??;
            ok += o;
            failed.extend(f);
        }
        anyhow::Ok((ok, failed))
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let after = count(&args.bootstrap)?;
    let next_index = indices.last().map_or(args.first, |&i| i + 1);
    println!(
        "{}",
        serde_json::json!({
            "requests": indices.len(),
            "ok": ok,
            "failed": failed.len(),
            "records": before.zip(after).map(|(b, a)| a - b),
            "seconds": seconds,
            "next_index": next_index,
        })
    );
    ensure!(
        failed.is_empty(),
        "answers other than 2xx: {:?}",
        &failed[..failed.len().min(5)]
    );
    Ok(())
}

async fn worker(
    addr: SocketAddr,
    run: &str,
    indices: &[u64],
    next: &AtomicU64,
) -> anyhow::Result<(u64, Vec<String>)> {
    let mut sender = crate::load::connect(addr).await?;
    let (mut ok, mut failed) = (0, Vec::new());
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed) as usize;
        let Some(&i) = indices.get(k) else {
            return Ok((ok, failed));
        };
        let http_req = crate::load::http_request(workload::request(run, i))?;
        if sender.ready().await.is_err() {
            sender = crate::load::connect(addr).await?;
        }
        match sender.send_request(http_req).await {
            Ok(resp) if resp.status().is_success() => {
                resp.into_body().collect().await?;
                ok += 1;
            }
            Ok(resp) => failed.push(format!("request {i}: {}", resp.status())),
            Err(err) => {
                failed.push(format!("request {i}: {err}"));
                sender = crate::load::connect(addr).await?;
            }
        }
    }
}
