//! A throwaway PostgreSQL cluster from the system's binaries, for tests.
//!
//! One cluster per test process (initdb takes seconds), one fresh database
//! per test; the benchmark owns a [`TestCluster`] per measurement instead, so
//! one measurement's rows, buffers and WAL never weigh on the next. `initdb`
//! refuses to run as root, so as root the cluster runs as the `postgres`
//! user. The server is started under a small shell wrapper that, when this
//! process's end of a pipe closes, stops it and deletes its data directory:
//! no server and no data outlive the tests, even when they panic or are
//! killed. (The shared cluster lives in a static, which Rust never drops, so
//! the `TempDir` alone would leave gigabytes behind per benchmark.)

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How a cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Tests: no fsync, no synchronous commit, no full-page writes.
    Fast,
    /// Benchmarks: PostgreSQL's durable defaults, so every commit is fsynced
    /// as in production, with a production-sized buffer cache (2 GB instead
    /// of initdb's 128 MB).
    Durable,
}

/// A PostgreSQL server in a temporary directory, stopped (and the directory
/// deleted) when dropped or when this process exits.
pub struct TestCluster {
    port: u16,
    /// Holds the wrapper's stdin open; closing it stops the server.
    server: Mutex<Child>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_string());
    Path::new(&dir).join(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Drop for TestCluster {
    /// Stops the server and waits until it is gone and its directory deleted,
    /// so nothing of it overlaps what the caller does next.
    fn drop(&mut self) {
        let server = self.server.get_mut().unwrap_or_else(|e| e.into_inner());
        drop(server.stdin.take());
        let _ = server.wait();
    }
}

impl TestCluster {
    /// Starts a new cluster (initdb, then the server; a few seconds).
    pub fn start(durability: Durability) -> TestCluster {
        let as_postgres = is_root();
        // Deleted by the server's wrapper once the server has stopped.
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let data = dir.join("data");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown of the test cluster directory failed");
        }
        let out = pg_command(&bin("initdb"), as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs (is PostgreSQL installed? set PG_BIN)");
        if !out.status.success() {
            // No wrapper yet to clean up after us.
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let postgres = bin("postgres");
        let settings = match durability {
            Durability::Durable => "-c shared_buffers=2GB",
            Durability::Fast => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        };
        // Immediate shutdown (SIGQUIT): the data is deleted next, so a shutdown
        // checkpoint would only write gigabytes for nothing.
        let server_cmd = format!(
            "{} -D {} -p {port} -k {dir} -c listen_addresses=127.0.0.1 {settings} \
         -c max_connections=200 & pid=$!; read _; kill -QUIT $pid; wait $pid; rm -rf {dir}",
            postgres.display(),
            data.display(),
            dir = dir.display(),
        );
        let mut server = pg_command(Path::new("/bin/sh"), as_postgres)
            .args(["-c", &server_cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        let started = Instant::now();
        loop {
            let ready = Command::new(bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Keep stdin open: the wrapper stops the server when it closes.
        let _ = server.stdin.as_mut().map(|s| s.flush());
        TestCluster {
            port,
            server: Mutex::new(server),
        }
    }

    /// A fresh, empty database in this cluster.
    pub async fn database(&self) -> TestDatabase {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDatabase {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", self.port),
            name,
        }
    }
}

/// A fresh, empty database in a test cluster.
pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// A database in this process's shared, fast (non-durable) cluster.
    pub async fn create() -> TestDatabase {
        CLUSTER
            .get_or_init(|| TestCluster::start(Durability::Fast))
            .database()
            .await
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}
