//! The `spool` section of the gateway's settings.

use serde::{Deserialize, Serialize};

use callstream_runtime::config::{invalid, ConfigError};

/// The local write-ahead spool that takes deliveries while Kafka cannot.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// Off: a Kafka outage answers 503 (providers retry a few times, then drop).
    pub enabled: bool,
    /// Directory of the segment files; must survive restarts (a volume).
    pub dir: std::path::PathBuf,
    /// Upper bound of the spool on disk; when full, requests get 503.
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started.
    pub(crate) segment_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> SpoolSettings {
        SpoolSettings {
            enabled: true,
            dir: "spool".into(),
            max_bytes: 1024 * 1024 * 1024,
            segment_bytes: 16 * 1024 * 1024,
        }
    }
}

impl SpoolSettings {
    /// Checks an enabled spool; it must hold two bodies of `max_body_bytes`.
    pub fn validate(&self, max_body_bytes: usize) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.dir.as_os_str().is_empty() {
            return Err(invalid(
                "spool.dir",
                "must not be empty when the spool is enabled",
            ));
        }
        if self.max_bytes < 2 * max_body_bytes as u64 {
            return Err(invalid(
                "spool.max_bytes",
                "must hold at least two bodies of max_body_bytes",
            ));
        }
        if self.segment_bytes == 0 {
            return Err(invalid("spool.segment_bytes", "must be greater than 0"));
        }
        Ok(())
    }
}
