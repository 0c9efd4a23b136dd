//! A throwaway PostgreSQL cluster from the system's binaries
//! (`/usr/lib/postgresql/15/bin`, or `PG_BIN`): for the tests, the
//! benchmarks and `callstream-dev`, never for data anyone keeps.
//!
//! `initdb` refuses to run as root, so as root the cluster runs as the
//! `postgres` user. The server is started under a small shell wrapper that,
//! when the owning process's end of a pipe closes, stops it and deletes its
//! directory: no server and no data outlive the owner, even when it panics
//! or is killed (a cluster in a `static`, which Rust never drops, included).
//! The wrapper is in its own process group, so the terminal's Ctrl-C goes
//! to the owner alone, which stops its users of the database before the
//! database.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where Debian's `postgresql-15` puts the server binaries.
pub const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The superuser `initdb` creates; trusted on 127.0.0.1, no password.
const SUPERUSER: &str = "postgres";

/// How a cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Tests and trying things out: no fsync, no synchronous commit, no
    /// full-page writes.
    Fast,
    /// Benchmarks: PostgreSQL's durable defaults, so every commit is fsynced
    /// as in production, with a production-sized buffer cache (2 GB instead
    /// of initdb's 128 MB).
    Durable,
}

/// A PostgreSQL server on 127.0.0.1 in a temporary directory, stopped (and
/// the directory deleted) when dropped or when this process exits.
pub struct Cluster {
    port: u16,
    dir: PathBuf,
    /// The wrapper; holding its stdin open keeps the server up.
    server: Child,
}

impl Drop for Cluster {
    /// Stops the server and waits until it is gone and its directory
    /// deleted, so nothing of it overlaps what the owner does next.
    fn drop(&mut self) {
        drop(self.server.stdin.take());
        let _ = self.server.wait();
    }
}

impl Cluster {
    /// Starts a new cluster: initdb, then the server (a few seconds;
    /// blocking). The error names `PG_BIN` when the binaries are missing.
    pub fn start(durability: Durability) -> anyhow::Result<Cluster> {
        let as_postgres = is_root();
        let dir = private_temp_dir(as_postgres)?;
        if let Err(e) = init(&dir, as_postgres) {
            // No wrapper yet to clean up after us.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let port = free_port()?;
        let server = match spawn_server(&dir, port, durability, as_postgres) {
            Ok(server) => server,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // From here on, dropping the cluster stops the server and cleans up.
        let cluster = Cluster { port, dir, server };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data, socket, server log); deleted once the
    /// server has stopped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of `database` in this cluster, as its superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates the empty database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .context("cannot connect to the throwaway PostgreSQL cluster")?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        Ok(self.url(name))
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let port = self.port.to_string();
        loop {
            let ready = Command::new(bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                anyhow::bail!(
                    "the throwaway PostgreSQL server did not accept connections within {READY_TIMEOUT:?}; its log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `initdb` of `dir/data`: trust on the local connections, no sync (the
/// cluster is thrown away anyway).
fn init(dir: &Path, as_postgres: bool) -> anyhow::Result<()> {
    let initdb = bin("initdb");
    let out = pg_command(&initdb, as_postgres)
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (is PostgreSQL installed? set PG_BIN to its bin directory)",
                initdb.display()
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        initdb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The wrapper: starts the server, waits for its stdin to close, then stops
/// the server at once (SIGQUIT: the data is deleted next, so a shutdown
/// checkpoint would only write for nothing) and deletes `dir`.
fn spawn_server(
    dir: &Path,
    port: u16,
    durability: Durability,
    as_postgres: bool,
) -> anyhow::Result<Child> {
    const WRAPPER: &str = r#"postgres=$1 data=$2 port=$3 dir=$4; shift 4
"$postgres" -D "$data" -p "$port" -k "$dir" "$@" 2>"$dir/server.log" & pid=$!
read _; kill -QUIT $pid; wait $pid; rm -rf "$dir""#;
    let settings: &[&str] = match durability {
        Durability::Durable => &["-c", "shared_buffers=2GB"],
        Durability::Fast => &[
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
    };
    let mut server = pg_command(Path::new("/bin/sh"), as_postgres)
        .args(["-c", WRAPPER, "sh"])
        .arg(bin("postgres"))
        .arg(dir.join("data"))
        .arg(port.to_string())
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ])
        .args(settings)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the throwaway PostgreSQL server")?;
    let _ = server.stdin.as_mut().map(|s| s.flush());
    Ok(server)
}

/// A new directory only its owner can enter, owned by `postgres` when the
/// server runs as that user.
fn private_temp_dir(as_postgres: bool) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("callstream-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if as_postgres {
        let chowned = Command::new("chown")
            .arg(SUPERUSER)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !chowned {
            let _ = std::fs::remove_dir(&dir);
            anyhow::bail!("cannot give {} to the postgres user", dir.display());
        }
    }
    Ok(dir)
}

/// A port nobody listens on now (another process may take it before the
/// server does; the server then fails to start, and says so in its log).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for PostgreSQL")?
        .port())
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_string());
    Path::new(&dir).join(name)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", SUPERUSER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}
