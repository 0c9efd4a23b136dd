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
    Ok(())
}
