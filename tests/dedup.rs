//! callstream-dedup against a real Kafka-protocol broker: exact resends
//! dropped, updates forwarded as revisions, state restored after a restart,
//! state bounded by the window.

use std::time::Duration;

use callstream_consumers::config::Settings;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_schemas::Topic;
use callstream_testkit::{
    eventually, onoff_call_event, produce, read_committed_to_end, Record, PARTITIONS,
};
use tokio::sync::watch;

const T0: i64 = 1_716_215_400_000; // 2024-05-20T14:30:00Z

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: DedupMetrics,
}

fn settings(bootstrap: &str, extra: impl FnOnce(figment::Figment) -> figment::Figment) -> Settings {
    let figment = Settings::defaults()
        .merge(("kafka.bootstrap_servers", bootstrap))
        .merge(("dedup.batch_linger_ms", 5))
        // The in-process broker expires a departed member only after its
        // session timeout: keep restarts quick.
        .merge((
            "kafka.properties",
            std::collections::BTreeMap::from([
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ]),
        ));
    Settings::from_figment(extra(figment)).expect("valid settings")
}

fn start(settings: &Settings) -> Running {
    let metrics = DedupMetrics::new(&prometheus::Registry::new());
    let dedup = Dedup::new(
        &settings.dedup,
        &settings.kafka,
        &settings.topics,
        metrics.clone(),
    )
    .expect("dedup starts");
    let (stop, stopped) = watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(dedup.run(stopped)),
        metrics,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().expect("dedup ran without error");
    }
}

fn revision(r: &Record) -> &str {
    r.header("cs_revision")
        .expect("every unique record has a revision")
}

/// (identity, revision) pairs in the unique topic.
fn unique(bootstrap: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = read_committed_to_end(bootstrap, Topic::EventsUnique.default_name())
        .iter()
        .map(|r| (r.key_str().to_string(), revision(r).to_string()))
        .collect();
    out.sort();
    out
}

async fn wait_until_consumed(running: &Running, n: u64) {
    let consumed = eventually(Duration::from_secs(30), || {
        running.metrics.consumed.get() >= n
    })
    .await;
    assert!(
        consumed,
        "dedup consumed {} of {n}",
        running.metrics.consumed.get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_are_dropped_and_updates_forwarded_as_revisions() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let events = Topic::Events.default_name();
    let a1 = onoff_call_event("a", "first", T0);
    let a1_resent_later = onoff_call_event("a", "first", T0 + 60_000);
    let a2 = onoff_call_event("a", "notes added after the call", T0 + 300_000);
    let b1 = onoff_call_event("b", "", T0);
    produce(
        &bootstrap,
        events,
        &[
            a1.clone(),
            a1_resent_later,
            b1.clone(),
            a2.clone(),
            b1.clone(),
            a1.clone(),
            a2.clone(),
        ],
    )
    .await;

    let running = start(&settings(&bootstrap, |f| f));
    wait_until_consumed(&running, 7).await;
    let m = &running.metrics;
    assert_eq!(m.forwarded.get(), 3);
    assert_eq!(m.duplicates.get(), 4);
    assert_eq!(m.updates.get(), 1);
    assert_eq!(m.state_size.get(), 2);
    running.stop().await;

    let out = read_committed_to_end(&bootstrap, Topic::EventsUnique.default_name());
    assert_eq!(out.len(), 3);
    let a_records: Vec<_> = out.iter().filter(|r| r.key_str() == a1.0).collect();
    assert_eq!(a_records.len(), 2);
    assert_eq!(revision(a_records[0]), "1");
    assert_eq!(a_records[0].payload, a1.1, "value forwarded byte for byte");
    assert_eq!(revision(a_records[1]), "2");
    assert_eq!(a_records[1].payload, a2.1);
    assert_eq!(
        a_records[0].partition, a_records[1].partition,
        "same key, same partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_restored_from_the_changelog_after_a_restart() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let events = Topic::Events.default_name();
    let first: Vec<_> = (0..30)
        .map(|i| onoff_call_event(&format!("c{i}"), "", T0))
        .collect();
    produce(&bootstrap, events, &first).await;
    let running = start(&settings(&bootstrap, |f| f));
    wait_until_consumed(&running, 30).await;
    running.stop().await;

    // After the restart: resends of everything, plus one update and one new.
    let mut second = first.clone();
    second.push(onoff_call_event("c7", "an update", T0 + 1_000));
    second.push(onoff_call_event("new", "", T0 + 1_000));
    produce(&bootstrap, events, &second).await;
    let running = start(&settings(&bootstrap, |f| f));
    wait_until_consumed(&running, 32).await;
    assert_eq!(
        running.metrics.duplicates.get(),
        30,
        "the restarted instance remembers"
    );
    assert_eq!(running.metrics.forwarded.get(), 2);
    assert!(running.metrics.restore_seconds.get() > 0.0);
    running.stop().await;

    let out = unique(&bootstrap);
    assert_eq!(out.len(), 32);
    assert!(out.contains(&(onoff_call_event("c7", "", T0).0, "2".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_bounded_by_the_window_in_event_time() {
    let broker = EmbeddedBroker::start(1, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let events = Topic::Events.default_name();
    let old: Vec<_> = (0..50)
        .map(|i| onoff_call_event(&format!("old{i}"), "", T0))
        .collect();
    produce(&bootstrap, events, &old).await;
    let running = start(&settings(&bootstrap, |f| {
        f.merge(("dedup.window_secs", 60))
    }));
    wait_until_consumed(&running, 50).await;
    assert_eq!(running.metrics.state_size.get(), 50);

    // Two minutes of event time later, the old identities fall out.
    produce(
        &bootstrap,
        events,
        &[onoff_call_event("late", "", T0 + 120_000)],
    )
    .await;
    wait_until_consumed(&running, 51).await;
    let evicted = eventually(Duration::from_secs(10), || {
        running.metrics.state_size.get() == 1
    })
    .await;
    assert!(evicted, "state size {}", running.metrics.state_size.get());
    assert_eq!(running.metrics.evicted.get(), 50);
    running.stop().await;

    // The tombstones are in the changelog: a restart remembers only `late`.
    let running = start(&settings(&bootstrap, |f| {
        f.merge(("dedup.window_secs", 60))
    }));
    produce(
        &bootstrap,
        events,
        &[onoff_call_event("old3", "", T0 + 121_000)],
    )
    .await;
    wait_until_consumed(&running, 1).await;
    assert_eq!(
        running.metrics.forwarded.get(),
        1,
        "old3 was forgotten, so it is new again"
    );
    running.stop().await;
}

/// librdkafka reports a lost broker as error events, which the consumer's
/// `recv` returns; dedup logs them and goes on once the broker is back
/// (librdkafka reconnects by itself), instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_does_not_stop_dedup() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let events = Topic::Events.default_name();
    let before = onoff_call_event("before", "", T0);
    let after = onoff_call_event("after", "", T0);
    produce(&bootstrap, events, std::slice::from_ref(&before)).await;
    let running = start(&settings(&bootstrap, |f| f));
    wait_until_consumed(&running, 1).await;

    broker.cluster().broker_down(-1).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !running.task.is_finished(),
        "dedup stopped while Kafka was down"
    );
    broker.cluster().broker_up(-1).unwrap();
    produce(&bootstrap, events, std::slice::from_ref(&after)).await;
    wait_until_consumed(&running, 2).await;
    running.stop().await;

    let keys: Vec<String> = unique(&bootstrap).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&after.0), "{keys:?}");
}

/// Partitions of `topic` in the brokers' metadata (0: no such topic).
fn partitions(bootstrap: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics().first().map_or(0, |t| t.partitions().len())
}

/// A broker holding only the input topic. Dedup creates the topics it
/// writes when they are missing (CreateTopics, with the input's partition
/// count; the changelog compacted), but librdkafka's in-process mock broker
/// does not implement CreateTopics: here the attempt must end in an error
/// that names the changelog and says how to create it by hand (it used to
/// be "has 0 partitions but ... has 3", and no attempt). Created that way,
/// dedup runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_changelog_is_created_or_named_with_how_to_create_it() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let events = Topic::Events.default_name();
    let changelog = Topic::DedupState.default_name();
    cluster.create_topic(events, PARTITIONS, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let event = onoff_call_event("created", "", T0);
    produce(&bootstrap, events, std::slice::from_ref(&event)).await;

    let metrics = DedupMetrics::new(&prometheus::Registry::new());
    let s = settings(&bootstrap, |f| f);
    let Err(error) = Dedup::new(&s.dedup, &s.kafka, &s.topics, metrics) else {
        panic!("the mock broker created {changelog}: test it as created");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "`{changelog}` does not exist and could not be created"
        )) && message.contains("cleanup.policy=compact")
            && message.contains(&format!("as many partitions as `{events}`")),
        "{message}"
    );
    assert_eq!(partitions(&bootstrap, changelog), 0);

    cluster.create_topic(changelog, PARTITIONS, 1).unwrap();
    cluster
        .create_topic(Topic::EventsUnique.default_name(), PARTITIONS, 1)
        .unwrap();
    let running = start(&settings(&bootstrap, |f| f));
    wait_until_consumed(&running, 1).await;
    running.stop().await;
    let keys: Vec<String> = unique(&bootstrap).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [event.0]);
}

/// A changelog that exists with fewer partitions than the input is not
/// repaired: dedup refuses to start, naming the topic and both counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_with_fewer_partitions_than_the_input_is_refused_by_name() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster
        .create_topic(Topic::Events.default_name(), PARTITIONS, 1)
        .unwrap();
    cluster
        .create_topic(Topic::DedupState.default_name(), 1, 1)
        .unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let metrics = DedupMetrics::new(&prometheus::Registry::new());
    let s = settings(&bootstrap, |f| f);
    let Err(error) = Dedup::new(&s.dedup, &s.kafka, &s.topics, metrics) else {
        panic!("dedup started with a changelog of 1 partition for an input of {PARTITIONS}");
    };
    let message = error.to_string();
    assert!(
        message.contains("`callstream.dedup.state.v1` has 1 partitions")
            && message.contains(&format!("`callstream.events.v1` has {PARTITIONS}")),
        "{message}"
    );
    assert_eq!(
        partitions(&bootstrap, Topic::DedupState.default_name()),
        1,
        "left as it is"
    );
}
