//! The `/metrics` and `/healthz` endpoint of a consumer process, on its own
//! listener (`metrics_listen`).

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};

/// The metrics and health endpoint of a process.
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

/// The registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> Result<Vec<u8>, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(buf)
}

async fn metrics(registry: web::Data<Registry>) -> HttpResponse {
    match encode(&registry) {
        Ok(buf) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(buf),
        Err(e) => {
            HttpResponse::InternalServerError().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}
