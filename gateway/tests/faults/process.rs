//! The process itself: what it logs (no keys, no client faults at ERROR)
//! and how many HTTP worker threads it runs.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_logs_even_at_debug_level() {
    const KEY: &str = "k-7f3e-never-log-me";
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::start(
        BINARY,
        &[
            ("GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
            ("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0".to_string()),
            ("RUST_LOG", "debug".to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
            ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
            ("CALLSTREAM_SOURCES__ONOFF__API_KEYS", format!("[{KEY}]")),
            ("CALLSTREAM_SOURCES__XARIOS__API_KEYS", format!("[{KEY}]")),
        ],
        callstream_testkit::GATEWAY_READY,
    );
    let client = reqwest::Client::new();
    let sms = sms("secret-test");
    let sent = [
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("authorization", format!("x-api-key {KEY}"))
            .body(sms.clone()),
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("x-api-key", KEY)
            .body(sms.clone()),
        client
            .post(gw.url(&format!("/v1/onoff/sms?token={KEY}")))
            .body(sms.clone()),
        client.get(gw.url(&format!("/v1/xarios/postcall?token={KEY}&cdr.id=1"))),
        client
            .post(gw.url(&format!("/v1/onoff/sms?token={KEY}x")))
            .body(sms.clone()),
        client
            .post(gw.url("/v1/onoff/sms"))
            .header("authorization", format!("Bearer {KEY}-wrong"))
            .body(sms),
    ];
    let mut statuses = Vec::new();
    for request in sent {
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 401, 401]);
    let metrics = gw.metrics().await;
    let logs = gw.logs();
    assert!(gw.terminate().success());
    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains("/v1/onoff/sms")),
        "requests were logged"
    );
    for line in logs.iter().chain(std::iter::once(&metrics)) {
        assert!(!line.contains(KEY), "key leaked: {line}");
    }
}

/// Threads of process `pid` whose name starts with `prefix` (Linux keeps 15
/// bytes of a thread's name; actix-web's HTTP workers are
/// `actix-rt|system:0|arbiter:N`).
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_http_worker_threads_and_defaults_to_one_per_cpu() {
    let broker = EmbeddedBroker::start(PARTITIONS, &topics()).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let env = |workers: Option<usize>| {
        let mut env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
            ("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string()),
            // No admin listener: its own worker thread would be counted.
            ("GATEWAY_ADMIN_LISTEN", String::new()),
        ];
        if let Some(n) = workers {
            env.push(("CALLSTREAM_WORKERS", n.to_string()));
        }
        env
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    for (workers, expected) in [(Some(cpus + 1), cpus + 1), (Some(0), cpus), (None, cpus)] {
        let gw = ServiceProcess::gateway(BINARY, &env(workers));
        let answer = reqwest::Client::new()
            .post(gw.url("/v1/onoff/sms"))
            .body(sms(&format!("workers-{workers:?}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "workers = {workers:?}");
        assert_eq!(
            threads_named(gw.pid(), "actix-rt|system"),
            expected,
            "workers = {workers:?}"
        );
        assert!(gw.terminate().success());
    }
}

/// Requests the HTTP server cannot parse are answered (400, 431) and
/// closed before they reach the gateway, and anyone can send them: they
/// must not be logged at ERROR, or anyone could flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_not_logged_as_errors() {
    let spool = tempfile::tempdir().unwrap();
    let gw = ServiceProcess::gateway(
        BINARY,
        &[("CALLSTREAM_SPOOL__DIR", spool.path().display().to_string())],
    );
    let addr = format!("127.0.0.1:{}", gw.port);
    let too_large = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let malformed = [
        ("GARBAGE\r\n\r\n".to_string(), "HTTP/1.1 400"),
        (
            "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            "HTTP/1.1 400",
        ),
        ("GET /healthz HTTP/9.9\r\n\r\n".to_string(), "HTTP/1.1 400"),
        (too_large, "HTTP/1.1 431"),
    ];
    for _ in 0..10 {
        for (request, expected) in &malformed {
            let (answer, _) =
                callstream_testkit::raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5))
                    .await;
            assert!(answer.starts_with(expected), "{answer:?}");
        }
    }
    let logs = gw.logs();
    assert!(gw.terminate().success());
    // Every connection has ended once shutdown completed; wait for its line.
    let complete = callstream_testkit::eventually(Duration::from_secs(10), || {
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("shutdown complete"))
    })
    .await;
    assert!(complete, "no shutdown line");
    let errors: Vec<String> = logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
