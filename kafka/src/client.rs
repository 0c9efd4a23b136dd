//! Client configurations: brokers and the configured properties, then the
//! fixed policy of each kind of client. The durable-producer policy
//! (`acks=all`, idempotence) is written here once; the gateway's
//! publisher, dedup's transactional producer and every dead-letter
//! producer take it from [`durable`].

use rdkafka::ClientConfig;

use crate::settings::ClientSettings;
pub use crate::settings::Role;

/// Base configuration of a client: brokers plus configured extras.
pub fn client_config(kafka: &ClientSettings, role: Role) -> ClientConfig {
    client_config_with(kafka, role, &[])
}

/// [`client_config`] over `defaults`, which the configured properties may
/// override.
pub fn client_config_with(
    kafka: &ClientSettings,
    role: Role,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in kafka.properties_for(role) {
        config.set(k, v);
    }
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    config
}

/// How long librdkafka pauses fetching a partition once its local queue is
/// over `queued.max.messages.kbytes`/`queued.min.messages`, unless
/// `kafka.properties` sets it. librdkafka's default (1000 ms) starves a
/// consumer that drains its queue faster than that: with a backlog, dedup
/// emptied the queue in a fraction of the pause and then waited, and ran at
/// ~90k instead of ~140k events/s at 1M (BENCHMARKS.md).
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// A consumer in `group` that never commits on its own and reads only
/// committed transactional data (the dedup output is transactional).
pub fn consumer_config(kafka: &ClientSettings, group: &str) -> ClientConfig {
    let mut config = client_config_with(
        kafka,
        Role::Consumer,
        &[("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)],
    );
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    config
}

/// A producer for records that must be durable before the record they came
/// from is committed (dead letters, derived events).
pub fn durable_producer_config(kafka: &ClientSettings) -> ClientConfig {
    let mut config = client_config(kafka, Role::Producer);
    durable(&mut config).set("message.timeout.ms", "30000");
    config
}

/// The properties a producer must have for a write to be durable and
/// unduplicated once acknowledged: every in-sync replica has it, and
/// librdkafka's retries cannot write it twice or out of order. Set last, so
/// no configured property can weaken them (the gateway also refuses them
/// in `kafka.properties`, naming the setting).
pub fn durable(config: &mut ClientConfig) -> &mut ClientConfig {
    config.set("acks", "all").set("enable.idempotence", "true")
}

/// Properties a user may not set, because [`durable`] or the process owns
/// them.
pub const FIXED_PROPERTIES: [&str; 3] = ["acks", "enable.idempotence", "bootstrap.servers"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_back_off_briefly_unless_configured() {
        let mut kafka = ClientSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            ..Default::default()
        };
        let config = consumer_config(&kafka, "g");
        assert_eq!(
            config.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        kafka
            .properties
            .insert("fetch.queue.backoff.ms".into(), "500".into());
        let config = consumer_config(&kafka, "g");
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("500"));
    }

    #[test]
    fn role_properties_reach_only_their_role() {
        let kafka = ClientSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            properties: [("client.id".into(), "all".into())].into(),
            consumer_properties: [("session.timeout.ms".into(), "6000".into())].into(),
            producer_properties: [
                ("linger.ms".into(), "20".into()),
                ("client.id".into(), "producer".into()),
            ]
            .into(),
        };
        let consumer = consumer_config(&kafka, "g");
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("client.id"), Some("all"));
        let producer = durable_producer_config(&kafka);
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(
            producer.get("client.id"),
            Some("producer"),
            "the role's own wins"
        );
    }

    #[test]
    fn durability_cannot_be_configured_away() {
        let kafka = ClientSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            properties: [("acks".into(), "1".into())].into(),
            producer_properties: [("enable.idempotence".into(), "false".into())].into(),
            ..Default::default()
        };
        let producer = durable_producer_config(&kafka);
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
    }
}
