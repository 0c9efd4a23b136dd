//! `callstream-bench-normalize`, all but its `main`: the deliveries, the
//! timing and the table. Compiled into that binary only (by `#[path]`),
//! beside the load generator's workload module.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;

use callstream_kafka::wire::{self, event_record};
use callstream_schemas::{providers, Provider, Topic};

use crate::workload;

#[derive(Parser)]
#[command(about = "Normalization cost per delivery, by kind, against parsing the body alone")]
struct Args {
    /// Deliveries of the HTTP workload to use (every kind, in its mix).
    #[arg(long, default_value_t = 20_000)]
    deliveries: u64,
    /// Passes over them; each pass times normalization and the baseline, interleaved.
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// Only the deliveries of this kind (`OnoffCdr`, `TelecmiEvent`, ...), for profiling one.
    #[arg(long)]
    only: Option<String>,
    /// Aircall deliveries for the declared-against-built-in comparison
    /// (0 skips it).
    #[arg(long, default_value_t = 5_000)]
    aircall: u64,
}

/// One workload delivery, as the gateway receives it.
struct Delivery {
    kind: workload::Kind,
    provider: usize,
    delivery: wire::Delivery<'static>,
    body: Vec<u8>,
}

impl Delivery {
    /// The timed work: normalize, then the event record (as the gateway).
    fn normalize(
        &self,
        providers: &[Box<dyn Provider>],
    ) -> Result<callstream_kafka::publish::OutRecord, callstream_schemas::NormalizeError> {
        self.delivery
            .normalize(
                &*providers[self.provider],
                &self.body,
                Topic::Raw.default_name(),
            )
            .map(event_record)
    }

    /// The baseline: the same input parsed into a generic tree.
    fn parse_generic(&self) -> usize {
        let form = |s: &[u8]| {
            form_urlencoded::parse(s)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect::<BTreeMap<String, String>>()
                .len()
        };
        match self.delivery.content_type.as_deref() {
            Some("application/json") => serde_json::from_slice::<serde_json::Value>(&self.body)
                .map(|v| v.as_object().map_or(0, |o| o.len()))
                .unwrap_or(0),
            Some(_) => form(&self.body),
            None => form(self.delivery.query.as_bytes()),
        }
    }
}

fn deliveries(count: u64, providers: &[Box<dyn Provider>]) -> anyhow::Result<Vec<Delivery>> {
    (0..count)
        .map(|i| {
            let (provider, delivery, body) = workload::delivery("normalize", i, providers)?;
            Ok(Delivery {
                kind: workload::kind_of_request(i),
                provider,
                delivery,
                body,
            })
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Tally {
    deliveries: u64,
    normalize: Duration,
    baseline: Duration,
}

pub fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let providers = providers::all();
    let mut all = deliveries(args.deliveries, &providers)?;
    if let Some(only) = &args.only {
        all.retain(|d| format!("{:?}", d.kind) == *only);
        if all.is_empty() {
            bail!("no deliveries of kind {only:?}");
        }
    }
    let mut kinds: Vec<workload::Kind> = all.iter().map(|d| d.kind).collect();
    kinds.sort();
    kinds.dedup();
    let by_kind: Vec<Vec<&Delivery>> = kinds
        .iter()
        .map(|k| all.iter().filter(|d| d.kind == *k).collect())
        .collect();
    // Every delivery must normalize: a failure would time the DLQ path.
    for d in &all {
        if let Err(err) = d.normalize(&providers) {
            bail!("{:?} did not normalize: {err}", d.kind);
        }
    }
    let mut tallies = vec![Tally::default(); kinds.len()];
    for _ in 0..args.passes {
        for (group, tally) in by_kind.iter().zip(tallies.iter_mut()) {
            let started = Instant::now();
            for d in group {
                black_box(d.normalize(&providers).ok());
            }
            tally.normalize += started.elapsed();
            let started = Instant::now();
            for d in group {
                black_box(d.parse_generic());
            }
            tally.baseline += started.elapsed();
            tally.deliveries += group.len() as u64;
        }
    }

    println!("| kind | share | normalize + record (ns) | body parsed into a tree (ns) | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let ns = |d: Duration, n: u64| d.as_nanos() as f64 / n.max(1) as f64;
    let mut mix = Tally::default();
    for (kind, tally) in kinds.iter().zip(&tallies) {
        mix.deliveries += tally.deliveries;
        mix.normalize += tally.normalize;
        mix.baseline += tally.baseline;
        println!(
            "| {kind:?} | {:.0} % | {:.0} | {:.0} | {:.2} |",
            100.0 * tally.deliveries as f64 / (args.passes * all.len()) as f64,
            ns(tally.normalize, tally.deliveries),
            ns(tally.baseline, tally.deliveries),
            ns(tally.normalize, tally.deliveries) / ns(tally.baseline, tally.deliveries),
        );
    }
    println!(
        "| the mix | 100 % | {:.0} | {:.0} | {:.2} |",
        ns(mix.normalize, mix.deliveries),
        ns(mix.baseline, mix.deliveries),
        mix.normalize.as_secs_f64() / mix.baseline.as_secs_f64(),
    );
    if args.aircall > 0 {
        declared_against_built_in(args.aircall, args.passes)?;
    }
    Ok(())
}

/// The worked example of `docs/declared-sources.md`: Aircall as a
/// declarative source, which a test holds to the built-in's events.
const DECLARED_AIRCALL: &str = include_str!("../../docs/examples/aircall-declared.toml");

/// Aircall's call events in the mix a call gives (created, answered,
/// hung up, ended; a comment on a tenth), numbered apart.
fn aircall_bodies(count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let call = 100_000 + i / 4;
            let event = ["call.created", "call.answered", "call.hungup", "call.ended"][(i % 4) as usize];
            let event = if i % 40 == 39 { "call.commented" } else { event };
            let done = matches!(event, "call.ended" | "call.commented");
            serde_json::to_vec(&serde_json::json!({
                "resource": "call", "event": event, "timestamp": 1_732_622_900 + i, "token": "t",
                "data": {
                    "id": call, "direction": if i % 3 == 0 { "outbound" } else { "inbound" },
                    "status": if done { "done" } else { "answered" },
                    "started_at": 1_732_622_895, "answered_at": 1_732_622_900,
                    "ended_at": if done { serde_json::json!(1_732_622_990) } else { serde_json::Value::Null },
                    "duration": if done { 90 } else { 0 }, "raw_digits": format!("+1 800-555-{:04}", i % 10_000),
                    "missed_call_reason": null, "voicemail": null,
                    "recording": if done { serde_json::json!(format!("https://aircall.example/rec/{call}.mp3")) } else { serde_json::Value::Null },
                    "user": {"id": 456 + i % 7, "name": "Jane Agent", "email": "jane@example.com"},
                    "number": {"digits": "+33 1 23 45 67 89"},
                    "contact": {"id": 77, "first_name": "Ada", "last_name": "Lovelace", "company_name": "Acme"},
                    "tags": [{"id": 9, "name": "VIP", "color": "#ff0000"}],
                    "comments": if event == "call.commented" { serde_json::json!([{"content": "Call back"}]) } else { serde_json::json!([]) }
                }
            }))
            .expect("JSON")
        })
        .collect()
}

/// The declared Aircall against the built-in one, on the same deliveries,
/// interleaved pass by pass; each normalizes and builds the event record.
fn declared_against_built_in(count: u64, passes: usize) -> anyhow::Result<()> {
    use callstream_schemas::declared::{Declaration, DeclaredSource};
    use callstream_schemas::providers::aircall::Aircall;
    #[derive(serde::Deserialize)]
    struct File {
        sources: BTreeMap<String, Source>,
    }
    #[derive(serde::Deserialize)]
    struct Source {
        declared: Declaration,
    }
    let file: File = toml::from_str(DECLARED_AIRCALL)?;
    let declared = DeclaredSource::compile(
        "aircall_declared",
        &file.sources["aircall_declared"].declared,
    )
    .map_err(|e| anyhow::anyhow!("{}: {}", e.setting, e.problem))?;
    let bodies = aircall_bodies(count);
    let ctx = callstream_schemas::Context {
        default_tenant: "default",
        received_at: chrono::Utc::now(),
        request_id: "bench",
        raw_topic: Topic::Raw.default_name(),
    };
    let run = |provider: &dyn Provider, body: &[u8]| {
        let req = callstream_schemas::RawRequest {
            method: "POST",
            route: "webhook",
            query: "",
            content_type: Some("application/json"),
            body,
        };
        provider.normalize(&req, &ctx).map(event_record)
    };
    for body in &bodies {
        let (a, b) = (run(&Aircall, body), run(&declared, body));
        if a.is_err() || b.is_err() {
            bail!(
                "an Aircall delivery did not normalize: {:?} / {:?}",
                a.err(),
                b.err()
            );
        }
    }
    let (mut built_in, mut mapped) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..passes {
        let started = Instant::now();
        for body in &bodies {
            black_box(run(&Aircall, body).ok());
        }
        built_in += started.elapsed();
        let started = Instant::now();
        for body in &bodies {
            black_box(run(&declared, body).ok());
        }
        mapped += started.elapsed();
    }
    let n = (bodies.len() * passes) as f64;
    let (built_in, mapped) = (built_in.as_nanos() as f64 / n, mapped.as_nanos() as f64 / n);
    println!();
    println!("| Aircall deliveries ({count} × {passes} passes) | normalize + record (ns) | ratio to built-in |");
    println!("|---|---:|---:|");
    println!("| built-in `aircall` | {built_in:.0} | 1.00 |");
    println!(
        "| declared (docs/examples/aircall-declared.toml) | {mapped:.0} | {:.2} |",
        mapped / built_in
    );
    Ok(())
}
