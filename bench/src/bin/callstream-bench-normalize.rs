//! The gateway's CPU work between reading a body and handing records to
//! Kafka, measured alone: each provider's `normalize` (parse, map, seal)
//! plus the event record's headers, over the HTTP benchmark's own deliveries.
//! The baseline, run in the same process and interleaved, is parsing the same
//! body into a generic tree (`serde_json::Value`, or the form's pairs): what
//! any consumer of these bodies pays before doing anything with them.
//!
//! Its own binary because it runs under the gateway's allocator (mimalloc),
//! which the load generator does not use. BENCHMARKS.md has the method.

#[path = "../normalize.rs"]
mod normalize;
#[path = "../workload.rs"]
#[allow(dead_code)]
mod workload;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    normalize::run()
}
