//! A declarative source defined only in a TOML file (the worked example of
//! `docs/declared-sources.md`): served by the gateway, its token checked,
//! what its mapping refuses dead-lettered, its events through dedup into
//! the PostgreSQL store, and its raw records replayed with a fixed mapping.

use std::collections::BTreeMap;
use std::time::Duration;

use figment::providers::{Format, Toml};
use prometheus::Registry;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use callstream_consumers::config::Settings as ConsumerSettings;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_consumers::replay::report::Verdict;
use callstream_consumers::replay::{self, ReplayOptions, Source};
use callstream_consumers::store::StoreWriter;
use callstream_schemas::Topic;
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::{start_sink, wait_caught_up};
use callstream_testkit::{count_records, eventually, read_committed_to_end, spawn_gateway};

const EXAMPLE: &str = include_str!("../../docs/examples/aircall-declared.toml");
const TOKEN: &str = "aircall-webhook-token-7f3e";
const PATH: &str = "/v1/aircall-declared/webhook";

/// The example with a real token, in a file of its own.
fn config_file(dir: &tempfile::TempDir, example: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.toml");
    let text = example.replace("replace-with-the-webhook-token", TOKEN);
    assert_ne!(text, example, "the example names its token placeholder");
    std::fs::write(&path, text).expect("write the config file");
    path
}

fn call(event: &str, status: &str, extra: Value) -> Value {
    let mut data = json!({"id": 4242, "direction": "inbound", "status": status,
        "started_at": 1732622895, "raw_digits": "+1 800-123-4567",
        "user": {"id": 7, "name": "Jane Agent", "email": "jane@example.com"},
        "number": {"digits": "+33 1 23 45 67 89"}, "contact": {}});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"resource": "call", "event": event, "timestamp": 1732622900, "token": TOKEN, "data": data})
}

fn dedup_settings(bootstrap: &str) -> ConsumerSettings {
    let figment = ConsumerSettings::defaults()
        .merge(("kafka.bootstrap_servers", bootstrap))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_source_from_a_toml_file_reaches_the_store_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(&dir, EXAMPLE);
    let gw = spawn_gateway(|f| f.merge(Toml::file(&file))).await;
    let bootstrap = gw.broker.bootstrap_servers();
    let post = |body: Value| {
        let gw = &gw;
        async move { super::post_json(gw, PATH, &body.to_string()).await }
    };

    // Ringing, then ended (answered), then a comment on the finished call.
    let ended = call(
        "call.ended",
        "done",
        json!({"answered_at": 1732622910, "ended_at": 1732622990, "duration": 80}),
    );
    let mut commented = ended.clone();
    commented["event"] = "call.commented".into();
    commented["data"]["comments"] = json!([{"content": "Wants a callback"}, {"content": "VIP"}]);
    for body in [
        call("call.created", "initial", json!({})),
        ended.clone(),
        ended.clone(),
        commented,
    ] {
        assert_eq!(post(body).await.status(), StatusCode::OK);
    }
    // The wrong token publishes nothing; a user event is refused by the
    // mapping, dead-lettered and answered 200, like a built-in source's.
    let mut forged = ended.clone();
    forged["token"] = "not-the-token".into();
    assert_eq!(post(forged).await.status(), StatusCode::UNAUTHORIZED);
    let mut user = call("user.created", "", json!({}));
    user["resource"] = "user".into();
    assert_eq!(post(user).await.status(), StatusCode::OK);
    assert_eq!(gw.count(Topic::Raw), 5);
    let dead = gw.read(Topic::Dlq, 1);
    assert_eq!(dead[0].header("cs_dlq_reason"), Some("unknown_event_type"));
    assert_eq!(dead[0].header("cs_source"), Some("aircall_declared"));

    let events = gw.read(Topic::Events, 4);
    for record in &events {
        let event = record.json();
        callstream_testkit::assert_valid_event(&event);
        assert_eq!(event["provider"], "aircall_declared");
        assert!(!String::from_utf8_lossy(&record.payload).contains(TOKEN));
    }
    for raw in gw.read(Topic::Raw, 5) {
        assert!(
            !String::from_utf8_lossy(&raw.payload).contains(TOKEN),
            "the token is redacted"
        );
    }

    // Dedup, then the store, into a fresh database.
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    callstream_consumers::pg::migrate(&mut client)
        .await
        .expect("migrations apply");
    let settings = dedup_settings(&bootstrap);
    let dedup = Dedup::new(
        &settings.dedup,
        &settings.kafka,
        &settings.topics,
        DedupMetrics::new(&Registry::new()),
    )
    .expect("dedup starts");
    let (stop_dedup, stopped) = watch::channel(false);
    let dedup = tokio::spawn(dedup.run(stopped));
    let unique = Topic::EventsUnique.default_name();
    // Three events: the step, and the call in two revisions (the resend dropped).
    assert!(
        eventually(Duration::from_secs(60), || read_committed_to_end(
            &bootstrap, unique
        )
        .len()
            == 3)
        .await,
        "dedup forwarded {} records",
        read_committed_to_end(&bootstrap, unique).len()
    );
    let sink = start_sink(
        &bootstrap,
        &db.url,
        "callstream-store",
        "store",
        StoreWriter::new(&Registry::new()).unwrap(),
    )
    .await;
    wait_caught_up(
        &client,
        "callstream-store",
        count_records(&bootstrap, unique),
        Duration::from_secs(60),
    )
    .await;
    let rows = client
        .query("SELECT identity, provider, kind, status, revision, event->>'notes' FROM events ORDER BY identity", &[])
        .await
        .unwrap();
    let rows: Vec<(String, String, String, String, i32, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "aircall_declared:default-tenant:call:4242".to_string(),
                "aircall_declared".to_string(),
                "call".to_string(),
                "answered".to_string(),
                2,
                Some("Wants a callback\nVIP".to_string())
            ),
            (
                "aircall_declared:default-tenant:call_progress:4242:call.created:1732622900"
                    .to_string(),
                "aircall_declared".to_string(),
                "call_progress".to_string(),
                "ringing".to_string(),
                1,
                None
            ),
        ]
    );
    sink.stop().await;
    stop_dedup.send(true).unwrap();
    dedup.await.unwrap().expect("dedup ran");

    // Replay: without the gateway's file its records are from an unknown
    // source; with it, unchanged; with a fixed mapping, updated.
    let options = |gateway_config| ReplayOptions {
        source: Source::Raw,
        from: Some("1970-01-01T00:00:00Z".parse().unwrap()),
        to: None,
        dry_run: true,
        tenants: BTreeMap::new(),
        gateway_config,
    };
    let run = |options: ReplayOptions| {
        let settings = dedup_settings(&bootstrap);
        async move {
            let mut verdicts = Vec::new();
            let report = replay::run(&settings.kafka, &settings.topics, &options, |o| {
                verdicts.push(o.verdict.clone())
            })
            .await
            .expect("replay runs");
            (report, verdicts)
        }
    };
    let (report, _) = run(options(None)).await;
    assert_eq!(report.failing.get("unknown_source"), Some(&5), "{report}");
    let (report, _) = run(options(Some(file.clone()))).await;
    assert_eq!((report.unchanged, report.normalized()), (4, 4), "{report}");
    assert_eq!(
        report.failing.get("unknown_event_type"),
        Some(&1),
        "{report}"
    );
    // The fix: comments are now joined by ` | `; the commented call is
    // updated.
    let fixed = EXAMPLE.replace(
        r#"each = "/content", join = "\n""#,
        r#"each = "/content", join = " | ""#,
    );
    assert_ne!(
        fixed, EXAMPLE,
        "the example joins comments as this test expects"
    );
    let fixed_dir = tempfile::tempdir().unwrap();
    let (report, verdicts) = run(options(Some(config_file(&fixed_dir, &fixed)))).await;
    assert_eq!(report.updated, 1, "{report}");
    assert!(verdicts
        .iter()
        .any(|v| matches!(v, Verdict::Updated { .. })));
    gw.stop().await;
}

/// A source declared for GET and form deliveries, behind an API key: the
/// key never reaches the mapping or a record, and what the mapping cannot
/// place is dead-lettered with the field's name, answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_source_takes_query_and_form_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        r#"
[sources.acme_pbx]
tenant = "acme"
api_keys = ["k-acme-77"]

[sources.acme_pbx.declared]
formats = ["query", "form"]
time_format = "%Y-%m-%d %H:%M:%S"
routes.cdr = { path = "/v1/acme/cdr", methods = ["GET", "POST"] }

[sources.acme_pbx.declared.fields]
id = "/uniqueid"
kind = { value = "call" }
status = { pointer = "/disposition", map = { ANSWERED = "answered", "NO ANSWER" = "missed", BUSY = "busy", FAILED = "failed", BOGUS = "bogus" }, default = "unknown" }
started_at = "/start"
duration_seconds = "/billsec"
"external.number" = "/src"
"internal.number" = "/dst"
custom = { jq = "$query" }
"#,
    )
    .unwrap();
    let gw = spawn_gateway(|f| f.merge(Toml::file(&file))).await;
    let get = |query: String| {
        let gw = &gw;
        async move {
            gw.client
                .get(gw.url(&format!("/v1/acme/cdr?{query}")))
                .send()
                .await
                .unwrap()
        }
    };
    let answered = "uniqueid=1733.1&disposition=ANSWERED&start=2026-12-01+10%3A00%3A00&billsec=42&src=%2B447700900123&dst=2001";
    assert_eq!(
        get(answered.to_string()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(format!("{answered}&token=k-acme-77")).await.status(),
        StatusCode::OK
    );
    let form = gw
        .client
        .post(gw.url("/v1/acme/cdr"))
        .header("x-api-key", "k-acme-77")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("uniqueid=1733.2&disposition=NO+ANSWER&start=2026-12-01+10%3A05%3A00&src=%2B447700900124")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    // JSON is not among its formats; a status outside the event's is not
    // placed: both dead-lettered, both answered 200.
    let json = gw
        .client
        .post(gw.url("/v1/acme/cdr"))
        .header("x-api-key", "k-acme-77")
        .header("content-type", "application/json")
        .body(r#"{"uniqueid": "1733.3"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::OK);
    assert_eq!(
        get("uniqueid=1733.4&disposition=BOGUS&token=k-acme-77".into())
            .await
            .status(),
        StatusCode::OK
    );

    let events: Vec<Value> = gw.read(Topic::Events, 2).iter().map(|r| r.json()).collect();
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e["identity"] == format!("acme_pbx:acme:call:{id}"))
            .unwrap_or_else(|| panic!("no event {id} in {events:?}"))
    };
    let first = by_id("1733.1");
    callstream_testkit::assert_valid_event(first);
    assert_eq!(first["status"], "answered");
    assert_eq!(first["started_at"], "2026-12-01T10:00:00Z");
    assert_eq!(first["duration_seconds"], 42.0);
    assert_eq!(first["external"]["number"], "+447700900123");
    assert!(
        first["custom"].get("token").is_none(),
        "the key is not handed to the mapping: {first}"
    );
    assert_eq!(first["custom"]["billsec"], "42");
    assert_eq!(by_id("1733.2")["status"], "missed");
    let dead = gw.read(Topic::Dlq, 2);
    let reasons: Vec<_> = dead
        .iter()
        .map(|r| r.header("cs_dlq_reason").unwrap_or_default().to_string())
        .collect();
    assert!(reasons.contains(&"malformed".to_string()), "{reasons:?}");
    assert!(
        reasons.contains(&"invalid_field".to_string()),
        "{reasons:?}"
    );
    for record in gw.read_all(Topic::Raw) {
        assert!(!String::from_utf8_lossy(&record.payload).contains("k-acme-77"));
        assert!(!record
            .header("cs_query")
            .unwrap_or_default()
            .contains("k-acme-77"));
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("source=\"acme_pbx\""),
        "the source has its own label"
    );
    gw.stop().await;
}
