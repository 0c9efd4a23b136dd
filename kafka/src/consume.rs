//! The parts of a consumer loop: batches from `recv`, what a rebalance
//! changed, commits and a clean close.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance};
use rdkafka::message::BorrowedMessage;
use rdkafka::ClientContext;

/// Pause after a Kafka error event before waiting for records again.
const CONSUME_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Up to `max` records, waiting at most `linger` after the first, each
/// turned into a `T` by `take` (so the batch can be held across awaits).
///
/// librdkafka reports trouble it recovers from by itself (a broker gone,
/// all brokers down, `max.poll.interval.ms` exceeded and the group joined
/// again) as error events, which `recv` returns: those are logged, and the
/// wait goes on. Records already taken are kept: their position has moved
/// on, so dropping them would skip them. Only a fatal error is returned
/// (and a batch collected before it is dropped with it: the caller exits,
/// and what was not committed is read again at the next start).
pub(crate) async fn next_batch<C, T>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    max: usize,
    linger: Duration,
    mut take: impl FnMut(&BorrowedMessage<'_>) -> T,
) -> Result<Vec<T>, rdkafka::error::KafkaError>
where
    C: ConsumerContext + 'static,
{
    let first = loop {
        match consumer.recv().await {
            Ok(msg) => break take(&msg),
            Err(e) => {
                recoverable(e)?;
                tokio::time::sleep(CONSUME_ERROR_PAUSE).await;
            }
        }
    };
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(msg)) => batch.push(take(&msg)),
            Ok(Err(e)) => {
                recoverable(e)?;
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

/// Logs a consume error librdkafka recovers from; returns a fatal one.
fn recoverable(e: rdkafka::error::KafkaError) -> Result<(), rdkafka::error::KafkaError> {
    if matches!(e, rdkafka::error::KafkaError::MessageConsumptionFatal(_)) {
        return Err(e);
    }
    tracing::warn!(error = %e, "Kafka consume error; librdkafka retries by itself");
    Ok(())
}

/// What changed in the assignment since the loop last looked, as its net
/// effect: drop what the loop held of every `revoked` partition, then take
/// up every `assigned` one. Several rebalances can pass between two looks
/// (a rolling restart while input is idle): a partition revoked and
/// assigned again is in both (its state is stale: rebuild it), one assigned
/// and revoked again only in `revoked`, and none is listed twice.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AssignmentChanges {
    pub assigned: BTreeSet<i32>,
    pub revoked: BTreeSet<i32>,
}

impl AssignmentChanges {
    fn note_revoked(&mut self, parts: &[i32]) {
        for p in parts {
            self.assigned.remove(p);
            self.revoked.insert(*p);
        }
    }

    fn note_assigned(&mut self, parts: &[i32]) {
        self.assigned.extend(parts);
    }
}

/// Records partition assignments and revocations for the processing loop,
/// which owns all state: the callbacks only note what happened, and wake
/// the loop.
#[derive(Default)]
pub struct TrackingContext {
    changes: Mutex<AssignmentChanges>,
    changed: tokio::sync::Notify,
    commit_on_revoke: bool,
}

impl TrackingContext {
    /// For loops that commit offsets to Kafka: the offsets stored for
    /// finished records are committed, synchronously, before a partition
    /// is given up, so its next owner starts after them (the Java
    /// client's `commitSync` in `onPartitionsRevoked`). An async commit
    /// still on its way would otherwise be lost with the assignment.
    pub fn committing_on_revoke() -> TrackingContext {
        TrackingContext {
            commit_on_revoke: true,
            ..TrackingContext::default()
        }
    }

    /// Takes the changes noted since the last call.
    pub(crate) fn take_changes(&self) -> AssignmentChanges {
        std::mem::take(&mut *self.changes.lock().expect("assignment lock"))
    }

    /// Resolves once a rebalance changed something since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

impl ClientContext for TrackingContext {}

impl ConsumerContext for TrackingContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions revoked");
            if self.commit_on_revoke {
                use rdkafka::error::{KafkaError, RDKafkaErrorCode};
                match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "commit before giving partitions up failed")
                    }
                }
            }
            self.changes
                .lock()
                .expect("assignment lock")
                .note_revoked(&parts);
            self.changed.notify_one();
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?parts, "partitions assigned");
            self.changes
                .lock()
                .expect("assignment lock")
                .note_assigned(&parts);
            self.changed.notify_one();
        }
    }
}

/// Commits the stored offsets synchronously, then closes the consumer,
/// which leaves the group at once (if this was its last reference: stop
/// its [`LagReporter`] first).
pub(crate) async fn commit_and_close<C: ConsumerContext + 'static>(
    consumer: Arc<rdkafka::consumer::StreamConsumer<C>>,
) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let _ = tokio::task::spawn_blocking(move || {
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
        drop(consumer);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalances_between_two_looks_add_up_to_their_net_effect() {
        let set = |parts: &[i32]| parts.iter().copied().collect::<BTreeSet<i32>>();
        // A second member joins and leaves again before the loop looks.
        let mut changes = AssignmentChanges::default();
        changes.note_revoked(&[0, 1, 2, 3]);
        changes.note_assigned(&[0, 1]);
        changes.note_revoked(&[0, 1]);
        changes.note_assigned(&[0, 1, 2, 3]);
        assert_eq!(changes.assigned, set(&[0, 1, 2, 3]), "each once");
        assert_eq!(changes.revoked, set(&[0, 1, 2, 3]), "stale state dropped");
        // Assigned, then taken away again: nothing to take up.
        let mut changes = AssignmentChanges::default();
        changes.note_assigned(&[4, 5]);
        changes.note_revoked(&[4]);
        assert_eq!(changes.assigned, set(&[5]));
        assert_eq!(changes.revoked, set(&[4]));
    }
}
