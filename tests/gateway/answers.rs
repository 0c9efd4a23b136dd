//! What a client is answered when its request is wrong: keys, bodies that
//! do not normalize or are too large, paths, methods, slow clients.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_keys_get_401_and_publish_nothing() {
    let gw = spawn_gateway(with_keys).await;
    let attempts = [
        gw.client
            .post(gw.url("/v1/onoff/cdr"))
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client
            .post(gw.url("/v1/onoff/cdr"))
            .header("authorization", "x-api-key nope")
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client
            .post(gw.url("/v1/onoff/cdr?token=nope"))
            .body(ONOFF_CDR)
            .send()
            .await,
        gw.client.get(gw.url("/v1/xarios/postcall")).send().await,
        gw.client
            .post(gw.url("/v1/telecmi/cdr?token="))
            .body(TELECMI_LEG_A)
            .send()
            .await,
    ];
    for resp in attempts {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(error_of(resp).await.contains("API key"));
    }
    // Every answer above came after the handler finished, so the topics are
    // final: nothing may have been written.
    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0, "{topic:?}");
    }
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"callstream_gateway_auth_failures_total{source="onoff"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"callstream_gateway_requests_total{outcome="unauthorized",source="xarios"} 1"#
    ));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_deliveries_go_to_the_dlq_with_200() {
    let gw = spawn_gateway(|f| f).await;
    let cases = [
        ("/v1/onoff/cdr", "{not json", "malformed"),
        (
            "/v1/onoff/cdr",
            r#"{"test":true,"message":"Integration test"}"#,
            "",
        ),
        (
            "/v1/onoff/cdr",
            r#"{"eventName":"CDR","callStatus":"ANSWERED"}"#,
            "missing_field",
        ),
        (
            "/v1/telecmi/cdr",
            r#"{"type":"cdr","status":"answered"}"#,
            "missing_field",
        ),
    ];
    for (path, body, _) in cases {
        let resp = post_json(&gw, path, body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{body}");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["status"], "dead_lettered");
    }
    let dlq = gw.read(Topic::Dlq, cases.len());
    assert_eq!(dlq.len(), cases.len());
    for (path, body, reason) in cases {
        let record = dlq
            .iter()
            .find(|r| r.payload == body.as_bytes())
            .expect("each body dead-lettered");
        assert_eq!(record.header("cs_path"), Some(path));
        assert!(record
            .header("cs_dlq_detail")
            .is_some_and(|d| !d.is_empty()));
        if !reason.is_empty() {
            assert_eq!(record.header("cs_dlq_reason"), Some(reason), "{body}");
        }
        assert_eq!(record.key_str(), record.header("cs_request_id").unwrap());
    }
    assert_eq!(
        gw.count(Topic::Raw),
        cases.len() as i64,
        "the raw topic keeps even what failed"
    );
    assert_eq!(gw.count(Topic::Events), 0);
    assert!(gw
        .metrics()
        .await
        .contains("callstream_gateway_dlq_records_total"));
    gw.stop().await;
}

/// A body within `max_body_bytes` whose normalized event is larger than a
/// Kafka record may be (form data escapes control characters six times
/// over in JSON) is dead-lettered beside its raw record, not spooled as if
/// Kafka were down: such a delivery would fail every drain attempt and hold
/// every later spooled delivery behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_kafka_is_dead_lettered_and_nothing_waits_behind_it() {
    let gw = spawn_gateway(|f| f.merge(("max_body_bytes", 100_000))).await;
    let body = format!(
        "triggerId=t-1&tenantId=acme&cdr[id]=huge-1&cdr[start]=2024-05-29T09:37:35Z&customData[note]={}",
        "%01".repeat(30_000)
    );
    assert!(body.len() < 100_000);
    let resp = gw
        .client
        .post(gw.url("/v1/xarios/postcall"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "dead_lettered");
    let dlq = gw.read(Topic::Dlq, 1);
    assert_eq!(dlq[0].payload, body.as_bytes(), "the request, as received");
    assert_eq!(dlq[0].header("cs_dlq_reason"), Some("event_too_large"));
    assert_eq!(gw.read(Topic::Raw, 1)[0].payload, body.as_bytes());

    // Kafka is fine: the next delivery is published, not spooled.
    let resp = post_json(&gw, "/v1/xarios/postcall", XARIOS_JSON).await;
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "published");
    assert_eq!(gw.count(Topic::Events), 1);
    assert_eq!(gw.metric("callstream_gateway_kafka_degraded").await, 0.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_path_and_method_errors_are_json_and_publish_nothing() {
    let gw = spawn_gateway(|f| f.merge(("max_body_bytes", 1024))).await;
    let big = format!(
        r#"{{"id":"1","eventName":"CDR","callNotes":"{}"}}"#,
        "x".repeat(2048)
    );
    let resp = post_json(&gw, "/v1/onoff/cdr", &big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(resp).await.contains("1024"));

    let resp = post_json(&gw, "/v1/nope", "{}").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(error_of(resp).await.contains("/v1/nope"));

    let resp = gw.client.get(gw.url("/v1/onoff/cdr")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    assert!(error_of(resp).await.contains("GET"));

    let resp = gw
        .client
        .delete(gw.url("/v1/xarios/postcall"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "GET, POST, PUT");

    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0);
    }
    gw.stop().await;
}

async fn raw_exchange(gw: &TestGateway, head: &str, wait: Duration) -> (String, Duration) {
    let addr = gw.address.trim_start_matches("http://");
    callstream_testkit::raw_exchange(addr, head.as_bytes(), wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let gw = spawn_gateway(|f| {
        f.merge(("body_read_timeout_ms", 300))
            .merge(("header_read_timeout_ms", 1000))
    })
    .await;
    // Headers promise a body that never comes.
    let (answer, took) = raw_exchange(
        &gw,
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 300 ms"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Headers that never finish: the connection is closed.
    let (answer, took) = raw_exchange(
        &gw,
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(!answer.contains("200"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "closed after the header timeout, not {took:?}"
    );
    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0);
    }
    gw.stop().await;
}

/// One answer read off a raw connection.
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts it is a JSON error answer with `status`: its `error`.
    fn json_error(&self, status: &str) -> String {
        assert!(
            self.status_line.starts_with(&format!("HTTP/1.1 {status}")),
            "{}",
            self.status_line
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{status}: body {:?} is not JSON: {e}", self.body));
        body["error"]
            .as_str()
            .expect("error bodies have an `error` string")
            .to_string()
    }
}

/// The answers in `raw`, each framed by its `content-length`.
fn answers(raw: &str) -> Vec<Answer> {
    let mut rest = raw;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (head, after) = rest
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {rest:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (name, value) = l.split_once(':').expect("a header line");
                (name.to_string(), value.trim().to_string())
            })
            .collect();
        let answer = Answer {
            status_line,
            headers,
            body: String::new(),
        };
        let length: usize = answer
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length in {head:?}"))
            .parse()
            .unwrap();
        assert!(after.len() >= length, "body cut short: {raw:?}");
        out.push(Answer {
            body: after[..length].to_string(),
            ..answer
        });
        rest = &after[length..];
    }
    out
}

/// What the HTTP server answers itself, before a request reaches the
/// gateway (unparseable or too large heads), is JSON like every other
/// error answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_heads_get_json_answers() {
    let gw = spawn_gateway(|f| f).await;
    let wait = Duration::from_secs(10);
    for malformed in [
        "NOT A REQUEST LINE\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
    ] {
        let (raw, _) = raw_exchange(&gw, malformed, wait).await;
        let answer = answers(&raw);
        assert_eq!(answer.len(), 1, "{raw:?}");
        assert!(answer[0].json_error("400").contains("malformed request"));
        assert_eq!(answer[0].header("connection"), Some("close"));
    }

    let too_large = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let (raw, _) = raw_exchange(&gw, &too_large, wait).await;
    let answer = answers(&raw);
    assert_eq!(answer.len(), 1, "{raw:?}");
    assert!(answer[0].json_error("431").contains("too large"));

    for topic in [Topic::Raw, Topic::Events, Topic::Dlq] {
        assert_eq!(gw.count(topic), 0);
    }
    gw.stop().await;
}

/// actix-http computes the head deadline from a clock it refreshes every
/// 500 ms, so the timeout here stays well above that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_completes_gets_a_json_408() {
    let gw = spawn_gateway(|f| f.merge(("header_read_timeout_ms", 1000))).await;
    let (raw, took) = raw_exchange(
        &gw,
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    )
    .await;
    let answer = answers(&raw);
    assert_eq!(answer.len(), 1, "{raw:?}");
    assert!(answer[0].json_error("408").contains("within 1000 ms"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    gw.stop().await;
}

/// actix-http bounds the head of a connection's first request only; the
/// gateway bounds every one (`gateway/src/server/head_deadline.rs`). A
/// client that sent a good request, then trickles the next head a byte at
/// a time, is cut off once `header_read_timeout_ms` has passed since its
/// first byte. Bounded: 60 bytes at 200 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_on_a_reused_connection_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = spawn_gateway(|f| f.merge(("header_read_timeout_ms", 1000))).await;
    let addr = gw.address.trim_start_matches("http://");
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let good = format!(
        "POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{ONOFF_SMS}",
        ONOFF_SMS.len()
    );
    writer.write_all(good.as_bytes()).await.unwrap();
    // Its whole answer (a JSON body, so it ends with `}`), on a kept connection.
    let mut first = Vec::new();
    while !first.ends_with(b"}") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut chunk))
            .await
            .expect("no answer to the good request")
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&chunk[..n]);
    }
    let first = String::from_utf8_lossy(&first);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");
    // Whatever else it writes, until it closes.
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest).await;
        (
            String::from_utf8_lossy(&rest).into_owned(),
            std::time::Instant::now(),
        )
    });
    let trickle = b"POST /v1/onoff/sms HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = std::time::Instant::now();
    for byte in trickle.iter().take(60) {
        if rest.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rest, closed_at) = tokio::time::timeout(Duration::from_secs(5), rest)
        .await
        .expect("the slow head's connection was never closed")
        .unwrap();
    let took = closed_at - started;
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        rest.is_empty(),
        "nothing is answered to a head this slow: {rest}"
    );
    assert_eq!(gw.count(Topic::Events), 1);
    gw.stop().await;
}

/// Pipelined requests: the answers before the server's own stay intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_after_good_ones_gets_json_after_their_answers() {
    let gw = spawn_gateway(|f| f).await;
    let good = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let pipelined = format!("{good}{good}GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    let (raw, _) = raw_exchange(&gw, &pipelined, Duration::from_secs(10)).await;
    let answer = answers(&raw);
    assert_eq!(answer.len(), 3, "{raw:?}");
    for healthy in &answer[..2] {
        assert!(healthy.status_line.starts_with("HTTP/1.1 200"), "{raw:?}");
        assert_eq!(healthy.body, r#"{"status":"alive"}"#);
    }
    assert!(answer[2].json_error("400").contains("malformed request"));
    gw.stop().await;
}

/// An answer to HEAD announces a length it does not send; what follows it
/// on the connection must reach the client as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_an_answer_to_head_are_intact() {
    let gw = spawn_gateway(|f| f).await;
    let pipelined = "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n";
    let (raw, _) = raw_exchange(&gw, pipelined, Duration::from_secs(10)).await;
    let (head_answer, rest) = raw.split_once("\r\n\r\n").expect("an answer to HEAD");
    assert!(head_answer.starts_with("HTTP/1.1 200"), "{raw:?}");
    assert!(head_answer.contains("content-length: 18"), "{raw:?}");
    assert!(rest.starts_with("HTTP/1.1 200"), "{raw:?}");
    let (_, rest) = rest.split_once("\r\n\r\n").unwrap();
    let rest = rest
        .strip_prefix(r#"{"status":"alive"}"#)
        .unwrap_or_else(|| panic!("{raw:?}"));
    // Past an answer to HEAD the server's own answer is left as it wrote it.
    assert!(rest.starts_with("HTTP/1.1 400"), "{raw:?}");
    gw.stop().await;
}
