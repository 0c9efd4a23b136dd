//! Replay (`callstream-replay`): re-derive normalized events from the
//! system of record after a normalizer fix, and re-publish dead-lettered
//! deliveries that parse now.
//!
//! A replay reads `callstream.raw.v1` (or `callstream.dlq.v1`) over a range
//! fixed when it starts ([`range`]), with a consumer that assigns and seeks
//! (no group, no commits), so it ends and leaves nothing behind. Each record
//! becomes the request the gateway saw, with the original `cs_received_at`
//! and `cs_request_id` ([`rebuild`]), is normalized by the current code, and
//! is published to `callstream.events.v1` by the gateway's own record builder
//! ([`callstream_kafka::wire::event_record`]: same key, value and
//! CloudEvents headers) and publisher (idempotent, `acks=all`, the same
//! partitioner, so an identity stays on its partition).
//!
//! **Guarantee**: at-least-once into `callstream.events.v1` (a run that fails
//! part-way is run again), and an exactly-once *effect* downstream: the
//! output goes through `callstream-dedup` like the gateway's, and an event
//! whose content did not change has the original's identity and fingerprint,
//! so dedup drops it. Replaying twice changes nothing; a normalizer fix
//! arrives as an update (the next revision) of the events it changes.
//!
//! What breaks it:
//! * a normalizer that is not deterministic (the clock, random ids, hash-map
//!   order in the content): every replay is new content, an update each time;
//! * a different `received_at` or request id than the original's (they come
//!   from the record's headers; a rewritten record breaks it), or another
//!   tenant for a source than the gateway had: Onoff payloads carry none, so
//!   the gateway records its configured one (`cs_source_tenant`); records
//!   written before that header need `--tenant` when it was not `default`
//!   (a wrong one shows up as `reidentified` in the report);
//! * a range that holds an older delivery of an identity but not its later
//!   updates: if the fix changes it, the older content becomes the newest
//!   revision downstream. Replay whole histories (raw records of one identity
//!   share a partition and are replayed in order, so the newest stays newest);
//! * dedup's window: an identity it forgot (`dedup.window_secs` of event
//!   time) is forwarded again as revision 1, which the store and analytics
//!   then ignore, as they ignore any revision they already hold.
//!
//! The gateway's event carries its clock's full precision in `received_at`,
//! the raw header microseconds; the fingerprint leaves `received_at` out,
//! so this does not reach dedup, but a replayed value can differ from the
//! original there, below the microsecond.
//!
//! Records that still do not normalize are reported, never written to the
//! DLQ: they are there already (or their raw record is), and a DLQ replay
//! that fed the DLQ would loop. A dry run reads and judges everything and
//! publishes nothing; [`report`] defines what counts as a change.

pub mod range;
pub mod reader;
pub mod rebuild;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use callstream_kafka::client::{client_config, Role};
use callstream_kafka::publish::{
    OutRecord, PublishError, PublishMetrics, PublishOptions, Publisher,
};
use callstream_kafka::wire::event_record;
use callstream_kafka::{ClientSettings, TopicNames};
use callstream_schemas::raw::H_REQUEST_ID;
use callstream_schemas::Topic;

use callstream_kafka::wire::header_str as header;
use range::{Bound, Lookup};
use reader::RangeReader;
use rebuild::Renormalizer;
use report::{Derived, Outcome, Report, Verdict};

/// librdkafka's `group.id` for the replay's readers (never joined).
const CONSUMER_GROUP: &str = "callstream-replay";
/// Records per publish: acknowledged together before reading on. Each
/// wait for acknowledgements stops the reading; at 500 those waits held a
/// replay to a fraction of what it reads (BENCHMARKS.md, Recovery).
const PUBLISH_BATCH: usize = 5_000;
/// librdkafka's `message.timeout.ms` for replayed records. No provider is
/// waiting, so there is time to ride out a broker failover.
const PUBLISH_TIMEOUT_MS: u64 = 30_000;
/// Client-side size limit of a record; the broker enforces its own.
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;
/// How far from a raw record's timestamp its original event is looked for.
/// The gateway publishes both records of a delivery together (or drains
/// them from its spool together), so seconds would do.
const ORIGINALS_MARGIN_MS: i64 = 5 * 60 * 1000;

/// The topic a replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `callstream.raw.v1`: every delivery.
    Raw,
    /// `callstream.dlq.v1`: the deliveries that did not normalize.
    Dlq,
}

impl Source {
    pub fn topic(self) -> Topic {
        match self {
            Source::Raw => Topic::Raw,
            Source::Dlq => Topic::Dlq,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub source: Source,
    /// First record; `None`: each partition's first.
    pub from: Option<Bound>,
    /// End (excluded); `None`: each partition's end when the replay starts.
    pub to: Option<Bound>,
    /// Judge everything, publish nothing.
    pub dry_run: bool,
    /// Tenant per provider name, over the one each record carries
    /// (`cs_source_tenant`, the gateway's `sources.<provider>.tenant`);
    /// records without it take this, else `default`.
    pub tenants: BTreeMap<String, String>,
    /// The gateway's configuration file, for its declarative sources
    /// (`sources.<name>.declared`): their raw records are normalized with
    /// the mapping it holds now. `None`: built-in providers only.
    pub gateway_config: Option<std::path::PathBuf>,
}

/// One `--tenant PROVIDER=TENANT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantOverride {
    pub provider: String,
    pub tenant: String,
}

impl FromStr for TenantOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<TenantOverride, String> {
        match s.split_once('=') {
            Some((provider, tenant)) if !provider.is_empty() && !tenant.is_empty() => {
                Ok(TenantOverride {
                    provider: provider.to_string(),
                    tenant: tenant.to_string(),
                })
            }
            _ => Err(format!("`{s}` is not PROVIDER=TENANT (onoff=acme)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("invalid range: {0}")]
    InvalidRange(String),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("topic `{0}` does not exist or has no partitions")]
    UnknownTopic(String),
    #[error("Kafka failed {context}")]
    Kafka {
        context: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error(
        "publishing to the events topic failed; what was published stays, run the replay again"
    )]
    Publish(#[from] PublishError),
    #[error("{topic} partition {partition} stopped delivering at offset {position}, before the end of the range")]
    Stalled {
        topic: String,
        partition: i32,
        position: i64,
    },
    #[error("record {partition}:{offset} has no timestamp; select it by offsets")]
    NoTimestamp { partition: i32, offset: i64 },
    #[error("a Kafka lookup task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl ReplayError {
    fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> ReplayError {
        move |source| ReplayError::Kafka { context, source }
    }
}

/// Runs one replay: calls `on_record` for every record read, in order per
/// partition, and returns the totals once everything published is
/// acknowledged by Kafka.
pub async fn run(
    kafka: &ClientSettings,
    topics: &TopicNames,
    options: &ReplayOptions,
    mut on_record: impl FnMut(&Outcome),
) -> Result<Report, ReplayError> {
    let renormalizer = Renormalizer::new(
        &options.tenants,
        options.gateway_config.as_deref(),
        topics.name(Topic::Raw),
    )?;
    let topic = topics.name(options.source.topic()).to_string();
    let (ranges, span) = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        let (from, to, source) = (options.from.clone(), options.to.clone(), options.source);
        tokio::task::spawn_blocking(move || {
            let lookup = Lookup::new(&kafka, &topic)?;
            let ranges = range::resolve(&lookup, from.as_ref(), to.as_ref())?;
            let span = match source {
                Source::Raw => lookup.time_span(&ranges)?,
                Source::Dlq => None,
            };
            Ok::<_, ReplayError>((ranges, span))
        })
        .await??
    };
    let originals = match options.source {
        Source::Raw => Some(Originals::find(kafka, topics, span).await?),
        Source::Dlq => None,
    };
    let publisher = if options.dry_run {
        None
    } else {
        Some(publisher(kafka, topics)?)
    };
    let mut report = Report {
        topic,
        ranges,
        dry_run: options.dry_run,
        originals_scanned: originals.as_ref().map(|o| o.scanned),
        ..Report::default()
    };
    let mut reader = RangeReader::new(kafka, &report.topic, &report.ranges)?;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let (outcome, record) = match reader.next().await? {
            Some(msg) => judge(&msg, options.source, &renormalizer, originals.as_ref()),
            None => break,
        };
        report.count(&outcome);
        on_record(&outcome);
        if let (Some(publisher), Some(record)) = (&publisher, record) {
            batch.push(record);
            if batch.len() >= PUBLISH_BATCH {
                publish(publisher, &mut batch, &mut report).await?;
            }
        }
    }
    if let Some(publisher) = &publisher {
        publish(publisher, &mut batch, &mut report).await?;
    }
    Ok(report)
}

/// The record's outcome, and the events record to publish if it normalizes.
fn judge(
    msg: &BorrowedMessage<'_>,
    source: Source,
    renormalizer: &Renormalizer,
    originals: Option<&Originals>,
) -> (Outcome, Option<OutRecord>) {
    let request_id = header(msg, H_REQUEST_ID);
    // The gateway keys a raw record by the identity it normalized to, or by
    // the request id when it dead-lettered the delivery (DLQ records too).
    let old_identity = match source {
        Source::Raw => msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| Some(*k) != request_id),
        Source::Dlq => None,
    };
    let (verdict, record) = match (renormalizer.normalize(msg), old_identity) {
        (Err(failure), None) => (Verdict::StillFailing(failure), None),
        (Err(failure), Some(old)) => (
            Verdict::Regressed {
                failure,
                old_identity: old.to_string(),
            },
            None,
        ),
        (Ok(event), old) => {
            let derived = Derived::of(&event);
            let original = request_id.and_then(|id| originals?.fingerprints.get(id));
            let verdict = match (old, original) {
                (None, _) => Verdict::New(derived),
                (Some(old), _) if old != derived.identity => Verdict::Reidentified {
                    event: derived,
                    old_identity: old.to_string(),
                },
                (Some(_), Some(fp)) if *fp == derived.fingerprint => Verdict::Unchanged(derived),
                (Some(_), Some(fp)) => Verdict::Updated {
                    event: derived,
                    old_fingerprint: fp.clone(),
                },
                (Some(_), None) => Verdict::Unverified(derived),
            };
            (verdict, Some(event_record(event)))
        }
    };
    let outcome = Outcome {
        partition: msg.partition(),
        offset: msg.offset(),
        request_id: request_id.map(str::to_string),
        verdict,
    };
    (outcome, record)
}

/// Fingerprints of the events the gateway published, by request id.
#[derive(Default)]
struct Originals {
    fingerprints: HashMap<String, String>,
    /// Events records read.
    scanned: u64,
}

impl Originals {
    /// Reads `callstream.events.v1` around `span` (the replayed records'
    /// timestamps, ms).
    async fn find(
        kafka: &ClientSettings,
        topics: &TopicNames,
        span: Option<(i64, i64)>,
    ) -> Result<Originals, ReplayError> {
        let mut originals = Originals::default();
        let Some((first, last)) = span else {
            return Ok(originals);
        };
        let topic = topics.name(Topic::Events).to_string();
        let time = |ms: i64| {
            Bound::Time(DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC))
        };
        let (from, to) = (
            time(first.saturating_sub(ORIGINALS_MARGIN_MS)),
            time(last.saturating_add(ORIGINALS_MARGIN_MS)),
        );
        let ranges = {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                range::resolve(&Lookup::new(&kafka, &topic)?, Some(&from), Some(&to))
            })
            .await??
        };
        let mut reader = RangeReader::new(kafka, &topic, &ranges)?;
        while let Some(msg) = reader.next().await? {
            originals.scanned += 1;
            if let (Some(request_id), Some(fingerprint)) =
                (header(&msg, H_REQUEST_ID), header(&msg, "ce_id"))
            {
                originals
                    .fingerprints
                    .insert(request_id.to_string(), fingerprint.to_string());
            }
        }
        Ok(originals)
    }
}

/// The durable publisher, configured for a replay: a command, not a
/// service, so its metrics go to a registry of its own that nothing serves;
/// the report is the output.
fn publisher(kafka: &ClientSettings, topics: &TopicNames) -> Result<Publisher, ReplayError> {
    let metrics =
        PublishMetrics::register(&prometheus::Registry::new(), "replay").expect("fresh registry");
    Publisher::new(
        client_config(kafka, Role::Producer),
        PublishOptions {
            timeout_ms: PUBLISH_TIMEOUT_MS,
            linger_ms: 5.0,
            max_body_bytes: MAX_RECORD_BYTES,
        },
        topics.clone(),
        &[Topic::Events, Topic::Dlq],
        metrics,
    )
    .map_err(ReplayError::kafka("creating the producer"))
}

async fn publish(
    publisher: &Publisher,
    batch: &mut Vec<OutRecord>,
    report: &mut Report,
) -> Result<(), ReplayError> {
    if batch.is_empty() {
        return Ok(());
    }
    match publisher.publish(batch).await {
        Ok(()) => report.published += batch.len() as u64,
        // A record Kafka will never take (larger than the events topic or
        // the producer allows, invalid) would fail every run at the same
        // place: find it, report it, publish the rest. Records of the batch
        // Kafka had already acknowledged go again (dedup drops the copies).
        Err(err) if err.record_refused() => {
            for record in batch.iter() {
                match publisher.publish(std::slice::from_ref(record)).await {
                    Ok(()) => report.published += 1,
                    Err(err) if err.record_refused() => {
                        let request_id = record
                            .headers
                            .iter()
                            .find(|(name, _)| name == H_REQUEST_ID)
                            .map(|(_, value)| String::from_utf8_lossy(value));
                        tracing::error!(
                            identity = record.key,
                            request_id = request_id.as_deref().unwrap_or(""),
                            bytes = record.wire_size(),
                            error = %err,
                            "Kafka refuses this re-derived event: not published"
                        );
                        report.refused += 1;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Err(err) => return Err(err.into()),
    }
    batch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_overrides_parse() {
        assert_eq!(
            "onoff=acme".parse(),
            Ok(TenantOverride {
                provider: "onoff".into(),
                tenant: "acme".into()
            })
        );
        for bad in ["onoff", "=acme", "onoff="] {
            assert!(bad.parse::<TenantOverride>().is_err(), "{bad:?} parsed");
        }
    }
}
