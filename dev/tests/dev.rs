//! `callstream-dev` as someone trying callstream runs it: one process, no
//! `DATABASE_URL` (so its throwaway PostgreSQL cluster), every address on
//! a free port of 127.0.0.1. The sample call of its printed `curl` line
//! reaches the table `events` through the gateway, dedup and the store;
//! the console signs in with the printed password; Ctrl-C stops it all and
//! leaves no PostgreSQL behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use callstream_dev::{ONOFF_API_KEY, READY, SAMPLE_ONOFF_CDR};

const BINARY: &str = env!("CARGO_BIN_EXE_callstream-dev");

/// initdb and a debug build's start, on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The event's way from the gateway to `events` (consumer groups join first).
const STORED_TIMEOUT: Duration = Duration::from_secs(60);
/// A graceful stop of every service.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The running binary; killed if the test fails before stopping it.
struct Dev {
    child: Child,
    stdout: mpsc::Receiver<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts the binary in its own process group, as a shell starts a
/// foreground job; its stdout lines arrive on a channel, its stderr (the
/// logs) goes to the test's output, shown when the test fails.
fn start() -> Dev {
    let mut cmd = Command::new(BINARY);
    cmd.env_remove("DATABASE_URL")
        .env_remove("CALLSTREAM_DEV_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for variable in [
        "GATEWAY_LISTEN",
        "GATEWAY_ADMIN_LISTEN",
        "CONSOLE_LISTEN",
        "DEDUP_METRICS_LISTEN",
        "STORE_METRICS_LISTEN",
        "ANALYTICS_METRICS_LISTEN",
    ] {
        cmd.env(variable, format!("127.0.0.1:{}", free_port()));
    }
    let mut child = cmd.spawn().expect("callstream-dev starts");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[callstream-dev] {line}");
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("[callstream-dev stdout] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Dev { child, stdout: rx }
}

/// What the summary says, by its `label:` (the metrics lines, whose label
/// is blank, are not needed here), and its `curl` line.
struct Summary {
    fields: BTreeMap<String, String>,
    curl: String,
}

impl Dev {
    /// Reads stdout up to the summary's `curl` line, which ends it.
    fn summary(&self) -> Summary {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = false;
        let mut fields = BTreeMap::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no complete summary within {READY_TIMEOUT:?}"));
            if line.starts_with(READY) {
                ready = true;
            } else if ready && line.starts_with("curl ") {
                return Summary { fields, curl: line };
            } else if let Some((label, value)) = line.split_once(':') {
                if ready && !label.contains(' ') {
                    fields.insert(label.to_string(), value.trim().to_string());
                }
            }
        }
    }

    /// Whatever this process started besides its threads: its descendants'
    /// command names.
    fn descendants(&self) -> BTreeSet<String> {
        let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // After the command name in parentheses: state, then ppid.
            let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
            if let Some(ppid) = after_name
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
            {
                parents.entry(ppid).or_default().push(pid);
            }
        }
        let mut names = BTreeSet::new();
        let mut queue = vec![self.child.id()];
        while let Some(pid) = queue.pop() {
            for child in parents.get(&pid).into_iter().flatten() {
                if let Ok(comm) = std::fs::read_to_string(format!("/proc/{child}/comm")) {
                    names.insert(comm.trim().to_string());
                }
                queue.push(*child);
            }
        }
        names
    }

    /// SIGINT to its process group, as a terminal's Ctrl-C; its exit
    /// status once it exits.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let group = format!("-{}", self.child.id());
        let sent = Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGINT sent to the process group");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {STOP_TIMEOUT:?} after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A request as the `curl` line makes it: URL, headers, body.
struct Curl {
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Reads `curl -s URL -H 'name: value' ... -d 'body'`; the quoted parts
/// hold no quotes.
fn parse_curl(line: &str) -> Curl {
    let parts: Vec<&str> = line.split('\'').collect();
    let url = parts[0]
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .expect("a URL")
        .to_string();
    let mut headers = Vec::new();
    let mut body = None;
    for pair in parts.chunks(2) {
        let [flag, quoted] = pair else { continue };
        match flag.split_whitespace().last() {
            Some("-H") => {
                let (name, value) = quoted.split_once(": ").expect("name: value");
                headers.push((name.to_string(), value.to_string()));
            }
            Some("-d") => body = Some(quoted.to_string()),
            other => panic!("unexpected {other:?} in {line}"),
        }
    }
    Curl {
        url,
        headers,
        body: body.expect("a body"),
    }
}

/// `postgresql:`'s value: its URL, then `(throwaway cluster in DIR, ...)`.
fn throwaway_database(value: &str) -> (String, PathBuf) {
    let (url, rest) = value.split_once(' ').expect("URL, then where");
    let dir = rest
        .strip_prefix("(throwaway cluster in ")
        .and_then(|r| r.split_once(','))
        .map(|(dir, _)| PathBuf::from(dir))
        .unwrap_or_else(|| panic!("not a throwaway cluster: {value}"));
    (url.to_string(), dir)
}

/// `console:`'s value: `http://ADDRESS (user: U, password: P)`.
fn console_sign_in(value: &str) -> (String, String, String) {
    let (url, rest) = value.split_once(' ').expect("URL, then sign-in");
    let user = rest
        .split("user: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("a user");
    let password = rest
        .split("password: ")
        .nth(1)
        .and_then(|r| r.strip_suffix(')'))
        .expect("a password");
    (url.to_string(), user.to_string(), password.to_string())
}

async fn stored_events(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM events WHERE identity LIKE '%:dev-call-1' AND external_number = '+33612345678'",
        &[],
    )
    .await
    .map(|row| row.get(0))
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_the_pipeline_from_the_curl_line_to_the_events_table() {
    let mut dev = start();
    let summary = dev.summary();

    // One process: what it started is the PostgreSQL wrapper and server.
    let started = dev.descendants();
    assert!(started.contains("postgres"), "{started:?}");
    let allowed: BTreeSet<String> = ["runuser", "sh", "postgres"].map(String::from).into();
    assert!(
        started.is_subset(&allowed),
        "only PostgreSQL runs beside it: {started:?}"
    );

    // The printed curl line, as someone would paste it.
    let curl = parse_curl(&summary.curl);
    assert_eq!(curl.body, SAMPLE_ONOFF_CDR);
    assert!(curl.headers.contains(&(
        "Authorization".to_string(),
        format!("x-api-key {ONOFF_API_KEY}")
    )));
    let body: serde_json::Value = serde_json::from_str(&curl.body).expect("JSON body");
    assert_eq!(body["externalNumber"], "+33612345678");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut request = client.post(&curl.url).body(curl.body.clone());
    for (name, value) in &curl.headers {
        request = request.header(name, value);
    }
    let answer = request.send().await.expect("the gateway answers");
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.expect("JSON answer");
    assert_eq!(answer["status"], "published", "{answer}");

    // Through dedup and the store, into the printed database.
    let (database_url, cluster_dir) = throwaway_database(&summary.fields["postgresql"]);
    assert!(
        cluster_dir.is_dir(),
        "{} exists while it runs",
        cluster_dir.display()
    );
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .expect("the printed database URL connects");
    tokio::spawn(connection);
    let deadline = Instant::now() + STORED_TIMEOUT;
    while stored_events(&db).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the sample call is not in `events` after {STORED_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(db);

    // The console: nobody without the printed password.
    let (console, user, password) = console_sign_in(&summary.fields["console"]);
    let anonymous = client.get(&console).send().await.expect("console answers");
    assert_eq!(anonymous.status(), 401);
    let signed_in = client
        .get(&console)
        .basic_auth(&user, Some(&password))
        .send()
        .await
        .expect("console answers");
    assert_eq!(signed_in.status(), 200);

    // Ctrl-C: a clean exit, and the cluster gone with it.
    let status = dev.interrupt();
    assert!(status.success(), "clean exit on Ctrl-C: {status:?}");
    assert!(
        !cluster_dir.exists(),
        "{} deleted by the time it exited",
        cluster_dir.display()
    );
    let pg_port = database_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port in the URL");
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{pg_port}")).is_err(),
        "PostgreSQL stopped with it"
    );
}
