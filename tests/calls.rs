//! Calls, not only events, end to end: four calls as the providers really
//! send them, through the gateway, dedup, the store (with its calls task)
//! and analytics, on a real Kafka-protocol broker and a real PostgreSQL.
//!
//! - Xarios: one answered call sent by two post-call triggers.
//! - Onoff: a missed-call CDR, then its update to voicemail (`VMS`).
//! - TeleCMI: a live event, then the CDR of the same call (missed).
//! - Onoff: an answered call whose notes arrive after dedup's window.
//!
//! Then the whole unique topic is replayed into a second, empty database,
//! which must hold the same calls and KPIs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prometheus::Registry;
use serde_json::{json, Value};
use tokio::sync::watch;

use callstream_consumers::analytics::AnalyticsWriter;
use callstream_consumers::calls::worker::CallsWorker;
use callstream_consumers::config::Settings as ConsumerSettings;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_consumers::store::StoreWriter;
use callstream_schemas::call::Call;
use callstream_schemas::{Status, Topic};
use callstream_testkit::expected::{actual, totals};
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::{start_sink, wait_calls_settled, wait_caught_up, RunningSink};
use callstream_testkit::{eventually, read_all, read_committed_to_end, spawn_gateway};

/// Dedup's window here: short, so one update can arrive after it.
const WINDOW_SECS: u64 = 2;
const CATCH_UP: Duration = Duration::from_secs(60);

fn fixture(path: &str) -> Value {
    let path = format!(
        "{}/schemas/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture is JSON")
}

fn consumer_settings(bootstrap: &str, database_url: &str) -> ConsumerSettings {
    let figment = ConsumerSettings::defaults()
        .merge(("kafka.bootstrap_servers", bootstrap))
        .merge(("database_url", database_url))
        .merge(("dedup.window_secs", WINDOW_SECS))
        .merge(("dedup.batch_linger_ms", 5))
        .merge((
            "kafka.properties",
            BTreeMap::from([
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ]),
        ));
    ConsumerSettings::from_figment(figment).expect("valid settings")
}

/// The store (with its calls task) and analytics over `db`.
struct Consumers {
    store: RunningSink,
    analytics: RunningSink,
    stop_calls: watch::Sender<bool>,
    calls_task: tokio::task::JoinHandle<()>,
}

impl Consumers {
    /// `round` names the Kafka groups: the in-process broker holds a
    /// member rejoining a group it just left about 45 s, so the replay
    /// joins new groups (positions are in the database either way).
    async fn start(bootstrap: &str, db: &TestDatabase, round: &str) -> Consumers {
        let mut migrating = db.connect().await;
        callstream_consumers::pg::migrate(&mut migrating)
            .await
            .expect("migrations apply");
        let settings = consumer_settings(bootstrap, &db.url);
        let registry = Registry::new();
        let writer = StoreWriter::new(&registry).expect("metrics register");
        let calls_task = tokio::task::block_in_place(|| {
            CallsWorker::new(
                &settings.kafka,
                &settings.topics,
                db.url.clone().into(),
                writer.nudge(),
                &registry,
            )
        })
        .expect("calls task starts");
        let (stop_calls, stopping) = watch::channel(false);
        let calls_task = tokio::spawn(calls_task.run(stopping));
        let store = start_sink(
            bootstrap,
            &db.url,
            "callstream-store",
            &format!("store-{round}"),
            writer,
        )
        .await;
        let analytics = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
        let analytics = start_sink(
            bootstrap,
            &db.url,
            "callstream-analytics",
            &format!("analytics-{round}"),
            analytics,
        )
        .await;
        Consumers {
            store,
            analytics,
            stop_calls,
            calls_task,
        }
    }

    async fn stop(self) {
        self.store.stop().await;
        self.analytics.stop().await;
        self.stop_calls.send(true).expect("calls task running");
        self.calls_task.await.expect("calls task did not panic");
    }
}

/// call key → merged call, from the `calls` table.
async fn calls(db: &tokio_postgres::Client) -> BTreeMap<String, Call> {
    db.query("SELECT call_key, call FROM calls", &[])
        .await
        .expect("calls is readable")
        .iter()
        .map(|row| {
            let call: Call = serde_json::from_value(row.get(1)).expect("a call");
            (row.get(0), call)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_calls_are_four_calls_counted_once_stored_and_published() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let settings = consumer_settings(&bootstrap, &db.url);
    let dedup = Dedup::new(
        &settings.dedup,
        &settings.kafka,
        &settings.topics,
        DedupMetrics::new(&Registry::new()),
    )
    .expect("dedup starts");
    let (stop_dedup, stopped) = watch::channel(false);
    let dedup = tokio::spawn(dedup.run(stopped));
    let consumers = Consumers::start(&bootstrap, &db, "live").await;

    // 1. Xarios: one answered call, two post-call triggers.
    let mut trigger = fixture("xarios/answered-outbound.json");
    for id in ["trigger-a", "trigger-b"] {
        trigger["triggerID"] = id.into();
        gw.deliver("/v1/xarios/postcall", None, &trigger.to_string())
            .await;
    }
    // 2. Onoff: a missed call, then the same id to voicemail.
    let missed = json!({"id": "c-vm-1", "eventName": "CDR", "callStatus": "MISSED_CALL",
        "callDirection": "INBOUND", "externalNumber": "+33612345678",
        "onoffUserEmail": "agent@acme.example", "onoffUserNumber": "+33100000001",
        "callStarted": "2024-06-03T10:00:00Z", "callEnded": "2024-06-03T10:00:20Z"});
    gw.deliver("/v1/onoff/cdr", None, &missed.to_string()).await;
    let mut to_voicemail = missed.clone();
    to_voicemail["callStatus"] = "VMS".into();
    to_voicemail["voicemailUrl"] = "https://onoff.example/vm/c-vm-1.mp3".into();
    gw.deliver("/v1/onoff/cdr", None, &to_voicemail.to_string())
        .await;
    // 3. TeleCMI: a live step, then the call's CDR (missed).
    let live = fixture("telecmi/event-started.json");
    gw.deliver("/v1/telecmi/event", None, &live.to_string())
        .await;
    let mut cdr = fixture("telecmi/incoming-missed.json");
    cdr["cmiuuid"] = live["cmiuuid"].clone();
    cdr["conversation_uuid"] = live["conversation_uuid"].clone();
    gw.deliver("/v1/telecmi/cdr", None, &cdr.to_string()).await;
    // An SMS: counted as an SMS, no call.
    gw.deliver(
        "/v1/onoff/sms",
        None,
        &fixture("onoff/sms-received.json").to_string(),
    )
    .await;
    // 4. Onoff: an answered call, and its notes after dedup's window.
    let answered = fixture("onoff/cdr-answered.json");
    gw.deliver("/v1/onoff/cdr", None, &answered.to_string())
        .await;
    let unique = Topic::EventsUnique.default_name();
    let forwarded = |n: usize| {
        let bootstrap = bootstrap.clone();
        async move {
            eventually(CATCH_UP, move || {
                read_committed_to_end(&bootstrap, unique).len() >= n
            })
            .await
        }
    };
    // Two triggers, missed + voicemail, step + CDR, SMS, answered call.
    assert!(forwarded(8).await, "dedup forwarded the first deliveries");
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
    // Dedup forgets an identity when a newer event on its partition moves
    // the partition's event time past the window: SMS until one lands on
    // the answered call's partition (each a third of the time; bounded).
    let identity_of = |records: &[callstream_testkit::Record], pick: &dyn Fn(&Value) -> bool| {
        records
            .iter()
            .find(|r| pick(&r.json()))
            .map(|r| (r.partition, r.json()["identity"].clone()))
    };
    let (partition, _) = identity_of(&read_committed_to_end(&bootstrap, unique), &|e| {
        e["kind"] == "call" && e["notes"] == answered["callNotes"]
    })
    .expect("the answered call in the unique topic");
    let mut sms = fixture("onoff/sms-received.json");
    let mut sms_count: i64 = 1;
    let mut moved = false;
    for i in 0..60 {
        let id = format!("sms-after-window-{i}");
        sms["id"] = id.clone().into();
        gw.deliver("/v1/onoff/sms", None, &sms.to_string()).await;
        sms_count += 1;
        assert!(forwarded(8 + i + 1).await, "the SMS forwarded");
        let records = read_committed_to_end(&bootstrap, unique);
        let (p, _) = identity_of(&records, &|e| {
            e["identity"].as_str().is_some_and(|s| s.ends_with(&id))
        })
        .expect("the SMS in the unique topic");
        if p == partition {
            moved = true;
            break;
        }
    }
    assert!(moved, "an SMS on the call's partition within 60");
    let before_notes = read_committed_to_end(&bootstrap, unique).len();
    let mut noted = answered.clone();
    noted["callNotes"] = "Asked for a quote. Sent it on the 6th; call back Friday.".into();
    gw.deliver("/v1/onoff/cdr", None, &noted.to_string()).await;
    assert!(
        forwarded(before_notes + 1).await,
        "the late notes were forwarded"
    );
    let records = read_committed_to_end(&bootstrap, unique);
    let late = records
        .iter()
        .find(|r| r.json()["notes"] == noted["callNotes"])
        .expect("the late notes in the unique topic");
    assert_eq!(
        late.header("cs_revision"),
        Some("1"),
        "after the window: revision 1 again, the case that was lost"
    );

    let end = callstream_testkit::count_records(&bootstrap, unique);
    wait_caught_up(&client, "callstream-store", end, CATCH_UP).await;
    wait_caught_up(&client, "callstream-analytics", end, CATCH_UP).await;
    wait_calls_settled(&client, CATCH_UP).await;

    // KPIs: four calls, each once.
    let kpis = actual(&client).await;
    let t = totals(&kpis);
    assert_eq!(
        (t.offered, t.answered, t.missed, t.voicemail, t.sms_received),
        (4, 2, 1, 1, sms_count),
        "offered, answered, missed, voicemail, SMS received: {kpis:#?}"
    );

    // `calls`: four rows, merged.
    let stored = calls(&client).await;
    assert_eq!(stored.len(), 4, "{:#?}", stored.keys());
    let by_provider = |p: &str| -> Vec<&Call> {
        stored
            .values()
            .filter(|c| c.provider.as_str() == p)
            .collect()
    };
    let xarios = by_provider("xarios");
    assert_eq!(xarios.len(), 1);
    assert_eq!(xarios[0].timeline.len(), 2, "both triggers kept");
    assert_eq!(xarios[0].status, Status::Answered);
    let telecmi = by_provider("telecmi");
    assert_eq!(telecmi.len(), 1);
    assert!(telecmi[0].r#final);
    assert_eq!(telecmi[0].status, Status::Missed);
    assert_eq!(
        telecmi[0]
            .timeline
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>(),
        ["call_progress", "call"],
        "the live step, then the CDR"
    );
    let onoff = by_provider("onoff");
    assert_eq!(onoff.len(), 2);
    let vm_key = format!("onoff:{}:c-vm-1", callstream_schemas::DEFAULT_TENANT);
    let vm = stored.get(&vm_key).expect("the voicemail call");
    assert_eq!(vm.status, Status::Voicemail);
    assert_eq!(
        vm.voicemail.as_ref().and_then(|v| v.url.as_deref()),
        Some("https://onoff.example/vm/c-vm-1.mp3")
    );
    assert_eq!(vm.timeline.len(), 2, "the CDR and its voicemail");
    let noted_call = onoff
        .iter()
        .find(|c| c.call_key != vm.call_key)
        .expect("the answered call");
    assert_eq!(noted_call.notes.as_deref(), noted["callNotes"].as_str());
    assert_eq!(noted_call.status, Status::Answered);
    // The columns agree with the merged call.
    let row = client
        .query_one(
            "SELECT status, notes, voicemail->>'url', jsonb_array_length(events), final
             FROM calls WHERE call_key = $1",
            &[&vm_key],
        )
        .await
        .expect("the row");
    assert_eq!(row.get::<_, String>(0), "voicemail");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("https://onoff.example/vm/c-vm-1.mp3")
    );
    assert_eq!(row.get::<_, i32>(3), 2);
    assert!(row.get::<_, bool>(4));

    // The late notes are stored on the event too.
    let notes: String = client
        .query_one(
            "SELECT event->>'notes' FROM events WHERE call_key = $1 AND kind = 'call'",
            &[&noted_call.call_key],
        )
        .await
        .expect("the answered call's event")
        .get(0);
    assert_eq!(Some(notes.as_str()), noted["callNotes"].as_str());

    // `callstream.calls.v1`: four keys, the newest record of each the row.
    let topic = Topic::Calls.default_name();
    let published = || {
        let mut newest: BTreeMap<String, Call> = BTreeMap::new();
        for record in read_all(&bootstrap, topic) {
            let call: Call = serde_json::from_slice(&record.payload).expect("a call");
            newest.insert(String::from_utf8(record.key).expect("UTF-8"), call);
        }
        newest
    };
    assert!(
        eventually(CATCH_UP, || published() == stored).await,
        "the topic's newest state per key is the table's: {:#?}",
        published().keys().collect::<BTreeSet<_>>()
    );
    for record in read_all(&bootstrap, topic) {
        assert_eq!(
            record.header("ce_type"),
            Some("io.callstream.call_state.v1")
        );
        assert!(record.header("cs_revision").is_some());
        let subject = record.header("ce_subject").map(str::to_string);
        assert_eq!(subject, Some(String::from_utf8(record.key).unwrap()));
    }

    consumers.stop().await;
    stop_dedup.send(true).expect("dedup running");
    dedup.await.expect("dedup task").expect("dedup ran");

    // A replay of the whole unique topic into an empty database gives the
    // same calls and the same KPIs.
    let again = TestDatabase::create().await;
    let again_client = again.connect().await;
    let replayed = Consumers::start(&bootstrap, &again, "replay").await;
    wait_caught_up(&again_client, "callstream-store", end, CATCH_UP).await;
    wait_caught_up(&again_client, "callstream-analytics", end, CATCH_UP).await;
    wait_calls_settled(&again_client, CATCH_UP).await;
    replayed.stop().await;
    assert_eq!(calls(&again_client).await, stored);
    assert_eq!(actual(&again_client).await, kpis);
    gw.stop().await;
}

/// An Onoff delivery normalized as the gateway does, received at minute `n`.
fn onoff_event(route: &str, body: &Value, n: i64) -> callstream_schemas::Event {
    use callstream_schemas::providers::onoff::Onoff;
    use callstream_schemas::{Context, Provider, RawRequest};
    let body = body.to_string();
    let received_at = chrono::DateTime::from_timestamp(1_717_400_000 + 60 * n, 0).unwrap();
    Onoff
        .normalize(
            &RawRequest {
                method: "POST",
                route,
                query: "",
                content_type: Some("application/json"),
                body: body.as_bytes(),
            },
            &Context {
                default_tenant: "acme",
                received_at,
                request_id: "test",
                raw_topic: Topic::Raw.default_name(),
            },
        )
        .expect("normalizes")
        .into_event()
}

/// A call whose merged record is larger than Kafka takes (two events, each
/// within the limit, with tags of their own) is kept in `calls`, counted
/// as refused and skipped by the outbox: the calls after it are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_large_for_kafka_does_not_hold_the_others_back() {
    let (broker, db, client) = callstream_testkit::sinks::setup().await;
    let bootstrap = broker.bootstrap_servers();
    let tag = |c: char| json!([{"tagId": c.to_string(), "tagName": c.to_string().repeat(600_000)}]);
    let cdr = json!({"id": "big", "eventName": "CDR", "callStatus": "MISSED_CALL",
        "callDirection": "INBOUND", "callStarted": "2024-06-03T10:00:00Z", "tags": tag('a')});
    let mut vm = cdr.clone();
    vm["callStatus"] = "VMS".into();
    vm["tags"] = tag('b');
    let mut events = vec![
        (onoff_event("cdr", &cdr, 0), 1),
        (onoff_event("cdr", &vm, 1), 1),
    ];
    for i in 0..5 {
        let mut small = cdr.clone();
        small["id"] = format!("small-{i}").into();
        small["tags"] = json!([]);
        events.push((onoff_event("cdr", &small, 2 + i), 1));
    }
    callstream_testkit::sinks::produce_events(&bootstrap, &events, None).await;

    let settings = consumer_settings(&bootstrap, &db.url);
    let registry = Registry::new();
    let writer = StoreWriter::new(&registry).expect("metrics register");
    let calls_task = tokio::task::block_in_place(|| {
        CallsWorker::new(
            &settings.kafka,
            &settings.topics,
            db.url.clone().into(),
            writer.nudge(),
            &registry,
        )
    })
    .expect("calls task starts");
    let (stop_calls, stopping) = watch::channel(false);
    let calls_task = tokio::spawn(calls_task.run(stopping));
    let store = start_sink(&bootstrap, &db.url, "callstream-store", "store", writer).await;
    let end = callstream_testkit::count_records(&bootstrap, Topic::EventsUnique.default_name());
    wait_caught_up(&client, "callstream-store", end, CATCH_UP).await;
    let metric = |name: &str| -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value())
            .sum()
    };
    // Merged, then refused by Kafka and taken out of the outbox: nothing
    // left queued behind it.
    assert!(
        eventually(CATCH_UP, || metric("callstream_store_calls_refused_total")
            >= 1.0)
        .await,
        "the large call refused"
    );
    wait_calls_settled(&client, CATCH_UP).await;

    let stored = calls(&client).await;
    assert_eq!(stored.len(), 6, "{:?}", stored.keys());
    let big = &stored["onoff:acme:big"];
    assert_eq!(big.tags.len(), 2, "both events' tags merged");
    let topic = Topic::Calls.default_name();
    assert!(
        eventually(CATCH_UP, || read_all(&bootstrap, topic).len() >= 5).await,
        "the five small calls published"
    );
    let mut keys = BTreeSet::new();
    for record in read_all(&bootstrap, topic) {
        let key = String::from_utf8(record.key).unwrap();
        if key == "onoff:acme:big" {
            // Published only if the store committed its two events in two
            // batches (a slow machine): then the call as it stood after
            // the first, which fit. The merged call never is.
            let call: Value = serde_json::from_slice(&record.payload).unwrap();
            assert_eq!(call["tags"].as_array().map(Vec::len), Some(1), "{key}");
        } else {
            keys.insert(key);
        }
    }
    assert_eq!(keys.len(), 5, "{keys:?}");
    store.stop().await;
    stop_calls.send(true).unwrap();
    calls_task.await.unwrap();
}

/// A database filled before calls existed (V7) gets them after the
/// upgrade: V8 names each stored event's call and queues the calls, and
/// the store's calls task merges and publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_events_stored_before_the_upgrade_are_merged_after_it() {
    use callstream_testkit::unique::{at, spec, Joined, Spec};
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    callstream_consumers::pg::migrate_up_to(&mut client, Some(7))
        .await
        .expect("the release before calls migrates");
    // An Onoff missed call and its voicemail, as the store wrote them then.
    let Spec::Call(mut missed) = spec("old", 3, at("2024-06-03T10:00:00Z")) else {
        panic!("spec 3 is an Onoff call");
    };
    missed.provider = callstream_schemas::ProviderId::Onoff;
    missed.outcome = callstream_testkit::unique::Outcome::Missed;
    let received = at("2024-06-03T10:05:00Z");
    let events = [
        Spec::Call(missed.clone()).event(received),
        Spec::Joined(missed, Joined::Voicemail).event(received),
    ];
    for e in &events {
        client
            .execute(
                "INSERT INTO events (event_id, identity, revision, fingerprint, provider,
                     tenant, kind, direction, status, received_at, event)
                 VALUES ($1, $2, 1, $3, 'onoff', $4, $5, 'inbound', $6, $7, $8)",
                &[
                    &e.event_id,
                    &e.identity,
                    &e.fingerprint,
                    &e.tenant,
                    &e.kind.as_str(),
                    &serde_json::to_value(e.status).unwrap().as_str().unwrap(),
                    &e.received_at,
                    &serde_json::to_value(e).unwrap(),
                ],
            )
            .await
            .expect("a V7 row");
    }
    callstream_consumers::pg::migrate(&mut client)
        .await
        .expect("the upgrade applies");
    let key = callstream_schemas::call::call_key(&events[0]).expect("a call");
    let keys: Vec<Option<String>> = client
        .query("SELECT call_key FROM events ORDER BY kind", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        [Some(key.clone()), Some(key.clone())],
        "the same rule as the code's"
    );

    let broker = callstream_testkit::sinks::broker();
    let bootstrap = broker.bootstrap_servers();
    let settings = consumer_settings(&bootstrap, &db.url);
    let registry = Registry::new();
    let writer = StoreWriter::new(&registry).expect("metrics register");
    let calls_task = tokio::task::block_in_place(|| {
        CallsWorker::new(
            &settings.kafka,
            &settings.topics,
            db.url.clone().into(),
            writer.nudge(),
            &registry,
        )
    })
    .expect("calls task starts");
    let (stop_calls, stopping) = watch::channel(false);
    let calls_task = tokio::spawn(calls_task.run(stopping));
    wait_calls_settled(&client, CATCH_UP).await;
    let stored = calls(&client).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[&key], Call::from_events(&events).unwrap());
    assert_eq!(stored[&key].status, Status::Voicemail);
    let topic = Topic::Calls.default_name();
    assert!(
        eventually(CATCH_UP, || read_all(&bootstrap, topic).len() == 1).await,
        "the call published"
    );
    stop_calls.send(true).unwrap();
    calls_task.await.unwrap();
}
