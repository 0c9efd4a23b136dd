//! The HTTP server of both listeners: what actix-web's `HttpServer::listen`
//! assembles (actix-server accepting, actix-http serving HTTP/1), with each
//! connection wrapped in [`answers::JsonAnswers`] so the answers actix-http
//! writes itself have JSON bodies too, and in [`paced::Paced`] so it reads
//! no further ahead of the handler than one step. `HttpServer` has no way to wrap a
//! connection, hence the assembly here.

mod answers;
mod paced;

use std::fmt;
use std::net::TcpListener;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpService, Protocol, Request, Response};
use actix_server::Server;
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, Service};
use actix_web::rt::net::TcpStream;
use callstream_runtime::shutdown::wait_for;
use tokio::sync::watch;

use answers::JsonAnswers;
use paced::Paced;

/// What the gateway sets on a listener's server; `None`: actix's default.
#[derive(Debug, Clone)]
pub struct Http {
    pub workers: Option<usize>,
    pub stop: Stop,
    pub shutdown_timeout_secs: Option<u64>,
    /// The first request's head must be complete within this (else 408).
    pub(crate) client_request_timeout: Duration,
    pub(crate) client_disconnect_timeout: Duration,
    pub(crate) keep_alive: Duration,
}

/// What stops a listener's server, besides its handle.
#[derive(Debug, Clone)]
pub enum Stop {
    /// SIGTERM (gracefully) or SIGINT and SIGQUIT (at once), as
    /// actix-server handles them: the gateway's own process.
    Signals,
    /// Only its handle: a server the caller stops itself.
    Handle,
    /// The flag turning true, gracefully: a process that runs the gateway
    /// beside other services (`callstream-dev`) and owns the signals.
    When(watch::Receiver<bool>),
}

impl Default for Http {
    /// `HttpServer`'s defaults.
    fn default() -> Self {
        Http {
            workers: None,
            stop: Stop::Signals,
            shutdown_timeout_secs: None,
            client_request_timeout: Duration::from_secs(5),
            client_disconnect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// Serves `factory`'s app on `listener` as `HttpServer::new(factory)`
/// with `http`'s settings would, answers with JSON bodies included.
pub fn serve<F, I, S, B>(listener: TcpListener, http: &Http, factory: F) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let mut builder = Server::build();
    if let Some(workers) = http.workers {
        builder = builder.workers(workers);
    }
    match &http.stop {
        Stop::Signals => {}
        Stop::Handle => builder = builder.disable_signals(),
        Stop::When(shutdown) => {
            let mut shutdown = shutdown.clone();
            builder = builder.shutdown_signal(async move { wait_for(&mut shutdown).await });
        }
    }
    if let Some(secs) = http.shutdown_timeout_secs {
        builder = builder.shutdown_timeout(secs);
    }
    let shutdown = builder.graceful_shutdown_signal();
    let http = http.clone();
    let head_timeout_ms =
        u64::try_from(http.client_request_timeout.as_millis()).unwrap_or(u64::MAX);
    let builder = builder.listen(format!("actix-web-service-{addr}"), listener, move || {
        let shutdown = shutdown.clone();
        let app = factory()
            .into_factory()
            .map_err(|err| err.into().error_response());
        let service = HttpService::build()
            // Closes idle keep-alive connections when a graceful stop starts.
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(http.keep_alive)
            .client_request_timeout(http.client_request_timeout)
            .client_disconnect_timeout(http.client_disconnect_timeout)
            .h1_allow_half_closed(true)
            .local_addr(addr)
            // `HttpServer` passes its host and address; nothing here reads
            // them (no URL generation, no `connection_info`), and actix-web
            // offers no public way to build another `AppConfig`.
            .finish(map_config(app, |_| AppConfig::default()));
        fn_service(move |io: TcpStream| {
            let peer = io.peer_addr().ok();
            let io = JsonAnswers::new(Paced::new(io), head_timeout_ms);
            std::future::ready(Ok((io, Protocol::Http1, peer)))
        })
        .and_then(service)
    })?;
    Ok(builder.run())
}
