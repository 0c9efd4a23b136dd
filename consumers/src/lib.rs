//! The consumers of `callstream.events.v1`, each a small binary in
//! `src/bin/` over this library:
//!
//! * `callstream-dedup` ([`dedup`]): events → `callstream.events.unique.v1`,
//!   each distinct event once, updates as revisions; exactly-once with
//!   Kafka transactions.
//! * `callstream-store` ([`store`]): unique events → PostgreSQL rows.
//! * `callstream-analytics` ([`analytics`]): unique events → KPI tables.
//! * `callstream-crm` ([`crm`]): unique events → CRM HTTP targets.
//!
//! The PostgreSQL consumers share [`pg_sink`]: rows and Kafka positions in
//! one transaction.

pub mod config;
pub mod crm;
pub mod kafka;
pub mod pg;
pub mod pg_sink;
pub mod runtime;
