//! Configuration shared by every consumer binary, in the gateway's style:
//! defaults, then an optional TOML file (`--config`), then `CALLSTREAM_*`
//! variables (`__` between levels), then the plain variables
//! `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, `METRICS_LISTEN` and
//! `CONSOLE_LISTEN`.
//! Each binary reads the sections it needs and validates them at start-up.
//!
//! This module only aggregates: each section's type, defaults and checks
//! live with the consumer it configures; what is here is the sections
//! every binary shares and the checks across sections.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::Serialized;
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::analytics::AnalyticsSettings;
use crate::console::ConsoleSettings;
use crate::crm::CrmSettings;
use crate::dedup::DedupSettings;
use crate::recordings::RecordingsSettings;

/// Also named here: `pg_consumer` (being rewritten) imports it from here.
use crate::pg::settings::BatchSettings;
pub use callstream_kafka::{ClientSettings, TopicNames};
use callstream_runtime::config::layered;
pub use callstream_runtime::config::{invalid, ConfigError, LogFormat};
use callstream_schemas::Topic;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub log_format: LogFormat,
    /// Address of this process's `/metrics` and `/healthz` (`METRICS_LISTEN`).
    pub metrics_listen: String,
    /// PostgreSQL URL (`DATABASE_URL`); needed by store and analytics.
    pub database_url: Option<SecretString>,
    pub kafka: ClientSettings,
    pub topics: TopicNames,
    pub dedup: DedupSettings,
    /// `callstream-store`: unique events into the `events` table.
    pub store: BatchSettings,
    /// `callstream-analytics`: unique events into the KPI tables.
    pub analytics: AnalyticsSettings,
    pub crm: CrmSettings,
    /// `callstream-recordings`: recordings and voicemails into object storage.
    pub recordings: RecordingsSettings,
    /// `callstream-console`: the ops console.
    pub console: ConsoleSettings,
}

#[derive(Serialize)]
struct Defaults {
    log_format: LogFormat,
    metrics_listen: &'static str,
    kafka: ClientSettings,
    topics: TopicNames,
    dedup: DedupSettings,
    store: BatchSettings,
    analytics: AnalyticsSettings,
    crm: CrmSettings,
    recordings: RecordingsSettings,
    console: ConsoleSettings,
}

fn defaults() -> Defaults {
    Defaults {
        log_format: LogFormat::Auto,
        metrics_listen: "0.0.0.0:9090",
        kafka: ClientSettings::default(),
        topics: TopicNames::default(),
        dedup: DedupSettings::default(),
        store: crate::store::default_settings(),
        analytics: AnalyticsSettings::default(),
        crm: CrmSettings::default(),
        recordings: RecordingsSettings::default(),
        console: ConsoleSettings::default(),
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let plain = [
            ("DATABASE_URL", "database_url"),
            ("METRICS_LISTEN", "metrics_listen"),
            ("CONSOLE_LISTEN", "console.listen"),
        ];
        Self::from_figment(layered(Self::defaults(), file, &plain))
    }

    /// Only the built-in defaults (for tests).
    pub fn defaults() -> Figment {
        Figment::from(Serialized::defaults(defaults()))
    }

    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.metrics_listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("metrics_listen", format!("is not a socket address ({e})")))?;
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid(
                "kafka.bootstrap_servers",
                "is required (set KAFKA_BOOTSTRAP_SERVERS; the gateway logs the embedded broker's address)",
            ));
        }
        self.store.validate("store")?;
        self.analytics.validate()?;
        self.dedup.validate()?;
        self.topics.validate(&Topic::ALL)?;
        self.recordings.validate()?;
        self.console.validate()?;
        self.crm.validate()
    }

    /// The database URL, or an error naming the setting.
    pub fn require_database_url(&self) -> Result<&SecretString, ConfigError> {
        self.database_url
            .as_ref()
            .ok_or_else(|| invalid("database_url", "is required (set DATABASE_URL)"))
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::Serialized;

    use super::*;

    fn with(key: &str, value: usize) -> Result<Settings, ConfigError> {
        Settings::from_figment(
            Settings::defaults()
                .merge(Serialized::default(
                    "kafka.bootstrap_servers",
                    "127.0.0.1:9092",
                ))
                .merge(Serialized::default(key, value)),
        )
    }

    #[test]
    fn nested_kafka_properties_join_with_dots() {
        // What `CALLSTREAM_KAFKA__PROPERTIES__SESSION__TIMEOUT__MS=6000` gives.
        let s = with("kafka.properties.session.timeout.ms", 6000).unwrap();
        assert_eq!(
            s.kafka
                .properties
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("6000")
        );
        let s = with("kafka.consumer_properties.session.timeout.ms", 7000).unwrap();
        assert_eq!(
            s.kafka
                .consumer_properties
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("7000")
        );
        assert!(s.kafka.properties.is_empty());
    }

    #[test]
    fn two_topics_of_one_name_are_refused() {
        let s = Settings::from_figment(
            Settings::defaults()
                .merge(Serialized::default(
                    "kafka.bootstrap_servers",
                    "127.0.0.1:9092",
                ))
                .merge(Serialized::default(
                    "topics.events_unique",
                    Topic::Events.default_name(),
                )),
        );
        let err = s.unwrap_err().to_string();
        assert!(
            err.contains("`topics.events_unique` must differ from `topics.events`"),
            "{err}"
        );
    }

    #[test]
    fn the_store_may_write_through_several_connections_analytics_through_one() {
        assert_eq!(with("store.connections", 8).unwrap().store.connections, 8);
        let err = with("analytics.connections", 2).unwrap_err().to_string();
        assert!(err.contains("`analytics.connections` must be 1"), "{err}");
        let err = with("store.connections", 0).unwrap_err().to_string();
        assert!(
            err.contains("`store.connections` must be at least 1"),
            "{err}"
        );
    }
}
