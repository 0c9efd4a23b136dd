//! callstream-recordings against a real Kafka-protocol broker and a real
//! HTTP server on 127.0.0.1 standing in for the providers' media servers:
//! it serves audio, or answers 404 (not ready yet), 403, an oversized body,
//! or nothing before the timeout, as each test scripts it per path.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use figment::Figment;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use callstream_consumers::config::Settings;
use callstream_consumers::recordings::{
    RecordingsConsumer, RecordingsError, ATTEMPTS_HEADER, ERROR_HEADER,
};
use callstream_gateway::config::TopicNames;
use callstream_gateway::embedded::EmbeddedBroker;
use callstream_schemas::{Context, Event, ProviderId, RawRequest, Topic};
use callstream_testkit::sinks::produce_events;
use callstream_testkit::{count_records, eventually, read_all, Record, PARTITIONS};

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
    let archiver = RecordingsConsumer::build(settings, &registry).expect("archiver builds");
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
    let text = include_str!("../schemas/json/callstream.recordings.v1.schema.json");
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

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onoff_recording_and_voicemail_are_archived_with_their_hash() {
    let (kafka, media, dir) = setup().await;
    let (rec, vm) = (audio(1, 300_000), audio(2, 4_321));
    media.script("/r/1.mp3", [Reply::Audio(rec.clone(), "audio/mpeg")]);
    media.script("/v/1", [Reply::Audio(vm.clone(), "audio/wav; codecs=1")]);
    let rec_url = media.url("/r/1.mp3?expires=1709640000&sig=abc123");
    let event = onoff("call-1", Some(&rec_url), Some(&media.url("/v/1")), "");
    kafka.publish(&[(&event, 1)]).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| f));
    kafka
        .wait_for(Topic::Recordings, 2, "two recordings events")
        .await;
    assert_eq!(archiver.recordings("archived"), 1.0);
    assert_eq!(
        archiver.metric("callstream_recordings_downloaded_bytes_total", ""),
        (300_000 + 4_321) as f64
    );
    archiver.stop().await;

    assert_eq!(
        media.requests("/r/1.mp3"),
        ["/r/1.mp3?expires=1709640000&sig=abc123"]
    );
    assert_eq!(media.requests("/v/1").len(), 1);
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);
    let records = kafka.read(Topic::Recordings);
    assert_eq!(records.len(), 2);
    for record in &records {
        let value = record.json();
        assert_valid_recording(&value);
        assert_eq!(record.key_str(), event.identity);
        let (served, content_type, ext, source) = match value["media"].as_str().unwrap() {
            "recording" => (
                &rec,
                "audio/mpeg",
                "mp3",
                media.url("/r/1.mp3?expires=REDACTED&sig=REDACTED"),
            ),
            _ => (&vm, "audio/wav", "wav", media.url("/v/1")),
        };
        let file = file_of(&value);
        assert!(
            file.starts_with(dir.path().canonicalize().unwrap()),
            "{file:?}"
        );
        assert!(
            file.to_str().unwrap().contains("/acme/onoff/2024/03/05/"),
            "{file:?}"
        );
        assert_eq!(file.extension().unwrap(), ext);
        assert_eq!(
            &std::fs::read(&file).unwrap(),
            served,
            "stored bytes are the served bytes"
        );
        assert_eq!(value["sha256"], sha256sum(&file));
        assert_eq!(value["size_bytes"], served.len());
        assert_eq!(value["content_type"], content_type);
        assert_eq!(value["source"], json!({"kind": "url", "url": source}));
        assert_eq!(value["event_id"], event.event_id.to_string());
        assert_eq!(
            (value["provider"].as_str(), value["tenant"].as_str()),
            (Some("onoff"), Some("acme"))
        );
        assert_eq!(
            (value["revision"].as_i64(), value["index"].as_i64()),
            (Some(1), Some(0))
        );
    }
    // Two audio files, two manifests, nothing else (no staging files).
    assert_eq!(files(dir.path()).len(), 4, "{:?}", files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_not_ready_are_polled_then_archived_or_dead_lettered() {
    let (kafka, media, dir) = setup().await;
    let late = audio(3, 1000);
    media.script(
        "/late.mp3",
        [
            Reply::Status(404),
            Reply::Status(404),
            Reply::Status(404),
            Reply::Audio(late.clone(), "audio/mpeg"),
        ],
    );
    media.script("/never.mp3", [Reply::Status(404)]);
    let ready = onoff("late-1", Some(&media.url("/late.mp3")), None, "");
    let never = onoff("never-1", Some(&media.url("/never.mp3")), None, "");
    kafka.publish(&[(&ready, 1), (&never, 1)]).await;

    let window = Duration::from_secs(1);
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 1))
    }));
    wait("one archived, one dead-lettered", || {
        kafka.count(Topic::Recordings) >= 1 && kafka.count(Topic::RecordingsDlq) >= 1
    })
    .await;
    let retries = archiver.metric("callstream_recordings_not_ready_retries_total", "");
    let failed = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="not_ready""#,
    );
    archiver.stop().await;

    assert_eq!(
        media.requests("/late.mp3").len(),
        4,
        "three 404s, then the audio"
    );
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(value["event_id"], ready.event_id.to_string());
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), late);

    let dead = kafka.read(Topic::RecordingsDlq);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key_str(), never.identity);
    assert_eq!(
        letter.payload,
        serde_json::to_vec(&never).unwrap(),
        "the unique record, unchanged"
    );
    assert_eq!(letter.header("cs_revision"), Some("1"));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("recording[0]: HTTP 404: not ready")
    );
    let polls = media.request_times("/never.mp3");
    let attempts: usize = letter.header(ATTEMPTS_HEADER).unwrap().parse().unwrap();
    assert_eq!(attempts, polls.len());
    let span = polls.last().unwrap().1 - polls[0].1;
    assert!(
        span >= window.mul_f64(0.9),
        "polled for {span:?}, the window is {window:?}"
    );
    assert!(
        span < window * 3,
        "polled for {span:?}, far past the window"
    );
    assert!(retries >= (3 + attempts - 1) as f64, "{retries}");
    assert_eq!(failed, 1.0);
}

/// A link that is not ready holds only its own record: the records behind
/// it on its partition are archived meanwhile, but stay uncommitted (the
/// lag counts the waiting record and everything after it); a restart
/// archives the waiting one and finds the others already archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_not_ready_holds_only_its_own_record() {
    let (kafka, media, dir) = setup().await;
    let late = audio(21, 800);
    media.script("/later.mp3", [Reply::Status(404)]);
    let waiting = onoff("later-1", Some(&media.url("/later.mp3")), None, "");
    let mut events = vec![(waiting, 1)];
    for i in 0..3 {
        let path = format!("/ready-{i}.mp3");
        media.script(&path, [Reply::Audio(audio(30 + i, 500), "audio/mpeg")]);
        let url = media.url(&path);
        events.push((onoff(&format!("ready-{i}"), Some(&url), None, ""), 1));
    }
    // One partition, the waiting link first.
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 600))
    });

    let archiver = start(&settings);
    kafka
        .wait_for(
            Topic::Recordings,
            3,
            "the three ready links, behind the waiting one",
        )
        .await;
    // The three can finish before the waiting link's first retry (20 ms).
    wait("the waiting link still polled", || {
        media.requests("/later.mp3").len() >= 2
    })
    .await;
    wait("lag 4: the waiting record and the three after it", || {
        archiver.metric("callstream_recordings_lag_records", "") == 4.0
    })
    .await;
    assert_eq!(
        archiver.metric("callstream_recordings_in_progress_records", ""),
        1.0
    );
    archiver.stop().await;

    media.script("/later.mp3", [Reply::Audio(late.clone(), "audio/mpeg")]);
    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 7, "the late link, and the others again")
        .await;
    wait("lag 0", || {
        archiver.metric("callstream_recordings_lag_records", "") == 0.0
    })
    .await;
    assert_eq!(archiver.recordings("already_archived"), 3.0);
    archiver.stop().await;
    for i in 0..3 {
        let path = format!("/ready-{i}.mp3");
        assert_eq!(media.requests(&path).len(), 1, "{path} downloaded once");
    }
    let archived: Vec<Value> = kafka
        .read(Topic::Recordings)
        .iter()
        .map(Record::json)
        .collect();
    let late_one = archived
        .iter()
        .find(|v| v["identity"] == events[0].0.identity)
        .expect("the late link archived");
    assert_eq!(std::fs::read(file_of(late_one)).unwrap(), late);
}

/// At most `concurrency` downloads at once; an event's revisions one after
/// the other, never at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_run_side_by_side_up_to_the_limit_and_in_order_per_event() {
    let (kafka, media, dir) = setup().await;
    let slow = Duration::from_millis(1500);
    let mut events = Vec::new();
    for i in 0..3 {
        let path = format!("/slow-{i}.mp3");
        media.script(&path, [Reply::Hang(slow, audio(40 + i, 300))]);
        events.push((
            onoff(&format!("slow-{i}"), Some(&media.url(&path)), None, ""),
            1,
        ));
    }
    // Two revisions of one event, each with a link of its own.
    media.script("/first.mp3", [Reply::Hang(slow, audio(50, 300))]);
    media.script("/second.mp3", [Reply::Audio(audio(51, 300), "audio/mpeg")]);
    let first = onoff("twice", Some(&media.url("/first.mp3")), None, "");
    let second = onoff("twice", Some(&media.url("/second.mp3")), None, "v2");
    assert_eq!(first.identity, second.identity);
    events.push((first, 1));
    events.push((second, 2));
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.concurrency", 2))
            .merge(("recordings.timeout_ms", 10_000))
    }));
    kafka.wait_for(Topic::Recordings, 5, "every link").await;
    archiver.stop().await;

    let mut starts: Vec<Instant> = (0..3)
        .map(|i| media.request_times(&format!("/slow-{i}.mp3"))[0].1)
        .chain([media.request_times("/first.mp3")[0].1])
        .collect();
    starts.sort();
    // Two at once; each of the other two only once one of them ended.
    assert!(starts[1] - starts[0] < slow / 2, "two side by side");
    assert!(starts[2] - starts[0] >= slow.mul_f64(0.9), "a third waited");
    assert!(
        starts[3] - starts[0] >= slow.mul_f64(0.9),
        "a fourth waited"
    );
    let first_at = media.request_times("/first.mp3")[0].1;
    let second_at = media.request_times("/second.mp3")[0].1;
    assert!(
        second_at - first_at >= slow.mul_f64(0.9),
        "revision 2 started only after revision 1 finished"
    );
}

/// Revisions of an event queue behind its first, whose link is not ready;
/// the events after them are archived meanwhile, and the revisions follow
/// in order once the first is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_queued_behind_a_waiting_one_hold_back_no_other_event() {
    let (kafka, media, dir) = setup().await;
    media.script("/held-1.mp3", [Reply::Status(404)]);
    let mut events = Vec::new();
    for revision in 1..=3 {
        let path = format!("/held-{revision}.mp3");
        if revision > 1 {
            media.script(
                &path,
                [Reply::Audio(audio(60 + revision as u8, 400), "audio/mpeg")],
            );
        }
        let notes = format!("v{revision}");
        events.push((
            onoff("held", Some(&media.url(&path)), None, &notes),
            revision,
        ));
    }
    for i in 0..3 {
        let path = format!("/other-{i}.mp3");
        media.script(&path, [Reply::Audio(audio(70 + i, 400), "audio/mpeg")]);
        events.push((
            onoff(&format!("other-{i}"), Some(&media.url(&path)), None, ""),
            1,
        ));
    }
    // One partition: the held event's three revisions, then three others.
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 600))
            .merge(("recordings.concurrency", 2))
    });

    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 3, "the three other events")
        .await;
    for revision in 2..=3 {
        let path = format!("/held-{revision}.mp3");
        assert!(
            media.requests(&path).is_empty(),
            "{path} waits for revision 1"
        );
    }
    wait("lag 6: nothing committed past the held revision", || {
        archiver.metric("callstream_recordings_lag_records", "") == 6.0
    })
    .await;
    assert_eq!(
        archiver.metric("callstream_recordings_in_progress_records", ""),
        1.0
    );
    archiver.stop().await;

    media.script("/held-1.mp3", [Reply::Audio(audio(61, 400), "audio/mpeg")]);
    let archiver = start(&settings);
    kafka
        .wait_for(
            Topic::Recordings,
            9,
            "the three revisions, and the others again",
        )
        .await;
    wait("lag 0", || {
        archiver.metric("callstream_recordings_lag_records", "") == 0.0
    })
    .await;
    archiver.stop().await;
    let times: Vec<Instant> = (1..=3)
        .map(|r| {
            let requests = media.request_times(&format!("/held-{r}.mp3"));
            requests.last().expect("downloaded").1
        })
        .collect();
    assert!(
        times[0] < times[1] && times[1] < times[2],
        "revisions downloaded in order"
    );
    let archived: Vec<Value> = kafka
        .read(Topic::Recordings)
        .iter()
        .map(Record::json)
        .collect();
    let held: Vec<&Value> = archived
        .iter()
        .filter(|v| v["identity"] == events[0].0.identity)
        .collect();
    assert_eq!(held.len(), 3, "each revision's link archived: {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_dead_lettered_and_timeouts_retried() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/declared.mp3",
        [Reply::Audio(audio(4, 50_000), "audio/mpeg")],
    );
    media.script("/streamed.mp3", [Reply::Unsized(audio(5, 50_000))]);
    let slow = audio(6, 2_000);
    media.script(
        "/slow.mp3",
        [
            Reply::Hang(Duration::from_millis(1500), slow.clone()),
            Reply::Audio(slow.clone(), "audio/mpeg"),
        ],
    );
    let declared = onoff("big-1", Some(&media.url("/declared.mp3")), None, "");
    let streamed = onoff("big-2", Some(&media.url("/streamed.mp3")), None, "");
    let timed_out = onoff("slow-1", Some(&media.url("/slow.mp3")), None, "");
    kafka
        .publish(&[(&declared, 1), (&streamed, 1), (&timed_out, 1)])
        .await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.max_bytes", 10_000))
            .merge(("recordings.timeout_ms", 500))
    }));
    wait("two dead letters and one archive", || {
        kafka.count(Topic::RecordingsDlq) >= 2 && kafka.count(Topic::Recordings) >= 1
    })
    .await;
    let retries = archiver.metric("callstream_recordings_retries_total", "");
    archiver.stop().await;

    for (path, event) in [("/declared.mp3", &declared), ("/streamed.mp3", &streamed)] {
        assert_eq!(media.requests(path).len(), 1, "{path}: too large is final");
        let letter = kafka
            .read(Topic::RecordingsDlq)
            .into_iter()
            .find(|r| r.key_str() == event.identity)
            .unwrap_or_else(|| panic!("no dead letter for {path}"));
        assert_eq!(
            letter.header(ERROR_HEADER),
            Some("recording[0]: larger than max_bytes (10000 bytes)")
        );
    }
    // Nothing of the oversized bodies stayed: only the slow one's audio and manifest.
    let stored = files(dir.path());
    assert_eq!(stored.len(), 2, "{stored:?}");
    let id = timed_out.event_id.to_string();
    assert!(
        stored.iter().all(|f| f.to_str().unwrap().contains(&id)),
        "{stored:?}"
    );

    assert_eq!(
        media.requests("/slow.mp3").len(),
        2,
        "timed out once, then served"
    );
    assert!(retries >= 1.0);
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(value["event_id"], id);
    assert_eq!(value["content_type"], "audio/mpeg");
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), slow);
}

/// Shutdown does not wait for a slow download: it is cancelled, its record
/// stays uncommitted, and the restarted archiver downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_download_and_the_restart_finishes_it() {
    let (kafka, media, dir) = setup().await;
    let served = audio(13, 5_000);
    media.script(
        "/stuck.mp3",
        [
            Reply::Hang(Duration::from_secs(30), served.clone()),
            Reply::Audio(served.clone(), "audio/mpeg"),
        ],
    );
    let event = onoff("stuck-1", Some(&media.url("/stuck.mp3")), None, "");
    kafka.publish(&[(&event, 1)]).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.timeout_ms", 60_000))
    });

    let archiver = start(&settings);
    wait("the download to start", || {
        media.requests("/stuck.mp3").len() == 1
    })
    .await;
    let stopping = Instant::now();
    archiver.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(kafka.count(Topic::Recordings), 0);
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);

    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 1, "the restart's archive")
        .await;
    archiver.stop().await;
    assert_eq!(media.requests("/stuck.mp3").len(), 2);
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), served);
    assert_eq!(files(dir.path()).len(), 2, "audio and manifest only");
}

/// One Onoff call: the same revision twice, an update without a new link
/// (revision 2), a new link (revision 3); later a second new link (revision
/// 4) to the restarted archiver, and a replay of everything under a new
/// group. Each link is downloaded exactly once. Published: revision 1
/// twice (identical bytes), revision 3 once, revision 4 once, and in the
/// replay revision 4 once more (identical bytes): five events in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_link_is_downloaded_once_across_resends_restarts_and_replays() {
    let (kafka, media, dir) = setup().await;
    let (a, b, c) = (audio(7, 1_500), audio(8, 2_500), audio(9, 3_500));
    media.script("/a.mp3", [Reply::Audio(a.clone(), "audio/mpeg")]);
    media.script("/b.mp3", [Reply::Audio(b.clone(), "audio/mpeg")]);
    media.script("/c.mp3", [Reply::Audio(c.clone(), "audio/mpeg")]);
    let rev1 = onoff("same-1", Some(&media.url("/a.mp3")), None, "");
    let rev2 = onoff("same-1", Some(&media.url("/a.mp3")), None, "called back");
    let rev3 = onoff("same-1", Some(&media.url("/b.mp3")), None, "called back");
    let rev4 = onoff("same-1", Some(&media.url("/c.mp3")), None, "called back");
    kafka
        .publish(&[(&rev1, 1), (&rev1, 1), (&rev2, 2), (&rev3, 3)])
        .await;

    let first = settings(&kafka, dir.path(), |f| f);
    let archiver = start(&first);
    kafka
        .wait_for(Topic::Recordings, 3, "three recordings events")
        .await;
    let skipped = archiver.recordings("skipped");
    archiver.stop().await;
    assert_eq!(skipped, 1.0, "revision 2 changed no link");

    // Restart in the same group: only the new record is processed.
    let archiver = start(&first);
    kafka.publish(&[(&rev4, 4)]).await;
    kafka
        .wait_for(Topic::Recordings, 4, "the fourth recordings event")
        .await;
    archiver.stop().await;

    // Replay from the beginning in a new group: nothing is downloaded.
    let replay = settings(&kafka, dir.path(), |f| f);
    let archiver = start(&replay);
    kafka
        .wait_for(Topic::Recordings, 5, "the replay's recordings event")
        .await;
    let again = archiver.recordings("already_archived");
    archiver.stop().await;
    assert_eq!(again, 1.0);

    for path in ["/a.mp3", "/b.mp3", "/c.mp3"] {
        assert_eq!(media.requests(path).len(), 1, "{path} downloaded once");
    }
    let records = kafka.read(Topic::Recordings);
    assert_eq!(records.len(), 5);
    let revisions: Vec<i64> = records
        .iter()
        .map(|r| r.json()["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, [1, 1, 3, 4, 4]);
    assert_eq!(
        records[0].payload, records[1].payload,
        "a resend republishes the same bytes"
    );
    assert_eq!(
        records[3].payload, records[4].payload,
        "a replay republishes the same bytes"
    );
    for (record, served) in [(&records[0], &a), (&records[2], &b), (&records[3], &c)] {
        let file = file_of(&record.json());
        assert_eq!(
            &std::fs::read(&file).unwrap(),
            served,
            "each link has its own object"
        );
        assert_eq!(record.json()["sha256"], sha256sum(&file));
    }
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);
}

/// Set in the child process of [`templates_fill_in_secrets_that_are_never_published_or_logged`].
const CHILD_ENV: &str = "RECORDINGS_TEST_CHILD";
const TELECMI_SECRET: &str = "Tel/Secret+1";
const XARIOS_SECRET: &str = "xar-secret-42";

/// TeleCMI gives a file name, Xarios recording ids: the URL templates turn
/// them into requests with the configured secrets. The archiver runs in a
/// child process configured through the environment, as in production, so
/// that its whole log output (debug level, JSON) can be searched for the
/// secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_fill_in_secrets_that_are_never_published_or_logged() {
    let (kafka, media, dir) = setup().await;
    media.script("/play", [Reply::Audio(audio(10, 900), "audio/mpeg")]);
    media.script(
        "/xarios/tenant-1/recordings/rec-1",
        [Reply::Audio(audio(11, 800), "audio/wav")],
    );
    media.script("/xarios/tenant-1/recordings/rec-2", [Reply::Status(403)]);
    let file_name = "16506305548176941220057791_2222223.mp3";
    let telecmi = normalize(
        ProviderId::Telecmi,
        "cdr",
        &json!({"type": "cdr", "leg": "b", "appid": 2222223, "cmiuuid": "0da4f02e-6ece",
                "status": "answered", "direction": "outbound", "time": 1650630551178_u64,
                "answeredsec": 6, "record": true, "filename": file_name}),
    );
    let xarios = xarios("sess-1", &["rec-1", "rec-2"]);
    kafka.publish(&[(&telecmi, 1), (&xarios, 1)]).await;

    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap()),
        (
            "CALLSTREAM_RECORDINGS__GROUP_ID",
            format!("rec-{}", uuid::Uuid::new_v4()),
        ),
        (
            "CALLSTREAM_RECORDINGS__STORE__DIR",
            dir.path().display().to_string(),
        ),
        (
            "CALLSTREAM_RECORDINGS__ALLOW_PRIVATE_TARGETS",
            "true".into(),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__TELECMI__URL_TEMPLATE",
            media.url("/play?appid={tenant}&file={file_name}&secret={secret}"),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__TELECMI__SECRET",
            TELECMI_SECRET.into(),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__XARIOS__URL_TEMPLATE",
            media.url("/xarios/{tenant}/recordings/{id}?key={secret}"),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__XARIOS__SECRET",
            XARIOS_SECRET.into(),
        ),
        ("CALLSTREAM_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "debug".into()),
        (CHILD_ENV, "1".into()),
    ];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_archiver_from_the_environment",
            "--exact",
            "--nocapture",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("test binary starts");
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                logs.lock().unwrap().push(line);
            }
        });
    }
    let done = eventually(Duration::from_secs(30), || {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || (kafka.count(Topic::Recordings) >= 2 && kafka.count(Topic::RecordingsDlq) >= 1)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.lock().unwrap().join("\n");
    assert!(
        done && kafka.count(Topic::Recordings) >= 2,
        "the child exited or timed out; its output:\n{logs}"
    );

    let encoded = "Tel%2FSecret%2B1";
    assert_eq!(
        media.requests("/play"),
        [format!(
            "/play?appid=2222223&file={file_name}&secret={encoded}"
        )]
    );
    assert_eq!(
        media.requests("/xarios/tenant-1/recordings/rec-1"),
        [format!(
            "/xarios/tenant-1/recordings/rec-1?key={XARIOS_SECRET}"
        )]
    );
    assert_eq!(
        media.requests("/xarios/tenant-1/recordings/rec-2").len(),
        1,
        "403 is final"
    );

    let records = kafka.read(Topic::Recordings);
    let sources: Vec<Value> = records.iter().map(|r| r.json()["source"].clone()).collect();
    assert!(
        sources.contains(&json!({"kind": "file_name", "file_name": file_name})),
        "{sources:?}"
    );
    assert!(
        sources.contains(&json!({"kind": "id", "id": "rec-1"})),
        "{sources:?}"
    );
    let letter = &kafka.read(Topic::RecordingsDlq)[0];
    assert_eq!(letter.key_str(), xarios.identity);
    assert_eq!(letter.header(ERROR_HEADER), Some("recording[1]: HTTP 403"));

    assert!(
        logs.contains("recording archived"),
        "the capture holds the archiver's logs:\n{logs}"
    );
    let mut published: Vec<String> = records
        .iter()
        .chain([letter])
        .map(|r| format!("{r:?}"))
        .collect();
    published.extend(
        records
            .iter()
            .chain([letter])
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned()),
    );
    for secret in [TELECMI_SECRET, encoded, XARIOS_SECRET] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
        for text in &published {
            assert!(!text.contains(secret), "`{secret}` published: {text}");
        }
    }
}

/// The archiver as the child process of the test above; returns at once
/// when run as a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_archiver_from_the_environment() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let settings = Settings::load(None).expect("settings from the environment");
    callstream_gateway::telemetry::init(settings.log_format);
    let archiver =
        RecordingsConsumer::build(&settings, &prometheus::Registry::new()).expect("builds");
    let (_stop, stopped) = watch::channel(false);
    // The parent kills this process; the timeout only bounds a lost child.
    let _ = tokio::time::timeout(Duration::from_secs(60), archiver.run(stopped)).await;
}

/// An on-premises PBX serves recordings on a private address: with
/// `allow_private_templates`, the operator's template reaches it, while a URL
/// a payload names (here Onoff's, to the same loopback server) is still
/// refused without a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_templates_reach_the_pbx_while_payload_urls_stay_guarded() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/xarios/tenant-1/recordings/rec-1",
        [Reply::Audio(audio(11, 800), "audio/wav")],
    );
    media.script("/x.mp3", [Reply::Audio(audio(12, 100), "audio/mpeg")]);
    let xarios = xarios("sess-1", &["rec-1"]);
    let payload_url = media.url("/x.mp3");
    let onoff = onoff("ssrf-payload", Some(&payload_url), None, "");
    kafka.publish(&[(&xarios, 1), (&onoff, 1)]).await;

    let template = media.url("/xarios/{tenant}/recordings/{id}");
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.allow_private_targets", false))
            .merge(("recordings.allow_private_templates", true))
            .merge(("recordings.templates.xarios.url_template", template))
    }));
    kafka
        .wait_for(Topic::Recordings, 1, "the PBX recording archived")
        .await;
    kafka
        .wait_for(Topic::RecordingsDlq, 1, "the payload URL refused")
        .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="refused""#,
    );
    archiver.stop().await;

    assert_eq!(media.requests("/xarios/tenant-1/recordings/rec-1").len(), 1);
    assert!(media.requests("/x.mp3").is_empty(), "never requested");
    assert_eq!(refused, 1.0);
    let archived = kafka.read(Topic::Recordings);
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0].key_str(), xarios.identity);
    let letters = kafka.read(Topic::RecordingsDlq);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key_str(), onoff.identity);
    let error = letters[0].header(ERROR_HEADER).unwrap();
    assert!(error.starts_with("recording[0]: refused: "), "{error}");
}

/// With `allow_private_targets = false` (the default), loopback targets and
/// non-http schemes are refused before any connection: the server accepts
/// none. (Private ranges such as 10.0.0.1 are covered by the guard's unit
/// tests, which send no traffic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_and_other_schemes_are_refused_without_connecting() {
    let (kafka, media, dir) = setup().await;
    media.script("/x.mp3", [Reply::Audio(audio(12, 100), "audio/mpeg")]);
    let port = media.port;
    let targets = [
        format!("http://127.0.0.1:{port}/x.mp3"),
        format!("http://localhost:{port}/x.mp3"),
        format!("http://[::1]:{port}/x.mp3"),
        format!("http://2130706433:{port}/x.mp3"),
        "file:///etc/passwd".to_string(),
        format!("ftp://127.0.0.1:{port}/x.mp3"),
    ];
    let events: Vec<Event> = targets
        .iter()
        .enumerate()
        .map(|(i, url)| onoff(&format!("ssrf-{i}"), Some(url), None, ""))
        .collect();
    let refs: Vec<(&Event, i32)> = events.iter().map(|e| (e, 1)).collect();
    kafka.publish(&refs).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.allow_private_targets", false))
    }));
    wait("every target dead-lettered", || {
        kafka.count(Topic::RecordingsDlq) >= targets.len() as i64
    })
    .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="refused""#,
    );
    archiver.stop().await;

    assert_eq!(media.connections(), 0, "no connection was attempted");
    assert_eq!(refused, targets.len() as f64);
    assert_eq!(kafka.count(Topic::Recordings), 0);
    assert!(files(dir.path()).is_empty());
    for letter in kafka.read(Topic::RecordingsDlq) {
        let error = letter.header(ERROR_HEADER).unwrap();
        assert!(error.starts_with("recording[0]: refused: "), "{error}");
    }
}

/// A Xarios `recordingIds: [".."]` once made the archiver request the
/// folder above the template's path, the template's secret attached. Ids
/// that are dot-segments, plainly or percent-encoded, are dead-lettered
/// with the reason, with no request; the event's good id is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segment_ids_are_dead_lettered_without_a_request() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/api/rec/rec-ok",
        [Reply::Audio(audio(13, 700), "audio/wav")],
    );
    media.script("/api/", [Reply::Audio(audio(14, 700), "audio/wav")]);
    let xarios = xarios("sess-dots", &["..", "%2e%2e", "rec-ok"]);
    kafka.publish(&[(&xarios, 1)]).await;

    let template = media.url("/api/rec/{id}?tenant={tenant}&key={secret}");
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 0))
            .merge(("recordings.templates.xarios.url_template", template))
            .merge(("recordings.templates.xarios.secret", XARIOS_SECRET))
    }));
    kafka
        .wait_for(Topic::RecordingsDlq, 1, "the bad ids dead-lettered")
        .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="invalid_value""#,
    );
    let archived = archiver.recordings("archived");
    archiver.stop().await;

    let requests = media.state.lock().unwrap().requests.clone();
    let targets: Vec<&str> = requests.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [format!(
            "/api/rec/rec-ok?tenant=tenant-1&key={XARIOS_SECRET}"
        )],
        "only the good id is requested"
    );
    assert_eq!(refused, 2.0);
    assert_eq!(archived, 1.0);
    assert_eq!(kafka.count(Topic::Recordings), 1);
    let letters = kafka.read(Topic::RecordingsDlq);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key_str(), xarios.identity);
    let dot_segment = "is a dot-segment (`.` or `..`, maybe percent-encoded)";
    assert_eq!(
        letters[0].header(ERROR_HEADER),
        Some(
            format!(
                "recording[0]: the value for {{id}} {dot_segment}; \
                 recording[1]: the value for {{id}} {dot_segment}"
            )
            .as_str()
        )
    );
}
