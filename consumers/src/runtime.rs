//! Process plumbing every consumer binary shares: the `/metrics` and
//! `/healthz` endpoint, and one shutdown signal broadcast to all tasks.

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

/// The metrics and health endpoint of a consumer process.
pub struct MetricsServer {
    pub port: u16,
    server: Server,
}

impl MetricsServer {
    pub fn bind(listen: &str, registry: Registry) -> anyhow::Result<MetricsServer> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on `{listen}` (metrics_listen): {e}"))?;
        let port = listener.local_addr()?.port();
        let registry = web::Data::new(registry);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(registry.clone())
                .route("/metrics", web::get().to(metrics))
                .route("/healthz", web::get().to(healthz))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        Ok(MetricsServer { port, server })
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves in the background until the handle stops it.
    pub fn spawn(self) -> ServerHandle {
        let handle = self.server.handle();
        tokio::spawn(self.server);
        handle
    }
}

async fn metrics(registry: web::Data<Registry>) -> HttpResponse {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        return HttpResponse::InternalServerError()
            .json(serde_json::json!({ "error": e.to_string() }));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(buf)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

/// A shutdown flag every task watches; flipped once on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> std::io::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received: finishing the current batch");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Resolves when `shutdown` turns true.
pub async fn wait_for(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Sleeps `duration`; true if shutdown began meanwhile.
pub async fn pause(duration: std::time::Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = wait_for(&mut shutdown) => true,
    }
}

/// An error and all its causes on one line, `outer: cause: root`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
