//! More requests than the gateway takes at once: 503 quickly, bounded memory.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_answers_503_quickly_and_memory_stays_bounded() {
    const REQUESTS: usize = 2_000;
    const LIMIT: usize = 32;
    // A slow broker keeps requests in flight long enough to hit the limit.
    let (broker, _spool, gw) =
        slow_broker_and_gateway(200, &[("CALLSTREAM_MAX_IN_FLIGHT", LIMIT.to_string())]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = gw.url("/v1/onoff/sms");
    let started = Instant::now();
    let answers = join_all((0..REQUESTS).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let resp = client
                .post(&url)
                .body(sms(&format!("ov-{i}")))
                .send()
                .await
                .expect("answered");
            let retry_after = resp.headers().contains_key("retry-after");
            (resp.status(), retry_after, i)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for (status, retry_after, _) in &answers {
        *counts.entry(status.as_u16()).or_default() += 1;
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "503 carries Retry-After");
        }
    }
    assert!(
        counts.keys().all(|s| *s == 200 || *s == 503),
        "only 200 or 503: {counts:?}"
    );
    assert!(
        counts.get(&503).is_some_and(|n| *n > 0),
        "the limit refused some: {counts:?}"
    );
    assert!(counts.get(&200).is_some_and(|n| *n >= LIMIT), "{counts:?}");
    let healthy = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(
        healthy.status(),
        StatusCode::OK,
        "still alive after the burst"
    );
    let peak_mib = gw.peak_rss_kib() / 1024;
    assert!(peak_mib < 128, "peak RSS {peak_mib} MiB under overload");
    let acked: HashSet<String> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .map(|(_, _, i)| format!("ov-{i}"))
        .collect();
    let in_kafka = ids_in_raw_topic(&broker.bootstrap_servers());
    assert!(acked.is_subset(&in_kafka), "every 200 is in Kafka");
    println!(
        "overload test: {REQUESTS} concurrent requests, limit {LIMIT}, answered in {elapsed:?}: {counts:?}, peak RSS {peak_mib} MiB"
    );
}
