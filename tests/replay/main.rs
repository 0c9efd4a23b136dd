//! callstream-replay against the real gateway and a real Kafka-protocol
//! broker: replayed events are the gateway's records again (so dedup drops
//! them), DLQ records that parse now are published with their original
//! request, the rest are reported and published nowhere, ranges select
//! exactly their records, and a dry run publishes nothing.

mod dlq;
mod raw;
mod selection;

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
        gateway_config: None,
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
