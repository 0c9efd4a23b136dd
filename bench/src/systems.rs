//! The processes under test, each started fresh for its turn: the broker
//! (its own process, so the gateway's cost is its own), the ceiling, the
//! peer, and callstream's gateway and consumers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::workload::KEY;

/// The topic the peer publishes to (created by the broker).
pub const PEER_TOPIC: &str = "bench.peer.v1";
pub const BROKER_READY: &str = "broker ready";
pub const CEILING_READY: &str = "ceiling listening";
const GATEWAY_READY: &str = "gateway listening";
const CONSUMER_READY: &str = "consumer running";

/// Where the harness finds callstream's binaries: beside its own.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found: build the workspace binaries first (cargo build --release --bins)",
            path.display()
        );
    }
    Ok(path)
}

fn me() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

/// A child process whose output goes to a log file (as under a container
/// log driver: the harness neither buffers nor parses every line), killed on
/// drop.
pub struct Process {
    child: Child,
    dir: tempfile::TempDir,
    /// The port from its ready line, or the one it was told to use.
    pub port: u16,
}

impl Process {
    /// Starts `binary` and waits for the JSON log line whose message is
    /// `ready`, taking the port from its `port` field.
    pub fn start(
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
    ) -> anyhow::Result<Process> {
        let mut process = Self::spawn(binary, args, env, 0)?;
        let started = Instant::now();
        loop {
            let log = process.log();
            let port = log.lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["message"] == ready).then(|| v["port"].as_u64())?
            });
            if let Some(port) = port {
                process.port = port as u16;
                return Ok(process);
            }
            process.check_alive(started)?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `binary` told to listen on `port`, and waits until it accepts.
    fn start_on(
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        port: u16,
    ) -> anyhow::Result<Process> {
        let mut process = Self::spawn(binary, args, env, port)?;
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            process.check_alive(started)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(process)
    }

    fn spawn(
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        port: u16,
    ) -> anyhow::Result<Process> {
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("out.log"))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CALLSTREAM_LOG_FORMAT", "json")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Process { child, dir, port })
    }

    fn check_alive(&mut self, started: Instant) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "process exited ({status}) before it was ready:\n{}",
                self.log()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("process not ready within 60 s:\n{}", self.log());
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far (user + system, all threads), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.pid().to_string())
    }

    /// Peak resident set size so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        callstream_testkit::peak_rss_kib(self.pid()) as f64 / 1024.0
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill {sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// SIGTERM, and wait (bounded) for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal("-TERM")?;
        let started = Instant::now();
        while self.child.try_wait()?.is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("process {} ignored SIGTERM for 30 s", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded broker started on its own (`callstream-bench broker`).
pub struct Broker(Process);

impl Broker {
    pub fn start(partitions: i32) -> anyhow::Result<Broker> {
        let partitions = partitions.to_string();
        let args = ["broker", "--partitions", &partitions];
        Ok(Broker(Process::start(&me()?, &args, &[], BROKER_READY)?))
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.0.port)
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.0.cpu_seconds()
    }

    /// Takes the broker down: it refuses connections until [`Broker::up`].
    pub fn down(&self) -> anyhow::Result<()> {
        self.toggle("-USR1", "broker down")
    }

    pub fn up(&self) -> anyhow::Result<()> {
        self.toggle("-USR2", "broker up")
    }

    fn toggle(&self, signal: &str, logged: &str) -> anyhow::Result<()> {
        let before = self.0.log().matches(logged).count();
        self.0.signal(signal)?;
        let started = Instant::now();
        while self.0.log().matches(logged).count() == before {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the broker did not log {logged:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// A system answering HTTP, whichever it is.
pub struct Server {
    pub process: Process,
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.process.port))
    }

    pub fn ceiling() -> anyhow::Result<Server> {
        let process = Process::start(&me()?, &["ceiling"], &[], CEILING_READY)?;
        Ok(Server { process })
    }

    /// callstream-gateway as shipped (default settings and log level), with
    /// a fresh spool directory and a key for every source.
    pub fn gateway(bootstrap: &str, extra: &[(String, String)]) -> anyhow::Result<Server> {
        let keys = format!("[{KEY}]");
        let mut env = vec![
            ("GATEWAY_LISTEN", "127.0.0.1:0".to_string()),
            // `/metrics` on the webhook port, where the scrapes go.
            ("GATEWAY_ADMIN_LISTEN", String::new()),
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_string()),
            ("CALLSTREAM_SPOOL__DIR", "spool".to_string()),
            // 8 GiB instead of the default 1 GiB, so 20 s at full speed with
            // Kafka down fit (a full spool answers 503, as it should, but
            // that measures the disk budget, not the spool path).
            ("CALLSTREAM_SPOOL__MAX_BYTES", (8u64 << 30).to_string()),
            ("CALLSTREAM_SOURCES__ONOFF__API_KEYS", keys.clone()),
            ("CALLSTREAM_SOURCES__XARIOS__API_KEYS", keys.clone()),
            ("CALLSTREAM_SOURCES__TELECMI__API_KEYS", keys),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let process = Process::start(&sibling("callstream-gateway")?, &[], &env, GATEWAY_READY)?;
        Ok(Server { process })
    }

    /// mq-bridge-app: one route, HTTP in, Kafka out with its defaults
    /// (idempotent producer, acks=all, answers after the broker's ack).
    pub fn peer(binary: &Path, bootstrap: &str) -> anyhow::Result<Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "routes:\n  ingest:\n    input:\n      http:\n        url: \"127.0.0.1:{port}\"\n    output:\n      kafka:\n        url: \"{bootstrap}\"\n        topic: \"{PEER_TOPIC}\"\n        create_topic: false\n        producer_options:\n          - [\"acks\", \"all\"]\n"
        );
        let path = std::env::temp_dir().join(format!("callstream-bench-peer-{port}.yaml"));
        std::fs::write(&path, config)?;
        let args = [
            "--no-ui",
            "--no-metrics",
            "--config",
            path.to_str().expect("utf-8 path"),
        ];
        let process = Process::start_on(binary, &args, &[], port);
        let _ = std::fs::remove_file(&path);
        Ok(Server { process: process? })
    }
}

/// A callstream consumer binary (its metrics on a port of its own).
pub fn consumer(name: &str, env: &[(&str, String)]) -> anyhow::Result<Process> {
    let mut all = vec![("METRICS_LISTEN", "127.0.0.1:0".to_string())];
    all.extend(env.iter().cloned());
    Process::start(&sibling(name)?, &[], &all, CONSUMER_READY)
}

/// The peer's binary: `--peer`, `MQ_BRIDGE_APP`, or `mq-bridge-app` on PATH.
pub fn find_peer(given: Option<PathBuf>) -> Option<PathBuf> {
    given
        .or_else(|| std::env::var_os("MQ_BRIDGE_APP").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("mq-bridge-app"))
                    .find(|p| p.is_file())
            })
        })
}

/// The sums of `topic`'s low and high watermarks over its partitions.
pub fn watermark_sums(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut sums = (0, 0);
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        sums.0 += low;
        sums.1 += high;
    }
    Ok(sums)
}

/// CPU time used so far by process `pid` (`self` for this one), user +
/// system, all threads, in seconds.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
