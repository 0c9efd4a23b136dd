//! The load generator: keep-alive HTTP/1.1 connections on loopback posting
//! the workload, either as fast as the server answers (closed loop) or at a
//! fixed rate (open loop).
//!
//! Fixed-rate runs measure without coordinated omission (as wrk2 does): a
//! pacer thread stamps each request with the time it was *due*, and latency
//! is counted from that stamp, not from when a connection was free to send
//! it. A server that stalls is charged for every request that queued behind
//! the stall. The pacer sleeps between requests (no spinning, it shares two
//! cores with the server) and releases whatever is due when it wakes, so a
//! request can leave up to one timer slack (~0.1 ms) late; that is charged to
//! the server too, which makes the figures conservative.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::workload;

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each connection sends its next request when the previous one answered.
    FullSpeed,
    /// Requests per second, spread evenly over the run.
    Fixed(f64),
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    pub pace: Pace,
    pub warmup: Duration,
    pub duration: Duration,
    /// Keeps ids unique across runs against the same broker.
    pub run: String,
    /// First request index (so successive runs continue the sequence).
    pub first: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Requests answered in the measured window (after warm-up).
    pub requests: u64,
    pub ok: u64,
    pub non_2xx: u64,
    /// Connection or protocol failures (no answer at all).
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// 2xx answers over the whole run, warm-up included (for the durability check).
    pub ok_total: u64,
    /// Requests sent over the whole run; the next run starts here.
    pub next_index: u64,
    /// Resends among the measured requests.
    pub resends: u64,
}

struct Shared {
    spec: LoadSpec,
    next: AtomicU64,
    measure_from: Instant,
    ok_total: AtomicU64,
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    resends: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // 1 µs to 60 s, 3 significant digits.
            hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
            ..Tally::default()
        }
    }

    fn merge(&mut self, other: Tally) {
        if let (Some(h), Some(o)) = (self.hist.as_mut(), other.hist.as_ref()) {
            h.add(o).expect("same bounds");
        }
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.resends += other.resends;
    }
}

/// Runs one load on a single-threaded runtime of its own (the generator
/// takes at most one core from the server).
pub fn run(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(spec))
}

async fn run_async(spec: LoadSpec) -> anyhow::Result<LoadReport> {
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let shared = Arc::new(Shared {
        next: AtomicU64::new(spec.first),
        measure_from,
        ok_total: AtomicU64::new(0),
        spec: spec.clone(),
    });

    // Fixed rate: the pacer thread hands out (index, due) stamps.
    let (tx, rx) = async_channel::unbounded::<(u64, Instant)>();
    let pacer = match spec.pace {
        Pace::Fixed(rate) => {
            let shared = shared.clone();
            Some(std::thread::spawn(move || {
                pace(&shared, rate, start, end, tx)
            }))
        }
        Pace::FullSpeed => {
            drop(tx);
            None
        }
    };

    let mut workers = Vec::new();
    for _ in 0..spec.connections {
        let shared = shared.clone();
        let rx = rx.clone();
        workers.push(tokio::spawn(
            async move { worker(shared, rx, start, end).await },
        ));
    }
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await??);
    }
    if let Some(p) = pacer {
        p.join().expect("pacer thread");
    }
    let hist = tally.hist.expect("histogram");
    let seconds = spec.duration.as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    let requests = tally.ok + tally.non_2xx + tally.errors;
    Ok(LoadReport {
        requests,
        ok: tally.ok,
        non_2xx: tally.non_2xx,
        errors: tally.errors,
        seconds,
        rps: requests as f64 / seconds,
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        p999_ms: ms(hist.value_at_quantile(0.999)),
        max_ms: ms(hist.max()),
        ok_total: shared.ok_total.load(Ordering::Relaxed),
        next_index: shared.next.load(Ordering::Relaxed),
        resends: tally.resends,
    })
}

fn pace(
    shared: &Shared,
    rate: f64,
    start: Instant,
    end: Instant,
    tx: async_channel::Sender<(u64, Instant)>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut k: u32 = 0;
    let mut due = start;
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // Release everything due by now, each with its own due time.
        let now = Instant::now();
        while due <= now && due < end {
            let index = shared.next.fetch_add(1, Ordering::Relaxed);
            if tx.send_blocking((index, due)).is_err() {
                return;
            }
            k += 1;
            due = start + interval * k;
        }
    }
    // Dropping `tx` closes the channel: workers finish what is queued.
}

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(
    shared: Arc<Shared>,
    rx: async_channel::Receiver<(u64, Instant)>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let spec = &shared.spec;
    let mut tally = Tally::new();
    let mut sender = connect(spec.addr).await?;
    tokio::time::sleep_until(start.into()).await;
    loop {
        let (index, due) = match spec.pace {
            Pace::FullSpeed => {
                if Instant::now() >= end {
                    break;
                }
                (shared.next.fetch_add(1, Ordering::Relaxed), Instant::now())
            }
            Pace::Fixed(_) => match rx.recv().await {
                Ok(stamp) => stamp,
                Err(_) => break,
            },
        };
        let http_req = http_request(workload::request(&spec.run, index))?;
        if sender.ready().await.is_err() {
            sender = connect(spec.addr).await?;
        }
        let outcome = match sender.send_request(http_req).await {
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Ok(_) => Some(status),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let done = Instant::now();
        if outcome.is_some_and(|s| s.is_success()) {
            shared.ok_total.fetch_add(1, Ordering::Relaxed);
        }
        if due < shared.measure_from {
            continue; // warm-up
        }
        let micros = (done - due).as_micros().max(1) as u64;
        tally
            .hist
            .as_mut()
            .expect("histogram")
            .saturating_record(micros);
        if workload::is_resend(index) {
            tally.resends += 1;
        }
        match outcome {
            Some(s) if s.is_success() => tally.ok += 1,
            Some(_) => tally.non_2xx += 1,
            None => {
                tally.errors += 1;
                // The connection is gone; open a new one.
                sender = connect(spec.addr).await?;
            }
        }
    }
    Ok(tally)
}

/// A workload request as hyper sends it.
pub fn http_request(req: workload::Request) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(req.method)
        .uri(&req.target)
        .header(hyper::header::HOST, "127.0.0.1");
    if let Some(ct) = req.content_type {
        builder = builder.header(hyper::header::CONTENT_TYPE, ct);
    }
    if let Some(auth) = req.authorization {
        builder = builder.header(hyper::header::AUTHORIZATION, auth);
    }
    Ok(builder.body(Full::new(Bytes::from(req.body)))?)
}

/// Sends request `index` of `run` once and returns its status.
pub fn send_one(addr: SocketAddr, run: &str, index: u64) -> anyhow::Result<u16> {
    let req = http_request(workload::request(run, index))?;
    let (status, _) = once(addr, req)?;
    Ok(status)
}

/// GET `path` (a metrics page, say) and return the body.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let req = Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let (status, body) = once(addr, req)?;
    anyhow::ensure!(status == 200, "GET {path}: {status}");
    Ok(body)
}

/// One request on a runtime of its own, on a thread of its own (so callers
/// may be inside a runtime already).
fn once(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, String)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| once_here(addr, req))
            .join()
            .expect("request thread")
    })
}

fn once_here(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sender = connect(addr).await?;
        let resp =
            tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}
