//! The embedded broker: librdkafka's in-process mock cluster. It speaks the
//! real Kafka protocol on 127.0.0.1 so `kcat` and the consumers can connect,
//! but it keeps everything in memory and loses it on exit. For trying
//! callstream out and for tests only.
//!
//! It does not even keep everything until exit: each partition holds about
//! 5 MiB or 100,000 batches, and the oldest records go beyond that, though
//! the gateway was told they were written (and answered `published`).
//! [`EmbeddedBroker::watch_discards`] makes that loud.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use prometheus::IntCounterVec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;

use callstream_schemas::Topic;

use crate::settings::TopicNames;

/// How often the watcher asks for every partition's low watermark: a few
/// requests to an in-process broker.
const WATCH_INTERVAL: Duration = Duration::from_secs(3);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct EmbeddedBroker {
    /// Dropped with the broker, which ends the watcher.
    watching: Option<mpsc::Sender<()>>,
    cluster: MockCluster<'static, DefaultProducerContext>,
    topics: Vec<(Topic, String)>,
    partitions: i32,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster and creates every callstream topic.
    pub fn start(partitions: i32, topics: &TopicNames) -> KafkaResult<EmbeddedBroker> {
        let cluster = MockCluster::new(1)?;
        let topics: Vec<_> = Topic::ALL
            .into_iter()
            .map(|topic| (topic, topics.name(topic).to_string()))
            .collect();
        for (_, name) in &topics {
            cluster.create_topic(name, partitions, 1)?;
        }
        Ok(EmbeddedBroker {
            watching: None,
            cluster,
            topics,
            partitions,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The cluster, for tests that inject faults (brokers down, errors).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    /// Every few seconds, compares each partition's low watermark with its
    /// first offset: every topic was created empty here, at offset 0, and
    /// the mock has no retention by time, so a low watermark above 0 counts
    /// records it discarded for room. Each growth is logged once (WARN,
    /// naming the topic and partition) and added to `discarded` by topic.
    pub fn watch_discards(&mut self, discarded: IntCounterVec) -> KafkaResult<()> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()?;
        let partitions: Vec<_> = self
            .topics
            .iter()
            .flat_map(|(topic, name)| (0..self.partitions).map(move |p| (*topic, name.clone(), p)))
            .collect();
        for (topic, _) in &self.topics {
            discarded.with_label_values(&[topic.label()]);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("embedded-watch".into())
            .spawn(move || {
                let mut seen: HashMap<(String, i32), i64> = HashMap::new();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(WATCH_INTERVAL) {
                    for (topic, name, partition) in &partitions {
                        let low = match client.fetch_watermarks(name, *partition, WATERMARK_TIMEOUT) {
                            Ok((low, _)) => low,
                            Err(error) => {
                                tracing::debug!(topic = %name, partition, %error, "no watermarks from the embedded broker");
                                continue;
                            }
                        };
                        let before = seen.entry((name.clone(), *partition)).or_insert(0);
                        if low > *before {
                            tracing::warn!(
                                topic = %name,
                                partition,
                                discarded_records = low,
                                "the embedded broker discarded the oldest records of a partition to stay \
                                 within about 5 MiB or 100,000 batches; they are gone, though acknowledged \
                                 (set KAFKA_BOOTSTRAP_SERVERS for a real cluster)"
                            );
                            discarded
                                .with_label_values(&[topic.label()])
                                .inc_by((low - *before) as u64);
                            *before = low;
                        }
                    }
                }
            })
            .expect("the watcher thread starts");
        self.watching = Some(stop);
        Ok(())
    }
}
