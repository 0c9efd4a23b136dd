//! The settings of each service, from the built-in defaults and what this
//! process started (the broker, the database, the addresses), never from a
//! file or `CALLSTREAM_*` variables: the gateway's and the consumers'
//! settings both refuse keys they do not know, so one environment cannot
//! configure both. The few variables `callstream-dev` reads are its own
//! (see the crate's documentation).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;

use callstream_consumers::config::Settings as ConsumerSettings;
use callstream_gateway::config::Settings as GatewaySettings;

use crate::ONOFF_API_KEY;

/// The gateway on `listen`, its `/metrics` on `admin_listen`, publishing
/// to `bootstrap_servers`, spooling in `spool_dir`, with [`ONOFF_API_KEY`]
/// for Onoff (the other sources stay open, as the gateway's defaults have
/// them).
pub fn gateway(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    bootstrap_servers: &str,
    spool_dir: &Path,
) -> anyhow::Result<GatewaySettings> {
    let figment = GatewaySettings::defaults()
        .merge(("listen", listen.to_string()))
        .merge(("admin_listen", admin_listen.to_string()))
        .merge(("kafka.bootstrap_servers", bootstrap_servers))
        .merge(("spool.dir", spool_dir))
        .merge(("sources.onoff.api_keys", [ONOFF_API_KEY]));
    Ok(GatewaySettings::from_figment(figment)?)
}

/// What every consumer and the console share: the broker and the
/// database, and the console's section (its address, users, and the
/// `/metrics` of each service by name).
pub fn consumers(
    bootstrap_servers: &str,
    database_url: &str,
    console_listen: SocketAddr,
    console_users: BTreeMap<String, String>,
    metrics: &[(&str, SocketAddr)],
) -> Figment {
    let metrics: BTreeMap<&str, String> = metrics
        .iter()
        .map(|(name, address)| (*name, format!("http://{address}/metrics")))
        .collect();
    ConsumerSettings::defaults()
        .merge(("kafka.bootstrap_servers", bootstrap_servers))
        .merge(("database_url", database_url))
        .merge(("console.listen", console_listen.to_string()))
        .merge(("console.users", console_users))
        .merge(("console.metrics", metrics))
}

/// One consumer's settings: `shared`, its metrics on `metrics_listen`.
pub fn consumer(shared: &Figment, metrics_listen: SocketAddr) -> anyhow::Result<ConsumerSettings> {
    let figment = shared
        .clone()
        .merge(("metrics_listen", metrics_listen.to_string()));
    Ok(ConsumerSettings::from_figment(figment)?)
}

/// Of `variables` (the environment), those a user may expect to configure
/// a service, which `callstream-dev` does not read: every `CALLSTREAM_*`
/// but its own password, and the services' own addresses of Kafka and
/// their metrics. Said at start, so a setting is not ignored silently.
pub fn ignored(variables: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut ignored: Vec<String> = variables
        .map(|(name, _)| name)
        .filter(|name| {
            (name.starts_with("CALLSTREAM_") && name != crate::login::PASSWORD_VARIABLE)
                || ["KAFKA_BOOTSTRAP_SERVERS", "METRICS_LISTEN"].contains(&name.as_str())
        })
        .collect();
    ignored.sort();
    ignored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_variables_are_named_as_ignored() {
        let env = [
            ("CALLSTREAM_SOURCES__ONOFF__API_KEYS", "k"),
            ("CALLSTREAM_DEV_PASSWORD", "secret"),
            ("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092"),
            ("DATABASE_URL", "postgres://db"),
            ("GATEWAY_LISTEN", "127.0.0.1:8080"),
            ("CALLSTREAM_CONFIG", "gateway.toml"),
            ("PATH", "/usr/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            ignored(env.into_iter()),
            [
                "CALLSTREAM_CONFIG",
                "CALLSTREAM_SOURCES__ONOFF__API_KEYS",
                "KAFKA_BOOTSTRAP_SERVERS"
            ]
        );
    }
}
