//! callstream-recordings against a real Kafka-protocol broker and a real
//! HTTP server on 127.0.0.1 standing in for the providers' media servers:
//! it serves audio, or answers 404 (not ready yet), 403, an oversized body,
//! or nothing before the timeout, as each test scripts it per path.
//!
//! One test binary; each module holds one concern, and the media server,
//! the broker and the archiver they share are here.

mod archive;
mod restarts;
mod templates;

use callstream_consumers::config::Settings;
use callstream_consumers::recordings::{RecordingsConsumer, RecordingsError};
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_kafka::TopicNames;
use callstream_schemas::raw::{
    H_RECORDINGS_ATTEMPTS as ATTEMPTS_HEADER, H_RECORDINGS_ERROR as ERROR_HEADER,
};
use callstream_schemas::{Context, Event, ProviderId, RawRequest, Topic};
use callstream_testkit::sinks::produce_events;
use callstream_testkit::{count_records, eventually, read_all, Record, PARTITIONS};
use chrono::Utc;
use figment::Figment;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);

// ---- a media server stand-in ----------------------------------------------

/// How the fake media server answers one request.
#[derive(Debug, Clone)]
enum Reply {
    /// 200 with this body and `Content-Type`, and a `Content-Length`.
    Audio(Vec<u8>, &'static str),
    /// 200 without `Content-Length`: the body ends when the connection closes.
    Unsized(Vec<u8>),
    Status(u16),
    /// Nothing for this long (past the client's timeout), then audio.
    Hang(Duration, Vec<u8>),
}

#[derive(Default)]
struct MediaState {
    /// Connections accepted, whether or not a request followed.
    connections: usize,
    /// Request targets (path and query) in arrival order, with when.
    requests: Vec<(String, Instant)>,
    /// Replies per path, used up in order; the last one then repeats.
    scripts: HashMap<String, VecDeque<Reply>>,
}

#[derive(Clone)]
struct MediaServer {
    port: u16,
    state: Arc<Mutex<MediaState>>,
}

impl MediaServer {
    async fn start() -> MediaServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(MediaState::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        MediaServer { port, state }
    }

    fn url(&self, target: &str) -> String {
        format!("http://127.0.0.1:{}{target}", self.port)
    }

    fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        let replies = replies.into_iter().collect();
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(path.into(), replies);
    }

    /// Request targets (path and query) for `path`.
    fn requests(&self, path: &str) -> Vec<String> {
        self.request_times(path)
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    fn request_times(&self, path: &str) -> Vec<(String, Instant)> {
        let state = self.state.lock().unwrap();
        let ours = |t: &String| t.split('?').next() == Some(path);
        state
            .requests
            .iter()
            .filter(|(t, _)| ours(t))
            .cloned()
            .collect()
    }

    fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<MediaState>>) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let target = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
    }
    let reply = {
        let mut state = state.lock().unwrap();
        state.requests.push((target.clone(), Instant::now()));
        let path = target.split('?').next().unwrap_or_default();
        match state.scripts.get_mut(path) {
            Some(script) if script.len() > 1 => script.pop_front(),
            Some(script) => script.front().cloned(),
            None => None,
        }
        .unwrap_or(Reply::Status(404))
    };
    let (head, body) = match reply {
        Reply::Audio(body, content_type) => (
            format!(
                "200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}",
                body.len()
            ),
            body,
        ),
        Reply::Unsized(body) => ("200 OK\r\ncontent-type: audio/mpeg".to_string(), body),
        Reply::Status(status) => (format!("{status} X\r\ncontent-length: 2"), b"no".to_vec()),
        Reply::Hang(delay, body) => {
            tokio::time::sleep(delay).await;
            (format!("200 OK\r\ncontent-length: {}", body.len()), body)
        }
    };
    let head = format!("HTTP/1.1 {head}\r\nconnection: close\r\n\r\n");
    let out = stream.get_mut();
    let _ = out.write_all(head.as_bytes()).await;
    let _ = out.write_all(&body).await;
    let _ = out.shutdown().await;
}

/// Deterministic test audio, `len` bytes, different per `seed`.
fn audio(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- events, Kafka and the archiver -----------------------------------------

fn normalize(provider: ProviderId, route: &str, body: &Value) -> Event {
    let providers = callstream_schemas::providers::all();
    let normalizer = providers.iter().find(|p| p.id() == provider).unwrap();
    let body = body.to_string();
    let ctx = Context {
        default_tenant: "acme",
        received_at: Utc::now(),
        request_id: "test-request",
        raw_topic: Topic::Raw.default_name(),
    };
    let request = RawRequest {
        method: "POST",
        route,
        query: "",
        content_type: Some("application/json"),
        body: body.as_bytes(),
    };
    normalizer
        .normalize(&request, &ctx)
        .expect("normalizes")
        .into_event()
}

/// An Onoff call log with a recording and/or voicemail link.
fn onoff(id: &str, recording: Option<&str>, voicemail: Option<&str>, notes: &str) -> Event {
    let mut body = json!({
        "id": id, "eventName": "RECORDING", "onoffUserNumber": "+34910000001",
        "externalNumber": "+34600000002", "callStarted": "2024-03-05T11:00:00Z",
        "callDuration": 300, "callDirection": "OUTBOUND", "callStatus": "ANSWERED",
        "callNotes": notes,
    });
    if let Some(url) = recording {
        body["callRecordingUrl"] = json!(url);
    }
    if let Some(url) = voicemail {
        body["voicemailUrl"] = json!(url);
    }
    normalize(ProviderId::Onoff, "cdr", &body)
}

/// A Xarios post-call webhook of tenant `tenant-1` with recording ids.
fn xarios(session: &str, recording_ids: &[&str]) -> Event {
    let body = json!({"triggerId": "t-1", "tenantId": "tenant-1",
                      "cdr": {"id": session, "start": "2024-05-29T09:37:35+01:00", "ans": 1,
                              "recordingIds": recording_ids}});
    normalize(ProviderId::Xarios, "postcall", &body)
}

fn topic(t: Topic) -> &'static str {
    t.default_name()
}

struct Kafka {
    broker: EmbeddedBroker,
}

impl Kafka {
    fn start() -> Kafka {
        let broker = EmbeddedBroker::start(PARTITIONS, &TopicNames::default()).expect("broker");
        Kafka { broker }
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap_servers()
    }

    async fn publish(&self, events: &[(&Event, i32)]) {
        let events: Vec<(Event, i32)> = events.iter().map(|(e, r)| ((*e).clone(), *r)).collect();
        produce_events(&self.bootstrap(), &events, None).await;
    }

    fn count(&self, t: Topic) -> i64 {
        count_records(&self.bootstrap(), topic(t))
    }

    /// Waits until `t` holds at least `n` records.
    async fn wait_for(&self, t: Topic, n: i64, what: &str) {
        wait(what, || self.count(t) >= n).await;
    }

    fn read(&self, t: Topic) -> Vec<Record> {
        let mut records = read_all(&self.bootstrap(), topic(t));
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }
}

/// Settings for a test: its own group and store directory, loopback
/// allowed, short back-offs; `configure` adds more.
fn settings(kafka: &Kafka, dir: &Path, configure: impl FnOnce(Figment) -> Figment) -> Settings {
    let figment = Settings::defaults()
        .merge(("kafka.bootstrap_servers", kafka.bootstrap()))
        .merge((
            "kafka.properties",
            BTreeMap::from([
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ]),
        ))
        .merge((
            "recordings.group_id",
            format!("rec-{}", uuid::Uuid::new_v4()),
        ))
        .merge(("recordings.store.dir", dir))
        .merge(("recordings.allow_private_targets", true))
        .merge(("recordings.timeout_ms", 2000))
        .merge(("recordings.max_attempts", 4))
        .merge(("recordings.initial_backoff_ms", 20))
        .merge(("recordings.max_backoff_ms", 100));
    Settings::from_figment(configure(figment)).expect("valid settings")
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), RecordingsError>>,
    registry: prometheus::Registry,
}

fn start(settings: &Settings) -> Running {
    let registry = prometheus::Registry::new();
    let archiver = RecordingsConsumer::build(
        &settings.recordings,
        &settings.kafka,
        &settings.topics,
        &registry,
    )
    .expect("archiver builds");
    let (stop, stopped) = watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(archiver.run(stopped)),
        registry,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().expect("ran without error");
    }

    /// A sample's value, e.g. `("callstream_recordings_failures_total", r#"reason="refused""#)`.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        let prefix = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix}in\n{text}"))
    }

    /// `callstream_recordings_media_total` of recordings with `outcome`.
    fn recordings(&self, outcome: &str) -> f64 {
        let labels = format!(r#"media="recording",outcome="{outcome}""#);
        self.metric("callstream_recordings_media_total", &labels)
    }
}

async fn wait(what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(DEADLINE, check).await,
        "timed out waiting: {what}"
    );
}

/// The published JSON Schema of `callstream.recordings.v1`.
fn assert_valid_recording(value: &Value) {
    let text = include_str!("../../schemas/json/callstream.recordings.v1.schema.json");
    let schema: Value = serde_json::from_str(text).expect("schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{value:#}");
}

/// SHA-256 by coreutils, independent of the code under test.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A broker, a media server, and a store directory for one test.
async fn setup() -> (Kafka, MediaServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (Kafka::start(), MediaServer::start().await, dir)
}

/// The file a recordings event's `location` names.
fn file_of(value: &Value) -> PathBuf {
    let location = value["location"].as_str().expect("a location");
    reqwest::Url::parse(location)
        .expect("location is a URL")
        .to_file_path()
        .expect("a file:// location")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
