//! Reading the topics the pages show, with the replay library's range
//! resolution and reader (assigned partitions, no group, nothing committed).

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use callstream_consumers::replay::range::{resolve_for, Bound, PartitionRange};
use callstream_consumers::replay::reader::RangeReader;
use callstream_consumers::replay::ReplayError;
use callstream_kafka::ClientSettings;

/// One record, copied out of librdkafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Record {
    fn of(msg: &BorrowedMessage<'_>) -> Record {
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg
                .timestamp()
                .to_millis()
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            headers,
            payload: msg.payload().unwrap_or_default().to_vec(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `<topic>:<partition>:<offset>`: how a page names a record.
    pub fn address(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// Reads `ranges` of `topic`, keeping what `keep` wants, until `cap`
/// records were read; whether the cap cut it short.
async fn read(
    kafka: &ClientSettings,
    topic: &str,
    ranges: &[PartitionRange],
    cap: u64,
    mut keep: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<(Vec<Record>, bool), ReplayError> {
    let ranges: Vec<PartitionRange> = ranges.iter().filter(|r| !r.is_empty()).copied().collect();
    if ranges.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut reader = RangeReader::new(kafka, topic, &ranges)?;
    let mut out = Vec::new();
    let mut read = 0;
    while let Some(msg) = reader.next().await? {
        read += 1;
        if keep(&msg) {
            out.push(Record::of(&msg));
        }
        if read >= cap {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// The newest `n` records of each partition of `topic`, newest first.
pub async fn newest(
    kafka: &ClientSettings,
    topic: &str,
    n: usize,
) -> Result<Vec<Record>, ReplayError> {
    let mut ranges = resolve_for(kafka, topic, None, None).await?;
    for r in &mut ranges {
        r.start = r.start.max(r.end - n as i64);
    }
    let (mut records, _) = read(kafka, topic, &ranges, u64::MAX, |_| true).await?;
    records.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.offset.cmp(&a.offset)));
    Ok(records)
}

/// The one record at `partition:offset` of `topic`, if it exists.
pub async fn at(
    kafka: &ClientSettings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<Record>, ReplayError> {
    let ranges = resolve_for(kafka, topic, None, None).await?;
    if !ranges
        .iter()
        .any(|r| r.partition == partition && r.start <= offset && offset < r.end)
    {
        return Ok(None);
    }
    let one = PartitionRange {
        partition,
        start: offset,
        end: offset + 1,
    };
    let (mut records, _) = read(kafka, topic, &[one], 1, |_| true).await?;
    Ok(records.pop())
}

/// Records of `topic` published between `from` and `to` that `keep`
/// wants, reading at most `cap`; whether the cap cut the search short.
pub async fn between(
    kafka: &ClientSettings,
    topic: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: u64,
    keep: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<(Vec<Record>, bool), ReplayError> {
    let to = to.min(Utc::now());
    if from >= to {
        return Ok((Vec::new(), false));
    }
    let ranges = resolve_for(kafka, topic, Some(Bound::Time(from)), Some(Bound::Time(to))).await?;
    read(kafka, topic, &ranges, cap, keep).await
}

/// A header of a borrowed record, as text.
pub fn header<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}
