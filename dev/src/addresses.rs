//! Where each part listens: fixed, nearby ports on loopback by default,
//! each overridable by a variable. Every address is bound here before
//! anything starts, so a busy port stops `callstream-dev` at once with the
//! variable to change, and port 0 becomes a real port that the summary and
//! the console's metrics list can name. Each is held until its service
//! binds it, so nothing started meanwhile (PostgreSQL picks a free port)
//! can take it.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;

/// (variable, default) of each listener.
const GATEWAY: (&str, &str) = ("GATEWAY_LISTEN", "127.0.0.1:8080");
const GATEWAY_ADMIN: (&str, &str) = ("GATEWAY_ADMIN_LISTEN", "127.0.0.1:8081");
const CONSOLE: (&str, &str) = ("CONSOLE_LISTEN", "127.0.0.1:8088");
const DEDUP_METRICS: (&str, &str) = ("DEDUP_METRICS_LISTEN", "127.0.0.1:9091");
const STORE_METRICS: (&str, &str) = ("STORE_METRICS_LISTEN", "127.0.0.1:9092");
const ANALYTICS_METRICS: (&str, &str) = ("ANALYTICS_METRICS_LISTEN", "127.0.0.1:9093");

/// Every variable naming an address, for `--help`.
pub const VARIABLES: [(&str, &str); 6] = [
    GATEWAY,
    GATEWAY_ADMIN,
    CONSOLE,
    DEDUP_METRICS,
    STORE_METRICS,
    ANALYTICS_METRICS,
];

/// The listeners, bound; each is released (or dropped) just before its
/// service binds it.
pub struct Addresses {
    /// Handed to the gateway as it is: it serves on a listener it is given.
    pub gateway: TcpListener,
    pub gateway_admin: Reserved,
    pub console: Reserved,
    pub dedup_metrics: Reserved,
    pub store_metrics: Reserved,
    pub analytics_metrics: Reserved,
}

/// An address bound until the service that listens on it is about to.
pub struct Reserved(TcpListener);

impl Reserved {
    pub fn address(&self) -> SocketAddr {
        self.0
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Unbinds it, for its service to bind next.
    pub fn release(self) -> SocketAddr {
        self.address()
    }
}

impl Addresses {
    /// Binds every address the environment names (or its default).
    pub fn bind_from_env() -> anyhow::Result<Addresses> {
        Ok(Addresses {
            gateway: bind(GATEWAY)?,
            gateway_admin: Reserved(bind(GATEWAY_ADMIN)?),
            console: Reserved(bind(CONSOLE)?),
            dedup_metrics: Reserved(bind(DEDUP_METRICS)?),
            store_metrics: Reserved(bind(STORE_METRICS)?),
            analytics_metrics: Reserved(bind(ANALYTICS_METRICS)?),
        })
    }
}

/// Binds `variable`'s address, or `default`; the error names the variable.
fn bind((variable, default): (&str, &str)) -> anyhow::Result<TcpListener> {
    let address = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    let parsed: SocketAddr = address
        .parse()
        .with_context(|| format!("{variable}=`{address}` is not an address such as {default}"))?;
    TcpListener::bind(parsed).with_context(|| {
        format!(
            "cannot listen on {address} ({variable}); set {variable} to another address \
             (127.0.0.1:0 takes any free port)"
        )
    })
}
