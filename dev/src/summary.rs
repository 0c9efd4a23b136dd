//! What `callstream-dev` prints on stdout once everything runs (the logs go
//! to stderr): each address, the console's sign-in, where PostgreSQL is,
//! and a `curl` line that posts a sample call. Its first line is
//! [`READY`]; `dev/tests/dev.rs` reads the rest.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;

use crate::login::{Login, PASSWORD_VARIABLE, USER};
use crate::{curl_line, ONOFF_API_KEY};

/// The first line of the summary: everything is up.
pub const READY: &str = "callstream-dev is ready";

pub struct Summary<'a> {
    pub gateway: SocketAddr,
    pub console: SocketAddr,
    /// (service, address of its `/metrics`)
    pub metrics: &'a [(&'a str, SocketAddr)],
    pub kafka: &'a str,
    pub postgresql: String,
    pub login: &'a Login,
}

impl Summary<'_> {
    pub fn text(&self) -> String {
        let gateway = format!("http://{}", self.gateway);
        let password = if self.login.from_env {
            format!("the one in {PASSWORD_VARIABLE}")
        } else {
            self.login.password.clone()
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{READY}: the whole pipeline in one process (Ctrl-C stops it).\n"
        );
        let _ = writeln!(
            out,
            "gateway:    {gateway} (Onoff API key: {ONOFF_API_KEY})"
        );
        let _ = writeln!(
            out,
            "console:    http://{} (user: {USER}, password: {password})",
            self.console
        );
        for (i, (name, address)) in self.metrics.iter().enumerate() {
            let label = if i == 0 { "metrics:" } else { "" };
            let _ = writeln!(out, "{label:<12}http://{address}/metrics ({name})");
        }
        let _ = writeln!(
            out,
            "kafka:      {} (embedded, in memory: everything is lost on exit)",
            self.kafka
        );
        let _ = writeln!(out, "postgresql: {}", self.postgresql);
        let _ = writeln!(
            out,
            "\nPost a sample Onoff call, then look for it in the console and the table `events`:\n{}",
            curl_line(&gateway)
        );
        out
    }

    /// Prints it at once, so nothing logged interleaves.
    pub fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.text().as_bytes());
        let _ = stdout.flush();
    }
}
