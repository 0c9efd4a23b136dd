//! The contract between the outside world and callstream.
//!
//! * [`providers`]: each provider's webhook payload types and how one delivery
//!   becomes one normalized [`Event`]. Framework-free (a [`RawRequest`] in,
//!   an [`Event`] out) so the gateway, replay tooling and fuzzers share them.
//! * [`event`]: the cross-provider event published on `callstream.events.v1`.
//! * [`call`]: which events describe one call, and the merged call
//!   published on `callstream.calls.v1`.
//! * [`topics`]: every topic the system reads or writes, in one place.
//! * [`raw`]: the Kafka header layout of `callstream.raw.v1` and the DLQ,
//!   and the `cs_*` headers consumers add to their dead letters.
//!
//! The JSON Schema files under `schemas/json/` are generated from these types
//! (`cargo run -p callstream-schemas --bin callstream-schemas`); a test fails
//! when they drift.

pub mod call;
pub mod canonical;
pub mod declared;
pub mod event;
pub mod lenient;
pub mod provider;
pub mod providers;
pub mod raw;
pub mod recording;
pub mod topics;

pub use event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
pub use provider::{Context, NormalizeError, Provider, RawRequest, Route, DEFAULT_TENANT};
pub use topics::Topic;

/// Every JSON Schema document this crate publishes: (file name, schema).
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        (
            "callstream.events.v1.schema.json",
            schemars::schema_for!(Event),
        ),
        (
            "callstream.raw.v1.headers.schema.json",
            schemars::schema_for!(raw::RawMeta),
        ),
        (
            "callstream.calls.v1.schema.json",
            schemars::schema_for!(call::Call),
        ),
        (
            "callstream.recordings.v1.schema.json",
            schemars::schema_for!(recording::RecordingArchived),
        ),
    ]
}

/// The exact bytes written to a schema file (pretty JSON, trailing newline).
pub fn render_schema(schema: &schemars::Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema always serializes");
    text.push('\n');
    text
}
