//! Builds the HTTP application: one resource per enabled provider route, all
//! served by [`crate::ingest::handle`], plus `/healthz` and `/readyz` (for
//! load balancers) and `/metrics`, which is on `admin_listen`'s own listener
//! unless that is empty: the webhook port is reachable by whoever providers
//! reach it from.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
#[cfg(feature = "testkit")]
pub use actix_web::dev::ServerHandle;
use actix_web::http::Method as HttpMethod;
use actix_web::{web, App, HttpRequest, HttpResponse};
use tracing_actix_web::TracingLogger;

use anyhow::Context;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_kafka::publish::{PublishOptions, Publisher};
use callstream_schemas::provider::Method;
use rdkafka::ClientConfig;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::Settings;
use crate::deliver::Deliverer;
use crate::error::ApiError;
use crate::ingest::CalledUrl;
use crate::ingest::{self, Ingest, SourceRoute};
use crate::metrics::Metrics;
use crate::server::{self, Http, Stop};
use crate::signature::Verifier;
use crate::sources;
use crate::spool::Spool;
use crate::telemetry::RedactingRootSpan;
use crate::PUBLISHED_TOPICS;

/// How long `/readyz` waits for a Kafka metadata answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `/readyz` answer about Kafka is reused: probes from several
/// load balancers (or anyone, on the webhook port) cost at most one
/// metadata request per second.
const READY_CACHE: Duration = Duration::from_secs(1);

/// How long the stop waits for Kafka to take the records the producer
/// still holds. None of them is the only copy of an acknowledged delivery:
/// every 200 was sent after Kafka's acknowledgement or the spool's fsync,
/// and the drainer's records stay in the spool until acknowledged. With
/// Kafka unreachable the flush cannot succeed, and librdkafka may expire
/// queued records well after `message.timeout.ms`: a 10 s flush there, after
/// the in-flight requests, overran docker's 10 s grace period.
const STOP_FLUSH: Duration = Duration::from_secs(2);

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics`, `/healthz` and `/readyz` when `admin_listen` is set.
    admin: Option<(u16, Server)>,
    metrics: Metrics,
    deliverer: Arc<Deliverer>,
}

impl Application {
    /// Binds the listener, connects the producer and wires the routes. The
    /// server does not run until [`Application::run_until_stopped`].
    pub fn build(settings: &Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on `{}` (listen): {e}", settings.listen))?;
        Self::build_with_listener(settings, listener)
    }

    /// As [`Application::build`], on a listener the caller bound (tests
    /// bind port 0).
    pub fn build_with_listener(
        settings: &Settings,
        listener: TcpListener,
    ) -> anyhow::Result<Application> {
        Self::assemble(settings, listener, Stop::Signals)
    }

    /// As [`Application::build_with_listener`], stopped gracefully when
    /// `shutdown` turns true instead of by signals: for a process that runs
    /// the gateway beside other services and stops them all together
    /// (`callstream-dev`).
    pub fn build_with_shutdown(
        settings: &Settings,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Application> {
        Self::assemble(settings, listener, Stop::When(shutdown))
    }

    fn assemble(
        settings: &Settings,
        listener: TcpListener,
        stop: Stop,
    ) -> anyhow::Result<Application> {
        let port = listener.local_addr()?.port();
        let metrics = Metrics::new();
        let mut client = ClientConfig::new();
        for (key, value) in &settings.kafka.properties {
            client.set(key, value);
        }
        client.set("bootstrap.servers", &settings.kafka.bootstrap_servers);
        let publisher = Publisher::new(
            client,
            PublishOptions {
                timeout_ms: settings.kafka.publish_timeout_ms,
                linger_ms: settings.kafka.linger_ms,
                max_body_bytes: settings.max_body_bytes,
            },
            settings.topics.clone(),
            &PUBLISHED_TOPICS,
            metrics.publish.clone(),
        )
        .map_err(|e| anyhow::anyhow!("invalid Kafka producer configuration (kafka.*): {e}"))?;
        let spool = if settings.spool.enabled {
            let s = &settings.spool;
            let spool = Spool::open(&s.dir, s.max_bytes, s.segment_bytes, metrics.clone())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open the spool directory `{}` (spool.dir): {e}",
                        s.dir.display()
                    )
                })?;
            Some(Arc::new(spool))
        } else {
            tracing::warn!(
                "spool disabled: a Kafka outage will answer 503 and providers may drop events"
            );
            None
        };
        let deliverer = Arc::new(Deliverer::new(publisher, spool, metrics.clone()));
        let ingest = web::Data::new(Ingest {
            deliverer: deliverer.clone(),
            metrics: metrics.clone(),
            max_body_bytes: settings.max_body_bytes,
            body_budget: tokio::sync::Semaphore::new(settings.max_buffered_body_bytes),
            body_budget_bytes: settings.max_buffered_body_bytes,
            body_read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
            in_flight: tokio::sync::Semaphore::new(settings.max_in_flight),
            retry_after_secs: 5,
        });
        let routes = Arc::new(source_routes(settings, &metrics));
        metrics.prepare(routes.iter().map(|(_, r)| r.provider.id().as_str()));
        let kafka_check = web::Data::new(KafkaCheck::default());
        let admin = if settings.admin_listen.is_empty() {
            None
        } else {
            let listener = TcpListener::bind(&settings.admin_listen).map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on `{}` (admin_listen): {e}",
                    settings.admin_listen
                )
            })?;
            let port = listener.local_addr()?.port();
            let (ingest, kafka_check) = (ingest.clone(), kafka_check.clone());
            let http = Http {
                workers: Some(1),
                // Stopped after the webhook server, so scrapes see the drain.
                stop: Stop::Handle,
                ..Http::default()
            };
            let server = server::serve(listener, &http, move || {
                App::new()
                    .app_data(ingest.clone())
                    .app_data(kafka_check.clone())
                    .configure(health_routes)
                    .configure(metrics_route)
                    .default_service(web::to(not_found))
            })?;
            Some((port, server))
        };
        let metrics_here = admin.is_none();
        let http = Http {
            workers: (settings.workers > 0).then_some(settings.workers),
            stop,
            shutdown_timeout_secs: Some(settings.shutdown_timeout_secs),
            // Slow clients may not hold a connection: headers must arrive in
            // time, idle keep-alive connections are closed.
            client_request_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            client_disconnect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(settings.keep_alive_secs),
        };
        let server = server::serve(listener, &http, move || {
            let mut app = App::new()
                .wrap(TracingLogger::<RedactingRootSpan>::new())
                .app_data(ingest.clone())
                .app_data(kafka_check.clone())
                .configure(health_routes);
            if metrics_here {
                app = app.configure(metrics_route);
            }
            for (path, route) in routes.iter() {
                app = app.service(route_resource(path, route.clone()));
            }
            app.default_service(web::to(not_found))
        })?;
        Ok(Application {
            port,
            server,
            admin,
            metrics,
            deliverer,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics`: `admin_listen`'s, or the webhook port when
    /// that is empty.
    pub fn admin_port(&self) -> u16 {
        self.admin.as_ref().map_or(self.port, |(port, _)| *port)
    }

    /// Counts what the embedded broker discards in this application's
    /// `/metrics` (and warns of it): those records were acknowledged.
    pub fn watch_embedded_broker(&self, broker: &mut EmbeddedBroker) -> anyhow::Result<()> {
        broker
            .watch_discards(self.metrics.embedded_broker_discarded.clone())
            .context("could not watch the embedded broker")
    }

    /// Stops the server gracefully when called (tests; signals do it in production).
    #[cfg(feature = "testkit")]
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT, or the flag of
    /// [`Application::build_with_shutdown`] (or `handle().stop` in tests): stops
    /// accepting, lets in-flight requests finish, stops the spool drainer at
    /// once (what is still spooled stays on disk for the next start), then
    /// flushes the producer for at most [`STOP_FLUSH`]. Every 200 was
    /// durable before it was sent, so nothing acknowledged is only in
    /// memory at any point.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (stop_drain, drain_stopped) = watch::channel(false);
        let drainer = tokio::spawn(self.deliverer.clone().drain(drain_stopped));
        let admin = self.admin.map(|(_, server)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let served = self.server.await;
        if let Some(admin) = admin {
            admin.stop(true).await;
        }
        served?;
        let _ = stop_drain.send(true);
        let _ = drainer.await;
        tracing::info!("HTTP server stopped; flushing Kafka producer");
        let publisher = self.deliverer.publisher().clone();
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(STOP_FLUSH)).await?;
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "Kafka did not take every queued record before the stop; they are still in the spool, for the next start");
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// (path, route) for every enabled source route, with its auth and tenant.
fn source_routes(settings: &Settings, metrics: &Metrics) -> Vec<(String, web::Data<SourceRoute>)> {
    let mut out = Vec::new();
    let served =
        sources::providers_of(&settings.sources).expect("checked when the settings were loaded");
    for (name, provider) in served {
        let cfg = &settings.sources[name];
        if !cfg.enabled {
            tracing::info!(source = name, "source disabled");
            continue;
        }
        let auth = Arc::new(Auth::new(&cfg.api_keys, cfg.auth_header.clone()));
        let signature = Verifier::of_source(
            cfg.signature.as_ref(),
            &cfg.auth_tokens,
            &format!("sources.{name}"),
        )
        .expect("checked when the settings were loaded")
        .map(Arc::new);
        let called = Arc::new(CalledUrl {
            public_url: cfg.public_url.clone(),
            trust_forwarded: cfg.trust_forwarded_headers,
        });
        if let Some(verifier) = &signature {
            tracing::info!(
                source = name,
                scheme = verifier.scheme(),
                "deliveries must be signed"
            );
            if verifier.signs_url() && cfg.public_url.is_none() && !cfg.trust_forwarded_headers {
                tracing::warn!(
                    source = name,
                    "the signature covers the URL the platform called, taken from the Host header: behind a proxy, set sources.{name}.public_url"
                );
            }
        } else if auth.is_open() {
            tracing::warn!(
                source = name,
                "no API key or signature configured: accepting every request (set sources.{name}.api_keys, or a signature: docs/signatures.md)"
            );
        }
        for route in provider.routes() {
            let path = settings.path_of(name, route).to_string();
            tracing::info!(source = name, route = route.name, %path, "serving");
            out.push((
                path,
                web::Data::new(SourceRoute {
                    provider: provider.clone(),
                    route,
                    auth: auth.clone(),
                    signature: signature.clone(),
                    called: called.clone(),
                    tenant: cfg.tenant.clone(),
                    metrics: metrics.source(name),
                }),
            ));
        }
    }
    out
}

fn route_resource(path: &str, route: web::Data<SourceRoute>) -> actix_web::Resource {
    let methods = route.route.methods;
    let allowed = methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut resource = web::resource(path).app_data(route);
    for method in methods {
        let method = match method {
            Method::Get => HttpMethod::GET,
            Method::Post => HttpMethod::POST,
            Method::Put => HttpMethod::PUT,
        };
        resource = resource.route(web::method(method).to(ingest::handle));
    }
    refuse_other_methods(resource, &allowed)
}

/// Answers any method the resource does not route with 405 and `Allow`.
fn refuse_other_methods(resource: actix_web::Resource, allowed: &str) -> actix_web::Resource {
    let allowed = allowed.to_string();
    resource.default_service(web::to(move |req: HttpRequest| {
        let allowed = allowed.clone();
        async move {
            Err::<HttpResponse, _>(ApiError::MethodNotAllowed {
                method: req.method().to_string(),
                allowed,
            })
        }
    }))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(req.path().to_string()))
}

fn health_routes(config: &mut web::ServiceConfig) {
    config
        .service(probe("/healthz", healthz))
        .service(probe("/readyz", readyz));
}

fn metrics_route(config: &mut web::ServiceConfig) {
    config.service(probe("/metrics", metrics_text));
}

/// GET, and HEAD for probes that want the status only (the server sends
/// no body); other methods 405.
fn probe<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let resource = web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler));
    refuse_other_methods(resource, "GET, HEAD")
}

/// The last Kafka reachability answer and when it was asked; one check at a
/// time, the others wait for its answer.
#[derive(Default)]
struct KafkaCheck(tokio::sync::Mutex<Option<(std::time::Instant, bool)>>);

impl KafkaCheck {
    async fn reachable(&self, deliverer: &Deliverer) -> bool {
        let mut last = self.0.lock().await;
        match *last {
            Some((asked, reachable)) if asked.elapsed() < READY_CACHE => reachable,
            _ => {
                let reachable = deliverer.publisher().kafka_reachable(READY_TIMEOUT).await;
                *last = Some((std::time::Instant::now(), reachable));
                reachable
            }
        }
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

/// 200 `ready` when Kafka answers and nothing is spooled; 200 `degraded`
/// while deliveries are being spooled (still accepting, durably); 503 when
/// Kafka is unreachable and there is no spool to fall back on.
async fn readyz(ingest: web::Data<Ingest>, kafka: web::Data<KafkaCheck>) -> HttpResponse {
    let deliverer = &ingest.deliverer;
    let reachable = kafka.reachable(deliverer).await;
    match deliverer.spool() {
        Some(spool) if !reachable || deliverer.degraded() || !spool.is_empty() => HttpResponse::Ok().json(serde_json::json!({
            "status": "degraded",
            "kafka_reachable": reachable,
            "spooled_deliveries": spool.len(),
        })),
        _ if reachable => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        _ => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "error": "Kafka is not reachable: check kafka.bootstrap_servers and the brokers" })),
    }
}

async fn metrics_text(ingest: web::Data<Ingest>) -> HttpResponse {
    ingest.update_gauges();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ingest.metrics.render())
}
