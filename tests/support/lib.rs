//! Test kit for the end-to-end tests: a real gateway on port 0 against a
//! real Kafka-protocol broker (librdkafka's mock cluster, in-process), and a
//! real Kafka consumer to read what was published. Each test gets its own
//! broker, so topic names never collide between tests.

use std::time::{Duration, Instant};

pub mod expected;
pub mod postgres;
pub mod sinks;
pub mod unique;

use callstream_gateway::startup::ServerHandle;
use figment::Figment;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use callstream_gateway::config::Settings;
use callstream_gateway::startup::Application;
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_schemas::Topic;

pub const PARTITIONS: i32 = 3;

/// A running gateway and the broker it publishes to.
pub struct TestGateway {
    pub address: String,
    /// Where `/metrics` is (with `/healthz` and `/readyz`): `address` when
    /// `admin_listen` is empty.
    pub admin_address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub broker: EmbeddedBroker,
    /// The spool directory, removed when the test ends.
    pub spool_dir: tempfile::TempDir,
    handle: ServerHandle,
}

/// Starts a broker and a gateway on 127.0.0.1:0; `configure` adds settings
/// on top of the defaults (e.g. `|f| f.merge(("sources.onoff.api_keys", ["k"]))`).
pub async fn spawn_gateway(configure: impl FnOnce(Figment) -> Figment) -> TestGateway {
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let figment = configure(
        Settings::defaults()
            .merge(("listen", "127.0.0.1:0"))
            .merge(("admin_listen", "127.0.0.1:0"))
            .merge(("spool.dir", spool_dir.path())),
    );
    let mut settings = Settings::from_figment(figment).expect("test settings are valid");
    let broker = EmbeddedBroker::start(PARTITIONS, &settings.topics).expect("mock broker starts");
    settings.kafka.bootstrap_servers = broker.bootstrap_servers();
    let app = Application::build(&settings).expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestGateway {
        address,
        admin_address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client builds"),
        settings,
        broker,
        spool_dir,
        handle,
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).expect("keys are UTF-8")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("payload is JSON")
    }
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Posts a JSON delivery as a provider would (with its API key, if
    /// any) and requires a 200: durable, published or dead-lettered.
    pub async fn deliver(&self, path: &str, api_key: Option<&str>, body: &str) {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = api_key {
            request = request.header("authorization", format!("x-api-key {key}"));
        }
        let resp = request.send().await.expect("gateway answers");
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "{path}: {body}");
    }

    /// `path` on the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin_address, path)
    }

    pub fn topic(&self, topic: Topic) -> String {
        self.settings.topics.name(topic).to_string()
    }

    /// Number of records in a topic (sum of high watermarks). Exact, because
    /// the gateway answers only after Kafka acknowledged.
    pub fn count(&self, topic: Topic) -> i64 {
        count_records(&self.broker.bootstrap_servers(), &self.topic(topic))
    }

    /// Every record in a topic now (up to its high watermarks), duplicates included.
    pub fn read_all(&self, topic: Topic) -> Vec<Record> {
        read_all(&self.broker.bootstrap_servers(), &self.topic(topic))
    }

    /// Reads every record of a topic, waiting until at least `expected` are there.
    pub fn read(&self, topic: Topic, expected: usize) -> Vec<Record> {
        read_topic(
            &self.broker.bootstrap_servers(),
            &self.topic(topic),
            expected,
            Duration::from_secs(20),
        )
    }

    /// Value of an unlabelled metric, e.g. `callstream_gateway_spool_records`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// The value of the series `name` (with its labels, as exposed:
/// `m{topic="raw"}`) in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer builds")
}

pub fn count_records(bootstrap: &str, topic: &str) -> i64 {
    let consumer = consumer(bootstrap);
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .sum()
}

/// Every record in `topic` now, up to its high watermarks.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<Record> {
    let total = count_records(bootstrap, topic) as usize;
    let records = read_topic(bootstrap, topic, total, Duration::from_secs(60));
    assert_eq!(records.len(), total, "could not read all of {topic}");
    records
}

/// Every committed record of a transactional topic, read to the end of
/// each partition. (Watermarks count aborted records and commit markers,
/// so they cannot tell how many committed records there are.)
pub fn read_committed_to_end(bootstrap: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer builds");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let start = Instant::now();
    while at_end.len() < PARTITIONS as usize {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "reading {topic} to its end took over 60 s"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => out.push(record_of(&msg)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

/// Polls `check` every 50 ms until it holds or `deadline` passes.
pub async fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// Reads a topic from the beginning until `expected` records arrived or the
/// deadline passed; returns what it has (callers assert on the count).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    deadline: Duration,
) -> Vec<Record> {
    let consumer = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < expected && start.elapsed() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => out.push(record_of(&msg)),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

/// The published JSON Schema of `callstream.events.v1`, compiled.
pub fn event_schema() -> jsonschema::Validator {
    let text = include_str!("../../schemas/json/callstream.events.v1.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).expect("schema file is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Panics with every violation if `event` does not match the schema.
pub fn assert_valid_event(event: &serde_json::Value) {
    let schema = event_schema();
    let errors: Vec<String> = schema
        .iter_errors(event)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "event violates the schema: {errors:?}\n{event:#}"
    );
}

/// Opens a raw TCP connection to `addr` (`127.0.0.1:port`), writes `head`,
/// and returns what the server answers within `wait` (or an empty string if
/// it just closes) and how long that took.
pub async fn raw_exchange(addr: &str, head: &[u8], wait: Duration) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A server may answer and close before it has read everything.
    let _ = stream.write_all(head).await;
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).to_string(),
        started.elapsed(),
    )
}

/// One of our binaries running as a child process, for crash tests.
pub struct ServiceProcess {
    child: std::process::Child,
    /// The port it reported in its ready log line.
    pub port: u16,
    /// The `admin_port` of its ready log line, or `port` when it has none.
    pub admin_port: u16,
    logs: LogLines,
}

/// Every line a child wrote to stdout; still readable after it exited.
pub type LogLines = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The JSON log line the gateway writes once it listens (with `port`).
pub const GATEWAY_READY: &str = "gateway listening";
/// The JSON log line a consumer writes once it runs (with its metrics `port`).
pub const CONSUMER_READY: &str = "consumer running";

impl ServiceProcess {
    /// Starts the gateway binary on 127.0.0.1:0, its `/metrics` on another
    /// 127.0.0.1:0, with `env`.
    pub fn gateway(binary: &str, env: &[(&str, String)]) -> ServiceProcess {
        let mut all = vec![
            ("GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
            ("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
        ];
        all.extend(env.iter().cloned());
        Self::start(binary, &all, GATEWAY_READY)
    }

    /// Starts a consumer binary with its metrics on 127.0.0.1:0 and `env`.
    pub fn consumer(binary: &str, env: &[(&str, String)]) -> ServiceProcess {
        let mut all = vec![("METRICS_LISTEN", "127.0.0.1:0".to_string())];
        all.extend(env.iter().cloned());
        Self::start(binary, &all, CONSUMER_READY)
    }

    /// Starts `binary` with `env` on top of a clean, JSON-logging
    /// environment, and waits for the JSON log line whose message is
    /// `ready`, taking the port from its `port` field.
    pub fn start(binary: &str, env: &[(&str, String)], ready: &str) -> ServiceProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CALLSTREAM_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_string();
        let logs = LogLines::default();
        let collected = logs.clone();
        // Keep draining stdout for the child's whole life, or it blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                collected.lock().expect("log lock").push(line.clone());
                let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                // Problems of a child show up in the failing test's output.
                if log["level"] == "WARN" || log["level"] == "ERROR" {
                    eprintln!("[child {}] {line}", std::process::id());
                }
                if log["message"] == ready.as_str() {
                    let port = log["port"].as_u64().expect("port in the ready line");
                    let admin_port = log["admin_port"].as_u64().unwrap_or(port);
                    let _ = tx.send((port as u16, admin_port as u16));
                }
            }
        });
        let (port, admin_port) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{binary} did not log its ready line within 30 s"));
        ServiceProcess {
            child,
            port,
            admin_port,
            logs,
        }
    }

    /// Its stdout lines, as a handle that outlives the process.
    pub fn logs(&self) -> LogLines {
        self.logs.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// `path` on the admin port (the gateway's `/metrics`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid())
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().expect("process exits")
    }

    /// SIGTERM, then wait at most `limit` for the exit: its status (`None`
    /// if it was still running, and it is then killed) and how long the
    /// exit took.
    pub fn terminate_within(
        mut self,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration) {
        let sent = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        while sent.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("status") {
                return (Some(status), sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, sent.elapsed())
    }
}

/// Peak resident set size so far of process `pid`, in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record_of(msg: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().unwrap_or_default().to_vec(),
        payload: msg.payload().unwrap_or_default().to_vec(),
        headers: msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A normalized Onoff call event as the gateway publishes it: (key, JSON).
/// `notes` changes the content (an update); `received_at_ms` the event time.
pub fn onoff_call_event(id: &str, notes: &str, received_at_ms: i64) -> (String, Vec<u8>) {
    use callstream_schemas::{providers::onoff::Onoff, Context, Provider, RawRequest};
    let body = format!(
        r#"{{"id":"{id}","eventName":"CDR","onoffUserName":"Agent","onoffUserNumber":"+3312345","externalNumber":"+4479000","callStarted":"2024-05-20T14:30:00Z","callEnded":"2024-05-20T14:32:00Z","callDuration":120,"callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"{notes}"}}"#
    );
    let received_at = chrono::DateTime::from_timestamp_millis(received_at_ms).expect("valid time");
    let event = Onoff
        .normalize(
            &RawRequest {
                method: "POST",
                route: "cdr",
                query: "",
                content_type: Some("application/json"),
                body: body.as_bytes(),
            },
            &Context {
                default_tenant: "default",
                received_at,
                request_id: "test",
                raw_topic: Topic::Raw.default_name(),
            },
        )
        .expect("fixture normalizes");
    let (event, json) = event.into_parts();
    (event.identity, json)
}

/// Produces `(key, value)` records to `topic` and waits for every ack.
pub async fn produce(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer builds");
    let sends = records.iter().map(|(k, v)| {
        producer.send(
            FutureRecord::to(topic)
                .key(k.as_str())
                .payload(v.as_slice()),
            Duration::from_secs(10),
        )
    });
    for result in futures_util::future::join_all(sends).await {
        result.expect("produced");
    }
}
