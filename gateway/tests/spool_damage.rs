//! A damaged spool, as the real binary meets it: kill -9 under load with
//! Kafka down, then the spool's files damaged the ways disks damage them (a
//! flipped byte, a truncated tail, a zeroed page in the middle, and an
//! entry that cannot be read), then a restart with Kafka back. Every
//! acknowledged delivery must reach Kafka except those whose own bytes were
//! hit, and the loss must be logged and exported. Bounded: one load of a
//! few seconds, one restart.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callstream_gateway::config::Settings;
use callstream_gateway::spool::format;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_schemas::Topic;
use callstream_testkit::{read_all, ServiceProcess, PARTITIONS};
use reqwest::StatusCode;

const BINARY: &str = env!("CARGO_BIN_EXE_callstream-gateway");

fn sms(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","eventName":"SMS","date":"2024-01-01T10:00:00Z","smsDirection":"RECEIVED","body":"hi"}}"#
    )
}

/// The delivery id a spooled frame or raw record is keyed by.
fn id_of(key: &str) -> String {
    key.rsplit(':').next().unwrap().to_string()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg") && p.is_file())
        .collect();
    out.sort();
    out
}

/// Ids of the deliveries intact in every segment of `dir`.
fn spooled_ids(dir: &Path) -> HashSet<String> {
    segments(dir)
        .iter()
        .flat_map(|p| format::scan(&fs::read(p).unwrap()).deliveries)
        .map(|d| id_of(&d.records[0].key))
        .collect()
}

/// Sends SMS deliveries from `workers` tasks until `stop` (at most 3,000
/// each), returning the ids answered 200.
async fn load(url: String, workers: usize, stop: Arc<AtomicBool>) -> HashSet<String> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (url, acked, stop, client) =
                (url.clone(), acked.clone(), stop.clone(), client.clone());
            tokio::spawn(async move {
                for n in 0..3_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("w{w}-{n}");
                    match client.post(&url).body(sms(&id)).send().await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            acked.lock().unwrap().insert(id);
                        }
                        Ok(_) => {}
                        // Killed mid-request: no answer, no promise.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// The value of an unlabelled metric on the gateway's admin port.
async fn metric(admin: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_spool_costs_only_the_deliveries_whose_bytes_were_hit() {
    let topics = Settings::from_figment(Settings::defaults()).unwrap().topics;
    let broker = EmbeddedBroker::start(PARTITIONS, &topics).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let spool = tempfile::tempdir().unwrap();
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
        // Small segments, so the damage lands in several of them.
        ("CALLSTREAM_SPOOL__SEGMENT_BYTES", "65536".to_string()),
        ("CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS", "400".to_string()),
    ];

    // kill -9 under load, Kafka down: everything acknowledged is spooled.
    broker.cluster().broker_down(-1).unwrap();
    let gw = ServiceProcess::gateway(BINARY, &env);
    let stop = Arc::new(AtomicBool::new(false));
    let loading = tokio::spawn(load(gw.url("/v1/onoff/sms"), 8, stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(spool.path()).len() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.kill9();
    stop.store(true, Ordering::SeqCst);
    let acked = loading.await.unwrap();
    let files = segments(spool.path());
    assert!(
        files.len() >= 6,
        "the load filled several segments: {files:?}"
    );
    let before = spooled_ids(spool.path());
    assert!(acked.is_subset(&before), "every 200 was in the spool");

    // The damage, each in a sealed segment of its own.
    let flip = &files[0];
    let mut bytes = fs::read(flip).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    fs::write(flip, bytes).unwrap();
    let cut = &files[1];
    let len = fs::metadata(cut).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(cut)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let zero = &files[2];
    let mut bytes = fs::read(zero).unwrap();
    let page = (bytes.len() / 2 / 4096) * 4096;
    bytes[page..page + 4096].fill(0);
    fs::write(zero, bytes).unwrap();
    // An entry in a segment's name that cannot be read.
    let unreadable = spool.path().join(format!("{:020}.seg", 1u64 << 50));
    fs::create_dir_all(unreadable.join("in-the-way")).unwrap();

    let after = spooled_ids(spool.path());
    let hit: HashSet<String> = before.difference(&after).cloned().collect();
    assert!(
        hit.len() >= 3,
        "each damage hit at least one delivery: {hit:?}"
    );
    let expected: HashSet<String> = acked.difference(&hit).cloned().collect();

    // Restart with Kafka back: it serves, and replays the rest.
    broker.cluster().broker_up(-1).unwrap();
    let gw = ServiceProcess::gateway(BINARY, &env);
    let deadline = Instant::now() + Duration::from_secs(90);
    let in_kafka = || -> HashSet<String> {
        read_all(&bootstrap, topics.name(Topic::Raw))
            .iter()
            .map(|r| id_of(r.key_str()))
            .collect()
    };
    let mut got = in_kafka();
    while !expected.is_subset(&got) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        got = in_kafka();
    }
    let missing: Vec<_> = expected.difference(&got).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} intact acknowledged deliveries missing from Kafka, e.g. {missing:?}",
        expected.difference(&got).count()
    );

    let answer = reqwest::Client::new()
        .post(gw.url("/v1/onoff/sms"))
        .body(sms("after-restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK, "it serves");

    let logs = gw.logs();
    let admin = {
        let lines = logs.lock().unwrap();
        let ready: serde_json::Value = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "gateway listening")
            .expect("ready line");
        format!("http://127.0.0.1:{}", ready["admin_port"])
    };
    let lost = metric(&admin, "callstream_gateway_spool_lost_deliveries_total").await;
    // The torn tail of the segment being written at the kill (never
    // acknowledged) may count too.
    assert!(
        lost >= hit.len() as f64,
        "lost {lost} < {} deliveries hit",
        hit.len()
    );
    assert!(metric(&admin, "callstream_gateway_spool_quarantined_bytes_total").await >= 4096.0);
    assert_eq!(
        metric(&admin, "callstream_gateway_spool_unreadable_entries_total").await,
        1.0
    );
    let logged_lost: u64 = logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("spool segment is damaged"))
        })
        .map(|l| l["lost_deliveries"].as_u64().unwrap())
        .sum();
    assert_eq!(
        logged_lost as f64, lost,
        "the log says what the metric says"
    );
    let quarantine = spool.path().join("quarantine");
    assert!(
        fs::read_dir(&quarantine).unwrap().count() >= 4,
        "three damaged ranges and the unreadable entry are in {quarantine:?}"
    );
    assert!(gw.terminate().success());
    println!(
        "spool damage test: {} acknowledged, {} hit by the damage, {} replayed, {lost} counted lost",
        acked.len(),
        hit.len(),
        expected.len()
    );
}
