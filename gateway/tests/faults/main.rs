//! Fault tests: a Kafka outage under load, kill -9 of the gateway process
//! under load (with and without Kafka), and overload. Each is bounded in
//! requests and time. The figures they print are quoted in docs/operations.md.

mod kafka_outages;
mod overload;
mod process;
mod stops;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callstream_gateway::config::{Settings, TopicNames};
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_schemas::Topic;
use callstream_testkit::{metric_value, read_all, spawn_gateway, ServiceProcess, PARTITIONS};
use futures_util::future::join_all;
use reqwest::StatusCode;

const BINARY: &str = env!("CARGO_BIN_EXE_callstream-gateway");

fn cdr(id: &str, version: usize) -> String {
    format!(
        r#"{{"id":"{id}","eventName":"CDR","callStarted":"2024-01-01T10:00:00Z","callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"v{version}"}}"#
    )
}

fn sms(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","eventName":"SMS","date":"2024-01-01T10:00:00Z","smsDirection":"RECEIVED","body":"hi"}}"#
    )
}

fn version_of(payload: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v["callNotes"].as_str().unwrap()[1..].parse().unwrap()
}

fn topics() -> TopicNames {
    Settings::from_figment(Settings::defaults()).unwrap().topics
}

/// Ids (the last part of the raw record key) of everything in the raw topic.
fn ids_in_raw_topic(bootstrap: &str) -> HashSet<String> {
    read_all(bootstrap, Topic::Raw.default_name())
        .iter()
        .map(|r| r.key_str().rsplit(':').next().unwrap().to_string())
        .collect()
}

/// Sends SMS deliveries with unique ids from `workers` tasks until `stop`
/// (at most 2,000 each), returning the ids that got a 200.
async fn load(
    url: String,
    prefix: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap();
    let tasks = (0..workers).map(|w| {
        let (url, prefix, acked, stop, client) = (
            url.clone(),
            prefix.clone(),
            acked.clone(),
            stop.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            for n in 0..2_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("{prefix}-w{w}-{n}");
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(sms(&id))
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        acked.lock().unwrap().insert(id);
                    }
                    Ok(_) => {}
                    // The process was killed mid-request: no answer, no promise.
                    Err(_) => break,
                }
            }
        })
    });
    for t in join_all(tasks).await {
        t.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// A broker with every topic, a spool directory, and the environment of a
/// gateway binary pointed at both.
fn broker_and_spool() -> (
    EmbeddedBroker,
    tempfile::TempDir,
    Vec<(&'static str, String)>,
) {
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
    ];
    (broker, spool, env)
}

/// Brings the broker up and starts the gateway with `env` (its spool):
/// every id in `acked` must reach the raw topic within 90 s; then SIGTERM,
/// and a clean exit.
async fn restart_until_all_in_kafka(
    broker: &EmbeddedBroker,
    env: &[(&str, String)],
    acked: &HashSet<String>,
) {
    broker.cluster().broker_up(-1).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let gw = ServiceProcess::gateway(BINARY, env);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut in_kafka = ids_in_raw_topic(&bootstrap);
    while !acked.is_subset(&in_kafka) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        in_kafka = ids_in_raw_topic(&bootstrap);
    }
    let missing = acked.difference(&in_kafka).count();
    let examples: Vec<_> = acked.difference(&in_kafka).take(10).collect();
    assert_eq!(
        missing, 0,
        "acknowledged deliveries missing from Kafka, e.g. {examples:?}"
    );
    assert!(gw.terminate().success(), "clean exit on SIGTERM");
}

/// A broker answering after `rtt_ms`, and the gateway binary in front of it
/// with its own spool directory plus `env`.
fn slow_broker_and_gateway(
    rtt_ms: u64,
    env: &[(&str, String)],
) -> (EmbeddedBroker, tempfile::TempDir, ServiceProcess) {
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    broker
        .cluster()
        .broker_round_trip_time(-1, Duration::from_millis(rtt_ms))
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut all = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
    ];
    all.extend(env.iter().cloned());
    let gw = ServiceProcess::gateway(BINARY, &all);
    (broker, spool, gw)
}
