//! Dead letters: a record that cannot be handled is copied, with the
//! reason in headers, to a topic of its own before its offset is committed.

use std::time::Duration;

use rdkafka::message::{Headers, Message};

/// Copies `msg` (key, value, headers) to `topic` with `extra` headers and
/// waits for Kafka's acknowledgement, retrying every `retry_every` until it
/// comes. Returns false if shutdown began first: the record then stays
/// uncommitted and is handled again after the restart. `on_error` sees each
/// failed attempt (for metrics).
pub async fn dead_letter<M: Message>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    msg: &M,
    extra: &[(&str, &str)],
    retry_every: Duration,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    mut on_error: impl FnMut(&rdkafka::error::KafkaError),
) -> bool {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let mut headers = OwnedHeaders::new();
    for h in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
        headers = headers.insert(h);
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers.clone());
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
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
