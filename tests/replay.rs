//! callstream-replay against the real gateway and a real Kafka-protocol
//! broker: replayed events are the gateway's records again (so dedup drops
//! them), DLQ records that parse now are published with their original
//! request, the rest are reported and published nowhere, ranges select
//! exactly their records, and a dry run publishes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;

use callstream_consumers::config::Settings;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_consumers::replay::range::Bound;
use callstream_consumers::replay::report::{Outcome, Report, Verdict};
use callstream_consumers::replay::{self, ReplayError, ReplayOptions, Source};
use callstream_kafka::embedded::EmbeddedBroker;
use callstream_schemas::Topic;
use callstream_testkit::{
    eventually, read_all, read_committed_to_end, spawn_gateway, Record, TestGateway, PARTITIONS,
};

const ONOFF_CDR: &str = r##"{"id":"cdr-1001","eventName":"CDR","onoffUserName":"John Doe","onoffUserEmail":"john.doe@example.com","onoffUserNumber":"1234567890","externalNumber":"0987654321","externalName":"John Smith","callStarted":"2023-05-20T14:30:00Z","callEnded":"2023-05-20T16:32:00+02:00","callDuration":300,"callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"Important notes","tags":[{"tagId":"17431723-0001","tagName":"Blue","tagColor":"#32A8FF"}]}"##;

const ONOFF_SMS: &str = r#"{"id":"sms-77","eventName":"SMS","onoffUserName":"John Doe","onoffUserNumber":"1234567890","externalNumber":"0987654321","date":"2023-05-20T14:30:00Z","smsDirection":"SENT","body":"This is the body of the SMS"}"#;

const TELECMI_LEG_A: &str = r#"{"virtual_number":"440000000000","call_id":"c4504776-d91e-123b-29a7-56000429abc3","custom":"{\"crm\":\"true\"}","leg":"a","type":"cdr","appid":2222223,"to":442000000000,"cmiuuid":"10ee0eb6-c417-4f5a-b122-bffe28f96eae","status":"answered","user":"202_2222223","time":1650630551178,"direction":"outbound","answeredsec":15,"hangup_reason":"recv_bye","request_id":"c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr"}"#;

const XARIOS_JSON: &str = r#"{"triggerId":"trig-1","id":"user-1","tenantId":"tenant-9","cdr":{"id":"sess-42","dType":"CloudSessionCdr","sVer":1,"tz":"Europe/London","start":"2024-05-29T09:37:35+01:00","end":"2024-05-29T09:37:45+01:00","dur":10,"ring":10,"lost":1,"cause":"NORMAL_CLEARING","dir":2,"type":2,"cliNum":"+447000000000","ddiNum":"+441610000000","lRngUsrName":"Test User","lRngUsrNum":"302","hasRec":0,"tags":{"Support":"step1"}},"customData":{"hook":"post call"}}"#;

/// An Onoff call log without its `id`: dead-lettered (`missing_field`).
const ONOFF_NO_ID: &str = r#"{"eventName":"CDR","callStatus":"ANSWERED"}"#;

const EPOCH: &str = "1970-01-01T00:00:00Z";
const T0: i64 = 1_716_215_400_000; // 2024-05-20T14:30:00Z

fn settings(bootstrap: &str) -> Settings {
    Settings::from_figment(Settings::defaults().merge(("kafka.bootstrap_servers", bootstrap)))
        .expect("valid settings")
}

fn options(source: Source, from: Option<&str>, to: Option<&str>, dry_run: bool) -> ReplayOptions {
    let bound = |s: &str| s.parse::<Bound>().expect("valid bound");
    ReplayOptions {
        source,
        from: from.map(bound),
        to: to.map(bound),
        dry_run,
        tenants: BTreeMap::new(),
    }
}

async fn replay(
    bootstrap: &str,
    options: &ReplayOptions,
) -> Result<(Report, Vec<Outcome>), ReplayError> {
    let mut outcomes = Vec::new();
    let settings = settings(bootstrap);
    let report = replay::run(&settings.kafka, &settings.topics, options, |o| {
        outcomes.push(o.clone())
    })
    .await?;
    assert_eq!(report.read as usize, outcomes.len());
    Ok((report, outcomes))
}

/// Posts `body` as JSON; returns the request id.
async fn post(gw: &TestGateway, path: &str, body: &str) -> String {
    let resp = gw
        .client
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("gateway answers");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let answer: serde_json::Value = resp.json().await.expect("JSON answer");
    answer["request_id"]
        .as_str()
        .expect("request id")
        .to_string()
}

/// A record as the gateway writes it to the raw topic or the DLQ.
struct Delivery {
    key: String,
    body: String,
    headers: Vec<(&'static str, String)>,
    timestamp_ms: Option<i64>,
}

/// An Onoff CDR delivery received at `received_at`; keyed by its request
/// id, as the gateway keys a dead-lettered delivery.
fn onoff_delivery(request_id: &str, body: &str, received_at: &str) -> Delivery {
    Delivery {
        key: request_id.to_string(),
        body: body.to_string(),
        headers: vec![
            ("cs_request_id", request_id.to_string()),
            ("cs_source", "onoff".into()),
            ("cs_route", "cdr".into()),
            ("cs_method", "POST".into()),
            ("cs_path", "/v1/onoff/cdr".into()),
            ("cs_query", String::new()),
            ("cs_received_at", received_at.into()),
            ("cs_content_type", "application/json".into()),
        ],
        timestamp_ms: None,
    }
}

fn cdr(id: &str) -> String {
    ONOFF_CDR.replace("cdr-1001", id)
}

fn dead_lettered(mut d: Delivery, reason: &str) -> Delivery {
    d.headers.push(("cs_dlq_reason", reason.into()));
    d.headers
        .push(("cs_dlq_detail", "refused by an older normalizer".into()));
    d
}

async fn produce(bootstrap: &str, topic: &str, deliveries: &[Delivery]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer builds");
    for d in deliveries {
        let headers = d.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        let mut record = FutureRecord::to(topic)
            .key(d.key.as_str())
            .payload(d.body.as_bytes())
            .headers(headers);
        if let Some(ts) = d.timestamp_ms {
            record = record.timestamp(ts);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produced");
    }
}

fn request_id(r: &Record) -> String {
    r.header("cs_request_id")
        .expect("every record has a request id")
        .to_string()
}

/// Records of `after` that are not in `before` (by position).
fn added(before: &[Record], after: Vec<Record>) -> Vec<Record> {
    let seen: HashSet<(i32, i64)> = before.iter().map(|r| (r.partition, r.offset)).collect();
    after
        .into_iter()
        .filter(|r| !seen.contains(&(r.partition, r.offset)))
        .collect()
}

fn by_request_id(records: Vec<Record>) -> HashMap<String, Record> {
    records.into_iter().map(|r| (request_id(&r), r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_raw_republishes_the_gateways_records_and_twice_changes_nothing() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/telecmi/cdr", TELECMI_LEG_A).await;
    post(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    let failing = post(&gw, "/v1/onoff/cdr", ONOFF_NO_ID).await;
    let originals = gw.read_all(Topic::Events);
    assert_eq!(originals.len(), 4);

    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs");
    assert_eq!(report.read, 5);
    assert_eq!(report.unchanged, 4, "{outcomes:#?}");
    assert_eq!(report.published, 4);
    assert_eq!(report.failing, BTreeMap::from([("missing_field", 1)]));
    assert_eq!(report.regressed, 0);
    let fail = outcomes.iter().find(|o| o.is_change()).expect("one change");
    assert_eq!(fail.request_id.as_deref(), Some(failing.as_str()));

    let after_one = gw.read_all(Topic::Events);
    let first = by_request_id(added(&originals, after_one.clone()));
    assert_eq!(first.len(), 4);
    for original in &originals {
        let replayed = &first[&request_id(original)];
        assert_eq!(replayed.key, original.key, "same key, so same partition");
        assert_eq!(replayed.partition, original.partition);
        assert_eq!(
            replayed.headers, original.headers,
            "same CloudEvents headers"
        );
        assert_eq!(
            replayed.json()["fingerprint"],
            original.json()["fingerprint"]
        );
        assert_eq!(
            String::from_utf8_lossy(&replayed.payload),
            String::from_utf8_lossy(&original.payload),
            "byte for byte"
        );
    }

    let (again, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs again");
    assert_eq!((again.read, again.unchanged, again.published), (5, 4, 4));
    let second = added(&after_one, gw.read_all(Topic::Events));
    assert_eq!(second.len(), 4);
    for r in &second {
        let earlier = &first[&request_id(r)];
        assert_eq!(
            (&r.key, &r.payload, &r.headers),
            (&earlier.key, &earlier.payload, &earlier.headers),
            "a second replay publishes the same records again"
        );
    }
    assert_eq!(gw.count(Topic::Dlq), 1, "nothing dead-lettered again");
    gw.stop().await;
}

/// A re-derived event Kafka refuses as a record (here the broker answers
/// `MSG_SIZE_TOO_LARGE`, as for an events topic with a smaller limit than
/// the raw one) used to stop every run at the same place. It is reported,
/// and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_kafka_refuses_is_reported_and_the_run_completes() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    let originals = gw.read_all(Topic::Events);
    // The batch, then the record alone: refused both times.
    gw.broker.cluster().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let (report, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("the run completes");
    assert_eq!((report.read, report.published, report.refused), (1, 0, 1));
    assert!(report
        .to_string()
        .contains("refused by Kafka 1 (too large or invalid; logged, not published)"));
    assert_eq!(gw.read_all(Topic::Events).len(), originals.len());

    let (again, _) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
        .await
        .expect("replay runs");
    assert_eq!((again.published, again.refused), (1, 0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_records_that_parse_now_are_published_and_the_rest_published_nowhere() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let received_at = "2024-05-20T14:30:00.123456Z";
    // Dead-lettered by an older normalizer, fine for the current one.
    let fixed = onoff_delivery("req-fixed", &cdr("cdr-fixed"), received_at);
    let broken = onoff_delivery("req-broken", "{not json", received_at);
    produce(
        &bootstrap,
        Topic::Raw.default_name(),
        &[
            onoff_delivery("req-fixed", &cdr("cdr-fixed"), received_at),
            onoff_delivery("req-broken", "{not json", received_at),
        ],
    )
    .await;
    produce(
        &bootstrap,
        Topic::Dlq.default_name(),
        &[
            dead_lettered(fixed, "missing_field"),
            dead_lettered(broken, "malformed"),
        ],
    )
    .await;

    let (report, outcomes) = replay(&bootstrap, &options(Source::Dlq, None, None, false))
        .await
        .expect("replay runs");
    assert_eq!((report.read, report.new, report.published), (2, 1, 1));
    assert_eq!(report.failing, BTreeMap::from([("malformed", 1)]));
    assert_eq!(
        report.originals_scanned, None,
        "DLQ records all were dead-lettered"
    );
    let still_failing = outcomes
        .iter()
        .find(|o| matches!(o.verdict, Verdict::StillFailing(_)))
        .expect("the broken record is reported");
    assert_eq!(still_failing.request_id.as_deref(), Some("req-broken"));
    assert!(still_failing.to_string().starts_with("failing"));

    let events = read_all(&bootstrap, Topic::Events.default_name());
    assert_eq!(events.len(), 1, "only the record that parses now");
    let e = &events[0];
    let event = e.json();
    assert_eq!(event["identity"], "onoff:default:call:cdr-fixed");
    assert_eq!(e.key_str(), "onoff:default:call:cdr-fixed");
    assert_eq!(
        event["received_at"], received_at,
        "the original receipt time"
    );
    assert_eq!(event["raw"]["request_id"], "req-fixed");
    assert_eq!(event["raw"]["topic"], Topic::Raw.default_name());
    assert_eq!(e.header("cs_request_id"), Some("req-fixed"));
    assert_eq!(e.header("ce_id"), event["fingerprint"].as_str());
    assert_eq!(e.header("ce_type"), Some("io.callstream.call.v1"));
    let count = |t: Topic| read_all(&bootstrap, t.default_name()).len();
    assert_eq!(
        (count(Topic::Dlq), count(Topic::Raw)),
        (2, 2),
        "no DLQ loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_offset_ranges_select_exactly_their_records() {
    let broker = EmbeddedBroker::start(PARTITIONS, &Default::default()).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let deliveries: Vec<Delivery> = (0..9)
        .map(|i| Delivery {
            timestamp_ms: Some(T0 + i * 1000),
            ..onoff_delivery(
                &format!("req-{i}"),
                &cdr(&format!("cdr-{i}")),
                "2024-05-20T14:30:00Z",
            )
        })
        .collect();
    produce(&bootstrap, Topic::Raw.default_name(), &deliveries).await;
    let ids = |outcomes: &[Outcome]| -> Vec<String> {
        let mut ids: Vec<String> = outcomes
            .iter()
            .map(|o| o.request_id.clone().expect("request id"))
            .collect();
        ids.sort();
        ids
    };

    // Times select by Kafka timestamp, `--to` excluded.
    let (report, outcomes) = replay(
        &bootstrap,
        &options(
            Source::Raw,
            Some("2024-05-20T14:30:03Z"),
            Some("2024-05-20T14:30:06Z"),
            true,
        ),
    )
    .await
    .expect("replay runs");
    assert_eq!(ids(&outcomes), ["req-3", "req-4", "req-5"]);
    assert_eq!(
        report.new, 3,
        "keyed by request id: dead-lettered when received"
    );
    // From a time after the last record, and from before the first.
    let (_, outcomes) = replay(
        &bootstrap,
        &options(Source::Raw, Some("2024-05-20T14:31:00Z"), None, true),
    )
    .await
    .unwrap();
    assert!(outcomes.is_empty());
    let (_, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 9);

    // Offsets: `--from` included, `--to` excluded, only listed partitions.
    let raw = read_all(&bootstrap, Topic::Raw.default_name());
    let fullest = (0..PARTITIONS)
        .max_by_key(|p| raw.iter().filter(|r| r.partition == *p).count())
        .unwrap();
    let in_fullest: Vec<&Record> = raw.iter().filter(|r| r.partition == fullest).collect();
    assert!(in_fullest.len() >= 3, "9 records in 3 partitions");
    let end = in_fullest.len() as i64 - 1;
    let (_, outcomes) = replay(
        &bootstrap,
        &options(
            Source::Raw,
            Some(&format!("{fullest}:1")),
            Some(&format!("{fullest}:{end}")),
            true,
        ),
    )
    .await
    .unwrap();
    let got: Vec<(i32, i64)> = outcomes.iter().map(|o| (o.partition, o.offset)).collect();
    let want: Vec<(i32, i64)> = (1..end).map(|o| (fullest, o)).collect();
    assert_eq!(got, want);
    let expected_ids: Vec<String> = {
        let mut v: Vec<String> = in_fullest[1..end as usize]
            .iter()
            .map(|r| request_id(r))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&outcomes), expected_ids);

    // Invalid ranges fail before anything is read.
    for (from, to) in [
        (format!("{fullest}:2"), Some(format!("{fullest}:1"))),
        (
            "2024-05-20T14:30:06Z".to_string(),
            Some("2024-05-20T14:30:03Z".to_string()),
        ),
        ("7:0".to_string(), None),
        (format!("{fullest}:1000"), None),
        (
            format!("{fullest}:0"),
            Some(format!("{}:1", (fullest + 1) % PARTITIONS)),
        ),
    ] {
        let result = replay(
            &bootstrap,
            &options(Source::Raw, Some(&from), to.as_deref(), true),
        )
        .await;
        assert!(
            matches!(result, Err(ReplayError::InvalidRange(_))),
            "--from {from} --to {to:?}: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_publishes_nothing_and_reports_each_change() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/onoff/cdr", ONOFF_NO_ID).await;
    let now = chrono::Utc::now().to_rfc3339();
    // What an older normalizer made of deliveries the current one treats
    // differently: content (an update), identity, a refusal, an acceptance.
    let mut changed = onoff_delivery("req-changed", &cdr("cdr-changed"), &now);
    changed.key = "onoff:default:call:cdr-changed".into();
    let mut moved = onoff_delivery("req-moved", &cdr("cdr-moved"), &now);
    moved.key = "onoff:default:call:old-id".into();
    let mut refused = onoff_delivery("req-refused", ONOFF_NO_ID, &now);
    refused.key = "onoff:default:call:refused".into();
    let accepted = onoff_delivery("req-accepted", &cdr("cdr-accepted"), &now);
    produce(
        &bootstrap,
        Topic::Raw.default_name(),
        &[changed, moved, refused, accepted],
    )
    .await;
    let old_event = Delivery {
        key: "onoff:default:call:cdr-changed".into(),
        body: "{}".into(),
        headers: vec![
            ("ce_id", "0".repeat(64)),
            ("cs_request_id", "req-changed".into()),
        ],
        timestamp_ms: None,
    };
    produce(&bootstrap, Topic::Events.default_name(), &[old_event]).await;
    let events_before = gw.count(Topic::Events);

    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    assert_eq!(
        gw.count(Topic::Events),
        events_before,
        "a dry run publishes nothing"
    );
    assert_eq!(report.published, 0);
    assert!(report.dry_run);
    assert_eq!(report.read, 7);
    assert_eq!(report.originals_scanned, Some(3));
    assert_eq!(
        (
            report.unchanged,
            report.updated,
            report.new,
            report.reidentified,
            report.unverified
        ),
        (2, 1, 1, 1, 0)
    );
    assert_eq!(report.failing, BTreeMap::from([("missing_field", 2)]));
    assert_eq!(report.regressed, 1);
    let line = |request_id: &str| {
        outcomes
            .iter()
            .find(|o| o.request_id.as_deref() == Some(request_id))
            .unwrap_or_else(|| panic!("{request_id} reported"))
            .to_string()
    };
    assert!(line("req-changed").starts_with("updated"));
    assert!(line("req-changed").contains("fingerprint 000000000000 -> "));
    assert!(line("req-moved").contains("(was onoff:default:call:old-id"));
    assert!(line("req-refused").starts_with("regressed"));
    assert!(line("req-accepted").starts_with("new"));
    let summary = report.to_string();
    assert!(summary.contains("dry run: published nothing (would publish 5)"));
    assert!(summary.contains("not normalized 2 (not re-published): missing_field 2"));

    // Another tenant than the gateway's moves every Onoff identity.
    let mut acme = options(Source::Raw, Some(EPOCH), None, true);
    acme.tenants.insert("onoff".into(), "acme".into());
    let (report, _) = replay(&bootstrap, &acme).await.expect("dry run runs");
    assert_eq!(report.reidentified, 4);
    acme.tenants.insert("nobody".into(), "x".into());
    assert!(matches!(
        replay(&bootstrap, &acme).await,
        Err(ReplayError::InvalidOption(_))
    ));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_configured_tenant_travels_with_the_raw_record() {
    let gw = spawn_gateway(|f| f.merge(("sources.onoff.tenant", "acme"))).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let request_id = post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    let raw = gw.read_all(Topic::Raw);
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].header("cs_source_tenant"), Some("acme"));
    assert_eq!(raw[0].key_str(), "onoff:acme:call:cdr-1001");

    // No --tenant: the recorded tenant rebuilds the very same event.
    let (report, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    assert_eq!(
        (report.read, report.unchanged, report.reidentified),
        (1, 1, 0),
        "{outcomes:#?}"
    );

    // --tenant still wins: a deliberate re-tenanting moves the identity.
    let mut other = options(Source::Raw, Some(EPOCH), None, true);
    other.tenants.insert("onoff".into(), "globex".into());
    let (report, outcomes) = replay(&bootstrap, &other).await.expect("dry run runs");
    assert_eq!(report.reidentified, 1, "{outcomes:#?}");
    assert!(outcomes[0]
        .to_string()
        .contains("(was onoff:acme:call:cdr-1001"));

    // A record from before the header: --tenant, else `default`.
    let old = onoff_delivery(
        &format!("{request_id}-old"),
        &cdr("cdr-2002"),
        "2024-05-20T14:40:00.000000Z",
    );
    produce(&bootstrap, Topic::Raw.default_name(), &[old]).await;
    let (_, outcomes) = replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, true))
        .await
        .expect("dry run runs");
    let old_line = outcomes
        .iter()
        .map(ToString::to_string)
        .find(|line| line.contains("cdr-2002"))
        .expect("the old record is reported");
    assert!(
        old_line.contains("onoff:default:call:cdr-2002"),
        "{old_line}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_adds_nothing_after_dedup() {
    let gw = spawn_gateway(|f| f).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let metrics = DedupMetrics::new(&prometheus::Registry::new());
    let dedup_settings = Settings::from_figment(
        Settings::defaults()
            .merge(("kafka.bootstrap_servers", bootstrap.as_str()))
            .merge(("dedup.batch_linger_ms", 5)),
    )
    .unwrap();
    let dedup = Dedup::new(
        &dedup_settings.dedup,
        &dedup_settings.kafka,
        &dedup_settings.topics,
        metrics.clone(),
    )
    .expect("dedup starts");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dedup.run(stopped));
    let consumed = |n: u64| {
        let metrics = metrics.clone();
        async move { eventually(Duration::from_secs(30), || metrics.consumed.get() >= n).await }
    };

    post(&gw, "/v1/onoff/cdr", ONOFF_CDR).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    assert!(consumed(3).await);
    for _ in 0..2 {
        replay(&bootstrap, &options(Source::Raw, Some(EPOCH), None, false))
            .await
            .expect("replay runs");
    }
    assert!(
        consumed(9).await,
        "dedup consumed {}",
        metrics.consumed.get()
    );
    assert_eq!(metrics.forwarded.get(), 3);
    assert_eq!(metrics.duplicates.get(), 6);
    stop.send(true).unwrap();
    task.await.unwrap().expect("dedup ran without error");
    let unique = read_committed_to_end(&bootstrap, Topic::EventsUnique.default_name());
    assert_eq!(unique.len(), 3, "each event once");
    gw.stop().await;
}
