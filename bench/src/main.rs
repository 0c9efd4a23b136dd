//! callstream's benchmark harness. `callstream-bench all` runs everything
//! BENCHMARKS.md reports; `callstream-bench smoke` is the few-second run CI
//! keeps alive. See BENCHMARKS.md for the method.

mod catchup;
mod cli;
mod consumers;
mod drain;
mod http;
mod load;
mod recovery;
mod replay;
mod report;
mod send;
mod systems;
mod workload;

fn main() -> anyhow::Result<()> {
    cli::run()
}
