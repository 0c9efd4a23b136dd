//! A PostgreSQL consumer started before its database can be reached waits
//! for it instead of exiting; one pointed at a database that does not exist
//! exits at once with that error. Real binaries, a real PostgreSQL, a real
//! Kafka-protocol broker.

use std::time::{Duration, Instant};

use callstream_testkit::expected::assert_newest_revisions;
use callstream_testkit::postgres::TestDatabase;
use callstream_testkit::sinks::{broker, produce, wait_caught_up};
use callstream_testkit::unique::{at, scenario};
use callstream_testkit::ServiceProcess;

const STORE: &str = env!("CARGO_BIN_EXE_callstream-store");
const ANALYTICS: &str = env!("CARGO_BIN_EXE_callstream-analytics");

/// A connection to the cluster's `postgres` database, beside `db`.
async fn admin(db: &TestDatabase) -> tokio_postgres::Client {
    let url = db.url.replace(&format!("/{}", db.name), "/postgres");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the postgres database");
    tokio::spawn(conn);
    client
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

async fn db_errors(metrics_url: &str) -> Option<f64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("callstream_store_db_errors_total "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_started_before_its_database_accepts_connections_waits_for_it() {
    let broker = broker();
    let bootstrap = broker.bootstrap_servers();
    let records = scenario(
        "startup",
        300,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:00:00Z"),
    );
    produce(&bootstrap, &records, None).await;
    let database = TestDatabase::create().await;
    let admin = admin(&database).await;
    let allow = |allow: bool| {
        let sql = format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
            database.name
        );
        let admin = &admin;
        async move { admin.batch_execute(&sql).await.expect("ALTER DATABASE") }
    };
    allow(false).await;

    let port = free_port();
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("DATABASE_URL", database.url.clone()),
        ("METRICS_LISTEN", format!("127.0.0.1:{port}")),
    ];
    let starting = tokio::task::spawn_blocking(move || ServiceProcess::consumer(STORE, &env));

    // The process is up and retrying: its failed attempts are counted where
    // ops see them, and it has not exited.
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if db_errors(&metrics_url).await.is_some_and(|n| n >= 3.0) {
            break;
        }
        assert!(
            !starting.is_finished(),
            "the store exited or started without its database"
        );
        assert!(Instant::now() < deadline, "no retries counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !starting.is_finished(),
        "running before the database took connections"
    );

    allow(true).await;
    let process = starting.await.expect("start task");
    let db = database.connect().await;
    wait_caught_up(
        &db,
        "callstream-store",
        records.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_newest_revisions(&db, &records).await;
    let waited = process
        .logs()
        .lock()
        .expect("log lock")
        .iter()
        .filter(|l| l.contains("cannot reach PostgreSQL yet"))
        .count();
    assert!(waited >= 3, "each wait is logged: {waited}");
    let status = tokio::task::spawn_blocking(move || process.terminate())
        .await
        .expect("terminate task");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

/// The store and analytics started at the same instant on one empty
/// database both come up and consume: they migrate one after the other
/// (they used to run the same migrations at once, and one died on a
/// duplicate key in PostgreSQL's catalog). Several fresh databases, since
/// the race is one of timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_analytics_started_together_on_an_empty_database_both_run() {
    const ROUNDS: usize = 5;
    let broker = broker();
    let bootstrap = broker.bootstrap_servers();
    let records = scenario(
        "together",
        20,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:00:00Z"),
    );
    produce(&bootstrap, &records, None).await;
    for round in 0..ROUNDS {
        let database = TestDatabase::create().await;
        // Each round its own consumer groups: each reads the topic from
        // the start into its fresh database.
        let env = |section: &str| {
            vec![
                ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
                ("DATABASE_URL", database.url.clone()),
                (
                    if section == "store" {
                        "CALLSTREAM_STORE__GROUP_ID"
                    } else {
                        "CALLSTREAM_ANALYTICS__GROUP_ID"
                    },
                    format!("{section}-{round}"),
                ),
            ]
        };
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let launch = |binary: &'static str, env: Vec<(&'static str, String)>| {
            let start = start.clone();
            tokio::task::spawn_blocking(move || {
                start.wait();
                ServiceProcess::consumer(binary, &env)
            })
        };
        let store = launch(STORE, env("store"));
        let analytics = launch(ANALYTICS, env("analytics"));
        let (store, analytics) = (store.await, analytics.await);
        let (Ok(store), Ok(analytics)) = (store, analytics) else {
            panic!("round {round}: the store or analytics did not come up (see its log above)");
        };
        let db = database.connect().await;
        for (group, process) in [("store", &store), ("analytics", &analytics)] {
            let health = reqwest::get(process.url("/healthz"))
                .await
                .expect("health answers");
            assert!(health.status().is_success(), "round {round}: {group}");
            wait_caught_up(
                &db,
                &format!("{group}-{round}"),
                records.len() as i64,
                Duration::from_secs(60),
            )
            .await;
        }
        for process in [store, analytics] {
            let status = tokio::task::spawn_blocking(move || process.terminate())
                .await
                .expect("terminate task");
            assert!(status.success(), "round {round}: clean exit: {status:?}");
        }
    }
}

/// SIGTERM while it waits for the database: a clean, prompt exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_waiting_for_its_database_stops_on_sigterm() {
    let broker = broker();
    let database = TestDatabase::create().await;
    let admin = admin(&database).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            database.name
        ))
        .await
        .expect("ALTER DATABASE");
    let port = free_port();
    let mut child = std::process::Command::new(STORE)
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("DATABASE_URL", &database.url)
        .env("METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("store starts");
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db_errors(&metrics_url).await.is_some_and(|n| n >= 1.0) {
        assert!(Instant::now() < deadline, "no retries counted");
        assert!(child.try_wait().expect("status").is_none(), "exited early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

/// Whether the `events` table exists (0 or 1): the migrations ran.
async fn events_tables(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Another session holds the migration lock and never lets go (a hung
/// process, a psql left open): the store says who holds it, keeps waiting
/// (a long migration is legitimate), and still stops at once on SIGTERM.
/// Once the holder is gone, a second store migrates and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_waiting_for_the_migration_lock_names_the_holder_and_stops_on_sigterm() {
    use std::io::BufRead;
    let broker = broker();
    let database = TestDatabase::create().await;
    let holder = database.connect().await;
    holder
        .batch_execute("SET application_name = 'stuck-by-hand'")
        .await
        .unwrap();
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&callstream_consumers::pg::MIGRATION_LOCK_KEY],
        )
        .await
        .unwrap();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let observer = database.connect().await;
    let named = callstream_consumers::pg::migration_lock_holder(&observer)
        .await
        .unwrap()
        .expect("the lock is held");
    assert_eq!(
        (named.pid, named.application.as_str()),
        (holder_pid, "stuck-by-hand")
    );

    let mut child = std::process::Command::new(STORE)
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("DATABASE_URL", &database.url)
        .env("METRICS_LISTEN", "127.0.0.1:0")
        .env("CALLSTREAM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("store starts");
    let (lines, logged) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = loop {
        let line = logged
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no line naming the lock's holder");
        if line.contains("migration lock") {
            break line;
        }
    };
    // INFO at first (stores started together wait for each other); the
    // WARN with the way out comes after 30 s of it.
    assert!(said.contains("\"level\":\"INFO\""), "{said}");
    assert!(
        said.contains(&format!("\"holder_pid\":{holder_pid}")),
        "{said}"
    );
    assert!(said.contains("stuck-by-hand"), "{said}");
    assert!(child.try_wait().unwrap().is_none(), "it waits");
    let tables = events_tables(&observer).await;
    assert_eq!(tables, 0, "nothing migrated while the lock is held");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_with_deadline(&mut child, Duration::from_secs(10));
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // The holder ends (as pg_terminate_backend would end it): a store now
    // takes the lock and migrates.
    drop(holder);
    let env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
        ("DATABASE_URL", database.url.clone()),
        ("METRICS_LISTEN", "127.0.0.1:0".to_string()),
    ];
    let store = tokio::task::spawn_blocking(move || ServiceProcess::consumer(STORE, &env))
        .await
        .unwrap();
    let tables = events_tables(&observer).await;
    assert_eq!(tables, 1, "migrated once the holder was gone");
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_pointed_at_a_missing_database_exits_with_the_error() {
    let broker = broker();
    let database = TestDatabase::create().await;
    let missing = database.url.replace(&database.name, "no_such_database");
    let mut child = std::process::Command::new(STORE)
        .env_clear()
        .env("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("DATABASE_URL", &missing)
        .env("METRICS_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("store starts");
    let status = wait_with_deadline(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr read");
    assert!(!status.success(), "a missing database is an error");
    assert!(
        stderr.contains("no_such_database") && stderr.contains("database_url"),
        "the error names the cause and the setting: {stderr}"
    );
}

/// The child's exit status, or a failure (after killing it) if it is still
/// running after `limit`.
fn wait_with_deadline(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("status") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
