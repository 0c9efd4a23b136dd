//! `callstream-console`: the ops console. Server-rendered pages over the
//! store's PostgreSQL, the Kafka topics and the binaries' own `/metrics`:
//!
//! * `/`: the overview ([`pages::overview`]);
//! * `/events?q=`: search events and calls ([`pages::events`]), each event
//!   with its raw delivery and its revisions;
//! * `/calls/<key>`: one call ([`pages::calls`]);
//! * `/dead-letters`: the three dead-letter topics, with dry-run and
//!   redeliver ([`pages::dead_letters`], through the replay library);
//! * `/actions`: who redelivered what, when ([`audit`]).
//!
//! Sign-in is HTTP Basic against bcrypt hashes ([`auth`]); every action that
//! changes anything is a POST carrying a CSRF token. The console never
//! listens on the webhook port: it is its own process, loopback by default.

pub mod audit;
pub mod auth;
pub mod db;
mod html;
mod kafka;
pub mod pages;
mod prom;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::watch;

use callstream_consumers::config::Settings;

/// What every page handler shares.
pub struct Shared {
    pub settings: Settings,
    pub db: db::Db,
    pub auth: auth::Users,
    pub http: reqwest::Client,
}

/// The console, bound and connected, not yet serving.
pub struct Console {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Console {
    /// Checks the users, binds `console.listen`, connects to PostgreSQL and
    /// applies the migrations (the audit table is one).
    pub async fn build(settings: Settings) -> anyhow::Result<Console> {
        let auth = auth::Users::new(&settings.console.users)?;
        let listener = TcpListener::bind(&settings.console.listen).with_context(|| {
            format!(
                "cannot listen on `{}` (console.listen, CONSOLE_LISTEN)",
                settings.console.listen
            )
        })?;
        let url = settings.require_database_url()?;
        let db = db::Db::open(url)
            .await
            .context("cannot connect to PostgreSQL (DATABASE_URL) and apply the migrations")?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .build()?;
        Ok(Console {
            listener,
            shared: Arc::new(Shared {
                settings,
                db,
                auth,
                http,
            }),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let shared = web::Data::from(self.shared);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .wrap(actix_web::middleware::from_fn(auth::require_user))
                .configure(pages::routes)
        })
        .workers(2)
        .disable_signals()
        .listen(self.listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(async move {
            callstream_runtime::shutdown::wait_for(&mut shutdown).await;
            handle.stop(true).await;
        });
        server.await?;
        Ok(())
    }
}
