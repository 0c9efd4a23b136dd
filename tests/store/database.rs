//! PostgreSQL going away: an outage, and a commit whose answer is lost.

use super::*;

/// PostgreSQL going away (connections cut, then refused for a while) holds
/// the consumer back without stopping it: the batch rolls back, is retried
/// with backoff on a new connection, and lands once the database is back.
/// A stop during the outage returns at once, and nothing is lost or applied
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_retried_and_loses_nothing() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let received = at("2024-06-03T12:00:00Z");
    let wave = |from: usize| -> Vec<Revision> {
        (from..from + 40)
            .map(|i| Revision {
                spec: spec("o", i, base),
                revision: 1,
                received_at: received,
            })
            .collect()
    };
    // From the cluster's `postgres` database, which stays open: the test's
    // own connection to the test database is cut too, and comes back.
    let (admin, connection) = tokio_postgres::connect(
        &db.url.replace(&format!("/{}", db.name), "/postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects to the cluster");
    tokio::spawn(connection);
    let mut client = client;
    let cut = |allow: bool| {
        let admin = &admin;
        let name = db.name.clone();
        async move {
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allow};
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
                ))
                .await
                .expect("the cluster takes the change");
        }
    };
    let (w1, w2, w3) = (wave(0), wave(100), wave(200));
    produce(&bootstrap, &w1, None).await;
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-1", writer()).await;
    wait_caught_up(&client, GROUP, 40, CATCH_UP).await;

    // Connections cut: the next batch finds its connection closed and
    // reconnects.
    cut(true).await;
    client = db.connect().await;
    produce(&bootstrap, &w2, None).await;
    wait_caught_up(&client, GROUP, 80, CATCH_UP).await;
    assert!(
        sink.metrics.db_errors.get() >= 1,
        "the lost connection was seen"
    );

    // Connections cut and refused: the batch waits and is retried.
    cut(false).await;
    produce(&bootstrap, &w3, None).await;
    let deadline = std::time::Instant::now() + CATCH_UP;
    while sink.metrics.db_errors.get() < 4 {
        assert!(std::time::Instant::now() < deadline, "no retries seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                db.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored, 0,
        "no connection to the database while it refuses them"
    );
    tokio::time::timeout(Duration::from_secs(10), sink.stop())
        .await
        .expect("a stop during the outage returns");

    cut(true).await;
    client = db.connect().await;
    assert_eq!(
        stored_position(&client, GROUP).await,
        80,
        "the third wave waited"
    );
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-2", writer()).await;
    wait_caught_up(&client, GROUP, 120, CATCH_UP).await;
    assert_eq!(
        sink.metrics.consumed.get(),
        40,
        "only the third wave was left"
    );
    let all: Vec<Revision> = w1.iter().chain(&w2).chain(&w3).cloned().collect();
    assert_newest_revisions(&client, &all).await;
    sink.stop().await;
}

/// A TCP relay to PostgreSQL that, once, forwards a transaction's `COMMIT`
/// and then cuts the connection before PostgreSQL's answer comes back: the
/// commit lands, and the sink never hears of it.
async fn losing_one_commit_answer(db_url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    let upstream = db_url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the URL")
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let relayed = db_url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let armed = armed.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // Set before the COMMIT goes out, checked before each answer
                // is passed on: so no answer read after it reaches the sink
                // (`abort` would not do: a copy mid-poll on another worker
                // can still pass the COMMIT's answer on).
                let muted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let mute = muted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // Dropping the write half: the sink reads EOF.
                        if muted.load(std::sync::atomic::Ordering::SeqCst)
                            || client_write.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                    // Only the first COMMIT after records were written.
                    let cut = commit && armed.swap(false, std::sync::atomic::Ordering::SeqCst);
                    if cut {
                        // No answer reaches the sink from here on.
                        mute.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if cut {
                        // Time for PostgreSQL to commit, then the line drops.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            });
        }
    });
    relayed
}

/// A commit whose answer was lost leaves the counters equal to what was
/// committed: the batch landed once and counts once (not as fenced, not
/// as nothing), and the undecodable record in it counts once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_counts_what_committed() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let records: Vec<Revision> = (0..20)
        .map(|i| Revision {
            spec: spec("l", i, base),
            revision: 1,
            received_at: at("2024-06-03T12:00:00Z"),
        })
        .collect();
    // One partition, so one lane and one transaction holds the batch.
    produce(&bootstrap, &records, Some(0)).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(unique_topic())
                .partition(0)
                .key("bad")
                .payload("not an event"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let relayed = losing_one_commit_answer(&db.url).await;
    // The positions are read through the relay too, but no COMMIT precedes
    // the batch's: the first one cut is the batch's.
    let sink = start_sink(&bootstrap, &relayed, GROUP, "kafka-group", writer()).await;
    wait_caught_up(&client, GROUP, 21, CATCH_UP).await;
    let deadline = std::time::Instant::now() + CATCH_UP;
    while sink.metrics.consumed.get() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "consumed stayed at {} after the batch landed (fenced {})",
            sink.metrics.consumed.get(),
            sink.metrics.fenced.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sink.metrics.db_errors.get() >= 1,
        "the lost answer was seen"
    );
    assert_eq!(sink.metrics.fenced.get(), 0, "its own commit is no fence");
    assert_eq!(sink.metrics.consumed.get(), 20);
    assert_eq!(sink.metrics.undecodable.get(), 1);
    assert_newest_revisions(&client, &records).await;
    sink.stop().await;
}
