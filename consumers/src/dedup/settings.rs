//! The `dedup` section of the settings (`callstream-dedup`).

use serde::{Deserialize, Serialize};

use callstream_runtime::config::{invalid, ConfigError};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSettings {
    pub group_id: String,
    /// Transactional id of the producer; one per running instance.
    pub(crate) transactional_id: String,
    /// How long an identity is remembered. A resend later than this is
    /// forwarded again; state is bounded by this window, not by history.
    pub window_secs: u64,
    /// Largest batch per transaction.
    pub batch_max: usize,
    /// How long to wait for a batch to fill before committing what there is.
    pub batch_linger_ms: u64,
}

impl Default for DedupSettings {
    fn default() -> DedupSettings {
        DedupSettings {
            group_id: "callstream-dedup".into(),
            transactional_id: "callstream-dedup-0".into(),
            window_secs: 7 * 24 * 3600,
            batch_max: 5000,
            batch_linger_ms: 50,
        }
    }
}

impl DedupSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_max == 0 {
            return Err(invalid("dedup.batch_max", "must be at least 1"));
        }
        if self.window_secs == 0 {
            return Err(invalid("dedup.window_secs", "must be greater than 0"));
        }
        Ok(())
    }
}
