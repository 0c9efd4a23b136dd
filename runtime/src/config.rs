//! Typed, layered settings, the same in every binary: defaults, then an
//! optional TOML file, then `CALLSTREAM_*` environment variables (`__`
//! separates levels, e.g. `CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS=2000`), then
//! the plain variables each binary names (`KAFKA_BOOTSTRAP_SERVERS` always).
//! Invalid settings stop start-up with a message naming the setting.

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

/// librdkafka properties, their names joined with dots wherever the
/// configuration nested them: `CALLSTREAM_KAFKA__PROPERTIES__SASL__USERNAME`
/// (the environment cannot spell a dot) and a TOML `[kafka.properties.sasl]`
/// table both give `sasl.username`, as the quoted TOML key
/// `"sasl.username"` does. Values may be strings, numbers or booleans
/// (the environment reads `6000` as a number). Given both ways, the nested
/// spelling wins: it is the one the environment, the top layer, writes.
pub fn dotted_properties<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Node {
        Text(String),
        Integer(i64),
        Float(f64),
        Flag(bool),
        Table(BTreeMap<String, Node>),
    }
    fn flatten(prefix: &str, table: BTreeMap<String, Node>, out: &mut BTreeMap<String, String>) {
        // Leaves first, so a nested value overwrites a quoted dotted key.
        let (leaves, tables): (Vec<_>, Vec<_>) = table
            .into_iter()
            .partition(|(_, node)| !matches!(node, Node::Table(_)));
        for (key, node) in leaves.into_iter().chain(tables) {
            let name = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            let value = match node {
                Node::Text(s) => s,
                Node::Integer(n) => n.to_string(),
                Node::Float(x) => x.to_string(),
                Node::Flag(b) => b.to_string(),
                Node::Table(inner) => {
                    flatten(&name, inner, out);
                    continue;
                }
            };
            out.insert(name, value);
        }
    }
    let mut out = BTreeMap::new();
    flatten("", BTreeMap::deserialize(deserializer)?, &mut out);
    Ok(out)
}

/// The first two settings of `topics` (setting, name) that name the same
/// topic. Records of two kinds in one topic break its schema for every
/// subscriber (and a consumer reading its own output loops), so the
/// gateway and the consumers refuse that at start-up.
pub fn shared_topic<'a>(topics: &[(&'a str, &str)]) -> Option<(&'a str, &'a str)> {
    topics.iter().enumerate().find_map(|(i, (first, name))| {
        topics[i + 1..]
            .iter()
            .find(|(_, other)| other.trim() == name.trim())
            .map(|(second, _)| (*first, *second))
    })
}

/// The layering every callstream binary uses, over `defaults`: the TOML
/// `file`, then `CALLSTREAM_*` variables (`__` between levels), then the
/// plain variables `KAFKA_BOOTSTRAP_SERVERS` and `plain` (variable, setting).
pub fn layered(defaults: Figment, file: Option<&Path>, plain: &[(&str, &str)]) -> Figment {
    let mut figment = defaults;
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    // CALLSTREAM_CONFIG names the file itself; it is not a setting.
    figment = figment.merge(Env::prefixed("CALLSTREAM_").ignore(&["config"]).split("__"));
    let bootstrap = [("KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap_servers")];
    for (variable, setting) in bootstrap.iter().chain(plain) {
        let setting = setting.to_string();
        figment = figment.merge(
            Env::raw()
                .only(&[variable])
                .map(move |_| setting.clone().into()),
        );
    }
    figment
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{setting}` {problem}")]
    Invalid { setting: String, problem: String },
}

pub fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        problem: problem.into(),
    }
}
