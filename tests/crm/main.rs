//! callstream-crm against a real Kafka-protocol broker and real HTTP servers
//! on 127.0.0.1 standing in for the CRMs, each answering as it is told per
//! event: 200, 400, 401, 403, 429 + `Retry-After`, 500, or nothing before
//! the timeout.

mod calls;
mod delivery;
mod failures;
mod http_stub;
mod hubspot;
mod hubspot_standin;
mod offsets;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::sync::watch;

use callstream_consumers::config::Settings;
use callstream_consumers::crm::redeliver::{
    redeliver, Letter, RedeliverError, RedeliverOptions, RedeliverReport,
};
use callstream_consumers::crm::{CrmConsumer, CrmError};
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_kafka::publish::OutRecord;
use callstream_kafka::wire::call_record;
use callstream_kafka::TopicNames;
use callstream_schemas::call::Call;
use callstream_schemas::{Event, Topic};
use callstream_testkit::{count_records, eventually, read_all, Record, PARTITIONS};

const DEADLINE: Duration = Duration::from_secs(20);

// ---- a CRM stand-in -------------------------------------------------------

/// How the fake CRM answers one request.
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    /// 429 with this `Retry-After` value.
    TooMany(&'static str),
    /// No answer for this long (past the client's timeout).
    Hang(Duration),
}

/// One request as the fake CRM received it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    path: String,
    headers: HashMap<String, String>,
    body: Value,
    /// The status answered; 0 when it hung.
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct CrmState {
    received: Vec<Received>,
    /// Replies per `Idempotency-Key`, used up in order; then `fallback`.
    scripts: HashMap<String, VecDeque<Reply>>,
    fallback: Option<Reply>,
}

/// A minimal HTTP/1.1 server (one request per connection) on 127.0.0.1:0.
#[derive(Clone)]
struct FakeCrm {
    port: u16,
    state: Arc<Mutex<CrmState>>,
}

impl FakeCrm {
    async fn start() -> FakeCrm {
        let state = Arc::new(Mutex::new(CrmState::default()));
        let shared = state.clone();
        let port = http_stub::serve(move |request| serve(request, shared.clone())).await;
        FakeCrm { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut state = self.state.lock().unwrap();
        state
            .scripts
            .insert(key.to_string(), replies.into_iter().collect());
    }

    fn answer_everything(&self, reply: Reply) {
        self.state.lock().unwrap().fallback = Some(reply);
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    fn for_key(&self, key: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.header("idempotency-key") == key)
            .collect()
    }

    /// Requests answered 2xx.
    fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    fn delivered_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .delivered()
            .iter()
            .map(|r| r.header("idempotency-key").to_string())
            .collect();
        keys.sort();
        keys
    }
}

/// Records a request and answers it as scripted for its `Idempotency-Key`.
async fn serve(request: http_stub::Incoming, state: Arc<Mutex<CrmState>>) -> http_stub::Outgoing {
    let http_stub::Incoming {
        path,
        query,
        headers,
        body,
        ..
    } = request;
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let reply = {
        let mut state = state.lock().unwrap();
        let key = headers.get("idempotency-key").cloned().unwrap_or_default();
        let scripted = state.scripts.get_mut(&key).and_then(VecDeque::pop_front);
        let reply = scripted
            .or_else(|| state.fallback.clone())
            .unwrap_or(Reply::Status(200));
        state.received.push(Received {
            at: Instant::now(),
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status: match reply {
                Reply::Status(s) => s,
                Reply::TooMany(_) => 429,
                Reply::Hang(_) => 0,
            },
        });
        reply
    };
    let (status, extra, body) = match reply {
        Reply::Status(s @ 200..=299) => (s, String::new(), r#"{"id":"512"}"#),
        Reply::Status(400) => (
            400,
            String::new(),
            "{\"status\":\"error\",\n  \"message\":\"Property values were not valid\"}",
        ),
        Reply::Status(s) => (s, String::new(), r#"{"error":"internal boom"}"#),
        Reply::TooMany(after) => (
            429,
            format!("retry-after: {after}\r\n"),
            r#"{"error":"slow down"}"#,
        ),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (200, String::new(), "{}")
        }
    };
    (status, extra, body.to_string())
}

// ---- events, Kafka and the consumer --------------------------------------

/// A normalized event as the dedup consumer forwards it.
fn event(kind: &str, direction: &str, status: &str) -> Value {
    let id = uuid::Uuid::new_v4();
    json!({
        "event_id": id,
        "identity": format!("onoff:acme:{kind}:{id}"),
        "fingerprint": "f00d",
        "provider": "onoff",
        "tenant": "acme",
        "kind": kind,
        "direction": direction,
        "status": status,
        "provider_status": "ANSWERED",
        "started_at": "2023-05-20T14:30:00Z",
        "ended_at": "2023-05-20T14:32:00Z",
        "duration_seconds": 120.5,
        "internal": {"name": "John Doe", "number": "1234567890"},
        "external": {"name": "John Smith", "number": "0987654321"},
        "notes": "Wants a <callback> & a quote",
        "correlation": {},
        "received_at": "2023-05-20T14:32:01Z",
        "raw": {"topic": "callstream.raw.v1", "request_id": "req-1"}
    })
}

/// An event of the call `call_id` (Onoff's `id`): it names its call.
fn call_event(call_id: &str, kind: &str, status: &str) -> Value {
    let mut e = event(kind, "inbound", status);
    e["identity"] = json!(format!("onoff:acme:{kind}:{call_id}"));
    e["correlation"] = json!({"call_id": call_id});
    e
}

fn key_of(event: &Value) -> String {
    event["event_id"].as_str().unwrap().to_string()
}

struct Kafka {
    broker: EmbeddedBroker,
    producer: FutureProducer,
}

impl Kafka {
    fn start() -> Kafka {
        let broker = EmbeddedBroker::start(PARTITIONS, &TopicNames::default()).expect("broker");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("producer");
        Kafka { broker, producer }
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap_servers()
    }

    /// Produces events to the unique topic, keyed by identity, with their revision.
    async fn publish(&self, events: &[(&Value, i32)]) {
        for (event, revision) in events {
            let payload = serde_json::to_vec(event).unwrap();
            self.send(event["identity"].as_str().unwrap(), &payload, *revision)
                .await;
        }
    }

    async fn send(&self, key: &str, payload: &[u8], revision: i32) {
        let revision = revision.to_string();
        let record = FutureRecord::to(Topic::EventsUnique.default_name())
            .key(key)
            .payload(payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: "cs_revision",
                value: Some(&revision),
            }));
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced");
    }

    /// Produces `record` (from `callstream_kafka::wire`) as it is.
    async fn send_record(&self, record: &OutRecord) {
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k.as_ref(),
                    value: Some(v.as_slice()),
                })
            });
        let produced = FutureRecord::to(record.topic.default_name())
            .key(&record.key)
            .payload(&record.payload)
            .headers(headers);
        self.producer
            .send(produced, Duration::from_secs(10))
            .await
            .expect("produced");
    }

    /// Produces the state of the call `events` describe, at `revision`,
    /// as the store's calls task publishes it; returns the call.
    async fn publish_call(&self, events: &[&Value], revision: i64) -> Call {
        let events: Vec<Event> = events
            .iter()
            .map(|e| serde_json::from_value((*e).clone()).expect("an event"))
            .collect();
        let call = Call::from_events(&events).expect("events that name a call");
        self.send_record(&call_record(&call, revision)).await;
        call
    }

    fn dead_letters(&self) -> Vec<Record> {
        read_all(&self.bootstrap(), Topic::CrmDlq.default_name())
    }

    fn dead_letter_count(&self) -> i64 {
        count_records(&self.bootstrap(), Topic::CrmDlq.default_name())
    }
}

/// Settings with `targets` as `[crm.targets]`, in a group of their own.
fn settings(bootstrap: &str, targets: Value) -> Settings {
    settings_with(bootstrap, targets, Settings::defaults())
}

/// [`settings`] on top of `base`.
fn settings_with(bootstrap: &str, targets: Value, base: figment::Figment) -> Settings {
    let figment = base
        .merge(("kafka.bootstrap_servers", bootstrap))
        .merge((
            "kafka.properties",
            BTreeMap::from([
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ]),
        ))
        .merge((
            "crm.group_prefix",
            format!("crm-test-{}", uuid::Uuid::new_v4()),
        ))
        .merge(("crm.targets", targets));
    Settings::from_figment(figment).expect("valid settings")
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), CrmError>>,
    registry: prometheus::Registry,
}

async fn start(settings: &Settings) -> Running {
    let registry = prometheus::Registry::new();
    let crm = CrmConsumer::build(
        &settings.crm,
        &settings.kafka,
        &settings.topics,
        settings.database_url.as_ref(),
        &registry,
    )
    .await
    .expect("CRM consumer builds");
    let (stop, stopped) = watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(crm.run(stopped)),
        registry,
    }
}

impl Running {
    /// Stops it and returns how long that took.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.stop.send(true).unwrap();
        self.task.await.unwrap().expect("ran without error");
        started.elapsed()
    }

    /// A sample's value, e.g. `("callstream_crm_events_total", r#"outcome="delivered",target="web""#)`.
    fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix}in\n{text}"))
    }

    fn events(&self, target: &str, outcome: &str) -> f64 {
        self.metric(
            "callstream_crm_events_total",
            &format!(r#"outcome="{outcome}",target="{target}""#),
        )
    }
}

/// `callstream-replay crm` with `settings`, as the command runs it.
async fn redeliver_with(
    settings: &Settings,
    options: &RedeliverOptions,
    on_letter: impl FnMut(&Letter),
) -> Result<RedeliverReport, RedeliverError> {
    let (_stop, shutdown) = watch::channel(false);
    redeliver(
        &settings.crm,
        &settings.kafka,
        &settings.topics,
        settings.database_url.as_ref(),
        options,
        shutdown,
        on_letter,
    )
    .await
}

/// A loopback port nothing listens on (it was bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn wait(what: &str, check: impl FnMut() -> bool) {
    assert!(
        eventually(DEADLINE, check).await,
        "timed out waiting: {what}"
    );
}
