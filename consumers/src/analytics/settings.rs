//! The `analytics` section of the settings (`callstream-analytics`).

use serde::{Deserialize, Serialize};

use super::OTHER_TENANTS;
use crate::pg::settings::BatchSettings;
use callstream_runtime::config::{invalid, ConfigError};

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

impl Default for AnalyticsSettings {
    fn default() -> AnalyticsSettings {
        AnalyticsSettings {
            group_id: "callstream-analytics".into(),
            batch_max: 2000,
            batch_linger_ms: 50,
            connections: 1,
            metric_tenants: Vec::new(),
        }
    }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.batch().validate("analytics")?;
        if self.connections != 1 {
            return Err(invalid(
                "analytics.connections",
                "must be 1: every partition adds into the same KPI rows, so analytics writes through one connection",
            ));
        }
        if let Some(other) = self.metric_tenants.iter().find(|t| *t == OTHER_TENANTS) {
            return Err(invalid(
                "analytics.metric_tenants",
                format!("must not name `{other}`: it is the label of every tenant not listed"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

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
}
