//! SIGTERM: in-flight requests finish durably, and the gateway exits within
//! docker's 10 s even with Kafka unreachable.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_in_flight_requests_finish_durably() {
    const REQUESTS: usize = 20;
    // Slow acknowledgements: the requests are still waiting when SIGTERM lands.
    let (broker, _spool, gw) = slow_broker_and_gateway(300, &[]);
    let client = reqwest::Client::new();
    let url = gw.url("/v1/onoff/sms");
    let requests = tokio::spawn(join_all((0..REQUESTS).map(move |i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(&url)
                .body(sms(&format!("term-{i}")))
                .send()
                .await
                .map(|r| r.status())
        }
    })));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let answers = requests.await.unwrap();
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(s) if *s == StatusCode::OK)),
        "every in-flight request got its 200: {answers:?}"
    );
    let in_kafka = ids_in_raw_topic(&broker.bootstrap_servers());
    for i in 0..REQUESTS {
        assert!(
            in_kafka.contains(&format!("term-{i}")),
            "term-{i} is durable"
        );
    }
}

/// Docker's default grace period between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// With Kafka unreachable, SIGTERM ends the gateway within docker's grace
/// period, whatever the spool drainer and the in-flight requests are doing
/// (deliveries still arriving, spooled segments being retried), and
/// nothing acknowledged is lost: it stays in the spool for the next start.
/// Several runs, since where SIGTERM lands in the drainer's cycle of
/// attempts and pauses varies; the spool carries over from run to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_kafka_unreachable_exits_promptly_and_keeps_the_spool() {
    const RUNS: usize = 6;
    // Production defaults otherwise (publish_timeout_ms, shutdown_timeout_secs).
    let (broker, _spool, env) = broker_and_spool();
    let client = reqwest::Client::new();
    let mut acked = HashSet::new();
    let mut exits = Vec::new();
    for run in 0..RUNS {
        broker.cluster().broker_up(-1).unwrap();
        let gw = ServiceProcess::gateway(BINARY, &env);
        for n in 0..5 {
            let id = format!("up{run}-{n}");
            let answer = client
                .post(gw.url("/v1/onoff/sms"))
                .body(sms(&id))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{id} with Kafka up");
            acked.insert(id);
        }
        broker.cluster().broker_down(-1).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(
            gw.url("/v1/onoff/sms"),
            format!("down{run}"),
            4,
            stop.clone(),
        ));
        // Until deliveries are being spooled, then a little longer each
        // run, so SIGTERM lands at a different point of the drainer's cycle.
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric_value(
            &gw.metrics().await,
            "callstream_gateway_spool_appended_records_total",
        )
        .is_none_or(|n| n == 0.0)
        {
            assert!(
                Instant::now() < deadline,
                "run {run}: nothing spooled with Kafka down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(700 * run as u64)).await;
        let logs = gw.logs();
        let (status, took) =
            tokio::task::spawn_blocking(move || gw.terminate_within(STOP_GRACE * 2))
                .await
                .unwrap();
        stop.store(true, Ordering::SeqCst);
        let got = load.await.unwrap();
        exits.push(took);
        assert!(
            status.is_some_and(|s| s.success()),
            "run {run}: no clean exit within {:?}: {status:?}",
            STOP_GRACE * 2
        );
        let last_lines: Vec<String> = logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("librdkafka"))
            .rev()
            .take(12)
            .cloned()
            .collect();
        assert!(
            took < STOP_GRACE,
            "run {run}: the exit took {took:?} with Kafka unreachable (runs so far: {exits:?}); its last lines, newest first: {last_lines:#?}"
        );
        assert!(
            !got.is_empty(),
            "run {run}: nothing acknowledged with Kafka down"
        );
        acked.extend(got);
    }

    // Kafka back: the next start replays every acknowledged delivery.
    restart_until_all_in_kafka(&broker, &env, &acked).await;
    println!(
        "prompt stop test: {RUNS} SIGTERMs with Kafka unreachable, exits took {exits:?}; {} acknowledged, all in Kafka",
        acked.len()
    );
}
