//! The console in a real browser: Debian's headless chromium, driven by
//! playwright-core (`tests/browser/console.mjs`), against the real pieces:
//! the in-process Kafka broker, the gateway, dedup and the store into a
//! throwaway PostgreSQL, and the console itself.
//!
//! This test posts the deliveries, starts the console, runs the script
//! (sign-in, keyboard search, dead letters, dry run then redeliver, the
//! actions page, labels and landmarks) and then checks from here what the
//! browser cannot see: the redelivered event in `callstream.events.v1` and
//! the rows of `console_actions`.
//!
//! Needs node 20+, chromium and the script's packages:
//!
//! ```sh
//! apt-get install -y chromium chromium-driver
//! npm ci --prefix console/tests/browser
//! cargo test -p callstream-console --test browser
//! ```
//!
//! The README's screenshots are this test's; to regenerate them (a relative
//! directory is taken from the workspace root):
//!
//! ```sh
//! CONSOLE_SCREENSHOTS=docs/images cargo test -p callstream-console --test browser
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use figment::providers::{Format, Toml};
use prometheus::Registry;
use tokio::sync::watch;

use callstream_consumers::config::Settings as ConsumerSettings;
use callstream_consumers::dedup::{Dedup, DedupMetrics};
use callstream_consumers::store::StoreWriter;
use callstream_schemas::Topic;
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::start_sink;
use callstream_testkit::{read_all, spawn_gateway, Record};

const KEY: &str = "k-console-browser";
/// The call's customer number as Onoff posts it, and as an operator types it.
const NUMBER: &str = "+33612345678";
const TYPED: &str = "06 12 34 56 78";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The gateway's file: Onoff, and a declared source whose `notes` mapping
/// is wrong today (it expects an object; the platform sends text, and
/// indexing text fails in jq: `mapping_failed`).
const GATEWAY_TOML: &str = r#"
[sources.onoff]
api_keys = ["k-console-browser"]

[sources.acme_pbx]
tenant = "acme"
api_keys = ["k-console-browser"]

[sources.acme_pbx.declared]
routes.calls = { path = "/v1/acme/calls" }

[sources.acme_pbx.declared.fields]
id = "/call_id"
kind = { value = "call" }
status = { pointer = "/disposition", map = { ANSWERED = "answered" }, default = "unknown" }
started_at = "/start"
"external.number" = "/caller"
notes = { jq = '.note.text' }
"#;
/// The fix: text or an object's `text`.
const BROKEN_NOTES: &str = "notes = { jq = '.note.text' }";
const FIXED_NOTES: &str = r#"notes = { jq = '.note | if type == "object" then .text else . end' }"#;
const ACME_CALL: &str = r#"{"call_id": "acme-501", "disposition": "ANSWERED", "start": "2026-01-05T09:00:00Z", "caller": "+33700000001", "note": "Call back tomorrow"}"#;
const ACME_IDENTITY: &str = "acme_pbx:acme:call:acme-501";

/// The script's directory; fails, saying what to install, when node (20+),
/// chromium or playwright-core is missing: a browser test that cannot run
/// must not pass.
fn browser_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node = Command::new("node").arg("--version").output();
    let version = match node {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!(
            "node is not installed: this test drives chromium with playwright-core from npm; \
             install Node.js 20+ and npm (apt-get install -y nodejs npm), then \
             `npm ci --prefix console/tests/browser`"
        ),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version} is too old for playwright-core: install Node.js 20+"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "chromium is not installed ({CHROMIUM}): apt-get install -y chromium chromium-driver"
    );
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: npm ci --prefix console/tests/browser"
    );
    dir
}

/// Where the screenshots go (`CONSOLE_SCREENSHOTS`), a relative directory
/// taken from the workspace root, so the documented command writes
/// `docs/images/` whichever directory cargo runs the test in.
fn screenshots_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("CONSOLE_SCREENSHOTS")?);
    let dir = if dir.is_absolute() {
        dir
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
    };
    std::fs::create_dir_all(&dir).expect("create the screenshots directory");
    Some(dir)
}

fn consumer_settings(bootstrap: &str, database_url: &str) -> ConsumerSettings {
    let figment = ConsumerSettings::defaults()
        .merge(("kafka.bootstrap_servers", bootstrap))
        .merge(("database_url", database_url))
        .merge(("dedup.batch_linger_ms", 5));
    ConsumerSettings::from_figment(figment).expect("valid settings")
}

/// The dead letter of `source` with `reason`, as the console names a
/// letter's place: `<partition>:<offset>` (the topic is the section's).
fn letter(dlq: &[Record], source: &str, reason: &str) -> String {
    let record = dlq
        .iter()
        .find(|r| {
            r.header("cs_source") == Some(source) && r.header("cs_dlq_reason") == Some(reason)
        })
        .unwrap_or_else(|| {
            let seen: Vec<_> = dlq
                .iter()
                .map(|r| (r.header("cs_source"), r.header("cs_dlq_reason")))
                .collect();
            panic!("no {reason} letter of {source} in the DLQ: {seen:?}")
        });
    format!("{}:{}", record.partition, record.offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_finds_a_call_and_redelivers_a_fixed_letter() {
    let script_dir = browser_tools();
    let config_dir = tempfile::tempdir().unwrap();
    let gateway_config = config_dir.path().join("gateway.toml");
    std::fs::write(&gateway_config, GATEWAY_TOML).unwrap();
    let gw = spawn_gateway(|f| f.merge(Toml::file_exact(&gateway_config))).await;
    let bootstrap = gw.broker.bootstrap_servers();

    // Dedup and the store, so the call lands in `events`.
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    callstream_consumers::pg::migrate(&mut client)
        .await
        .expect("migrations apply");
    let settings = consumer_settings(&bootstrap, &db.url);
    let dedup = Dedup::new(
        &settings.dedup,
        &settings.kafka,
        &settings.topics,
        DedupMetrics::new(&Registry::new()),
    )
    .expect("dedup starts");
    let (stop_dedup, stopping) = watch::channel(false);
    let dedup = tokio::spawn(dedup.run(stopping));
    let store = start_sink(
        &bootstrap,
        &db.url,
        "callstream-store",
        "store",
        StoreWriter::new(&Registry::new()).unwrap(),
    )
    .await;

    // A call, a delivery that is not JSON, and one today's mapping fails.
    let call = format!(
        r#"{{"id": "cdr-console-1", "eventName": "CDR", "callStatus": "ANSWERED", "callDirection": "INBOUND",
            "externalNumber": "{NUMBER}", "externalName": "Claire Martin", "onoffUserName": "Agent Smith",
            "onoffUserNumber": "+33100000001", "callStarted": "2026-01-05T08:30:00Z",
            "callEnded": "2026-01-05T08:34:00Z", "callDuration": 240}}"#
    );
    gw.deliver("/v1/onoff/cdr", Some(KEY), &call).await;
    gw.deliver("/v1/onoff/cdr", Some(KEY), "{not json").await;
    gw.deliver("/v1/acme/calls", Some(KEY), ACME_CALL).await;
    let dlq = gw.read(Topic::Dlq, 2);
    let malformed = letter(&dlq, "onoff", "malformed");
    let mapping_failed = letter(&dlq, "acme_pbx", "mapping_failed");
    let mut landed = false;
    for _ in 0..600 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE external_number = $1",
                &[&NUMBER],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(landed, "the call reached the events table within 60 s");
    let published = |identity: &str| -> Vec<serde_json::Value> {
        read_all(&bootstrap, Topic::Events.default_name())
            .iter()
            .filter(|r| r.key_str() == identity)
            .map(Record::json)
            .collect()
    };
    assert!(
        published(ACME_IDENTITY).is_empty(),
        "dead-lettered, not published"
    );

    // The fix, in the file the console redelivers with (it reads it at
    // each run; the gateway keeps what it started with).
    let fixed = GATEWAY_TOML.replace(BROKEN_NOTES, FIXED_NOTES);
    assert_ne!(fixed, GATEWAY_TOML, "the fix applies");
    std::fs::write(&gateway_config, fixed).unwrap();

    // The console, with a user whose password is drawn now.
    let password = uuid::Uuid::new_v4().simple().to_string();
    let hash = bcrypt::hash(&password, 4).unwrap();
    let console_settings = ConsumerSettings::from_figment(
        ConsumerSettings::defaults()
            .merge(("kafka.bootstrap_servers", &bootstrap))
            .merge(("database_url", &db.url))
            .merge(("console.listen", "127.0.0.1:0"))
            .merge(("console.users.ops", hash))
            .merge(("console.gateway_config", &gateway_config))
            .merge(("console.metrics.gateway", gw.admin_url("/metrics"))),
    )
    .expect("valid console settings");
    let console = callstream_console::Console::build(console_settings)
        .await
        .expect("console builds");
    let url = format!("http://127.0.0.1:{}", console.port());
    let (stop_console, stopping) = watch::channel(false);
    let console = tokio::spawn(console.run(stopping));

    let mut env = vec![
        ("CONSOLE_URL", url.clone()),
        ("CONSOLE_USER", "ops".to_string()),
        ("CONSOLE_PASSWORD", password.clone()),
        ("CALL_NUMBER", NUMBER.to_string()),
        ("CALL_TYPED", TYPED.to_string()),
        ("MALFORMED_LETTER", malformed),
        ("FIXED_LETTER", mapping_failed.clone()),
    ];
    if let Some(dir) = screenshots_dir() {
        env.push(("CONSOLE_SCREENSHOTS", dir.display().to_string()));
    }
    let script = script_dir.join("console.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .envs(env)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown by cargo only when the test fails.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // What the browser cannot see: the event in Kafka, the audit rows.
    // Once: the dry run published nothing. With the fixed mapping's notes.
    let events = published(ACME_IDENTITY);
    assert_eq!(
        events.len(),
        1,
        "the redelivered letter's event is in {} once: {events:?}",
        Topic::Events.default_name()
    );
    assert_eq!(
        events[0]["notes"], "Call back tomorrow",
        "the fixed mapping"
    );
    // Every row, so a mismatch shows what is there.
    let rows = client
        .query(
            "SELECT actor, action, letter FROM console_actions ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let actions: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let letter = format!("{}:{mapping_failed}", Topic::Dlq.default_name());
    assert_eq!(
        actions,
        [
            ("ops".to_string(), "dry-run".to_string(), letter.clone()),
            ("ops".to_string(), "redeliver".to_string(), letter)
        ],
        "console_actions: the dry run, then the redelivery, by ops"
    );

    // A changing POST needs the page's CSRF token and a same-site origin:
    // the browser resends Basic credentials to any page that asks, so
    // without them another site's page could redeliver. Neither is done
    // nor recorded.
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{url}/dead-letters"))
        .basic_auth("ops", Some(&password))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the dead-letters page carries a CSRF token")
        .to_string();
    let form_letter = format!("{}:{mapping_failed}", Topic::Dlq.default_name());
    for (csrf, origin, what) in [
        ("", None, "no token"),
        ("forged", None, "a wrong token"),
        (
            token.as_str(),
            Some("http://evil.example"),
            "another site's origin",
        ),
    ] {
        let mut req = http
            .post(format!("{url}/dead-letters/redeliver"))
            .basic_auth("ops", Some(&password))
            .form(&[
                ("letter", form_letter.as_str()),
                ("mode", "send"),
                ("csrf", csrf),
            ]);
        if let Some(origin) = origin {
            req = req.header("Origin", origin);
        }
        let status = req.send().await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::FORBIDDEN, "{what}");
    }
    let after: i64 = client
        .query_one("SELECT count(*) FROM console_actions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 2, "refused POSTs record nothing");
    assert_eq!(published(ACME_IDENTITY).len(), 1, "and publish nothing");

    // Guessing passwords: each guess costs a bcrypt check, so an address
    // gets a minute's pause after its failures. Last in this test: every
    // request here comes from 127.0.0.1.
    let get = |password: &str| {
        http.get(format!("{url}/"))
            .basic_auth("ops", Some(password))
            .send()
    };
    // The browser's wrong password above counted already (chromium may
    // have sent it more than once).
    let allowed = callstream_console::auth::FAILURES_PER_MINUTE;
    let mut unauthorized = 0;
    let refused = loop {
        let answer = get("guess").await.unwrap();
        match answer.status() {
            reqwest::StatusCode::UNAUTHORIZED if unauthorized < allowed => unauthorized += 1,
            reqwest::StatusCode::TOO_MANY_REQUESTS => break answer,
            other => panic!("guess {}: {other}", unauthorized + 1),
        }
    };
    assert!(
        unauthorized + 3 >= allowed,
        "429 after {unauthorized} guesses"
    );
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("60")
    );
    // Ops, signed in before, are not locked out with the guesser.
    let status = get(&password).await.unwrap().status();
    assert_eq!(status, reqwest::StatusCode::OK, "a remembered sign-in");

    stop_console.send(true).unwrap();
    console.await.unwrap().expect("console ran");
    store.stop().await;
    stop_dedup.send(true).unwrap();
    dedup.await.unwrap().expect("dedup ran");
    gw.stop().await;
}
