//! Which records a replay reads: `--from` / `--to` resolved, once, to a
//! half-open offset range `[start, end)` per partition.
//!
//! A bound is an RFC 3339 time or a list of `partition:offset`. A time
//! selects by the records' Kafka timestamps (when the gateway published
//! them; for a delivery that waited in the gateway's spool, when it was
//! drained): `start` is the first offset whose timestamp is at or after
//! `--from`, `end` the first at or after `--to` (Kafka's offsets-for-times
//! lookup, the same rule as `kafka-consumer-groups --to-datetime`). An
//! offset list names exact offsets: `--from` is included, `--to` excluded,
//! like Kafka's end offsets; only the partitions `--from` lists are read.
//! Without `--to` a partition ends at its end when the replay starts, so a
//! run is bounded even while the gateway keeps writing.
//!
//! Brokers that do not implement timestamp lookups (librdkafka's mock
//! cluster, i.e. the embedded broker) answer "no such record"; that answer is
//! checked against the partition's last record and, when it is wrong,
//! replaced by a binary search over record timestamps, which assumes they
//! grow along the partition (true for one gateway's producer clock).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::ReplayError;
use callstream_kafka::client::client_config;
use callstream_kafka::ClientSettings;

/// How long one metadata, watermark or timestamp request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One end of a replay range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// By the records' Kafka timestamps; the same instant on every partition.
    Time(DateTime<Utc>),
    /// Exact offsets, per partition.
    Offsets(BTreeMap<i32, i64>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an RFC 3339 time (2024-05-20T14:30:00Z) nor partition:offset,... (0:120,1:98)")]
pub struct BoundParseError(String);

impl FromStr for Bound {
    type Err = BoundParseError;

    fn from_str(s: &str) -> Result<Bound, BoundParseError> {
        if let Ok(time) = DateTime::parse_from_rfc3339(s) {
            return Ok(Bound::Time(time.with_timezone(&Utc)));
        }
        let bad = || BoundParseError(s.to_string());
        let mut offsets = BTreeMap::new();
        for part in s.split(',') {
            let (p, o) = part.trim().split_once(':').ok_or_else(bad)?;
            let p: i32 = p.parse().map_err(|_| bad())?;
            let o: i64 = o.parse().map_err(|_| bad())?;
            if p < 0 || o < 0 || offsets.insert(p, o).is_some() {
                return Err(bad());
            }
        }
        Ok(Bound::Offsets(offsets))
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Time(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            Bound::Offsets(offsets) => {
                let parts: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// The offsets `[start, end)` of one partition that a replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// `0:[10,20) 1:[0,5)`: the ranges as a report prints them.
pub fn describe(ranges: &[PartitionRange]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}:[{},{})", r.partition, r.start, r.end))
        .collect();
    parts.join(" ")
}

impl PartitionRange {
    pub fn len(&self) -> i64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= 0
    }
}

/// Blocking metadata and probe requests against one topic.
pub struct Lookup {
    consumer: BaseConsumer,
    topic: String,
}

impl Lookup {
    pub fn new(kafka: &ClientSettings, topic: &str) -> Result<Lookup, ReplayError> {
        let consumer = client_config(kafka, callstream_kafka::client::Role::Consumer)
            // librdkafka needs a group id to assign partitions; an assigned
            // consumer never joins the group, and nothing is committed.
            .set("group.id", super::CONSUMER_GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // A fetch left waiting for new data at a partition's end would
            // hold up the next probe's fetch by this long.
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "error")
            .create()
            .map_err(ReplayError::kafka("creating a Kafka consumer"))?;
        Ok(Lookup {
            consumer,
            topic: topic.to_string(),
        })
    }

    fn partitions(&self) -> Result<Vec<i32>, ReplayError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(ReplayError::kafka("fetching topic metadata"))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| ReplayError::UnknownTopic(self.topic.clone()))?;
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn watermarks(&self, partition: i32) -> Result<(i64, i64), ReplayError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)
            .map_err(ReplayError::kafka("fetching partition watermarks"))
    }

    /// The first record at or after `offset`: its offset and timestamp
    /// (ms), or `None` when the partition ends before.
    fn first_at(&self, partition: i32, offset: i64) -> Result<Option<(i64, i64)>, ReplayError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            .map_err(ReplayError::kafka("seeking"))?;
        self.consumer
            .assign(&tpl)
            .map_err(ReplayError::kafka("seeking"))?;
        let started = Instant::now();
        while started.elapsed() < REQUEST_TIMEOUT {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) if msg.partition() == partition && msg.offset() >= offset => {
                    let ts = msg
                        .timestamp()
                        .to_millis()
                        .ok_or(ReplayError::NoTimestamp {
                            partition,
                            offset: msg.offset(),
                        })?;
                    return Ok(Some((msg.offset(), ts)));
                }
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(None),
                Some(Err(e)) => return Err(ReplayError::kafka("reading a record")(e)),
                Some(Ok(_)) | None => {}
            }
        }
        Err(ReplayError::Stalled {
            topic: self.topic.clone(),
            partition,
            position: offset,
        })
    }

    /// The first offset in `[low, high]` whose record's timestamp is at or
    /// after `time` (`high` when there is none).
    fn offset_for_time(
        &self,
        partition: i32,
        time: DateTime<Utc>,
        (low, high): (i64, i64),
    ) -> Result<i64, ReplayError> {
        if low >= high {
            return Ok(high);
        }
        // Negative timestamps are the lookup's "earliest" / "latest" codes.
        let t = time.timestamp_millis().max(0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(t))
            .map_err(ReplayError::kafka("looking up offsets by time"))?;
        let answer = self
            .consumer
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(ReplayError::kafka("looking up offsets by time"))?;
        let offset = answer
            .find_partition(&self.topic, partition)
            .map(|e| e.offset());
        if let Some(Offset::Offset(o)) = offset {
            return Ok(o.clamp(low, high));
        }
        // "None at or after t": true when the last record is older.
        match self.first_at(partition, high - 1)? {
            Some((_, ts)) if ts >= t => self.search(partition, t, low, high),
            _ => Ok(high),
        }
    }

    fn search(&self, partition: i32, t: i64, low: i64, high: i64) -> Result<i64, ReplayError> {
        let (mut lo, mut hi) = (low, high);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.first_at(partition, mid)? {
                Some((offset, ts)) if ts < t => lo = offset + 1,
                // No record in [mid, offset): the answer is at most `offset`.
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The smallest and largest timestamps (ms) of the first and last
    /// records of `ranges`, or `None` when they are all empty.
    pub(crate) fn time_span(
        &self,
        ranges: &[PartitionRange],
    ) -> Result<Option<(i64, i64)>, ReplayError> {
        let mut span: Option<(i64, i64)> = None;
        for r in ranges.iter().filter(|r| !r.is_empty()) {
            for offset in [r.start, r.end - 1] {
                if let Some((_, ts)) = self.first_at(r.partition, offset)? {
                    span = Some(span.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts))));
                }
            }
        }
        Ok(span)
    }
}

fn invalid(problem: String) -> ReplayError {
    ReplayError::InvalidRange(problem)
}

/// [`resolve`] for `topic`, off the async workers: its requests block.
pub async fn resolve_for(
    kafka: &ClientSettings,
    topic: &str,
    from: Option<Bound>,
    to: Option<Bound>,
) -> Result<Vec<PartitionRange>, ReplayError> {
    let (kafka, topic) = (kafka.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let lookup = Lookup::new(&kafka, &topic)?;
        resolve(&lookup, from.as_ref(), to.as_ref())
    })
    .await?
}

/// Resolves `from` (default: each partition's first record) and `to`
/// (default: each partition's end now) to offset ranges.
pub fn resolve(
    lookup: &Lookup,
    from: Option<&Bound>,
    to: Option<&Bound>,
) -> Result<Vec<PartitionRange>, ReplayError> {
    if let (Some(Bound::Time(a)), Some(Bound::Time(b))) = (from, to) {
        if a > b {
            return Err(invalid(format!("--from {a} is after --to {b}")));
        }
    }
    let partitions = lookup.partitions()?;
    let topic = &lookup.topic;
    let selected: Vec<i32> = match from {
        Some(Bound::Offsets(offsets)) => offsets.keys().copied().collect(),
        _ => partitions.clone(),
    };
    for p in &selected {
        if !partitions.contains(p) {
            return Err(invalid(format!("{topic} has no partition {p}")));
        }
    }
    if let Some(Bound::Offsets(offsets)) = to {
        if let Some(p) = offsets.keys().find(|p| !selected.contains(p)) {
            return Err(invalid(format!(
                "--to names partition {p}, which --from does not select"
            )));
        }
    }
    let mut ranges = Vec::with_capacity(selected.len());
    for partition in selected {
        let (low, high) = lookup.watermarks(partition)?;
        let start = match from {
            None => low,
            Some(Bound::Time(t)) => lookup.offset_for_time(partition, *t, (low, high))?,
            Some(Bound::Offsets(offsets)) => {
                let o = offsets.get(&partition).copied().unwrap_or(low);
                if o > high {
                    return Err(invalid(format!(
                        "--from {partition}:{o} is past the end of {topic} partition {partition} ({high})"
                    )));
                }
                // Older records are gone (retention): start at the first one kept.
                o.max(low)
            }
        };
        let end = match to {
            None => high,
            Some(Bound::Time(t)) => lookup
                .offset_for_time(partition, *t, (low, high))?
                .max(start),
            Some(Bound::Offsets(offsets)) => match offsets.get(&partition) {
                None => high,
                Some(&o) if o < start => {
                    return Err(invalid(format!(
                    "--to {partition}:{o} is before the start of partition {partition} ({start})"
                )))
                }
                Some(&o) => o.min(high),
            },
        };
        ranges.push(PartitionRange {
            partition,
            start,
            end,
        });
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_as_times_or_offset_lists() {
        assert_eq!(
            "2024-05-20T16:30:00+02:00".parse::<Bound>(),
            Ok(Bound::Time(
                DateTime::parse_from_rfc3339("2024-05-20T14:30:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            ))
        );
        assert_eq!(
            "0:120, 2:7".parse::<Bound>(),
            Ok(Bound::Offsets(BTreeMap::from([(0, 120), (2, 7)])))
        );
        for bad in [
            "",
            "yesterday",
            "0:1,0:2",
            "-1:0",
            "0:-5",
            "0:",
            "a:1",
            "2024-05-20",
        ] {
            assert!(bad.parse::<Bound>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn bounds_display_as_they_parse() {
        for text in ["0:120,2:7", "2024-05-20T14:30:00Z"] {
            assert_eq!(text.parse::<Bound>().unwrap().to_string(), text);
        }
    }
}
