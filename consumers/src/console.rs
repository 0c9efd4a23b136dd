//! The `console` section: the settings of `callstream-console` (the ops
//! console, crate `console/`). It lives with the consumers' settings so
//! the console reads the same file and `CALLSTREAM_*` variables as the
//! binaries it watches (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`, topics).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use callstream_runtime::config::{invalid, ConfigError};

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Address of the console's pages (`CONSOLE_LISTEN`). Loopback by
    /// default: put it behind the operators' VPN or proxy, never on the
    /// public webhook port.
    pub listen: String,
    /// Who may sign in: user name → bcrypt hash of the password
    /// (`console.users.ops = "$2b$12$…"`; in the environment
    /// `CALLSTREAM_CONSOLE__USERS__OPS`), as Prometheus' and Grafana's web
    /// configurations take them. `htpasswd -nbBC 12 ops PASSWORD` prints one.
    pub users: BTreeMap<String, String>,
    /// The `/metrics` endpoints the overview reads: a name (`gateway`,
    /// `dedup`, `store`, ...) → URL (`http://127.0.0.1:9090/metrics`).
    pub metrics: BTreeMap<String, String>,
    /// The gateway's configuration file: a dead letter of a declared source
    /// is redelivered with the mapping it holds now. Unset: built-in
    /// providers only.
    pub gateway_config: Option<PathBuf>,
    /// Dead letters listed per topic, newest first.
    pub dead_letters_shown: usize,
}

impl Default for ConsoleSettings {
    fn default() -> ConsoleSettings {
        ConsoleSettings {
            listen: "127.0.0.1:8088".into(),
            users: BTreeMap::new(),
            metrics: BTreeMap::new(),
            gateway_config: None,
            dead_letters_shown: 100,
        }
    }
}

/// The hashes stay out of logs and error messages.
impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("listen", &self.listen)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("metrics", &self.metrics)
            .field("gateway_config", &self.gateway_config)
            .field("dead_letters_shown", &self.dead_letters_shown)
            .finish()
    }
}

impl ConsoleSettings {
    /// Checks what every binary can; the console also checks the hashes
    /// and that there is a user at its start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| invalid("console.listen", format!("is not a socket address ({e})")))?;
        if self.dead_letters_shown == 0 {
            return Err(invalid("console.dead_letters_shown", "must be at least 1"));
        }
        Ok(())
    }
}
