//! Configuration shared by every consumer binary, in the gateway's style:
//! defaults, then an optional TOML file (`--config`), then `CALLSTREAM_*`
//! variables (`__` between levels), then the plain variables
//! `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL` and `METRICS_LISTEN`.
//! Each binary reads the sections it needs and validates them at start-up.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::Serialized;
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

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
    pub crm: crate::crm::CrmSettings,
    /// `callstream-recordings`: recordings and voicemails into object storage.
    pub recordings: crate::recordings::RecordingsSettings,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSettings {
    pub group_id: String,
    /// Transactional id of the producer; one per running instance.
    pub transactional_id: String,
    /// How long an identity is remembered. A resend later than this is
    /// forwarded again; state is bounded by this window, not by history.
    pub window_secs: u64,
    /// Largest batch per transaction.
    pub batch_max: usize,
    /// How long to wait for a batch to fill before committing what there is.
    pub batch_linger_ms: u64,
}

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

/// `callstream-analytics`: the batching of [`BatchSettings`] (same
/// meaning), and which tenants its live metrics name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// As [`BatchSettings::group_id`].
    pub group_id: String,
    /// As [`BatchSettings::batch_max`].
    pub batch_max: usize,
    /// As [`BatchSettings::batch_linger_ms`].
    pub batch_linger_ms: u64,
    /// Must be 1: every partition adds into the same KPI rows.
    pub connections: usize,
    /// Tenants whose own name is the `tenant` label of the live metrics;
    /// every other tenant (they come from payloads: Xarios `tenantId`,
    /// TeleCMI `appid`) is counted as `other`, so a flood of tenants cannot
    /// grow `/metrics` without bound. The gateway's default tenant,
    /// `default`, keeps its name too. The KPI tables are exact per tenant
    /// whatever this says. Numbers are taken as names (TeleCMI app ids
    /// are numbers); quote one with leading zeros.
    #[serde(deserialize_with = "tenant_names")]
    pub metric_tenants: Vec<String>,
}

/// A list of tenant names, each a string or a number (the environment
/// reads `[2222223]` as a number).
fn tenant_names<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Name {
        Text(String),
        Number(u64),
    }
    let names = Vec::<Name>::deserialize(deserializer)?;
    Ok(names
        .into_iter()
        .map(|name| match name {
            Name::Text(text) => text,
            Name::Number(n) => n.to_string(),
        })
        .collect())
}

impl AnalyticsSettings {
    /// The batching part, for [`crate::pg_consumer::run`].
    pub fn batch(&self) -> BatchSettings {
        BatchSettings {
            group_id: self.group_id.clone(),
            batch_max: self.batch_max,
            batch_linger_ms: self.batch_linger_ms,
            connections: self.connections,
        }
    }
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
    crm: crate::crm::CrmSettings,
    recordings: crate::recordings::RecordingsSettings,
}

fn defaults() -> Defaults {
    Defaults {
        log_format: LogFormat::Auto,
        metrics_listen: "0.0.0.0:9090",
        kafka: ClientSettings::default(),
        topics: TopicNames::default(),
        dedup: DedupSettings {
            group_id: "callstream-dedup".into(),
            transactional_id: "callstream-dedup-0".into(),
            window_secs: 7 * 24 * 3600,
            batch_max: 5000,
            batch_linger_ms: 50,
        },
        store: BatchSettings {
            group_id: "callstream-store".into(),
            batch_max: 2000,
            batch_linger_ms: 50,
            connections: 4,
        },
        analytics: AnalyticsSettings {
            group_id: "callstream-analytics".into(),
            batch_max: 2000,
            batch_linger_ms: 50,
            connections: 1,
            metric_tenants: Vec::new(),
        },
        crm: crate::crm::CrmSettings::default(),
        recordings: crate::recordings::RecordingsSettings::default(),
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let plain = [
            ("DATABASE_URL", "database_url"),
            ("METRICS_LISTEN", "metrics_listen"),
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
        for (name, b) in [
            ("store", &self.store),
            ("analytics", &self.analytics.batch()),
        ] {
            if b.batch_max == 0 {
                return Err(invalid(format!("{name}.batch_max"), "must be at least 1"));
            }
            if b.connections == 0 {
                return Err(invalid(format!("{name}.connections"), "must be at least 1"));
            }
        }
        if self.analytics.connections != 1 {
            return Err(invalid(
                "analytics.connections",
                "must be 1: every partition adds into the same KPI rows, so analytics writes through one connection",
            ));
        }
        if let Some(other) = self
            .analytics
            .metric_tenants
            .iter()
            .find(|t| *t == crate::analytics::OTHER_TENANTS)
        {
            return Err(invalid(
                "analytics.metric_tenants",
                format!("must not name `{other}`: it is the label of every tenant not listed"),
            ));
        }
        if self.dedup.batch_max == 0 {
            return Err(invalid("dedup.batch_max", "must be at least 1"));
        }
        if self.dedup.window_secs == 0 {
            return Err(invalid("dedup.window_secs", "must be greater than 0"));
        }
        self.topics.validate(&Topic::ALL)?;
        self.recordings.validate()?;
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
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type.
    fn metric_tenants_come_as_a_list_and_may_not_name_other() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
            jail.set_env("CALLSTREAM_ANALYTICS__METRIC_TENANTS", "[acme, 2222223]");
            let s = Settings::load(None).expect("valid");
            assert_eq!(s.analytics.metric_tenants, ["acme", "2222223"]);
            jail.set_env("CALLSTREAM_ANALYTICS__METRIC_TENANTS", "[acme, other]");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(
                err.contains("`analytics.metric_tenants` must not name `other`"),
                "{err}"
            );
            Ok(())
        });
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
