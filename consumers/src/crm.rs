//! CRM delivery: each unique event (`callstream.events.unique.v1`) to every
//! configured CRM target over HTTP: a generic JSON [`webhook`], or
//! [`hubspot`] activities.
//!
//! **Guarantee: at-least-once per target, in order per partition.** Each
//! target consumes in its own group (`<group_prefix>-<target>`) in its own
//! task, so a slow or dead CRM holds back only itself. A record's offset is
//! stored and committed only after the record is finished: delivered (2xx),
//! skipped (a kind the target does not take), or dead-lettered to
//! `callstream.crm.dlq.v1` *and acknowledged by Kafka* (`acks=all`,
//! idempotent producer). Retriable failures (connect errors, timeouts,
//! `408`, `429` honouring `Retry-After`, `5xx`) are retried with exponential
//! back-off and jitter up to `max_attempts`; other answers are
//! dead-lettered at once. Shutdown lets the attempt in flight finish but
//! starts no other: an unfinished record stays uncommitted and is delivered
//! after the restart.
//!
//! So the CRM can receive an event more than once (a crash or shutdown
//! after its 2xx but before the commit, a rebalance, a 2xx lost on the
//! way back, or a timeout on a request the CRM did process). Every request
//! carries `Idempotency-Key: <event_id>` for the CRM to drop repeats, and
//! `X-Callstream-Revision: <n>`: an update (same identity, new content,
//! revision ≥ 2) keeps the *same* key, since it is the same call, so a CRM
//! that deduplicates must key on (key, revision) or upsert by key. A target
//! with `idempotency_key = "revision"` gets `<event_id>:<revision>` instead,
//! for CRMs that follow the IETF Idempotency-Key draft (a known key with a
//! new body is refused there, which would dead-letter every update).
//!
//! What breaks it: committing before the outcome is known (enabling
//! `enable.auto.commit` or `enable.auto.offset.store` in
//! `kafka.properties`), two targets sharing one group, treating a `4xx`
//! that only this request caused as retriable forever, or a dead-letter
//! topic that is deleted or compacted before someone reads it.

mod deliver;
pub mod hubspot;
mod metrics;
pub mod redeliver;
pub mod settings;
mod state;
mod target;
pub mod webhook;

use callstream_kafka::dead_letter::DeadLetters;
use std::sync::Arc;

use prometheus::Registry;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use secrecy::SecretString;
use tokio::sync::watch;

use callstream_schemas::{Kind, Topic};
use futures_util::future::BoxFuture;

use callstream_kafka::consume::TrackingContext;
use callstream_kafka::per_record::PerRecordLoop;
use callstream_kafka::{ClientSettings, TopicNames};
use callstream_runtime::config::{invalid, ConfigError};
use callstream_runtime::shutdown::wait_for;
use deliver::Deliverer;
pub use deliver::{Answer, AttemptError, Session, Work};
use metrics::CrmMetrics;
use settings::{TargetKind, TargetSettings};
use target::{Input, TargetHandler};

pub use settings::CrmSettings;

/// What differs between CRMs: what a call, an event or an archived
/// recording becomes there. Adding a CRM is one file implementing this and
/// one [`TargetKind`].
pub trait Mapping: Send + Sync {
    /// One attempt at `work`, through `session`'s requests; the caller
    /// retries a retriable error, so an attempt must be safe to repeat.
    fn send<'a>(
        &'a self,
        session: &'a Session<'a>,
        work: &'a Work<'a>,
    ) -> BoxFuture<'a, Result<(), AttemptError>>;

    /// Whether it takes archived recordings (`callstream.recordings.v1`).
    fn takes_recordings(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Kafka client for CRM target `{target}`: {source}")]
    Kafka { target: String, source: KafkaError },
    #[error("Kafka producer for dead letters: {0}")]
    Producer(KafkaError),
    #[error("HTTP client for CRM target `{target}`: {source}")]
    Http {
        target: String,
        source: reqwest::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("CRM target task failed: {0}")]
    Task(String),
    #[error("CRM state in PostgreSQL: {0}")]
    Database(String),
}

/// Unique events a target reads ahead of the one it delivers, at most; a
/// few MB. Past it, its partitions are paused (and still polled).
const QUEUED_PER_TARGET: usize = 256;

/// Every configured target, ready to run.
pub struct CrmConsumer {
    targets: Vec<PerRecordLoop<TargetHandler>>,
}

/// The kinds that make a call worth delivering.
const CALL_KINDS: [Kind; 3] = [Kind::Call, Kind::Voicemail, Kind::Recording];

impl CrmConsumer {
    /// Builds, per target, a consumer per input it reads and one HTTP
    /// client, and the shared dead-letter producer; registers
    /// `callstream_crm_*` in `registry`. HubSpot targets keep their state
    /// in PostgreSQL (`database_url`, migrated here).
    pub async fn build(
        crm: &CrmSettings,
        kafka: &ClientSettings,
        topics: &TopicNames,
        database_url: Option<&SecretString>,
        registry: &Registry,
    ) -> Result<CrmConsumer, CrmError> {
        crm.require_targets()?;
        let db = state::Db::for_targets(crm, database_url).await?;
        let metrics = CrmMetrics::register(registry)?;
        let producer: FutureProducer = callstream_kafka::client::durable_producer_config(kafka)
            .create()
            .map_err(CrmError::Producer)?;
        let mut targets = Vec::with_capacity(crm.targets.len());
        for (name, target) in &crm.targets {
            let metrics = metrics.target(name);
            let deliverer =
                Deliverer::new(target, mapping(name, target, db.clone())?, metrics.clone())
                    .map_err(|source| CrmError::Http {
                        target: name.clone(),
                        source,
                    })?;
            let deliverer = Arc::new(deliverer);
            let mut inputs = vec![Input::Events];
            if target.kinds.iter().any(|k| CALL_KINDS.contains(k)) {
                inputs.push(Input::Calls);
            }
            if deliverer.takes_recordings() {
                inputs.push(Input::Recordings);
            }
            for input in inputs {
                let group = input.group(&crm.group_id(name));
                let consumer = callstream_kafka::client::consumer_config(kafka, &group)
                    .create_with_context(TrackingContext::committing_on_revoke())
                    .map_err(|source| CrmError::Kafka {
                        target: name.clone(),
                        source,
                    })?;
                targets.push(PerRecordLoop {
                    name: format!("crm target {name}, {} (group {group})", input.label()),
                    consumer: Arc::new(consumer),
                    topic: topics.name(input.topic()).to_string(),
                    // In order: one record at a time.
                    concurrency: 1,
                    max_queued: QUEUED_PER_TARGET,
                    lag: metrics.lag(input.label()),
                    in_progress: None,
                    handler: TargetHandler {
                        name: name.clone(),
                        input,
                        dead_letters: DeadLetters::new(
                            producer.clone(),
                            topics.name(Topic::CrmDlq),
                            target::KAFKA_ERROR_PAUSE,
                        ),
                        deliverer: deliverer.clone(),
                        kinds: target.kinds.clone(),
                        metrics: metrics.clone(),
                    },
                });
            }
        }
        // Never an error for an output: logged when it cannot be made.
        let _ = callstream_kafka::topics::ensure_topic(
            kafka,
            topics.name(Topic::CrmDlq),
            topics.name(Topic::EventsUnique),
            callstream_kafka::topics::Owned::Output,
        );
        Ok(CrmConsumer { targets })
    }

    /// Runs every target in its own task until `shutdown`, then waits for
    /// each to commit and leave its group. If one target fails, the others
    /// are stopped the same way and the first error is returned.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), CrmError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for target in self.targets {
            let name = target.handler.name.clone();
            let stopped = stopped.clone();
            tasks.spawn(async move { (name, target.run(stopped).await) });
        }
        let mut first_error = None;
        loop {
            let joined = tokio::select! {
                joined = tasks.join_next() => joined,
                _ = wait_for(&mut shutdown), if !*stop.borrow() => {
                    let _ = stop.send(true);
                    continue;
                }
            };
            let error = match joined {
                None => break,
                Some(Ok((_, Ok(())))) => continue,
                Some(Ok((name, Err(e)))) => CrmError::Kafka {
                    target: name,
                    source: e,
                },
                Some(Err(e)) => CrmError::Task(e.to_string()),
            };
            tracing::error!(error = %error, "CRM target failed; stopping the others");
            let _ = stop.send(true);
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn mapping(
    name: &str,
    target: &TargetSettings,
    db: Option<Arc<state::Db>>,
) -> Result<Box<dyn Mapping>, ConfigError> {
    let invalid_url = |problem| invalid(format!("crm.targets.{name}.url"), problem);
    let url = target.base_url().map_err(&invalid_url)?;
    Ok(match target.kind {
        TargetKind::Webhook => Box::new(webhook::Webhook { url }),
        TargetKind::Hubspot => {
            let db = db.ok_or_else(|| invalid("database_url", "is required by hubspot targets"))?;
            Box::new(hubspot::HubSpot::new(name, &url, target, db).map_err(&invalid_url)?)
        }
    })
}
