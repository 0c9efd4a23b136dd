//! Turns measurements into the tables of BENCHMARKS.md and checks the targets.

use std::fmt::Write;

use crate::consumers::ConsumerRun;
use crate::http::{System, Turn};
use crate::load::LoadReport;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per system, medians over rounds; ratios are taken within each round.
pub struct Summary {
    pub system: System,
    pub rps: f64,
    pub ratio: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max_p99: f64,
    pub half_rate: f64,
    pub rss: f64,
    pub non_2xx: u64,
    pub errors: u64,
    pub acked: u64,
    pub in_kafka: Option<i64>,
    pub drain: Option<f64>,
    /// The ceiling at this system's half rate: p50, p99, p99.9 (medians).
    pub ceiling_at_half: Option<[f64; 3]>,
    /// The gateway's own histogram over its half-rate runs: share within
    /// 2 ms and the p99's bucket bound in ms (medians).
    pub server_half: Option<[f64; 2]>,
}

impl Summary {
    /// Every acknowledged delivery reached Kafka (`None`: stores nothing).
    pub fn durable(&self) -> Option<bool> {
        self.in_kafka.map(|k| k >= self.acked as i64)
    }
}

pub fn summarize(turns: &[Turn]) -> Vec<Summary> {
    let systems = [
        System::Ceiling,
        System::Peer,
        System::Gateway,
        System::GatewaySpool,
    ];
    let ceiling_rps = |round| {
        turns
            .iter()
            .find(|t| t.round == round && t.system == System::Ceiling)
            .map(|t| t.max.rps)
    };
    systems
        .into_iter()
        .filter_map(|system| {
            let mine: Vec<&Turn> = turns.iter().filter(|t| t.system == system).collect();
            if mine.is_empty() {
                return None;
            }
            let of = |f: &dyn Fn(&Turn) -> f64| median(mine.iter().map(|t| f(t)).collect());
            Some(Summary {
                system,
                rps: of(&|t| t.max.rps),
                ratio: median(
                    mine.iter()
                        .filter_map(|t| Some(t.max.rps / ceiling_rps(t.round)?))
                        .collect(),
                ),
                p50: of(&|t| t.half.p50_ms),
                p99: of(&|t| t.half.p99_ms),
                p999: of(&|t| t.half.p999_ms),
                max_p99: of(&|t| t.max.p99_ms),
                half_rate: of(&|t| t.half.rps),
                rss: mine.iter().map(|t| t.peak_rss_mib).fold(0.0, f64::max),
                non_2xx: mine.iter().map(|t| t.max.non_2xx + t.half.non_2xx).sum(),
                errors: mine.iter().map(|t| t.max.errors + t.half.errors).sum(),
                acked: mine.iter().map(|t| t.acked).sum(),
                in_kafka: mine.iter().map(|t| t.in_kafka).sum::<Option<i64>>(),
                drain: mine.iter().filter_map(|t| t.drain_seconds).reduce(f64::max),
                ceiling_at_half: {
                    let refs: Vec<_> = mine
                        .iter()
                        .filter_map(|t| t.ceiling_at_half.as_ref())
                        .collect();
                    (!refs.is_empty()).then(|| {
                        let of =
                            |f: fn(&LoadReport) -> f64| median(refs.iter().map(|r| f(r)).collect());
                        [of(|r| r.p50_ms), of(|r| r.p99_ms), of(|r| r.p999_ms)]
                    })
                },
                server_half: {
                    let own: Vec<_> = mine.iter().filter_map(|t| t.server_half.as_ref()).collect();
                    (!own.is_empty()).then(|| {
                        [
                            median(own.iter().map(|l| l.within_2ms).collect()),
                            median(own.iter().map(|l| l.p99_bucket_ms).collect()),
                        ]
                    })
                },
            })
        })
        .collect()
}

pub fn http_table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    out.push_str(
        "| system | max req/s | × ceiling | p50 / p99 / p99.9 at half rate (ms) | p99 at max (ms) | peak RSS (MiB) | non-2xx | 2xx → in Kafka |\n\
         |---|---:|---:|---|---:|---:|---:|---|\n",
    );
    for s in summaries {
        let kafka = match (s.in_kafka, s.durable()) {
            (Some(k), Some(true)) => format!("{} → {k} ✓", s.acked),
            (Some(k), _) => format!("{} → {k} ✗ LOST", s.acked),
            (None, _) => "n/a (stores nothing)".into(),
        };
        let drain = s
            .drain
            .map(|d| format!(" (drained in {d:.1} s)"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.2} / {:.2} / {:.2} at {:.0}/s | {:.2} | {:.1} | {} | {kafka}{drain} |",
            s.system.label(),
            s.rps,
            s.ratio,
            s.p50,
            s.p99,
            s.p999,
            s.half_rate,
            s.max_p99,
            s.rss,
            s.non_2xx + s.errors,
        );
    }
    for s in summaries {
        if let Some([within, p99_bucket]) = s.server_half {
            let _ = writeln!(
                out,
                "\n{}, as its own request histogram saw its half-rate runs: \
                 {:.1} % of requests within 2 ms, the p99 in the bucket up to {p99_bucket} ms.",
                s.system.label(),
                100.0 * within,
            );
        }
        if let Some([p50, p99, p999]) = s.ceiling_at_half {
            let _ = writeln!(
                out,
                "\nThe ceiling at {}'s half rate ({:.0}/s), the machine's own latency there: \
                 p50 / p99 / p99.9 {p50:.2} / {p99:.2} / {p999:.2} ms.",
                s.system.label(),
                s.half_rate,
            );
        }
    }
    out
}

pub fn consumer_table(runs: &[ConsumerRun]) -> String {
    let mut out = String::new();
    out.push_str(
        "| input events (resends), partitions | dedup events/s | dedup µs/event (wall) | dedup CPU µs/event (own / broker) | dedup RSS (MiB) | store rows/s (PostgreSQL, fsync on) | store µs/row (wall) | store CPU µs/row | store RSS (MiB) |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let _ = writeln!(
            out,
            "| {} ({}), {} | {:.0} | {:.2} | {:.2} / {:.2} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} |",
            r.events,
            r.resends,
            r.partitions,
            r.dedup_per_second,
            1e6 / r.dedup_per_second,
            r.dedup_cpu_us_per_event,
            r.dedup_broker_cpu_us_per_event,
            r.dedup_peak_rss_mib,
            r.store_rows_per_second,
            1e6 / r.store_rows_per_second,
            r.store_cpu_us_per_row,
            r.store_peak_rss_mib,
        );
    }
    out
}

/// The calls path of each run: the store's rows merged into calls and
/// published, and the cost per unique event.
pub fn calls_table(runs: &[ConsumerRun]) -> String {
    let mut out = String::new();
    out.push_str(
        "| unique events | calls | store s (rows + calls) | outbox tail s | calls path events/s | µs/event (wall) | store CPU µs/event |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.2} | {:.0} | {:.2} | {:.2} |",
            r.forwarded,
            r.calls,
            r.store_seconds,
            r.calls_tail_seconds,
            r.calls_path_events_per_second,
            1e6 / r.calls_path_events_per_second,
            r.store_cpu_us_per_row,
        );
    }
    out
}

/// The targets, each with its measured value; `false` = missed.
pub fn targets(summaries: &[Summary], consumers: &[ConsumerRun]) -> Vec<(String, bool)> {
    let get = |system| summaries.iter().find(|s| s.system == system);
    let mut out = Vec::new();
    if let Some(g) = get(System::Gateway) {
        out.push((
            format!("gateway ≥ 60 % of the ceiling: {:.0} %", g.ratio * 100.0),
            g.ratio >= 0.6,
        ));
        let reference = g
            .ceiling_at_half
            .map(|[_, p99, _]| format!(" (the ceiling at that rate: {p99:.2} ms)"))
            .unwrap_or_default();
        out.push((
            format!(
                "gateway p99 ≤ 2 ms at half its max rate: {:.2} ms{reference}",
                g.p99
            ),
            g.p99 <= 2.0,
        ));
        out.push((
            format!("gateway peak RSS ≤ 64 MiB: {:.1} MiB", g.rss),
            g.rss <= 64.0,
        ));
        if let Some(p) = get(System::Peer) {
            let x = g.rps / p.rps;
            out.push((format!("gateway ≥ 2× the peer: {x:.2}×"), x >= 2.0));
        }
    }
    if let Some(s) = get(System::GatewaySpool) {
        out.push((
            format!("spool path ≥ 30 % of the ceiling: {:.0} %", s.ratio * 100.0),
            s.ratio >= 0.3,
        ));
    }
    for s in summaries {
        if let Some(durable) = s.durable() {
            out.push((
                format!(
                    "{}: every 2xx in Kafka ({} acked, {} in Kafka)",
                    s.system.label(),
                    s.acked,
                    s.in_kafka.unwrap_or(0)
                ),
                durable,
            ));
        }
        out.push((
            format!("{}: no non-2xx, no errors", s.system.label()),
            s.non_2xx + s.errors == 0,
        ));
    }
    if let Some(big) = consumers.iter().max_by_key(|r| r.events) {
        out.push((
            format!("dedup ≥ 100k events/s: {:.0}/s", big.dedup_per_second),
            big.dedup_per_second >= 100_000.0,
        ));
        out.push((
            format!("store ≥ 30k rows/s: {:.0}/s", big.store_rows_per_second),
            big.store_rows_per_second >= 30_000.0,
        ));
    }
    out
}

/// The dedup restore figures, one row per size, and the cost per identity
/// relative to the smallest size (flat means 1.0).
pub fn restore_table(runs: &[crate::recovery::RestoreRun]) -> String {
    let mut t = String::from(
        "| identities | partitions | restore (s) | identities/s | reader CPU µs/identity | broker CPU µs/identity | cost vs smallest |\n|---|---|---|---|---|---|---|\n",
    );
    let base = runs.first().map(|r| r.seconds / r.identities as f64);
    for r in runs {
        let ratio = base.map_or(1.0, |b| (r.seconds / r.identities as f64) / b);
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            r.identities,
            r.partitions,
            r.seconds,
            r.identities_per_second,
            r.cpu_us_per_identity,
            r.broker_cpu_us_per_identity,
            ratio
        ));
    }
    t
}

/// The replay figures, one row per size, with the cost per record relative
/// to the smallest size.
pub fn replay_table(runs: &[crate::replay::ReplayRun]) -> String {
    let mut t = String::from(
        "| raw records | partitions | dry run (s) | dry run records/s | dry run CPU µs/record | replay (s) | replay records/s | replay CPU µs/record | cost vs smallest |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let base = runs.first().map(|r| r.replay_seconds / r.records as f64);
    for r in runs {
        let ratio = base.map_or(1.0, |b| (r.replay_seconds / r.records as f64) / b);
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.0} | {:.1} | {:.2} |\n",
            r.records,
            r.partitions,
            r.dry_run_seconds,
            r.dry_run_per_second,
            r.dry_run_cpu_us_per_record,
            r.replay_seconds,
            r.replay_per_second,
            r.cpu_us_per_record,
            ratio
        ));
    }
    t
}

/// The spool drain figures.
pub fn drain_table(r: &crate::drain::DrainRun) -> String {
    format!(
        "| spooled | deliveries | fill (s) | drain (s) | MiB/s | deliveries/s | live sent | live non-2xx | live worst-second p50 / p99 / max (ms) |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | {:.2} GiB | {} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {:.1} / {:.1} / {:.1} |\n",
        r.spooled_bytes as f64 / (1u64 << 30) as f64,
        r.spooled_deliveries,
        r.fill_seconds,
        r.drain_seconds,
        r.drain_mib_per_second,
        r.drain_deliveries_per_second,
        r.live_requests,
        r.live_non_2xx + r.live_errors,
        r.live_p50_ms,
        r.live_p99_ms,
        r.live_max_ms
    )
}

pub fn catchup_table(runs: &[crate::catchup::CatchupRun]) -> String {
    let mut out = String::from(
        "| backlog | partitions | live/s | backlog rows | catch-up (s) | rows/s | live sent | live delay during, p50 / p99 / max (s) | after, p50 / p99 / max (s) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.1} | {:.0} | {} | {:.2} / {:.2} / {:.2} | {:.3} / {:.3} / {:.3} |\n",
            r.backlog,
            r.partitions,
            r.live_rate,
            r.backlog_rows,
            r.catchup_seconds,
            r.rows_per_second,
            r.live_sent,
            r.during_p50_s,
            r.during_p99_s,
            r.during_max_s,
            r.after_p50_s,
            r.after_p99_s,
            r.after_max_s
        ));
    }
    out
}
