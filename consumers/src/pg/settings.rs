//! The batching settings of the PostgreSQL consumers (the `store` section,
//! and the batching part of `analytics`).

use serde::{Deserialize, Serialize};

use callstream_runtime::config::{invalid, ConfigError};

/// Batching of the PostgreSQL consumers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Kafka consumer group, and the key of this consumer's positions in
    /// `consumer_offsets`. Two consumers writing the same tables must share
    /// it; a new name re-reads the topic from the beginning.
    pub group_id: String,
    /// Most records per PostgreSQL transaction (one statement per table).
    pub batch_max: usize,
    /// How long to wait for a batch to fill before committing what there is.
    pub batch_linger_ms: u64,
    /// PostgreSQL connections writing concurrently, each in its own
    /// transaction for its share of the partitions (store only: analytics
    /// rows are shared by all partitions, so it needs 1).
    pub connections: usize,
}

impl BatchSettings {
    /// Checks the batching of the section called `section`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.batch_max == 0 {
            return Err(invalid(
                format!("{section}.batch_max"),
                "must be at least 1",
            ));
        }
        if self.connections == 0 {
            return Err(invalid(
                format!("{section}.connections"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
