//! The embedded broker: librdkafka's in-process mock cluster. It speaks the
//! real Kafka protocol on 127.0.0.1 so `kcat` and the consumers can connect,
//! but it keeps everything in memory and loses it on exit. For trying
//! callstream out and for tests only.

use rdkafka::error::KafkaResult;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use callstream_schemas::Topic;

use crate::config::TopicNames;

pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster and creates every callstream topic.
    pub fn start(partitions: i32, topics: &TopicNames) -> KafkaResult<EmbeddedBroker> {
        let cluster = MockCluster::new(1)?;
        for topic in Topic::ALL {
            cluster.create_topic(topics.name(topic), partitions, 1)?;
        }
        Ok(EmbeddedBroker { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The cluster, for tests that inject faults (brokers down, errors).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
