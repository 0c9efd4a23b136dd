//! The at-least-once loop of the consumers whose records each take a while
//! (an HTTP call, a download): the CRM targets and the recordings archiver.
//! A consumer supplies a [`RecordHandler`]; the loop owns the rest:
//! subscribe, rebalances, error events, flow control, commits, lag and a
//! graceful close.
//!
//! **Guarantee: at-least-once, in order per key.** A record's offset is
//! committed only once its handler finished it, with its effects durable
//! (delivered, published, dead-lettered and acknowledged), and only below
//! the partition's oldest record not finished. Up to `concurrency` records
//! run at once, never two of one key: a key's later records wait for the
//! earlier one.
//!
//! **A rebalance never waits for a handler.** The loop keeps polling while
//! handlers are busy. Records read ahead wait in a bounded queue; when it
//! is full the loop pauses its partitions (librdkafka then fetches nothing
//! and drops what it had fetched, to fetch it again on resume) and still
//! polls, so group events are served within the session timeout however
//! slow a target is. `max.poll.interval.ms` stays at librdkafka's default.
//!
//! **A revoked partition's work is cancelled.** Its records in progress are
//! dropped before they are polled again (their futures are polled by this
//! loop's task only, so nothing of theirs runs after the revocation was
//! seen), its queued records are dropped, and the offsets of its finished
//! records are committed synchronously before the partition is given up.
//! Its next owner starts after the last finished record: only a record in
//! progress at the revocation is handled twice, and its effect may already
//! have happened (a CRM that got the request sees it again, with the same
//! `Idempotency-Key`).
//!
//! What breaks it: enabling `enable.auto.commit` or
//! `enable.auto.offset.store` in the properties (offsets would pass records
//! not finished), or a handler that has its effect after reporting `None`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{AbortHandle, AbortRegistration, Abortable, Aborted};
use futures_util::stream::{FuturesUnordered, StreamExt};
use prometheus::IntGauge;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use callstream_runtime::shutdown::wait_for;

use crate::consume::{commit_and_close, TrackingContext};
use crate::lag::{LagFrom, LagReporter};

/// What a consumer does with one record.
pub trait RecordHandler: Send + Sync {
    /// What happened to a record, counted by [`RecordHandler::finished`].
    type Outcome: Send;

    /// Handles `record` until its effects are durable. `None` if
    /// `shutdown` interrupted it: it stays uncommitted and is handled again
    /// after the restart. Dropping the future cancels the work.
    fn handle<'a>(
        &'a self,
        record: &'a OwnedMessage,
        shutdown: &'a watch::Receiver<bool>,
    ) -> impl Future<Output = Option<Self::Outcome>> + Send + 'a;

    /// `record`'s outcome, once its effects are durable (for metrics). A
    /// record handled again after a crash or a revocation counts again:
    /// its effects happened again.
    fn finished(&self, outcome: Self::Outcome);
}

/// The loop, its consumer and its handler.
pub struct PerRecordLoop<H> {
    /// For logs: which consumer this is.
    pub name: String,
    /// Created with [`TrackingContext::committing_on_revoke`].
    pub consumer: Arc<StreamConsumer<TrackingContext>>,
    pub topic: String,
    /// Records handled at once.
    pub concurrency: usize,
    /// Records read ahead, waiting for a free slot or for their key, at
    /// most; past it the partitions are paused.
    pub max_queued: usize,
    /// Records between the committed offsets and the partitions' ends.
    pub lag: IntGauge,
    /// Records being handled, if the consumer exports it.
    pub in_progress: Option<IntGauge>,
    pub handler: H,
}

/// Pause after a Kafka error event before reading again.
const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

impl<H: RecordHandler> PerRecordLoop<H> {
    /// Runs until `shutdown`; then lets the records in progress stop (their
    /// handlers see `shutdown`), commits what is finished and leaves the
    /// group. A fatal consume error ends it the same way, and is returned.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])?;
        tracing::info!(consumer = %self.name, topic = %self.topic, concurrency = self.concurrency, "consuming");
        // From the committed offsets: the position runs ahead of the
        // records in progress and queued.
        let lag =
            LagReporter::spawn_from(self.consumer.clone(), self.lag.clone(), LagFrom::Committed);
        let result = self.consume(shutdown).await;
        if let Some(gauge) = &self.in_progress {
            gauge.set(0);
        }
        lag.stop().await;
        commit_and_close(self.consumer).await;
        tracing::info!(consumer = %self.name, "stopped");
        result
    }

    async fn consume(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        let stopping = shutdown.clone();
        let context = self.consumer.context();
        let mut running = FuturesUnordered::new();
        let mut state = State::default();
        let mut stop = false;
        let mut result = Ok(());
        let mut read_again_at: Option<tokio::time::Instant> = None;
        loop {
            let full = stop || state.pending.len() >= self.max_queued;
            // Hysteresis: resume once half the queue is free, so a slow
            // handler does not pause and resume the partitions (each resume
            // fetches again) on every record.
            let resume = !stop && state.pending.len() <= self.max_queued / 2;
            if full && !state.paused {
                self.set_paused(&mut state, true);
            } else if resume && state.paused {
                self.set_paused(&mut state, false);
            }
            if !stop {
                for (id, msg, abort) in state.schedule(self.concurrency - running.len()) {
                    running.push(self.start(id, msg, &stopping, abort));
                }
            }
            if let Some(gauge) = &self.in_progress {
                gauge.set(running.len() as i64);
            }
            if stop && running.is_empty() {
                break;
            }
            let reading = read_again_at.is_none();
            tokio::select! {
                biased;
                _ = wait_for(&mut shutdown), if !stop => stop = true,
                // Before the records in progress: once a revocation is
                // noted, none of its partitions' work is polled again. And
                // before `recv`: rdkafka's stream yields (Pending, woken)
                // after each rebalance event it serves, so a change is
                // always taken before the next record, and a record of a
                // partition assigned again is never dropped as revoked.
                _ = context.changed() => {
                    let changes = context.take_changes();
                    state.revoke(&changes.revoked);
                    if state.paused {
                        self.set_paused(&mut state, true);
                    }
                }
                Some((id, done)) = running.next() => state.finish(self, id, done),
                msg = self.consumer.recv(), if reading && !stop => match msg {
                    Ok(msg) => state.receive(msg.detach()),
                    Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                        tracing::error!(consumer = %self.name, error = %e, "fatal Kafka consume error: stopping");
                        result = Err(e);
                        stop = true;
                    }
                    Err(e) => {
                        // librdkafka recovers by itself (brokers down, group
                        // joined again); wait a little not to spin on it.
                        tracing::warn!(consumer = %self.name, error = %e, "Kafka consume error; librdkafka retries by itself");
                        read_again_at = Some(tokio::time::Instant::now() + KAFKA_ERROR_PAUSE);
                    }
                },
                _ = tokio::time::sleep_until(read_again_at.unwrap_or_else(tokio::time::Instant::now)), if !reading => {
                    read_again_at = None;
                }
            }
        }
        result
    }

    /// The handler's work on `msg`, cancelled through `abort`.
    fn start<'a>(
        &'a self,
        id: u64,
        msg: OwnedMessage,
        shutdown: &'a watch::Receiver<bool>,
        abort: AbortRegistration,
    ) -> impl Future<Output = (u64, Result<Option<H::Outcome>, Aborted>)> + 'a {
        let work = Abortable::new(
            async move { self.handler.handle(&msg, shutdown).await },
            abort,
        );
        async move { (id, work.await) }
    }

    /// Pauses (or resumes) every assigned partition. A paused partition
    /// fetches nothing, but the loop still polls: group events go on.
    fn set_paused(&self, state: &mut State, paused: bool) {
        let assigned = match self.consumer.assignment() {
            Ok(assigned) => assigned,
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "no assignment to pause or resume");
                return;
            }
        };
        let done = if paused {
            self.consumer.pause(&assigned)
        } else {
            self.consumer.resume(&assigned)
        };
        match done {
            Ok(()) => state.paused = paused,
            Err(e) => {
                tracing::warn!(consumer = %self.name, paused, error = %e, "pause or resume failed")
            }
        }
    }

    /// Stores `point` (the offset to resume from) for commit and commits in
    /// the background; the revocation callback commits synchronously. A
    /// lost commit only means records are handled again.
    fn commit(&self, partition: i32, point: i64) {
        let stored = self
            .consumer
            .store_offset(&self.topic, partition, point - 1)
            .and_then(|()| self.consumer.commit_consumer_state(CommitMode::Async));
        if let Err(e) = stored {
            tracing::warn!(consumer = %self.name, partition, offset = point, error = %e, "offset not committed");
        }
    }
}

/// The key that orders a record against others (keyless records count as
/// one key; callstream's topics always have keys).
type Key = Option<Vec<u8>>;

/// A record being handled.
struct Slot {
    partition: i32,
    offset: i64,
    key: Key,
    abort: AbortHandle,
}

/// The loop's bookkeeping, apart from the futures themselves.
#[derive(Default)]
struct State {
    /// Read and not started, in the order read.
    pending: VecDeque<OwnedMessage>,
    /// Being handled, by id.
    running: HashMap<u64, Slot>,
    /// Keys with a record being handled.
    busy: HashSet<Key>,
    progress: Progress,
    next_id: u64,
    paused: bool,
}

impl State {
    fn receive(&mut self, msg: OwnedMessage) {
        // Counted from now: a partition is not committed past a record
        // waiting either.
        self.progress.start(msg.partition(), msg.offset());
        self.pending.push_back(msg);
    }

    /// Takes up to `free` pending records to start: in the order read,
    /// skipping a key that is busy or whose earlier record is skipped.
    fn schedule(&mut self, free: usize) -> Vec<(u64, OwnedMessage, AbortRegistration)> {
        let mut started = Vec::new();
        let mut held: HashSet<Key> = HashSet::new();
        let mut i = 0;
        while started.len() < free && i < self.pending.len() {
            let key = key_of(&self.pending[i]);
            if self.busy.contains(&key) || held.contains(&key) {
                held.insert(key);
                i += 1;
                continue;
            }
            let msg = self.pending.remove(i).expect("in range");
            let (abort, registration) = AbortHandle::new_pair();
            let id = self.next_id;
            self.next_id += 1;
            self.running.insert(
                id,
                Slot {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: key.clone(),
                    abort,
                },
            );
            self.busy.insert(key);
            started.push((id, msg, registration));
        }
        started
    }

    fn finish<H: RecordHandler>(
        &mut self,
        owner: &PerRecordLoop<H>,
        id: u64,
        done: Result<Option<H::Outcome>, Aborted>,
    ) {
        // Not running any more: its partition was revoked and its state
        // dropped (its key may be busy again with a record read since).
        let Some(slot) = self.running.remove(&id) else {
            return;
        };
        self.busy.remove(&slot.key);
        match done {
            Ok(Some(outcome)) => {
                owner.handler.finished(outcome);
                if let Some(point) = self.progress.finish(slot.partition, slot.offset) {
                    owner.commit(slot.partition, point);
                }
            }
            Ok(None) | Err(Aborted) => tracing::info!(
                consumer = %owner.name,
                partition = slot.partition,
                offset = slot.offset,
                "record unfinished at shutdown: not committed, it is handled again after the restart"
            ),
        }
    }

    /// Drops everything of the `revoked` partitions: records in progress
    /// are aborted (their futures are not polled again), queued ones
    /// forgotten, and so is the commit bookkeeping.
    fn revoke(&mut self, revoked: &std::collections::BTreeSet<i32>) {
        if revoked.is_empty() {
            return;
        }
        self.running.retain(|_, slot| {
            let keep = !revoked.contains(&slot.partition);
            if !keep {
                slot.abort.abort();
                self.busy.remove(&slot.key);
            }
            keep
        });
        self.pending
            .retain(|msg| !revoked.contains(&msg.partition()));
        for partition in revoked {
            self.progress.partitions.remove(partition);
        }
    }
}

/// Per partition, the records read and not finished (running, or waiting),
/// so that only the offsets below the oldest of them are committed.
#[derive(Default)]
struct Progress {
    partitions: HashMap<i32, PartitionProgress>,
}

struct PartitionProgress {
    /// Offset → records in progress at it.
    open: BTreeMap<i64, usize>,
    /// The offset after the highest record read.
    next: i64,
    /// The offset last stored for commit.
    stored: i64,
}

impl Progress {
    fn start(&mut self, partition: i32, offset: i64) {
        // The first record read is where the committed offset already is.
        let p = self
            .partitions
            .entry(partition)
            .or_insert(PartitionProgress {
                open: BTreeMap::new(),
                next: offset,
                stored: offset,
            });
        *p.open.entry(offset).or_default() += 1;
        p.next = p.next.max(offset + 1);
    }

    /// Marks a record finished; returns the partition's new commit point
    /// (the offset to resume from) when it moved.
    fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if let Some(n) = p.open.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                p.open.remove(&offset);
            }
        }
        let point = p.open.keys().next().copied().unwrap_or(p.next);
        (point > p.stored).then(|| {
            p.stored = point;
            point
        })
    }
}

fn key_of(msg: &OwnedMessage) -> Key {
    msg.key().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Timestamp;

    fn msg(partition: i32, offset: i64, key: &str) -> OwnedMessage {
        OwnedMessage::new(
            None,
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    fn started(state: &mut State, free: usize) -> Vec<(i32, i64)> {
        state
            .schedule(free)
            .into_iter()
            .map(|(_, m, _)| (m.partition(), m.offset()))
            .collect()
    }

    #[test]
    fn a_key_waits_for_its_earlier_record_and_others_pass_it() {
        let mut state = State::default();
        for (offset, key) in ["a", "a", "b", "a", "c"].iter().enumerate() {
            state.receive(msg(0, offset as i64, key));
        }
        assert_eq!(started(&mut state, 10), vec![(0, 0), (0, 2), (0, 4)]);
        assert_eq!(state.pending.len(), 2, "a's later records wait");
        assert!(started(&mut state, 10).is_empty(), "a is busy");
        let id = *state
            .running
            .iter()
            .find(|(_, s)| s.offset == 0)
            .map(|(id, _)| id)
            .unwrap();
        state.running.remove(&id);
        state.busy.remove(&Some(b"a".to_vec()));
        assert_eq!(started(&mut state, 10), vec![(0, 1)], "one of a at a time");
    }

    #[test]
    fn commits_stop_below_the_oldest_unfinished_record() {
        let mut progress = Progress::default();
        for offset in 10..13 {
            progress.start(0, offset);
        }
        assert_eq!(progress.finish(0, 11), None, "10 is still open");
        assert_eq!(progress.finish(0, 10), Some(12));
        assert_eq!(progress.finish(0, 12), Some(13));
        assert_eq!(progress.finish(7, 1), None, "a revoked partition");
    }

    #[test]
    fn a_revocation_drops_its_partitions_work() {
        let mut state = State::default();
        state.receive(msg(0, 0, "a"));
        state.receive(msg(1, 0, "b"));
        state.receive(msg(1, 1, "b"));
        let running = state.schedule(10);
        assert_eq!(running.len(), 2);
        state.revoke(&[1].into());
        assert_eq!(state.running.len(), 1);
        assert!(state.pending.is_empty(), "b's queued record is dropped");
        assert!(!state.busy.contains(&Some(b"b".to_vec())));
        assert!(!state.progress.partitions.contains_key(&1));
        let aborted: Vec<bool> = state
            .running
            .values()
            .map(|s| s.abort.is_aborted())
            .collect();
        assert_eq!(aborted, vec![false]);
    }
}
