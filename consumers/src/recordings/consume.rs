//! The archiver's loop: up to `recordings.concurrency` unique records at
//! once (one at a time per key, so an event's revisions stay in order; the
//! later ones wait in a queue of their key while the loop reads on),
//! each partition committed only below its oldest record in progress, and
//! a record finished only once every recordings event for it, or its dead
//! letter, was acknowledged. A link that is not ready holds its own record,
//! not the archiver.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use callstream_schemas::recording::RecordingArchived;

use super::fetch::{Downloader, Job, Outcome};
use super::metrics::{MediaOutcome, Metrics};
use super::settings::MAX_MEDIA_PER_EVENT;
use super::source;
use super::template::{Redactor, Resolver};
use callstream_kafka::lag::{LagFrom, LagReporter};
use callstream_kafka::wire::{decode_unique, recording_record, By, GaveUp};
use callstream_runtime::shutdown::{pause, wait_for};

/// Pause after a Kafka error before trying again.
const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Records held back behind an earlier record of their key, at most: past
/// it, nothing more is read until one of them starts. A few MB of unique
/// events; enough that a burst of revisions of one event, whose first
/// waits on a link that is not ready, does not hold the other events back.
const MAX_QUEUED: usize = 1024;

pub struct ArchiveLoop {
    pub group: String,
    pub consumer: Arc<StreamConsumer>,
    pub topic: String,
    pub recordings_topic: String,
    pub dlq_topic: String,
    pub producer: FutureProducer,
    pub resolver: Resolver,
    pub downloader: Downloader,
    pub redactor: Redactor,
    pub metrics: Metrics,
    /// Records archived at once (`recordings.concurrency`).
    pub concurrency: usize,
}

/// A handle that could not be archived.
struct Failure {
    text: String,
    attempts: u32,
}

/// Per partition, the records read and not finished (running, or queued
/// behind their key), so that only the offsets below the oldest of them
/// are committed.
#[derive(Default)]
struct Progress {
    partitions: HashMap<i32, PartitionProgress>,
}

#[derive(Default)]
struct PartitionProgress {
    /// Offset → records in progress at it (two after a rebalance handed a
    /// partition back while its old record was still running).
    running: BTreeMap<i64, usize>,
    /// The offset after the highest record started.
    next: i64,
    /// The offset last stored for commit.
    stored: i64,
}

impl Progress {
    fn start(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        *p.running.entry(offset).or_default() += 1;
        p.next = p.next.max(offset + 1);
    }

    /// Marks a record finished; returns the partition's new commit point
    /// (the offset to resume from) when it moved. Every offset below the
    /// oldest record still running was started by this loop and finished
    /// (a record is never dropped unfinished while the loop goes on).
    fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        if let Some(n) = p.running.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                p.running.remove(&offset);
            }
        }
        let point = p.running.keys().next().copied().unwrap_or(p.next);
        (point > p.stored).then(|| {
            p.stored = point;
            point
        })
    }
}

impl ArchiveLoop {
    /// Runs until `shutdown`; then lets the records in progress stop (a
    /// download is cancelled, its record stays uncommitted), commits what is
    /// finished and leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        self.consumer.subscribe(&[&self.topic])?;
        tracing::info!(group = %self.group, topic = %self.topic, concurrency = self.concurrency, "recordings archiver consuming");
        // From the committed offsets: the position runs ahead of the
        // records still in progress.
        let lag = LagReporter::spawn_from(
            self.consumer.clone(),
            self.metrics.lag.clone(),
            LagFrom::Committed,
        );
        let stopping = shutdown.clone();
        let mut running = FuturesUnordered::new();
        let mut progress = Progress::default();
        // Per key with a record running, the records of that key read since,
        // in order: each starts when the one before it finished.
        let mut keys: HashMap<Option<Vec<u8>>, VecDeque<OwnedMessage>> = HashMap::new();
        let mut queued = 0;
        let mut stop = false;
        loop {
            self.metrics.in_progress.set(running.len() as i64);
            if stop && running.is_empty() {
                break;
            }
            let take = !stop && running.len() < self.concurrency && queued < MAX_QUEUED;
            tokio::select! {
                biased;
                _ = wait_for(&mut shutdown), if !stop => stop = true,
                Some((msg, done)) = running.next() => {
                    let key = key_of(&msg);
                    // The next record of the key, unless stopping: then it
                    // stays uncommitted and is read again after the restart.
                    let next = keys.get_mut(&key).and_then(|q| if stop { None } else { q.pop_front() });
                    match next {
                        Some(next) => {
                            queued -= 1;
                            running.push(self.finish_one(next, &stopping));
                        }
                        None => {
                            keys.remove(&key);
                        }
                    }
                    match done {
                        Some(()) => {
                            if let Some(point) = progress.finish(msg.partition(), msg.offset()) {
                                self.commit(msg.partition(), point);
                            }
                        }
                        None => tracing::info!(
                            partition = msg.partition(),
                            offset = msg.offset(),
                            "shutdown with a record unfinished: not committed, it is processed again after the restart"
                        ),
                    }
                }
                msg = self.consumer.recv(), if take => match msg {
                    Ok(msg) => {
                        let msg = msg.detach();
                        // Counted from now: the partition is not committed
                        // past a record waiting for its key either.
                        progress.start(msg.partition(), msg.offset());
                        match keys.entry(key_of(&msg)) {
                            Entry::Occupied(mut waiting) => {
                                waiting.get_mut().push_back(msg);
                                queued += 1;
                            }
                            Entry::Vacant(free) => {
                                free.insert(VecDeque::new());
                                running.push(self.finish_one(msg, &stopping));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consume error");
                        stop |= pause(KAFKA_ERROR_PAUSE, &shutdown).await;
                    }
                },
            }
        }
        drop(running);
        self.metrics.in_progress.set(0);
        lag.stop().await;
        self.close().await;
        Ok(())
    }

    /// [`ArchiveLoop::process`] for a record the loop owns.
    async fn finish_one(
        &self,
        msg: OwnedMessage,
        shutdown: &watch::Receiver<bool>,
    ) -> (OwnedMessage, Option<()>) {
        let done = self.process(&msg, shutdown).await;
        (msg, done)
    }

    /// Stores `point` (the offset to resume from) for commit and commits in
    /// the background. A lost commit only means records are handled again
    /// (a rebalance that took the partition away: its new owner does).
    fn commit(&self, partition: i32, point: i64) {
        let stored = self
            .consumer
            .store_offset(&self.topic, partition, point - 1)
            .and_then(|()| self.consumer.commit_consumer_state(CommitMode::Async));
        if let Err(e) = stored {
            tracing::warn!(partition, offset = point, error = %e, "offset not committed");
        }
    }

    /// Archives the record's media; `None` if shutdown interrupted it.
    async fn process(&self, msg: &OwnedMessage, shutdown: &watch::Receiver<bool>) -> Option<()> {
        let unique = match decode_unique(msg) {
            Ok(unique) => unique,
            Err(e) => {
                self.metrics.failure("undecodable");
                return self
                    .dead_letter(msg, &format!("undecodable record: {e}"), 0, shutdown)
                    .await;
            }
        };
        let event = &unique.event;
        let mut failures = Vec::new();
        for (position, item) in source::items(event).iter().enumerate() {
            let fail = |reason: &'static str, text: String, attempts: u32| {
                self.metrics.failure(reason);
                self.metrics.media(item.media, MediaOutcome::Failed);
                Failure {
                    text: format!("{}: {}", item.label(), self.redactor.scrub(&text)),
                    attempts,
                }
            };
            if position >= MAX_MEDIA_PER_EVENT {
                let text = format!("more than {MAX_MEDIA_PER_EVENT} media in one event");
                failures.push(fail("too_many_media", text, 0));
                continue;
            }
            let resolved = match self.resolver.resolve(event, item) {
                Ok(Some(resolved)) => resolved,
                Ok(None) => {
                    self.metrics.media(item.media, MediaOutcome::Unconfigured);
                    tracing::debug!(event_id = %event.event_id, media = %item.label(), "no URL template for this handle");
                    continue;
                }
                Err(e) => {
                    failures.push(fail(e.reason(), e.to_string(), 0));
                    continue;
                }
            };
            let job = Job {
                event,
                revision: unique.revision,
                item,
                url: &resolved.url,
                private_ok: resolved.private_ok,
            };
            match self.downloader.run(&job, shutdown).await {
                Outcome::Archived(record) => {
                    self.publish(&record, shutdown).await?;
                    self.metrics.media(item.media, MediaOutcome::Archived);
                    tracing::info!(
                        event_id = %event.event_id,
                        media = %item.label(),
                        size_bytes = record.size_bytes,
                        location = %record.location,
                        "recording archived"
                    );
                }
                Outcome::AlreadyArchived(record) => {
                    self.publish(&record, shutdown).await?;
                    self.metrics
                        .media(item.media, MediaOutcome::AlreadyArchived);
                    tracing::info!(event_id = %event.event_id, media = %item.label(), "already archived: event published again");
                }
                Outcome::Skipped => self.metrics.media(item.media, MediaOutcome::Skipped),
                Outcome::Failed { error, attempts } => {
                    failures.push(fail(error.reason(), error.to_string(), attempts));
                }
                Outcome::Abandoned => return None,
            }
        }
        if failures.is_empty() {
            return Some(());
        }
        let text = failures
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let attempts = failures.iter().map(|f| f.attempts).sum();
        tracing::warn!(event_id = %event.event_id, attempts, error = %text, "media not archived; dead-lettering");
        self.dead_letter(msg, &text, attempts, shutdown).await
    }

    /// Publishes one recordings event, keyed by identity, and waits for
    /// Kafka's acknowledgement, retrying until it comes (or shutdown: `None`).
    async fn publish(
        &self,
        record: &RecordingArchived,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let record = recording_record(record);
        loop {
            let out = FutureRecord::to(&self.recordings_topic)
                .key(record.key.as_bytes())
                .payload(&record.payload);
            match self.producer.send(out, KAFKA_ERROR_PAUSE).await {
                Ok(_) => return Some(()),
                Err((e, _)) => {
                    self.metrics.produce_error("recordings");
                    tracing::warn!(error = %e, "recordings event not acknowledged; retrying");
                    if pause(KAFKA_ERROR_PAUSE, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Copies the record to the dead-letter topic with why it failed; see
    /// [`callstream_kafka::dead_letter::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<()> {
        let why = GaveUp {
            by: By::Recordings,
            error: error.into(),
            attempts,
        };
        let acked = callstream_kafka::dead_letter::dead_letter(
            &self.producer,
            &self.dlq_topic,
            msg,
            &why,
            KAFKA_ERROR_PAUSE,
            shutdown,
            |_| self.metrics.produce_error("recordings_dlq"),
        )
        .await;
        acked.then(|| self.metrics.dead_letters.inc())
    }

    async fn close(self) {
        callstream_kafka::consume::commit_and_close(self.consumer).await;
        tracing::info!("recordings archiver stopped");
    }
}

/// The key that orders a record against others: records of one key are
/// archived one at a time (keyless records count as one key; the unique
/// topic always has keys).
fn key_of(msg: &OwnedMessage) -> Option<Vec<u8>> {
    msg.key().map(<[u8]>::to_vec)
}
