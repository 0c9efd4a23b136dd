//! The topics a consumer writes, created when they are missing, as Kafka
//! Streams creates its internal topics.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::types::RDKafkaErrorCode;

use crate::client::{client_config, Role};
use crate::settings::ClientSettings;

/// What a consumer keeps in a topic it writes, which decides how
/// [`ensure_topic`] makes the topic when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    /// State the consumer reads back (dedup's changelog): compacted
    /// (`cleanup.policy=compact`), and required: a changelog that cannot be
    /// made is an error.
    Changelog,
    /// Records for others (dedup's output, dead letters, archived
    /// recordings): the brokers' default cleanup policy. One that cannot be
    /// made is logged, not an error: a broker may create it on the first
    /// write (`auto.create.topics.enable`), or an operator must, and each
    /// write is retried until it is there.
    Output,
    /// Records for others that are state (the current call per call key):
    /// compacted, otherwise as [`Owned::Output`].
    CompactedOutput,
}

/// How long [`ensure_topic`] waits for the brokers' answers.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure `topic`, which this process writes, exists, creating it if
/// it is missing, as Kafka Streams does with its internal topics: with as
/// many partitions as `input` (the topic its records come from, so that a
/// key keeps its partition number), the brokers' default replication factor
/// (`default.replication.factor`; Kafka 2.4 or later), and compacted for
/// [`Owned::Changelog`]. Returns the partition count of `topic`, found or
/// created (another instance creating it first is fine).
///
/// When the topic cannot be found or made (brokers unreachable, creation
/// not allowed or not supported, `input` missing too): an error for a
/// [`Owned::Changelog`], naming the topic and how to create it by hand; for
/// an [`Owned::Output`] a warning and `Ok(None)`. A topic that exists is
/// left as it is, whatever its shape: checking it is the caller's business
/// (dedup requires its changelog to have at least the input's partitions).
/// Blocking: a few requests to the brokers.
pub fn ensure_topic(
    kafka: &ClientSettings,
    topic: &str,
    input: &str,
    owned: Owned,
) -> Result<Option<usize>, MissingChangelog> {
    match find_or_create(kafka, topic, input, owned) {
        Ok(n) => Ok(Some(n)),
        Err(why) => match owned {
            Owned::Changelog => Err(MissingChangelog {
                topic: topic.to_string(),
                input: input.to_string(),
                why,
            }),
            Owned::Output | Owned::CompactedOutput => {
                tracing::warn!(%topic, reason = %why, "topic does not exist and could not be created; writes to it are retried until it does");
                Ok(None)
            }
        },
    }
}

/// A changelog [`ensure_topic`] could neither find nor make.
#[derive(Debug, thiserror::Error)]
#[error(
    "topic `{topic}` does not exist and could not be created ({why}); create it \
     with `cleanup.policy=compact` and as many partitions as `{input}`"
)]
pub struct MissingChangelog {
    pub topic: String,
    pub input: String,
    pub why: String,
}

fn find_or_create(
    kafka: &ClientSettings,
    topic: &str,
    input: &str,
    owned: Owned,
) -> Result<usize, String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, Role::Producer)
        // Looking a topic up must not create it with the brokers' defaults.
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let partitions = |name: &str| -> Result<usize, String> {
        let md = admin
            .inner()
            .fetch_metadata(Some(name), ADMIN_TIMEOUT)
            .map_err(|e| format!("no metadata from the brokers: {e}"))?;
        Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
    };
    let found = partitions(topic)?;
    if found > 0 {
        return Ok(found);
    }
    let wanted = partitions(input)?;
    if wanted == 0 {
        return Err(format!("its input topic `{input}` does not exist either"));
    }
    let new = new_topic(topic, wanted as i32, owned);
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| format!("CreateTopics failed: {e}"))?;
    match results.into_iter().next() {
        Some(Ok(_)) | None | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
        Some(Err((_, code))) => return Err(format!("CreateTopics refused: {code}")),
    }
    // A new topic reaches every broker's metadata shortly after.
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let n = partitions(topic)?;
        if n > 0 {
            tracing::info!(%topic, partitions = n, ?owned, "created missing topic");
            return Ok(n);
        }
        if std::time::Instant::now() > deadline {
            return Err("created, but not in the brokers' metadata".to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What [`ensure_topic`] asks the brokers for: `partitions` (the input's),
/// their default replication factor (-1), compacted for a changelog.
fn new_topic(topic: &str, partitions: i32, owned: Owned) -> rdkafka::admin::NewTopic<'_> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    match owned {
        Owned::Changelog | Owned::CompactedOutput => new.set("cleanup.policy", "compact"),
        Owned::Output => new,
    }
}

/// Runs `future` to completion on this thread: the admin client's answers
/// come from its own thread, so no runtime is needed to wait for them.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_topics_are_asked_for_like_the_input_and_changelogs_compacted() {
        use rdkafka::admin::TopicReplication;
        let changelog = new_topic("state", 12, Owned::Changelog);
        assert_eq!((changelog.name, changelog.num_partitions), ("state", 12));
        assert!(matches!(changelog.replication, TopicReplication::Fixed(-1)));
        assert_eq!(changelog.config, [("cleanup.policy", "compact")]);
        let output = new_topic("dlq", 4, Owned::Output);
        assert_eq!(output.num_partitions, 4);
        assert!(matches!(output.replication, TopicReplication::Fixed(-1)));
        assert!(
            output.config.is_empty(),
            "the brokers' default cleanup policy"
        );
        let calls = new_topic("calls", 4, Owned::CompactedOutput);
        assert_eq!(calls.config, [("cleanup.policy", "compact")]);
    }
}
