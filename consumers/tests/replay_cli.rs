//! The `callstream-replay` binary against the real gateway's broker: a dry
//! run prints its lines and summary on stdout and publishes nothing; an
//! invalid range exits non-zero before reading anything.

use std::process::Output;

use callstream_schemas::Topic;
use callstream_testkit::{spawn_gateway, TestGateway};

const REPLAY: &str = env!("CARGO_BIN_EXE_callstream-replay");

const ONOFF_SMS: &str = r#"{"id":"sms-77","eventName":"SMS","onoffUserName":"John Doe","onoffUserNumber":"1234567890","externalNumber":"0987654321","date":"2023-05-20T14:30:00Z","smsDirection":"SENT","body":"This is the body of the SMS"}"#;
const ONOFF_NO_ID: &str = r#"{"eventName":"CDR","callStatus":"ANSWERED"}"#;

async fn post(gw: &TestGateway, path: &str, body: &str) {
    let resp = gw
        .client
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("gateway answers");
    assert!(resp.status().is_success());
}

/// Runs the binary with `args` against `gw`'s broker, in a clean environment.
async fn replay(gw: &TestGateway, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(REPLAY);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BOOTSTRAP_SERVERS", gw.broker.bootstrap_servers())
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"))
        .await
        .expect("joined")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_stderr_and_stdout_stays_the_report() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = std::process::Command::new(REPLAY);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BOOTSTRAP_SERVERS", closed.to_string())
        .args(["raw", "--from", "1970-01-01T00:00:00Z"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"))
        .await
        .expect("joined");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert_eq!(stdout, "", "no report, and no log line, on stdout");
    // Its own log line (JSON: stderr is not a terminal here), then the error.
    // (librdkafka's connection failures reach the log too, but only when
    // some client polls its queue in time, so they are not asserted.)
    let started = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "replay starting")
        .unwrap_or_else(|| panic!("no start line in\n{stderr}"));
    assert_eq!(started["topic"], "callstream.raw.v1");
    assert_eq!(started["from"], "1970-01-01T00:00:00Z");
    assert!(stderr.contains("Kafka failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_what_it_would_do_and_publishes_nothing() {
    let gw = spawn_gateway(|f| f).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    post(&gw, "/v1/onoff/cdr", ONOFF_NO_ID).await;
    let events = gw.count(Topic::Events);

    let out = replay(&gw, &["raw", "--from", "1970-01-01T00:00:00Z", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        gw.count(Topic::Events),
        events,
        "a dry run publishes nothing"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("failing") && lines[0].contains("missing_field"),
        "one line per change, unchanged records stay quiet:\n{stdout}"
    );
    assert!(lines[1].starts_with("replayed callstream.raw.v1"));
    for expected in [
        "read 2 records",
        "normalized 1: unchanged 1, updated 0, new 0, reidentified 0, unverified 0",
        "dry run: published nothing (would publish 1)",
        "not normalized 1 (not re-published): missing_field 1",
    ] {
        assert!(lines.contains(&expected), "no `{expected}` in\n{stdout}");
    }

    let out = replay(&gw, &["dlq", "--tenant", "onoff=acme"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("published 0 events"), "{stdout}");
    assert_eq!(gw.count(Topic::Events), events);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_range_or_argument_exits_non_zero() {
    let gw = spawn_gateway(|f| f).await;
    post(&gw, "/v1/onoff/sms", ONOFF_SMS).await;
    let out = replay(&gw, &["raw", "--from", "0:5", "--to", "0:2"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid range"), "{stderr}");
    assert!(out.stdout.is_empty());

    for args in [
        &["raw"][..],
        &["raw", "--from", "yesterday"],
        &["dlq", "--tenant", "acme"],
        &["dlq", "--tenant", "nobody=acme"],
    ] {
        let out = replay(&gw, args).await;
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    gw.stop().await;
}
