//! The HTTP server of both listeners: what actix-web's `HttpServer::listen`
//! assembles (actix-server accepting, actix-http serving HTTP/1), with each
//! connection wrapped in [`answers::JsonAnswers`] so the answers actix-http
//! writes itself have JSON bodies too, in [`paced::Paced`] so it reads
//! no further ahead of the handler than one step, and in
//! [`head_deadline::HeadDeadline`] so every request's head, not only the
//! first's, is bounded in time. `HttpServer` has no way to wrap a
//! connection, hence the assembly here.

/// `AsyncWrite` for a connection wrapper `$wrapper<T>` that changes only
/// reads: every write goes to its `io` as it is.
macro_rules! writes_through {
    ($wrapper:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<T> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

mod answers;
mod head_deadline;
mod paced;

use std::fmt;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpService, Protocol, Request, Response};
use actix_server::Server;
use actix_service::{
    apply_fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory,
    ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, Service};
use actix_web::rt::net::TcpStream;
use callstream_runtime::shutdown::wait_for;
use tokio::sync::watch;

use answers::JsonAnswers;
use head_deadline::{HeadDeadline, Requests};
use paced::Paced;

/// A connection as the HTTP service gets it.
type Connection = HeadDeadline<JsonAnswers<Paced<TcpStream>>>;

/// What the gateway sets on a listener's server; `None`: actix's default.
#[derive(Debug, Clone)]
pub struct Http {
    pub workers: Option<usize>,
    pub stop: Stop,
    pub shutdown_timeout_secs: Option<u64>,
    /// Each request's head must be complete within this: else 408 for the
    /// first request of a connection, a closed connection for later ones.
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
    let head_timeout = http.client_request_timeout;
    let head_timeout_ms = u64::try_from(head_timeout.as_millis()).unwrap_or(u64::MAX);
    let builder = builder.listen(format!("actix-web-service-{addr}"), listener, move || {
        let shutdown = shutdown.clone();
        let app = factory()
            .into_factory()
            .map_err(|err| err.into().error_response());
        // Each request counted in flight on its connection while the app
        // serves it (`head_deadline.rs`).
        let app = apply_fn_factory(app, |req: Request, app: &_| {
            let requests = req.conn_data::<Rc<Requests>>().cloned();
            head_deadline::track(requests, app.call(req))
        });
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
            .on_connect_ext(|io: &Connection, ext| {
                ext.insert(io.requests());
            })
            .local_addr(addr)
            // `HttpServer` passes its host and address; nothing here reads
            // them (no URL generation, no `connection_info`), and actix-web
            // offers no public way to build another `AppConfig`.
            .finish(map_config(app, |_| AppConfig::default()));
        fn_service(move |io: TcpStream| {
            let peer = io.peer_addr().ok();
            let io: Connection = HeadDeadline::new(
                JsonAnswers::new(Paced::new(io), head_timeout_ms),
                head_timeout,
            );
            std::future::ready(Ok((io, Protocol::Http1, peer)))
        })
        .and_then(service)
    })?;
    Ok(builder.run())
}
