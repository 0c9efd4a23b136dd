//! Dead letters: a record that cannot be handled is copied, with the
//! reason in headers, to a topic of its own before its offset is committed.
//! What a letter holds: [`crate::wire::letters`].

use std::time::Duration;

use rdkafka::message::Message;

use crate::wire::GaveUp;

/// A consumer's dead-letter topic and the durable producer that writes it.
#[derive(Clone)]
pub struct DeadLetters {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    retry_every: Duration,
}

impl DeadLetters {
    /// `retry_every`: the wait for each acknowledgement, and the pause
    /// after a failed one.
    pub fn new(
        producer: rdkafka::producer::FutureProducer,
        topic: impl Into<String>,
        retry_every: Duration,
    ) -> DeadLetters {
        DeadLetters {
            producer,
            topic: topic.into(),
            retry_every,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// [`dead_letter`] to this topic.
    pub async fn write<M: Message>(
        &self,
        msg: &M,
        why: &GaveUp<'_>,
        shutdown: &tokio::sync::watch::Receiver<bool>,
        on_error: impl FnMut(&rdkafka::error::KafkaError),
    ) -> bool {
        dead_letter(
            &self.producer,
            &self.topic,
            msg,
            why,
            self.retry_every,
            shutdown,
            on_error,
        )
        .await
    }
}

/// Writes the dead letter of `msg` ([`GaveUp::letter`]: the record as it
/// was, plus why) to `topic` and waits for Kafka's acknowledgement,
/// retrying every `retry_every` until it comes. Returns false if shutdown
/// began first: the record then stays uncommitted and is handled again
/// after the restart. `on_error` sees each failed attempt (for metrics).
pub async fn dead_letter<M: Message>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    msg: &M,
    why: &GaveUp<'_>,
    retry_every: Duration,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    mut on_error: impl FnMut(&rdkafka::error::KafkaError),
) -> bool {
    use rdkafka::producer::FutureRecord;
    let letter = why.letter(msg);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(letter.headers.clone());
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        match producer.send(record, retry_every).await {
            Ok(_) => return true,
            Err((e, _)) => {
                on_error(&e);
                tracing::warn!(%topic, error = %e, "dead letter not acknowledged; retrying");
                if callstream_runtime::shutdown::pause(retry_every, shutdown).await {
                    return false;
                }
            }
        }
    }
}
