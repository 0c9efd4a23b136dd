//! Where a delivery becomes durable: Kafka, or the local spool when Kafka
//! cannot acknowledge in time. The HTTP handler answers 200 on `Ok` only.
//!
//! Per-key order: deliveries sharing a key (the raw record's key, i.e. the
//! event identity) are serialized by a lock per key, and while the spool
//! holds any delivery for a key, newer ones for that key go to the spool
//! behind it. The drainer replays the spool in order and releases a key only
//! after Kafka acknowledged it, so a newer delivery never overtakes an older.
//!
//! Degraded mode: after a failed publish every new delivery goes straight to
//! the spool (fast 200s instead of each waiting out the publish deadline),
//! until Kafka acknowledges what the drainer sends it; deliveries whose key
//! is still spooled keep going to the spool until the drainer passed them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;

use callstream_kafka::publish::{OutRecord, PublishError, Publisher};
use callstream_runtime::backoff::Backoff;

use crate::keylock::KeyLocks;
use crate::metrics::Metrics;
use crate::spool::{key_hash, Delivery, Spool, SpoolError};

/// Deliveries the drainer takes at once: every key's first at once, a
/// key's later ones each after the one before it (see `drain_chunk`).
/// Large, so the few keys that repeat within a chunk cost few round trips
/// per chunk: at 512, a spool of 440k bench deliveries drained in 7.1 s
/// against 4.8–5.6 s without the per-key order; at 2048 in 5.2–5.3 s.
const DRAIN_CHUNK: usize = 2048;

/// Where a delivery was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Kafka,
    Spool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliverError {
    #[error(transparent)]
    Kafka(#[from] PublishError),
    #[error("Kafka is unavailable and {0}")]
    Spool(#[from] SpoolError),
}

pub struct Deliverer {
    publisher: Publisher,
    spool: Option<Arc<Spool>>,
    keys: KeyLocks,
    degraded: AtomicBool,
    metrics: Metrics,
}

impl Deliverer {
    pub fn new(publisher: Publisher, spool: Option<Arc<Spool>>, metrics: Metrics) -> Deliverer {
        Deliverer {
            publisher,
            spool,
            keys: KeyLocks::default(),
            degraded: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_deref()
    }

    /// Whether new deliveries currently bypass Kafka for the spool.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    fn set_degraded(&self, on: bool) {
        if self.degraded.swap(on, Ordering::AcqRel) != on {
            self.metrics.kafka_degraded.set(i64::from(on));
            if on {
                tracing::warn!("Kafka is failing: spooling deliveries locally until it is back");
            } else {
                tracing::info!("spool drained: publishing to Kafka directly again");
            }
        }
    }

    /// Makes `records` (one delivery, ordered by its first record's key) durable.
    pub async fn deliver(&self, records: &[OutRecord]) -> Result<Stored, DeliverError> {
        let Some(spool) = &self.spool else {
            self.publisher.publish(records).await?;
            return Ok(Stored::Kafka);
        };
        let key = records.first().map_or("", |r| r.key.as_str());
        let hash = key_hash(key);
        let _ordered = self.keys.lock(hash).await;
        if !self.degraded() && !spool.holds_hash(hash) {
            match self.publisher.publish(records).await {
                Ok(()) => return Ok(Stored::Kafka),
                // Kafka refused this record, not the moment: the others
                // still go to it; this one waits in the spool, where the
                // drainer sets it aside.
                Err(err) if err.record_refused() => {
                    tracing::error!(error = %err, "Kafka refuses this delivery's record: spooling it");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "publish failed: spooling");
                    self.set_degraded(true);
                }
            }
        }
        spool.append(records).await?;
        Ok(Stored::Spool)
    }

    /// Replays the spool to Kafka until `shutdown` turns true. Segments are
    /// deleted only once every delivery in them was acknowledged.
    pub async fn drain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let mut backoff = drain_backoff();
        while !*shutdown.borrow() {
            let segment = match spool.oldest_sealed().await {
                Ok(Some(segment)) => segment,
                Ok(None) => {
                    self.set_degraded(false);
                    tokio::select! {
                        _ = spool.appended.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the spool");
                    if sleep_or_shutdown(backoff.delay(), &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            for (at, chunk) in segment.deliveries.chunks(DRAIN_CHUNK).enumerate() {
                let first = at * DRAIN_CHUNK;
                if self
                    .drain_chunk(
                        &spool,
                        segment.seq,
                        first,
                        chunk,
                        &mut backoff,
                        &mut shutdown,
                    )
                    .await
                {
                    return;
                }
                // Kafka acknowledges again: new deliveries go to it directly
                // (those whose key is still spooled stay behind it). Waiting
                // for an empty spool instead could wait for ever under
                // steady traffic, every delivery paying for fsync.
                self.set_degraded(false);
            }
            if let Err(err) = spool.finish(segment.seq) {
                tracing::error!(error = %err, seq = segment.seq, "cannot delete a drained spool segment");
            }
        }
    }

    /// Publishes one chunk of a segment (starting at its `first`-th
    /// delivery) until Kafka acknowledged every delivery or set aside the
    /// ones it refuses as records; true if shutdown came first (at once,
    /// even with publishes in flight).
    ///
    /// Deliveries sharing a key go one after another, different keys at
    /// once: a later delivery for a key is never sent before the earlier
    /// one was acknowledged, so it cannot reach Kafka ahead of it when the
    /// earlier one fails, and a retry sends only what is not in Kafka yet.
    async fn drain_chunk(
        &self,
        spool: &Spool,
        seq: u64,
        first: usize,
        chunk: &[Delivery],
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut queues = per_key(chunk);
        loop {
            let publishing = join_all(queues.iter().map(|queue| async move {
                let mut acked = 0;
                for &i in queue {
                    if let Err(err) = self.publisher.publish(&chunk[i].records).await {
                        return (acked, Some(err));
                    }
                    acked += 1;
                }
                (acked, None)
            }));
            // Shutdown does not wait for the publishes in flight: with Kafka
            // unreachable each can take the whole publish deadline and its
            // safety margin, which made the stop overrun docker's 10 s.
            // What they carry stays in the spool (the segment is deleted
            // only once all of it was acknowledged) and is sent again at
            // the next start; a record Kafka takes after all is a
            // duplicate, which the dedup consumer drops.
            let results = tokio::select! {
                results = publishing => results,
                _ = shutdown.changed() => return true,
            };
            let mut failing = 0;
            for (queue, (acked, err)) in queues.iter_mut().zip(results) {
                for i in queue.drain(..acked) {
                    spool.delivered(&chunk[i].records);
                }
                let Some(err) = err else { continue };
                let i = queue[0];
                // Kafka will never take it: set it aside, or it would hold
                // its key, and the whole spool, for ever.
                if err.record_refused() {
                    match spool.set_aside(seq, first + i, &chunk[i]) {
                        Ok(path) => {
                            tracing::error!(
                                file = %path.display(),
                                "Kafka refuses this spooled delivery's record (too large or invalid): set aside"
                            );
                            queue.pop_front();
                            continue;
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "cannot set a refused delivery aside; will retry");
                        }
                    }
                }
                failing += 1;
            }
            queues.retain(|queue| !queue.is_empty());
            if queues.is_empty() {
                backoff.reset();
                return false;
            }
            if failing > 0 {
                tracing::warn!(failing, "Kafka still failing; spool drain retries");
                if sleep_or_shutdown(backoff.delay(), shutdown).await {
                    return true;
                }
            }
        }
    }
}

/// The chunk's deliveries (their indexes) per key, each key's in spool order.
fn per_key(chunk: &[Delivery]) -> Vec<VecDeque<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut queues: Vec<VecDeque<usize>> = Vec::new();
    for (i, d) in chunk.iter().enumerate() {
        let key = d.records.first().map_or("", |r| r.key.as_str());
        let at = *index.entry(key).or_insert_with(|| {
            queues.push(VecDeque::new());
            queues.len() - 1
        });
        queues[at].push_back(i);
    }
    queues
}

/// Sleeps, or returns true early if shutdown was signalled.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

/// Back-off for drain retries: 100 ms doubling to 5 s, jittered.
fn drain_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
}
