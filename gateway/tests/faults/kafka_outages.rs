//! Kafka away under load, and kill -9: every acknowledged delivery reaches
//! Kafka, in key order, from the spool.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_under_steady_load_loses_nothing_and_keeps_key_order() {
    const KEYS: usize = 20;
    const VERSIONS: usize = 12;
    let gw = spawn_gateway(|f| f.merge(("kafka.publish_timeout_ms", 400))).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let (client, url, done) = (gw.client.clone(), gw.url("/v1/onoff/cdr"), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            // One key's versions are sent one after another: that is the
            // order Kafka must keep.
            for v in 0..VERSIONS {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(cdr(&format!("call-{k}"), v))
                    .send()
                    .await
                    .expect("answered");
                statuses.push(resp.status());
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            statuses
        }));
    }
    let total = KEYS * VERSIONS;
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            let start = Instant::now();
            while done.load(Ordering::SeqCst) < n && start.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(total / 4).await;
    gw.broker.cluster().broker_down(-1).unwrap();
    wait_for(total * 3 / 4).await;
    gw.broker.cluster().broker_up(-1).unwrap();

    let mut answered = 0;
    for t in tasks {
        let statuses = t.await.unwrap();
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
        answered += statuses.len();
    }
    assert_eq!(answered, total);
    let spooled = gw
        .metric("callstream_gateway_spool_appended_records_total")
        .await;
    assert!(
        spooled > 0.0,
        "the outage must have sent deliveries to the spool"
    );

    // Read until every acknowledged version is there (duplicates allowed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    loop {
        let mut raw = gw.read_all(Topic::Raw);
        raw.sort_by_key(|r| (r.partition, r.offset));
        by_key.clear();
        for r in &raw {
            by_key
                .entry(r.key_str().to_string())
                .or_default()
                .push(version_of(&r.payload));
        }
        let complete = by_key.len() == KEYS
            && by_key
                .values()
                .all(|vs| (0..VERSIONS).all(|v| vs.contains(&v)));
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, versions) in &by_key {
        let mut first_seen = Vec::new();
        for v in versions {
            if !first_seen.contains(v) {
                first_seen.push(*v);
            }
        }
        assert_eq!(
            first_seen,
            (0..VERSIONS).collect::<Vec<_>>(),
            "{key}: a version is missing or overtook an older one: {versions:?}"
        );
        assert_eq!(
            versions.last(),
            Some(&(VERSIONS - 1)),
            "{key}: the newest version must be last: {versions:?}"
        );
    }
    println!(
        "outage test: {total} requests answered 200, {spooled} spooled, 0 lost, per-key order kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_never_loses_an_acknowledged_delivery() {
    const ROUNDS: usize = 6;
    let (broker, _spool, mut env) = broker_and_spool();
    env.push(("CALLSTREAM_KAFKA__PUBLISH_TIMEOUT_MS", "400".to_string()));
    let mut acked = HashSet::new();
    let mut per_round = Vec::new();
    for round in 0..ROUNDS {
        let kafka_up = round % 2 == 0;
        if kafka_up {
            broker.cluster().broker_up(-1).unwrap();
        } else {
            broker.cluster().broker_down(-1).unwrap();
        }
        let gw = ServiceProcess::gateway(BINARY, &env);
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(
            gw.url("/v1/onoff/sms"),
            format!("r{round}"),
            8,
            stop.clone(),
        ));
        // Kill at a different point of each round, mid-load.
        // The first deliveries of a Kafka-down round wait out the publish
        // deadline (plus librdkafka's ~1 s timeout scan) before spooling.
        tokio::time::sleep(Duration::from_millis(2_000 + 200 * round as u64)).await;
        gw.kill9();
        stop.store(true, Ordering::SeqCst);
        let got = load.await.unwrap();
        per_round.push((kafka_up, got.len()));
        acked.extend(got);
    }
    assert!(
        per_round.iter().all(|(_, n)| *n > 0),
        "every round acknowledged something: {per_round:?}"
    );

    // Restart with Kafka up: whatever is still spooled is replayed.
    restart_until_all_in_kafka(&broker, &env, &acked).await;
    println!(
        "kill -9 test: {ROUNDS} rounds (kafka_up, acked) {per_round:?}: {} acknowledged, all in Kafka, 0 lost",
        acked.len()
    );
}
