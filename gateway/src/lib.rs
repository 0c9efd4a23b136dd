//! callstream gateway: takes provider webhooks, makes them durable in Kafka
//! (raw + normalized, or DLQ), and only then answers 200.
//!
//! Reading order for a newcomer: [`startup`] (routes) → [`ingest`] (the one
//! handler) → [`deliver`] (Kafka, or the local [`spool`] when Kafka cannot)
//! → `callstream_kafka::publish` (Kafka, and the durability guarantee). What each
//! provider's payload means lives in `callstream_schemas::providers`.

pub(crate) mod auth;
mod body;
pub mod cli;
pub mod config;
pub(crate) mod deliver;
pub(crate) mod error;
pub(crate) mod ingest;
mod keylock;
pub(crate) mod metrics;
mod server;
pub(crate) mod signature;
pub(crate) mod sources;
#[cfg(feature = "testkit")]
pub mod spool;
#[cfg(not(feature = "testkit"))]
mod spool;
/// Public for `callstream-dev`, which runs the gateway in its own process.
pub mod startup;
pub(crate) mod telemetry;

use callstream_schemas::Topic;

/// The topics the gateway writes: what `topics` must name apart, what
/// [`deliver`] publishes to, what [`metrics`] prepares a series for.
pub(crate) const PUBLISHED_TOPICS: [Topic; 3] = [Topic::Raw, Topic::Events, Topic::Dlq];
