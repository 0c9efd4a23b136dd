//! Delivering one target's dead letters again (`callstream-replay crm`),
//! once what made them fail is fixed: a token, a URL, a mapping.
//!
//! Reads `callstream.crm.dlq.v1` over a range fixed when it starts (as the
//! other replays: assigned partitions, no group, no commits) and sends each
//! of the target's dead letters through the target's own [`Deliverer`]:
//! the same request, `Idempotency-Key`, revision header, retries and rate
//! limit as the CRM consumer. Letters of other targets are left alone.
//!
//! Nothing is written back: a letter that fails again keeps its place in
//! the dead-letter topic and is reported, so a run over the same range can
//! be repeated (CRMs that honour `Idempotency-Key` keep one copy of what
//! the earlier run delivered; HubSpot does not). Letters are sent one after
//! another, in topic order per partition, so an event's revisions arrive in
//! order.

use std::fmt;

use prometheus::Registry;
use rdkafka::message::Message;
use tokio::sync::watch;

use callstream_schemas::Topic;

use super::deliver::{Deliverer, Delivery};
use super::mapping;
use super::metrics::CrmMetrics;
use super::state::Db;
use super::target::Decoded;
use super::CrmSettings;
use crate::replay::range::{self, Bound, Lookup, PartitionRange};
use crate::replay::reader::RangeReader;
use crate::replay::ReplayError;
use callstream_kafka::wire::crm_target;
use callstream_kafka::{ClientSettings, TopicNames};
use callstream_runtime::config::ConfigError;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct RedeliverOptions {
    /// The target (`crm.targets.<name>`) whose letters are delivered.
    pub target: String,
    /// First letter; `None`: each partition's first.
    pub from: Option<Bound>,
    /// End (excluded); `None`: each partition's end when the run starts.
    pub to: Option<Bound>,
    /// Read and count the target's letters, send nothing.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error("no CRM target `{0}` is configured (crm.targets.<name>)")]
    UnknownTarget(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("building the HTTP client failed")]
    Http(#[source] reqwest::Error),
    #[error("registering metrics failed")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Read(#[from] ReplayError),
    #[error("CRM state: {0}")]
    State(String),
}

/// What became of one of the target's dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivered {
    Delivered,
    /// A dry run: it would have been sent.
    WouldSend,
    /// The target still refuses it, or attempts ran out again.
    Failed(String),
    /// The letter does not hold an event (it was dead-lettered as such).
    Undecodable(String),
    /// The target no longer takes this kind (`kinds`).
    Skipped,
}

/// One of the target's dead letters and its outcome.
#[derive(Debug, Clone)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub event_id: Option<String>,
    pub outcome: Redelivered,
}

impl fmt::Display for Letter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let event = self.event_id.as_deref().unwrap_or("-");
        let (partition, offset) = (self.partition, self.offset);
        match &self.outcome {
            Redelivered::Delivered => write!(f, "delivered {partition}:{offset} event {event}"),
            Redelivered::WouldSend => write!(f, "would send {partition}:{offset} event {event}"),
            Redelivered::Failed(e) => {
                write!(f, "FAILED AGAIN {partition}:{offset} event {event}: {e}")
            }
            Redelivered::Undecodable(e) => {
                write!(f, "undecodable {partition}:{offset}: {e}")
            }
            Redelivered::Skipped => {
                write!(
                    f,
                    "skipped {partition}:{offset} event {event} (kind not delivered)"
                )
            }
        }
    }
}

/// Totals of a run, printed at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedeliverReport {
    pub target: String,
    pub topic: String,
    pub ranges: Vec<PartitionRange>,
    pub dry_run: bool,
    /// Dead letters read, every target's.
    pub read: u64,
    /// Of those, this target's.
    pub for_target: u64,
    pub delivered: u64,
    pub failed: u64,
    pub undecodable: u64,
    pub skipped: u64,
    /// Shutdown (Ctrl-C, SIGTERM) came before the end of the range.
    pub interrupted: bool,
}

impl fmt::Display for RedeliverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.dry_run {
            "dry run over"
        } else {
            "delivered again from"
        };
        let ranges = range::describe(&self.ranges);
        writeln!(f, "{what} {} {ranges}", self.topic)?;
        writeln!(
            f,
            "read {} dead letters, {} for target {}",
            self.read, self.for_target, self.target
        )?;
        if !self.dry_run {
            writeln!(f, "delivered {}", self.delivered)?;
        }
        writeln!(f, "failed again {}", self.failed)?;
        writeln!(f, "undecodable {}", self.undecodable)?;
        writeln!(f, "skipped (kind not delivered) {}", self.skipped)?;
        if self.interrupted {
            writeln!(f, "interrupted before the end of the range")?;
        }
        Ok(())
    }
}

/// Sends the target's dead letters in the range again, calling `on_letter`
/// for each of them; returns the totals. Stops early, reporting
/// `interrupted`, once `shutdown` turns true (the letter in flight may or
/// may not have reached the target).
pub async fn redeliver(
    crm: &CrmSettings,
    kafka: &ClientSettings,
    topics: &TopicNames,
    database_url: Option<&SecretString>,
    options: &RedeliverOptions,
    shutdown: watch::Receiver<bool>,
    mut on_letter: impl FnMut(&Letter),
) -> Result<RedeliverReport, RedeliverError> {
    let target = crm
        .targets
        .get(&options.target)
        .ok_or_else(|| RedeliverError::UnknownTarget(options.target.clone()))?;
    // The target's counters are not exported: the report is the output.
    let metrics = CrmMetrics::register(&Registry::new())?.target(&options.target);
    let db = Db::for_targets(crm, database_url)
        .await
        .map_err(|e| RedeliverError::State(e.to_string()))?;
    let deliverer = Deliverer::new(target, mapping(&options.target, target, db)?, metrics)
        .map_err(RedeliverError::Http)?;
    let topic = topics.name(Topic::CrmDlq).to_string();
    let ranges = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        let (from, to) = (options.from.clone(), options.to.clone());
        tokio::task::spawn_blocking(move || {
            range::resolve(&Lookup::new(&kafka, &topic)?, from.as_ref(), to.as_ref())
        })
        .await
        .map_err(ReplayError::from)??
    };
    let mut report = RedeliverReport {
        target: options.target.clone(),
        topic,
        ranges,
        dry_run: options.dry_run,
        ..RedeliverReport::default()
    };
    let mut reader = RangeReader::new(kafka, &report.topic, &report.ranges)?;
    while let Some(msg) = reader.next().await? {
        report.read += 1;
        if crm_target(&msg) != Some(options.target.as_str()) {
            continue;
        }
        report.for_target += 1;
        let (partition, offset) = (msg.partition(), msg.offset());
        let (event_id, outcome) = match Decoded::of_letter(&msg) {
            Err(e) => (None, Redelivered::Undecodable(e.to_string())),
            Ok(decoded) => match decoded.work(&target.kinds) {
                None => (None, Redelivered::Skipped),
                Some(work) => {
                    let id = Some(work.subject());
                    let outcome = if options.dry_run {
                        Redelivered::WouldSend
                    } else {
                        match deliverer.deliver(work, &shutdown).await {
                            Delivery::Delivered => Redelivered::Delivered,
                            Delivery::Failed { error, .. } => {
                                Redelivered::Failed(error.to_string())
                            }
                            Delivery::Abandoned => {
                                report.interrupted = true;
                                break;
                            }
                        }
                    };
                    (id, outcome)
                }
            },
        };
        match &outcome {
            Redelivered::Delivered => report.delivered += 1,
            Redelivered::Failed(_) => report.failed += 1,
            Redelivered::Undecodable(_) => report.undecodable += 1,
            Redelivered::Skipped => report.skipped += 1,
            Redelivered::WouldSend => {}
        }
        on_letter(&Letter {
            partition,
            offset,
            event_id,
            outcome,
        });
    }
    Ok(report)
}
