//! The binary as someone trying callstream out starts it: no Kafka
//! configured, so the embedded in-memory broker. That setup must not be
//! reachable by real providers, and when the broker drops records it
//! acknowledged, the gateway must say so.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use callstream_testkit::{metric_value, LogLines, ServiceProcess, GATEWAY_READY};
use reqwest::StatusCode;

const BINARY: &str = env!("CARGO_BIN_EXE_callstream-gateway");

/// The JSON log lines whose `message` contains `text`.
fn logged(logs: &LogLines, text: &str) -> Vec<serde_json::Value> {
    logs.lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|log| log["message"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

/// The local addresses of the sockets listening on `port`, as the kernel
/// lists them (`/proc/net/tcp` and `tcp6`; nothing is sent anywhere).
fn listening_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN.
            let Some((addr, hex_port)) = fields.get(1).and_then(|a| a.split_once(':')) else {
                continue;
            };
            if fields.get(3) == Some(&"0A") && u16::from_str_radix(hex_port, 16) == Ok(port) {
                out.push(addr.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_configuration_it_serves_loopback_only_and_metrics_off_the_webhook_port() {
    // The defaults under test are fixed ports.
    for port in [8080, 8081] {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "this test needs 127.0.0.1:{port} free: it checks the default addresses"
        );
    }
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::start(
        BINARY,
        &[("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string())],
        GATEWAY_READY,
    );
    let ready = logged(&gw.logs(), GATEWAY_READY);
    assert_eq!(ready[0]["listen"], "127.0.0.1:8080", "{ready:?}");
    assert_eq!(ready[0]["admin_listen"], "127.0.0.1:8081", "{ready:?}");
    let started = logged(&gw.logs(), "embedded Kafka-protocol broker started");
    let warning = started[0]["message"].as_str().unwrap();
    for said in [
        "5 MiB or 100,000 batches per partition",
        "lost on exit",
        "loopback",
    ] {
        assert!(warning.contains(said), "{warning}");
    }

    // Bound to 127.0.0.1 (0100007F) alone: not 0.0.0.0, not [::].
    assert_eq!(listening_on(8080), vec!["0100007F".to_string()]);

    let client = reqwest::Client::new();
    let healthz = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), StatusCode::OK);
    let on_webhooks = client.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(on_webhooks.status(), StatusCode::NOT_FOUND);
    assert!(gw
        .metrics()
        .await
        .contains("callstream_gateway_requests_total"));
    assert!(gw.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_embedded_broker_discards_are_logged_and_counted() {
    // About 7.5 MiB into one partition of the raw topic: more than the
    // mock's 5 MiB per partition.
    const DELIVERIES: usize = 120;
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::gateway(
        BINARY,
        &[
            ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
            ("CALLSTREAM_KAFKA__EMBEDDED_PARTITIONS", "1".to_string()),
        ],
    );
    let client = reqwest::Client::new();
    // Incompressible, as the producer compresses.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut noise = || {
        (0..64 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect::<String>()
    };
    for n in 0..DELIVERIES {
        let text = noise();
        let sms = format!(
            r#"{{"id":"big-{n}","eventName":"SMS","date":"2024-01-01T10:00:00Z","smsDirection":"RECEIVED","body":"{text}"}}"#
        );
        let answer = client
            .post(gw.url("/v1/onoff/sms"))
            .header("content-type", "application/json")
            .body(sms)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "delivery {n}");
    }

    let raw = r#"callstream_gateway_embedded_broker_discarded_records_total{topic="raw"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = loop {
        let counted = metric_value(&gw.metrics().await, raw).unwrap_or(0.0);
        if counted > 0.0 || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(counted > 0.0, "{raw} stayed 0");

    let warnings: Vec<_> = logged(&gw.logs(), "embedded broker discarded")
        .into_iter()
        .filter(|log| log["level"] == "WARN" && log["topic"] == "callstream.raw.v1")
        .collect();
    assert!(!warnings.is_empty(), "no warning for the raw topic");
    // Once per growth: each warning reports more records gone than the last.
    let gone: Vec<i64> = warnings
        .iter()
        .map(|log| log["discarded_records"].as_i64().unwrap())
        .collect();
    assert!(gone.windows(2).all(|w| w[0] < w[1]), "{gone:?}");
    assert_eq!(warnings[0]["partition"], 0);
    println!("discarded from the raw topic: {gone:?}, counted {counted}");
    assert!(gw.terminate().success());
}
