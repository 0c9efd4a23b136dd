//! Fault tests: a Kafka outage under load, kill -9 of the gateway process
//! under load (with and without Kafka), and overload. Each is bounded in
//! requests and time. The figures they print are quoted in docs/operations.md.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_under_steady_load_loses_nothing_and_keeps_key_order() {
    const KEYS: usize = 20;
    const VERSIONS: usize = 12;
    let gw = spawn_gateway(|f| f.merge(("kafka.publish_timeout_ms", 400))).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let (client, url, done) = (gw.client.clone(), gw.url("/v1/onoff/cdr"), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            // One key's versions are sent one after another: that is the
            // order Kafka must keep.
            for v in 0..VERSIONS {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(cdr(&format!("call-{k}"), v))
                    .send()
                    .await
                    .expect("answered");
                statuses.push(resp.status());
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            statuses
        }));
    }
    let total = KEYS * VERSIONS;
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            let start = Instant::now();
            while done.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(total / 4).await;
    gw.broker.cluster().broker_down(-1).unwrap();
    wait_for(total * 3 / 4).await;
    gw.broker.cluster().broker_up(-1).unwrap();

    let mut answered = 0;
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
        answered += statuses.len();
    }
    assert_eq!(answered, total);
    let spooled = gw
        .metric("callstream_gateway_spool_appended_records_total")
        .await;
    assert!(
        spooled > 0.0,
        "the outage must have sent deliveries to the spool"
    );

    // Read until every acknowledged version is there (duplicates allowed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    loop {
        let mut raw = gw.read_all(Topic::Raw);
        raw.sort_by_key(|r| (r.partition, r.offset));
        by_key.clear();
        for r in &raw {
            by_key
                .entry(r.key_str().to_string())
                .or_default()
                .push(version_of(&r.payload));
        }
        let complete = by_key.len() == KEYS
            && by_key
                .values()
                .all(|vs| (0..VERSIONS).all(|v| vs.contains(&v)));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, versions) in &by_key {
        let mut first_seen = Vec::new();
        for v in versions {
            if !first_seen.contains(v) {
                first_seen.push(*v);
            }
        }
        assert_eq!(
            first_seen,
            (0..VERSIONS).collect::<Vec<_>>(),
            "{key}: a version is missing or overtook an older one: {versions:?}"
        );
        assert_eq!(
            versions.last(),
            Some(&(VERSIONS - 1)),
            "{key}: the newest version must be last: {versions:?}"
        );
    }
    println!(
        "outage test: {total} requests answered 200, {spooled} spooled, 0 lost, per-key order kept"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_never_loses_an_acknowledged_delivery() {
    const ROUNDS: usize = 6;
    let (broker, _spool, mut env) = broker_and_spool();
    env.push(("CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS", "400".to_string()));
    let mut acked = HashSet::new();
    let mut per_round = Vec::new();
    for round in 0..ROUNDS {
        let kafka_up = round % 2 == 0;
        if kafka_up {
            broker.cluster().broker_up(-1).unwrap();
        } else {
            broker.cluster().broker_down(-1).unwrap();
        }
        let gw = ServiceProcess::gateway(BINARY, &env);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(
            gw.url("/v1/onoff/sms"),
            format!("r{round}"),
            8,
            stop.clone(),
        ));
        // Kill at a different point of each round, mid-load.
        // The first deliveries of a Kafka-down round wait out the publish
        // deadline (plus librdkafka's ~1 s timeout scan) before spooling.
        tokio::time::sleep(Duration::from_millis(2_000 + 200 * round as u64)).await;
        gw.kill9();
        stop.store(true, Ordering::SeqCst);
        let got = load.await.unwrap();
        per_round.push((kafka_up, got.len()));
        acked.extend(got);
    }
    assert!(
        per_round.iter().all(|(_, n)| *n > 0),
        "every round acknowledged something: {per_round:?}"
    );

    // Restart with Kafka up: whatever is still spooled is replayed.
    restart_until_all_in_kafka(&broker, &env, &acked).await;
    println!(
        "kill -9 test: {ROUNDS} rounds (kafka_up, acked) {per_round:?}: {} acknowledged, all in Kafka, 0 lost",
        acked.len()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_503_quickly_and_memory_stays_bounded() {
    const REQUESTS: usize = 2_000;
    const LIMIT: usize = 32;
    // A slow broker keeps requests in flight long enough to hit the limit.
    let (broker, _spool, gw) =
        slow_broker_and_gateway(200, &[("CALLSTREAM_MAX_IN_FLIGHT", LIMIT.to_string())]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = gw.url("/v1/onoff/sms");
    let started = Instant::now();
    let answers = join_all((0..REQUESTS).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(&url)
                .body(sms(&format!("ov-{i}")))
                .send()
                .await
                .expect("answered");
            let retry_after = resp.headers().contains_key("retry-after");
            (resp.status(), retry_after, i)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for (status, retry_after, _) in &answers {
        *counts.entry(status.as_u16()).or_default() += 1;
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "503 carries Retry-After");
        }
    }
    assert!(
        counts.keys().all(|s| *s == 200 || *s == 503),
        "only 200 or 503: {counts:?}"
    );
    assert!(
        counts.get(&503).is_some_and(|n| *n > 0),
        "the limit refused some: {counts:?}"
    );
    assert!(counts.get(&200).is_some_and(|n| *n >= LIMIT), "{counts:?}");
    let healthy = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(
        healthy.status(),
        StatusCode::OK,
        "still alive after the burst"
    );
    let peak_mib = gw.peak_rss_kib() / 1024;
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB under overload");
    let acked: HashSet<String> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .map(|(_, _, i)| format!("ov-{i}"))
        .collect();
    let in_kafka = ids_in_raw_topic(&broker.bootstrap_servers());
    assert!(acked.is_subset(&in_kafka), "every 200 is in Kafka");
    println!(
        "overload test: {REQUESTS} concurrent requests, limit {LIMIT}, answered in {elapsed:?}: {counts:?}, peak RSS {peak_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_durably() {
    const REQUESTS: usize = 20;
    // Slow acknowledgements: the requests are still waiting when SIGTERM lands.
    let (broker, _spool, gw) = slow_broker_and_gateway(300, &[]);
    let client = reqwest::Client::new();
    let url = gw.url("/v1/onoff/sms");
    let requests = tokio::spawn(join_all((0..REQUESTS).map(move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(&url)
                .body(sms(&format!("term-{i}")))
                .send()
                .await
                .map(|r| r.status())
        }
    })));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let answers = requests.await.unwrap();
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(s) if *s == StatusCode::OK)),
        "every in-flight request got its 200: {answers:?}"
    );
    let in_kafka = ids_in_raw_topic(&broker.bootstrap_servers());
    for i in 0..REQUESTS {
        assert!(
            in_kafka.contains(&format!("term-{i}")),
            "term-{i} is durable"
        );
    }
}

/// Docker's default grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// With Kafka unreachable, SIGTERM ends the gateway within docker's grace
/// period, whatever the spool drainer and the in-flight requests are doing
/// (deliveries still arriving, spooled segments being retried), and
/// nothing acknowledged is lost: it stays in the spool for the next start.
/// Several runs, since where SIGTERM lands in the drainer's cycle of
/// attempts and pauses varies; the spool carries over from run to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_kafka_unreachable_exits_promptly_and_keeps_the_spool() {
    const RUNS: usize = 6;
    // Production defaults otherwise (publish_timeout_ms, shutdown_timeout_secs).
    let (broker, _spool, env) = broker_and_spool();
    let client = reqwest::Client::new();
    let mut acked = HashSet::new();
    let mut exits = Vec::new();
    for run in 0..RUNS {
        broker.cluster().broker_up(-1).unwrap();
        let gw = ServiceProcess::gateway(BINARY, &env);
        for n in 0..5 {
            let id = format!("up{run}-{n}");
            let answer = client
                .post(gw.url("/v1/onoff/sms"))
                .body(sms(&id))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{id} with Kafka up");
            acked.insert(id);
        }
        broker.cluster().broker_down(-1).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(
            gw.url("/v1/onoff/sms"),
            format!("down{run}"),
            4,
            stop.clone(),
        ));
        // Until deliveries are being spooled, then a little longer each
        // run, so SIGTERM lands at a different point of the drainer's cycle.
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric_value(
            &gw.metrics().await,
            "callstream_gateway_spool_appended_records_total",
        )
        .is_none_or(|n| n == 0.0)
        {
            assert!(
                Instant::now() < deadline,
                "run {run}: nothing spooled with Kafka down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(700 * run as u64)).await;
        let logs = gw.logs();
        let (status, took) =
            tokio::task::spawn_blocking(move || gw.terminate_within(STOP_GRACE * 2))
                .await
                .unwrap();
        stop.store(true, Ordering::SeqCst);
        let got = load.await.unwrap();
        exits.push(took);
        assert!(
            status.is_some_and(|s| s.success()),
            "run {run}: no clean exit within {:?}: {status:?}",
            STOP_GRACE * 2
        );
        let last_lines: Vec<String> = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("librdkafka"))
            .rev()
            .take(12)
            .cloned()
            .collect();
        assert!(
            took < STOP_GRACE,
            "run {run}: the exit took {took:?} with Kafka unreachable (runs so far: {exits:?}); its last lines, newest first: {last_lines:#?}"
        );
        assert!(
            !got.is_empty(),
            "run {run}: nothing acknowledged with Kafka down"
        );
        acked.extend(got);
    }

    // Kafka back: the next start replays every acknowledged delivery.
    restart_until_all_in_kafka(&broker, &env, &acked).await;
    println!(
        "prompt stop test: {RUNS} SIGTERMs with Kafka unreachable, exits took {exits:?}; {} acknowledged, all in Kafka",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_logs_even_at_debug_level() {
    const KEY: &str = "k-7f3e-never-log-me";
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::start(
        BINARY,
        &[
            ("GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
            ("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
            ("RUST_LOG", "debug".to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
            ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
            ("CALLSTREAM_SOURCES__ONOFF__API_KEYS", format!("[{KEY}]")),
            ("CALLSTREAM_SOURCES__XARIOS__API_KEYS", format!("[{KEY}]")),
        ],
        callstream_testkit::GATEWAY_READY,
    );
    let client = reqwest::Client::new();
    let sms = sms("secret-test");
    let sent = [
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("authorization", format!("x-api-key {KEY}"))
            .body(sms.clone()),
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("x-api-key", KEY)
            .body(sms.clone()),
        client
            .post(gw.url(&format!("/v1/onoff/sms?token={KEY}")))
            .body(sms.clone()),
        client.get(gw.url(&format!("/v1/xarios/postcall?token={KEY}&cdr.id=1"))),
        client
            .post(gw.url(&format!("/v1/onoff/sms?token={KEY}x")))
            .body(sms.clone()),
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("authorization", format!("Bearer {KEY}-wrong"))
            .body(sms),
    ];
    let mut statuses = Vec::new();
    for request in sent {
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 401, 401]);
    let metrics = gw.metrics().await;
    let logs = gw.logs();
    assert!(gw.terminate().success());
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains("/v1/onoff/sms")),
        "requests were logged"
    );
    for line in logs.iter().chain(std::iter::once(&metrics)) {
        assert!(!line.contains(KEY), "key leaked: {line}");
    }
}

/// Threads of process `pid` whose name starts with `prefix` (Linux keeps 15
/// bytes of a thread's name; actix-web's HTTP workers are
/// `actix-rt|system:0|arbiter:N`).
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_http_worker_threads_and_defaults_to_one_per_cpu() {
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = |workers: Option<usize>| {
        let mut env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
            ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
            // No admin listener: its own worker thread would be counted.
            ("GATEWAY_ADMIN_LISTEN", String::new()),
        ];
        if let Some(n) = workers {
            env.push(("CALLSTREAM_WORKERS", n.to_string()));
        }
        env
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (workers, expected) in [(Some(cpus + 1), cpus + 1), (Some(0), cpus), (None, cpus)] {
        let gw = ServiceProcess::gateway(BINARY, &env(workers));
        let answer = reqwest::Client::new()
            .post(gw.url("/v1/onoff/sms"))
            .body(sms(&format!("workers-{workers:?}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "workers = {workers:?}");
        assert_eq!(
            threads_named(gw.pid(), "actix-rt|system"),
            expected,
            "workers = {workers:?}"
        );
        assert!(gw.terminate().success());
    }
}

/// Requests the HTTP server cannot parse are answered (400, 431) and
/// closed before they reach the gateway, and anyone can send them: they
/// must not be logged at ERROR, or anyone could flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_not_logged_as_errors() {
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::gateway(
        BINARY,
        &[("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string())],
    );
    let addr = format!("127.0.0.1:{}", gw.port);
    let too_large = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let malformed = [
        ("GARBAGE\r\n\r\n".to_string(), "HTTP/1.1 400"),
        (
            "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
        ("GET /healthz HTTP/9.9\r\n\r\n".to_string(), "HTTP/1.1 400"),
        (too_large, "HTTP/1.1 431"),
    ];
    for _ in 0..10 {
        for (request, expected) in &malformed {
            let (answer, _) =
                callstream_testkit::raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5))
                    .await;
            assert!(answer.starts_with(expected), "{answer:?}");
        }
    }
    let logs = gw.logs();
    assert!(gw.terminate().success());
    // Every connection has ended once shutdown completed; wait for its line.
    let complete = callstream_testkit::eventually(Duration::from_secs(10), || {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("shutdown complete"))
    })
    .await;
    assert!(complete, "no shutdown line");
    let errors: Vec<String> = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
