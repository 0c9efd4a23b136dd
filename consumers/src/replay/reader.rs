//! Reads fixed offset ranges of one topic, once: assigned partitions (no
//! group membership, no commits), each paused as soon as its range is done.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::range::PartitionRange;
use super::ReplayError;
use callstream_kafka::client::{client_config_with, FETCH_QUEUE_BACKOFF_MS};
use callstream_kafka::ClientSettings;

/// A partition that delivers nothing for this long before its end is
/// reported as stalled (the broker is gone, or the records were deleted).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle reader checks its positions.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Where a partition's read stands.
struct Progress {
    /// The offset expected next (for the stall report).
    next: i64,
    /// Exclusive end of the range.
    end: i64,
}

pub struct RangeReader {
    consumer: StreamConsumer,
    topic: String,
    /// Every partition not yet done.
    remaining: BTreeMap<i32, Progress>,
    last_progress: Instant,
}

impl RangeReader {
    pub fn new(
        kafka: &ClientSettings,
        topic: &str,
        ranges: &[PartitionRange],
    ) -> Result<RangeReader, ReplayError> {
        // The consumers' short fetch back-off: with librdkafka's 1 s a
        // reader that empties its local queue faster than that waits for
        // the rest of the second (BENCHMARKS.md, Recovery).
        let consumer: StreamConsumer = client_config_with(
            kafka,
            callstream_kafka::client::Role::Consumer,
            &[("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)],
        )
        // librdkafka needs a group id to assign partitions; an assigned
        // consumer never joins the group, and nothing is committed.
        .set("group.id", super::CONSUMER_GROUP)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Records deleted under a running replay: fail, never skip silently.
        .set("auto.offset.reset", "error")
        .create()
        .map_err(ReplayError::kafka("creating a Kafka consumer"))?;
        let mut tpl = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.start))
                .map_err(ReplayError::kafka("assigning partitions"))?;
            remaining.insert(
                r.partition,
                Progress {
                    next: r.start,
                    end: r.end,
                },
            );
        }
        if !remaining.is_empty() {
            // Leaders known first: a partition assigned before its leader
            // is known starts only after librdkafka's 500 ms back-off.
            consumer
                .fetch_metadata(Some(topic), Duration::from_secs(30))
                .map_err(ReplayError::kafka("reading the topic's metadata"))?;
            consumer
                .assign(&tpl)
                .map_err(ReplayError::kafka("assigning partitions"))?;
        }
        Ok(RangeReader {
            consumer,
            topic: topic.to_string(),
            remaining,
            last_progress: Instant::now(),
        })
    }

    /// The next record inside the ranges, in offset order per partition;
    /// `None` once every range is read.
    pub async fn next(&mut self) -> Result<Option<BorrowedMessage<'_>>, ReplayError> {
        let RangeReader {
            consumer,
            topic,
            remaining,
            last_progress,
        } = self;
        // A stall is time spent waiting here: the caller may take long
        // over a record (a CRM redelivery retrying) without Kafka stalling.
        *last_progress = Instant::now();
        while !remaining.is_empty() {
            let msg = match tokio::time::timeout(IDLE_CHECK, consumer.recv()).await {
                Ok(Ok(msg)) => msg,
                Ok(Err(e)) => return Err(ReplayError::kafka("reading records")(e)),
                Err(_idle) => {
                    check_positions(consumer, topic, remaining, last_progress)?;
                    continue;
                }
            };
            let Some(progress) = remaining.get_mut(&msg.partition()) else {
                continue;
            };
            if msg.offset() >= progress.end {
                done(consumer, topic, remaining, msg.partition())?;
                continue;
            }
            progress.next = msg.offset() + 1;
            *last_progress = Instant::now();
            if progress.next >= progress.end {
                done(consumer, topic, remaining, msg.partition())?;
            }
            return Ok(Some(msg));
        }
        Ok(None)
    }
}

fn done(
    consumer: &StreamConsumer,
    topic: &str,
    remaining: &mut BTreeMap<i32, Progress>,
    partition: i32,
) -> Result<(), ReplayError> {
    remaining.remove(&partition);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    consumer
        .pause(&tpl)
        .map_err(ReplayError::kafka("pausing a finished partition"))
}

/// Partitions whose position passed their end although no record showed
/// it (the last offsets held no data record) are done; a reader that got
/// nothing for [`STALL_TIMEOUT`] before its ends is stuck.
fn check_positions(
    consumer: &StreamConsumer,
    topic: &str,
    remaining: &mut BTreeMap<i32, Progress>,
    last_progress: &mut Instant,
) -> Result<(), ReplayError> {
    let positions = consumer
        .position()
        .map_err(ReplayError::kafka("reading consumer positions"))?;
    let finished: Vec<i32> = remaining
        .iter()
        .filter(|(&partition, progress)| {
            matches!(
                positions.find_partition(topic, partition).map(|e| e.offset()),
                Some(Offset::Offset(o)) if o >= progress.end
            )
        })
        .map(|(&partition, _)| partition)
        .collect();
    if !finished.is_empty() {
        *last_progress = Instant::now();
    }
    for partition in finished {
        done(consumer, topic, remaining, partition)?;
    }
    match remaining.iter().next() {
        Some((&partition, progress)) if last_progress.elapsed() >= STALL_TIMEOUT => {
            Err(ReplayError::Stalled {
                topic: topic.to_string(),
                partition,
                position: progress.next,
            })
        }
        _ => Ok(()),
    }
}
