//! Typed, layered configuration: defaults, then an optional TOML file, then
//! `CALLSTREAM_*` environment variables (`__` separates levels, e.g.
//! `CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS=2000`), then the plain variables
//! `KAFKA_BOOTSTRAP_SERVERS`, `GATEWAY_LISTEN` and `GATEWAY_ADMIN_LISTEN`. Invalid settings stop
//! start-up with a message naming the setting.
//!
//! This module aggregates: the spool's section lives with the spool
//! ([`crate::spool::SpoolSettings`]), the providers' with [`crate::sources`];
//! here are the HTTP server's and the publisher's settings, the defaults
//! document, loading, and the checks across sections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use callstream_kafka::TopicNames;
use callstream_runtime::config::{dotted_properties, invalid, layered};
pub use callstream_runtime::config::{ConfigError, LogFormat};

use crate::sources;
pub use crate::sources::{SourceSettings, DEFAULT_TENANT};
pub use crate::spool::SpoolSettings;

/// Providers give up after 10 s. A publish may take its deadline plus up to
/// 2 s (librdkafka's timeout scan and our safety margin) and a spool write
/// after that, so stay well below.
const MAX_PUBLISH_TIMEOUT_MS: u64 = 7_000;
/// Longest producer batching delay accepted: every request waits on it.
const MAX_LINGER_MS: f64 = 1_000.0;
/// actix-http's deadline for a connection's first head is its cached clock
/// (refreshed every 500 ms) plus the timeout: up to 500 ms early.
const MIN_HEADER_READ_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server binds (`GATEWAY_LISTEN`). Empty: `0.0.0.0:8080`
    /// with a Kafka cluster, `127.0.0.1:8080` with the embedded broker, whose
    /// records are not safe to accept from real providers.
    pub listen: String,
    /// Address of the listener for `/metrics` (`GATEWAY_ADMIN_LISTEN`), off
    /// the webhook port that providers, and so the internet, reach; it
    /// serves `/healthz` and `/readyz` too. Empty: `/metrics` is served on
    /// `listen` with the webhooks.
    pub admin_listen: String,
    /// Largest accepted request body; bigger bodies get 413.
    pub max_body_bytes: usize,
    /// Request body bytes held in memory across all requests at once; a
    /// request whose next bytes do not fit gets 503 + `Retry-After`, so
    /// slow or stalled uploads cannot grow memory without bound. At least
    /// `max_body_bytes`.
    pub(crate) max_buffered_body_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
    /// `json`, `pretty`, or `auto` (pretty on a terminal, JSON otherwise).
    pub log_format: LogFormat,
    /// Webhook requests processed at once; more get 503 + `Retry-After`
    /// immediately, so memory stays flat under overload.
    pub(crate) max_in_flight: usize,
    /// A client must send each request's headers within this time, from
    /// their first byte (`server/head_deadline.rs` for all but the first).
    pub header_read_timeout_ms: u64,
    /// A client must deliver its whole body within this time.
    pub body_read_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this many seconds.
    pub(crate) keep_alive_secs: u64,
    /// HTTP worker threads; 0: one per CPU the process may use (its cgroup
    /// quota or affinity included).
    pub workers: usize,
    pub kafka: KafkaSettings,
    pub spool: SpoolSettings,
    pub topics: TopicNames,
    /// Per source, keyed by provider name (`onoff`, `xarios`, `telecmi`,
    /// `twilio`, `aircall`, `telnyx`) or a declarative source's name.
    pub sources: BTreeMap<String, SourceSettings>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated brokers (`KAFKA_BOOTSTRAP_SERVERS`). Empty: start the
    /// embedded in-memory broker (for trying things out only).
    pub bootstrap_servers: String,
    /// How long a request waits for Kafka to acknowledge before answering 503.
    /// Must stay well under the providers' 10 s timeout.
    pub publish_timeout_ms: u64,
    /// Producer batching delay in milliseconds, fractions allowed (0.5).
    /// Small, because every request waits on it.
    pub linger_ms: f64,
    /// Partitions per topic created by the embedded broker.
    pub(crate) embedded_partitions: i32,
    /// Extra librdkafka properties (security.protocol, sasl.*, ...). They
    /// cannot weaken durability: `acks` and `enable.idempotence` are fixed.
    /// Nested levels join with dots (see [`dotted_properties`]).
    #[serde(deserialize_with = "dotted_properties")]
    pub properties: BTreeMap<String, String>,
}

/// Defaults, as a serializable document figment layers the rest over.
#[derive(Serialize)]
struct Defaults {
    listen: &'static str,
    admin_listen: &'static str,
    max_body_bytes: usize,
    max_buffered_body_bytes: usize,
    shutdown_timeout_secs: u64,
    log_format: LogFormat,
    max_in_flight: usize,
    header_read_timeout_ms: u64,
    body_read_timeout_ms: u64,
    keep_alive_secs: u64,
    workers: usize,
    kafka: KafkaSettings,
    spool: SpoolSettings,
    topics: TopicNames,
    sources: BTreeMap<String, BTreeMap<String, String>>,
}

fn defaults() -> Defaults {
    Defaults {
        listen: "",
        admin_listen: "127.0.0.1:8081",
        max_body_bytes: 1024 * 1024,
        max_buffered_body_bytes: 32 * 1024 * 1024,
        shutdown_timeout_secs: 30,
        log_format: LogFormat::Auto,
        max_in_flight: 4096,
        header_read_timeout_ms: 5_000,
        body_read_timeout_ms: 5_000,
        keep_alive_secs: 30,
        workers: 0,
        spool: SpoolSettings::default(),
        kafka: KafkaSettings {
            bootstrap_servers: String::new(),
            publish_timeout_ms: 3_000,
            linger_ms: 1.0,
            embedded_partitions: 3,
            properties: BTreeMap::new(),
        },
        topics: TopicNames::default(),
        sources: sources::defaults(),
    }
}

impl Settings {
    /// Loads settings from the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, exposed so tests can add their own layer on top.
    pub fn figment(file: Option<&Path>) -> Figment {
        layered(
            Self::defaults(),
            file,
            &[
                ("GATEWAY_LISTEN", "listen"),
                ("GATEWAY_ADMIN_LISTEN", "admin_listen"),
            ],
        )
    }

    /// Only the built-in defaults, no file and no environment (for tests).
    pub fn defaults() -> Figment {
        Figment::from(Serialized::defaults(defaults()))
    }

    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        if settings.listen.is_empty() {
            settings.listen = if settings.embedded_broker() {
                "127.0.0.1:8080"
            } else {
                "0.0.0.0:8080"
            }
            .into();
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("is not a socket address ({e})")))?;
        if !self.admin_listen.is_empty() {
            self.admin_listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "admin_listen",
                    format!("is not a socket address ({e}); leave it empty to serve on `listen`"),
                )
            })?;
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be greater than 0"));
        }
        if self.max_buffered_body_bytes < self.max_body_bytes {
            return Err(invalid(
                "max_buffered_body_bytes",
                format!(
                    "must be at least max_body_bytes ({}), or no body of the largest size could ever be read",
                    self.max_body_bytes
                ),
            ));
        }
        let k = &self.kafka;
        if !(100..=MAX_PUBLISH_TIMEOUT_MS).contains(&k.publish_timeout_ms) {
            return Err(invalid(
                "kafka.publish_timeout_ms",
                format!(
                    "must be between 100 and {MAX_PUBLISH_TIMEOUT_MS} (providers time out at 10 s)"
                ),
            ));
        }
        if !(0.0..=MAX_LINGER_MS).contains(&k.linger_ms) {
            return Err(invalid(
                "kafka.linger_ms",
                format!("must be between 0 and {MAX_LINGER_MS} (every request waits on it)"),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        if self.body_read_timeout_ms == 0 {
            return Err(invalid("body_read_timeout_ms", "must be greater than 0"));
        }
        if self.header_read_timeout_ms < MIN_HEADER_READ_TIMEOUT_MS {
            return Err(invalid(
                "header_read_timeout_ms",
                format!(
                    "must be at least {MIN_HEADER_READ_TIMEOUT_MS}: actix-http dates a first \
                     request's deadline by a clock it refreshes every 500 ms, so a shorter \
                     timeout can cut a client off at once"
                ),
            ));
        }
        self.spool.validate(self.max_body_bytes)?;
        if k.embedded_partitions < 1 {
            return Err(invalid("kafka.embedded_partitions", "must be at least 1"));
        }
        for fixed in callstream_kafka::client::FIXED_PROPERTIES {
            if k.properties.contains_key(fixed) {
                return Err(invalid(
                    format!("kafka.properties.{fixed}"),
                    "is set by the gateway and cannot be overridden",
                ));
            }
        }
        self.topics.validate(&crate::PUBLISHED_TOPICS)?;
        sources::validate(&self.sources)
    }

    /// The configured path of a provider route.
    pub(crate) fn path_of<'a>(
        &'a self,
        source: &str,
        route: &'a callstream_schemas::Route,
    ) -> &'a str {
        sources::path_of(&self.sources, source, route)
    }

    pub fn embedded_broker(&self) -> bool {
        self.kafka.bootstrap_servers.trim().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_schemas::Topic;

    fn load(f: impl FnOnce(Figment) -> Figment) -> Result<Settings, ConfigError> {
        Settings::from_figment(f(Settings::defaults()))
    }

    fn error_of(f: impl FnOnce(Figment) -> Figment) -> String {
        load(f).expect_err("config must be refused").to_string()
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type.
    fn librdkafka_properties_can_be_spelled_in_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                r#"
                [kafka.properties]
                "security.protocol" = "SASL_SSL"
                "sasl.username" = "from-file"
                [kafka.properties.ssl]
                "ca.location" = "/etc/ssl/ca.pem"
                "#,
            )?;
            jail.set_env("CALLSTREAM_KAFKA__PROPERTIES__SASL__USERNAME", "from-env");
            jail.set_env("CALLSTREAM_KAFKA__PROPERTIES__SASL__MECHANISM", "PLAIN");
            jail.set_env("CALLSTREAM_KAFKA__PROPERTIES__SOCKET__TIMEOUT__MS", "6000");
            jail.set_env(
                "CALLSTREAM_KAFKA__PROPERTIES__SOCKET__KEEPALIVE__ENABLE",
                "true",
            );
            let s = Settings::load(Some(Path::new("gw.toml"))).expect("valid");
            let expected: BTreeMap<String, String> = [
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "from-env"),
                ("security.protocol", "SASL_SSL"),
                ("socket.keepalive.enable", "true"),
                ("socket.timeout.ms", "6000"),
                ("ssl.ca.location", "/etc/ssl/ca.pem"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            assert_eq!(s.kafka.properties, expected);

            // Spelled this way, the fixed ones are still refused.
            jail.set_env("CALLSTREAM_KAFKA__PROPERTIES__ENABLE__IDEMPOTENCE", "false");
            let err = Settings::load(Some(Path::new("gw.toml"))).expect_err("refused");
            assert!(
                err.to_string()
                    .contains("kafka.properties.enable.idempotence"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn defaults_are_valid_and_serve_every_provider() {
        let s = load(|f| f).unwrap();
        assert!(s.embedded_broker());
        assert_eq!(
            s.listen, "127.0.0.1:8080",
            "the embedded broker is for this host only"
        );
        let with_kafka = load(|f| f.merge(("kafka.bootstrap_servers", "kafka:9092"))).unwrap();
        assert_eq!(with_kafka.listen, "0.0.0.0:8080");
        assert_eq!(s.admin_listen, "127.0.0.1:8081");
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert!(s.kafka.publish_timeout_ms <= MAX_PUBLISH_TIMEOUT_MS);
        assert_eq!(s.topics.name(Topic::Raw), "callstream.raw.v1");
        for source in ["onoff", "xarios", "telecmi", "twilio", "aircall", "telnyx"] {
            let cfg = &s.sources[source];
            assert!(cfg.enabled && cfg.api_keys.is_empty() && cfg.tenant == "default");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type.
    fn toml_file_then_environment_layering() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                r#"
                listen = "127.0.0.1:9000"
                [kafka]
                publish_timeout_ms = 2000
                [sources.onoff]
                api_keys = ["from-file"]
                tenant = "acme"
                "#,
            )?;
            jail.set_env("CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS", "2500");
            jail.set_env("CALLSTREAM_KAFKA__LINGER_MS", "0.5");
            // Names the file (clap reads it); must not count as a setting.
            jail.set_env("CALLSTREAM_CONFIG", "gw.toml");
            jail.set_env("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092");
            jail.set_env("GATEWAY_LISTEN", "127.0.0.1:9100");
            jail.set_env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:9190");
            jail.set_env("CALLSTREAM_SOURCES__XARIOS__API_KEYS", "[old, new]");
            let s = Settings::load(Some(Path::new("gw.toml"))).expect("valid");
            assert_eq!(s.listen, "127.0.0.1:9100");
            assert_eq!(s.admin_listen, "127.0.0.1:9190");
            assert_eq!(s.kafka.publish_timeout_ms, 2500);
            assert_eq!(s.kafka.linger_ms, 0.5);
            assert_eq!(s.kafka.bootstrap_servers, "kafka-1:9092,kafka-2:9092");
            assert!(!s.embedded_broker());
            assert_eq!(s.sources["onoff"].tenant, "acme");
            assert_eq!(s.sources["onoff"].api_keys.len(), 1);
            assert_eq!(s.sources["xarios"].api_keys.len(), 2);
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        let s = load(|f| f.merge(("sources.onoff.api_keys", ["hunter2-secret"]))).unwrap();
        assert!(!format!("{s:?}").contains("hunter2-secret"));
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_setting() {
        for (f, setting) in [
            (
                Box::new(|f: Figment| f.merge(("listen", "nope")))
                    as Box<dyn FnOnce(Figment) -> Figment>,
                "`listen`",
            ),
            (
                Box::new(|f: Figment| f.merge(("kafka.publish_timeout_ms", 8_000))),
                "`kafka.publish_timeout_ms`",
            ),
            (
                Box::new(|f: Figment| f.merge(("kafka.publish_timeout_ms", 0))),
                "`kafka.publish_timeout_ms`",
            ),
            (
                Box::new(|f: Figment| f.merge(("max_body_bytes", 0))),
                "`max_body_bytes`",
            ),
            (
                Box::new(|f: Figment| f.merge(("header_read_timeout_ms", 300))),
                "`header_read_timeout_ms`",
            ),
            (
                Box::new(|f: Figment| f.merge(("kafka.linger_ms", -1.0))),
                "`kafka.linger_ms`",
            ),
            (
                Box::new(|f: Figment| f.merge(("kafka.linger_ms", 5_000))),
                "`kafka.linger_ms`",
            ),
            (
                Box::new(|f: Figment| f.merge(("kafka.properties.acks", "1"))),
                "`kafka.properties.acks`",
            ),
            (
                Box::new(|f: Figment| f.merge(("sources.genesys.enabled", true))),
                "`sources.genesys`",
            ),
            (
                Box::new(|f: Figment| f.merge(("sources.onoff.paths.voice", "/x"))),
                "`sources.onoff.paths.voice`",
            ),
            (
                Box::new(|f: Figment| f.merge(("sources.onoff.paths.cdr", "no-slash"))),
                "`sources.onoff.paths.cdr`",
            ),
            (
                Box::new(|f: Figment| f.merge(("sources.xarios.paths.postcall", "/v1/onoff/cdr"))),
                "`sources.xarios.paths.postcall`",
            ),
            (
                Box::new(|f: Figment| f.merge(("sources.onoff.auth_header", "bad header"))),
                "`sources.onoff.auth_header`",
            ),
            (
                Box::new(|f: Figment| f.merge(("topics.raw", " "))),
                "`topics.raw`",
            ),
            (
                Box::new(|f: Figment| f.merge(("admin_listen", "9090"))),
                "`admin_listen`",
            ),
            (
                Box::new(|f: Figment| f.merge(("topics.dlq", "callstream.raw.v1"))),
                "`topics.dlq` must differ from `topics.raw`",
            ),
        ] {
            let message = error_of(f);
            assert!(
                message.contains(setting),
                "{message:?} should name {setting}"
            );
        }
        // figment's own errors name the key path too.
        let message = error_of(|f| f.merge(("kafka.linger_ms", "soon")));
        assert!(message.contains("linger_ms"), "{message}");
        let message = error_of(|f| f.merge(("kafka.bootstrap", "x")));
        assert!(message.contains("bootstrap"), "{message}");
    }
}
