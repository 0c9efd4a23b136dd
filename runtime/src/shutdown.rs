//! One shutdown signal broadcast to every task (mini-redis's shape): a
//! `watch` flag flipped once on SIGINT or SIGTERM. Tasks take the receiver
//! as a parameter, so tests drive it without signals.

use std::time::Duration;

use tokio::sync::watch;

/// A shutdown flag every task watches; flipped once on SIGINT or SIGTERM.
pub fn on_signal() -> std::io::Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received: finishing the work in hand");
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub async fn wait_for(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Sleeps `duration`; true if shutdown began meanwhile.
pub async fn pause(duration: Duration, shutdown: &watch::Receiver<bool>) -> bool {
    let mut shutdown = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(duration) => *shutdown.borrow(),
        _ = wait_for(&mut shutdown) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pause_ends_early_on_shutdown() {
        let (tx, rx) = watch::channel(false);
        assert!(!pause(Duration::from_millis(10), &rx).await);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
        });
        let started = tokio::time::Instant::now();
        assert!(pause(Duration::from_secs(3600), &rx).await);
        assert!(started.elapsed() < Duration::from_secs(60));
        stopper.await.unwrap();
    }
}
