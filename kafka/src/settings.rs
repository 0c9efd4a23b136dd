//! The Kafka settings every process shares: where the brokers are, the
//! extra librdkafka properties, and the name of each topic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use callstream_runtime::config::{dotted_properties, invalid, shared_topic, ConfigError};
use callstream_schemas::Topic;

/// Which of a process's clients a configuration is for: each gets
/// `kafka.properties` and then its own `kafka.consumer_properties` or
/// `kafka.producer_properties` (so a consumer-only property does not make
/// librdkafka warn on the producers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
}

/// `[kafka]` of the consumers and the tools: the brokers and the librdkafka
/// properties of each kind of client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Comma-separated brokers (`KAFKA_BOOTSTRAP_SERVERS`). Required.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties for every client (security, SASL, ...).
    /// Nested levels join with dots, as in the gateway.
    #[serde(deserialize_with = "dotted_properties")]
    pub properties: BTreeMap<String, String>,
    /// Over `properties`, for the process's consumers only (group, fetch and
    /// session settings), so its producers do not warn about them.
    #[serde(default, deserialize_with = "dotted_properties")]
    pub consumer_properties: BTreeMap<String, String>,
    /// Over `properties`, for the process's producers only (dedup's output,
    /// dead letters, recordings events, replay).
    #[serde(default, deserialize_with = "dotted_properties")]
    pub producer_properties: BTreeMap<String, String>,
}

impl ClientSettings {
    /// `properties`, then the role's own (which win).
    pub(crate) fn properties_for(&self, role: Role) -> impl Iterator<Item = (&String, &String)> {
        let own = match role {
            Role::Consumer => &self.consumer_properties,
            Role::Producer => &self.producer_properties,
        };
        self.properties.iter().chain(own)
    }
}

/// `[topics]`: the configured name of each [`Topic`], the one place a
/// logical topic becomes a name (relay's `KafkaTopic` and its assignments).
/// Every binary reads the same table, so one file can serve them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicNames {
    pub raw: String,
    pub events: String,
    pub dlq: String,
    pub events_unique: String,
    pub dedup_state: String,
    pub crm_dlq: String,
    pub recordings: String,
    pub recordings_dlq: String,
    pub calls: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames {
            raw: Topic::Raw.default_name().into(),
            events: Topic::Events.default_name().into(),
            dlq: Topic::Dlq.default_name().into(),
            events_unique: Topic::EventsUnique.default_name().into(),
            dedup_state: Topic::DedupState.default_name().into(),
            crm_dlq: Topic::CrmDlq.default_name().into(),
            recordings: Topic::Recordings.default_name().into(),
            recordings_dlq: Topic::RecordingsDlq.default_name().into(),
            calls: Topic::Calls.default_name().into(),
        }
    }
}

impl TopicNames {
    pub fn name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Raw => &self.raw,
            Topic::Events => &self.events,
            Topic::Dlq => &self.dlq,
            Topic::EventsUnique => &self.events_unique,
            Topic::DedupState => &self.dedup_state,
            Topic::CrmDlq => &self.crm_dlq,
            Topic::Recordings => &self.recordings,
            Topic::RecordingsDlq => &self.recordings_dlq,
            Topic::Calls => &self.calls,
        }
    }

    /// Refuses an empty name among `topics`, and two of them sharing one
    /// name: records of two kinds in one topic break its schema for every
    /// subscriber (and a consumer reading its own output loops). Names the
    /// setting.
    pub fn validate(&self, topics: &[Topic]) -> Result<(), ConfigError> {
        let named: Vec<(&str, &str)> = topics.iter().map(|t| (t.label(), self.name(*t))).collect();
        if let Some((setting, _)) = named.iter().find(|(_, name)| name.trim().is_empty()) {
            return Err(invalid(format!("topics.{setting}"), "must not be empty"));
        }
        if let Some((first, second)) = shared_topic(&named) {
            return Err(invalid(
                format!("topics.{second}"),
                format!("must differ from `topics.{first}`: each topic carries one kind of record"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_its_setting_and_a_shared_name_is_refused() {
        let names = TopicNames::default();
        for topic in Topic::ALL {
            assert_eq!(names.name(topic), topic.default_name());
        }
        names.validate(&Topic::ALL).expect("the defaults differ");
        let clash = TopicNames {
            crm_dlq: names.dlq.clone(),
            ..names.clone()
        };
        let err = clash.validate(&Topic::ALL).unwrap_err().to_string();
        assert!(
            err.contains("`topics.crm_dlq` must differ from `topics.dlq`"),
            "{err}"
        );
        // Only the topics a binary uses are checked.
        clash
            .validate(&[Topic::Raw, Topic::Events, Topic::Dlq])
            .unwrap();
        let empty = TopicNames {
            raw: " ".into(),
            ..names
        };
        let err = empty.validate(&Topic::ALL).unwrap_err().to_string();
        assert!(err.contains("`topics.raw` must not be empty"), "{err}");
    }
}
