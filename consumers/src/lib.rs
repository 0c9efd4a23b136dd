//! The consumers of `callstream.events.v1`, each a small binary in
//! `src/bin/` over this library:
//!
//! * `callstream-dedup` ([`dedup`]): events → `callstream.events.unique.v1`,
//!   each distinct event once, updates as revisions; exactly-once with
//!   Kafka transactions.
//! * `callstream-store` ([`store`]): unique events → PostgreSQL rows, and
//!   the calls they make ([`calls`]) → the `calls` table and
//!   `callstream.calls.v1`.
//! * `callstream-analytics` ([`analytics`]): unique events → KPI tables.
//! * `callstream-crm` ([`crm`]): unique events → CRM HTTP targets.
//! * `callstream-replay` ([`replay`]): raw or DLQ records → events again,
//!   after a normalizer fix (a command-line tool, not a service).
//!
//! Each consumer supplies only its own logic to one of two loops in
//! `callstream_kafka`: the batched, transactional `batch::BatchLoop` (dedup,
//! and the PostgreSQL consumers through [`pg_sink`]: rows and Kafka
//! positions in one transaction) or the per-record, at-least-once
//! `per_record::PerRecordLoop` (CRM targets, recordings). [`cli`] is the
//! command line every binary shares; [`services`] what dedup, store and
//! analytics start, for their binaries and for `callstream-dev`.

pub mod analytics;
pub mod calls;
pub mod cli;
pub mod config;
pub mod console;
pub mod crm;
pub mod dedup;
mod http_failure;
// Public also for the console, which reads the store's database.
pub mod pg;
pub mod pg_consumer;
pub mod pg_sink;
pub mod recordings;
pub mod replay;
pub mod services;
pub mod store;
pub(crate) mod unique;
