//! The services as tasks of this process, under one shutdown flag: the
//! first SIGINT or SIGTERM (or a service failing) flips it and every
//! service stops gracefully; a second signal exits at once.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use callstream_runtime::shutdown::wait_for;

/// How long the services may take to stop: the gateway's requests in
/// progress (its `shutdown_timeout_secs`, 30 s) and producer flush, the
/// consumers' batches in hand.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

type Outcome = (&'static str, anyhow::Result<()>);

pub struct Services {
    tasks: JoinSet<Outcome>,
    stop: watch::Sender<bool>,
}

impl Services {
    /// No service yet; signals now flip the flag.
    pub fn new() -> std::io::Result<Services> {
        let (stop, _) = watch::channel(false);
        stop_on_signals(stop.clone())?;
        Ok(Services {
            tasks: JoinSet::new(),
            stop,
        })
    }

    /// The flag every service stops on.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn spawn<F>(&mut self, name: &'static str, service: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(async move { (name, service.await) });
    }

    /// Waits until something accepts connections at each address, within
    /// `timeout`: true once all do, false if the flag flipped meanwhile; an
    /// error if a service ended or one address stayed closed.
    pub async fn wait_listening(
        &mut self,
        addresses: &[(&str, SocketAddr)],
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        for (name, address) in addresses {
            while tokio::net::TcpStream::connect(address).await.is_err() {
                if *self.stop.borrow() {
                    return Ok(false);
                }
                if let Some(ended) = self.tasks.try_join_next() {
                    return Err(early_end(ended));
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{name} did not listen on {address} within {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(!*self.stop.borrow())
    }

    /// Until the flag flips (Ok) or a service ends first (its error).
    pub async fn until_stopped(&mut self) -> anyhow::Result<()> {
        let mut shutdown = self.shutdown();
        tokio::select! {
            biased;
            _ = wait_for(&mut shutdown) => Ok(()),
            Some(ended) = self.tasks.join_next() => match ended {
                // The flag flipped while this was being polled, and a
                // service was quicker to stop than this to notice (the
                // console, in CI): told to, not by itself.
                Ok((_, Ok(()))) if *self.stop.borrow() => Ok(()),
                ended => Err(early_end(ended)),
            },
        }
    }

    /// Flips the flag and waits for every service, within [`STOP_TIMEOUT`];
    /// the first error, if any.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok((_, Ok(()))))) => {}
                Ok(Some(Ok((name, Err(e))))) => {
                    keep_first(&mut first_error, e.context(format!("{name} failed")));
                }
                Ok(Some(Err(e))) => {
                    keep_first(&mut first_error, anyhow::anyhow!("a service panicked: {e}"));
                }
                Err(_) => {
                    tracing::warn!(
                        running = self.tasks.len(),
                        "services still stopping after {STOP_TIMEOUT:?}; leaving them"
                    );
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Keeps `error` if it is the first, else logs it.
fn keep_first(first: &mut Option<anyhow::Error>, error: anyhow::Error) {
    match first {
        Some(_) => tracing::error!(error = format!("{error:#}"), "while stopping"),
        None => *first = Some(error),
    }
}

/// A service that ended before the flag flipped: its error, or that it
/// stopped by itself.
fn early_end(ended: Result<Outcome, JoinError>) -> anyhow::Error {
    match ended {
        Ok((name, Ok(()))) => anyhow::anyhow!("{name} stopped by itself"),
        Ok((name, Err(e))) => e.context(format!("{name} failed")),
        Err(e) => anyhow::anyhow!("a service panicked: {e}"),
    }
}

/// The first SIGINT or SIGTERM flips `stop`; a second exits at once (the
/// throwaway PostgreSQL still goes: its wrapper sees this process gone).
fn stop_on_signals(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            signals += 1;
            if signals == 1 {
                println!("\nstopping (Ctrl-C again to exit at once)");
                let _ = stop.send(true);
            } else {
                eprintln!("exiting at once");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
