//! URL templates and the address guard: secrets never published or logged,
//! private templates allowed while payload URLs stay guarded, and values
//! that could move a template's path refused.

use super::*;

/// Set in the child process of [`templates_fill_in_secrets_that_are_never_published_or_logged`].
const CHILD_ENV: &str = "RECORDINGS_TEST_CHILD";

const TELECMI_SECRET: &str = "Tel/Secret+1";

const XARIOS_SECRET: &str = "xar-secret-42";

/// TeleCMI gives a file name, Xarios recording ids: the URL templates turn
/// them into requests with the configured secrets. The archiver runs in a
/// child process configured through the environment, as in production, so
/// that its whole log output (debug level, JSON) can be searched for the
/// secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_fill_in_secrets_that_are_never_published_or_logged() {
    let (kafka, media, dir) = setup().await;
    media.script("/play", [Reply::Audio(audio(10, 900), "audio/mpeg")]);
    media.script(
        "/xarios/tenant-1/recordings/rec-1",
        [Reply::Audio(audio(11, 800), "audio/wav")],
    );
    media.script("/xarios/tenant-1/recordings/rec-2", [Reply::Status(403)]);
    let file_name = "16506305548176941220057791_2222223.mp3";
    let telecmi = normalize(
        ProviderId::Telecmi,
        "cdr",
        &json!({"type": "cdr", "leg": "b", "appid": 2222223, "cmiuuid": "0da4f02e-6ece",
                "status": "answered", "direction": "outbound", "time": 1650630551178_u64,
                "answeredsec": 6, "record": true, "filename": file_name}),
    );
    let xarios = xarios("sess-1", &["rec-1", "rec-2"]);
    kafka.publish(&[(&telecmi, 1), (&xarios, 1)]).await;

    let env = [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap()),
        (
            "CALLSTREAM_RECORDINGS__GROUP_ID",
            format!("rec-{}", uuid::Uuid::new_v4()),
        ),
        (
            "CALLSTREAM_RECORDINGS__STORE__DIR",
            dir.path().display().to_string(),
        ),
        (
            "CALLSTREAM_RECORDINGS__ALLOW_PRIVATE_TARGETS",
            "true".into(),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__TELECMI__URL_TEMPLATE",
            media.url("/play?appid={tenant}&file={file_name}&secret={secret}"),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__TELECMI__SECRET",
            TELECMI_SECRET.into(),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__XARIOS__URL_TEMPLATE",
            media.url("/xarios/{tenant}/recordings/{id}?key={secret}"),
        ),
        (
            "CALLSTREAM_RECORDINGS__TEMPLATES__XARIOS__SECRET",
            XARIOS_SECRET.into(),
        ),
        ("CALLSTREAM_LOG_FORMAT", "json".into()),
        ("RUST_LOG", "debug".into()),
        (CHILD_ENV, "1".into()),
    ];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "templates::child_archiver_from_the_environment",
            "--exact",
            "--nocapture",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("test binary starts");
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                logs.lock().unwrap().push(line);
            }
        });
    }
    let done = eventually(Duration::from_secs(30), || {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || (kafka.count(Topic::Recordings) >= 2 && kafka.count(Topic::RecordingsDlq) >= 1)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = logs.lock().unwrap().join("\n");
    assert!(
        done && kafka.count(Topic::Recordings) >= 2,
        "the child exited or timed out; its output:\n{logs}"
    );

    let encoded = "Tel%2FSecret%2B1";
    assert_eq!(
        media.requests("/play"),
        [format!(
            "/play?appid=2222223&file={file_name}&secret={encoded}"
        )]
    );
    assert_eq!(
        media.requests("/xarios/tenant-1/recordings/rec-1"),
        [format!(
            "/xarios/tenant-1/recordings/rec-1?key={XARIOS_SECRET}"
        )]
    );
    assert_eq!(
        media.requests("/xarios/tenant-1/recordings/rec-2").len(),
        1,
        "403 is final"
    );

    let records = kafka.read(Topic::Recordings);
    let sources: Vec<Value> = records.iter().map(|r| r.json()["source"].clone()).collect();
    assert!(
        sources.contains(&json!({"kind": "file_name", "file_name": file_name})),
        "{sources:?}"
    );
    assert!(
        sources.contains(&json!({"kind": "id", "id": "rec-1"})),
        "{sources:?}"
    );
    let letter = &kafka.read(Topic::RecordingsDlq)[0];
    assert_eq!(letter.key_str(), xarios.identity);
    assert_eq!(letter.header(ERROR_HEADER), Some("recording[1]: HTTP 403"));

    assert!(
        logs.contains("recording archived"),
        "the capture holds the archiver's logs:\n{logs}"
    );
    let mut published: Vec<String> = records
        .iter()
        .chain([letter])
        .map(|r| format!("{r:?}"))
        .collect();
    published.extend(
        records
            .iter()
            .chain([letter])
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned()),
    );
    for secret in [TELECMI_SECRET, encoded, XARIOS_SECRET] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
        for text in &published {
            assert!(!text.contains(secret), "`{secret}` published: {text}");
        }
    }
}

/// The archiver as the child process of the test above; returns at once
/// when run as a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_archiver_from_the_environment() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let settings = Settings::load(None).expect("settings from the environment");
    callstream_runtime::telemetry::init(settings.log_format);
    let archiver = RecordingsConsumer::build(
        &settings.recordings,
        &settings.kafka,
        &settings.topics,
        &prometheus::Registry::new(),
    )
    .expect("builds");
    let (_stop, stopped) = watch::channel(false);
    // The parent kills this process; the timeout only bounds a lost child.
    let _ = tokio::time::timeout(Duration::from_secs(60), archiver.run(stopped)).await;
}

/// An on-premises PBX serves recordings on a private address: with
/// `allow_private_templates`, the operator's template reaches it, while a URL
/// a payload names (here Onoff's, to the same loopback server) is still
/// refused without a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_templates_reach_the_pbx_while_payload_urls_stay_guarded() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/xarios/tenant-1/recordings/rec-1",
        [Reply::Audio(audio(11, 800), "audio/wav")],
    );
    media.script("/x.mp3", [Reply::Audio(audio(12, 100), "audio/mpeg")]);
    let xarios = xarios("sess-1", &["rec-1"]);
    let payload_url = media.url("/x.mp3");
    let onoff = onoff("ssrf-payload", Some(&payload_url), None, "");
    kafka.publish(&[(&xarios, 1), (&onoff, 1)]).await;

    let template = media.url("/xarios/{tenant}/recordings/{id}");
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.allow_private_targets", false))
            .merge(("recordings.allow_private_templates", true))
            .merge(("recordings.templates.xarios.url_template", template))
    }));
    kafka
        .wait_for(Topic::Recordings, 1, "the PBX recording archived")
        .await;
    kafka
        .wait_for(Topic::RecordingsDlq, 1, "the payload URL refused")
        .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="refused""#,
    );
    archiver.stop().await;

    assert_eq!(media.requests("/xarios/tenant-1/recordings/rec-1").len(), 1);
    assert!(media.requests("/x.mp3").is_empty(), "never requested");
    assert_eq!(refused, 1.0);
    let archived = kafka.read(Topic::Recordings);
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0].key_str(), xarios.identity);
    let letters = kafka.read(Topic::RecordingsDlq);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key_str(), onoff.identity);
    let error = letters[0].header(ERROR_HEADER).unwrap();
    assert!(error.starts_with("recording[0]: refused: "), "{error}");
}

/// With `allow_private_targets = false` (the default), loopback targets and
/// non-http schemes are refused before any connection: the server accepts
/// none. (Private ranges such as 10.0.0.1 are covered by the guard's unit
/// tests, which send no traffic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_and_other_schemes_are_refused_without_connecting() {
    let (kafka, media, dir) = setup().await;
    media.script("/x.mp3", [Reply::Audio(audio(12, 100), "audio/mpeg")]);
    let port = media.port;
    let targets = [
        format!("http://127.0.0.1:{port}/x.mp3"),
        format!("http://localhost:{port}/x.mp3"),
        format!("http://[::1]:{port}/x.mp3"),
        format!("http://2130706433:{port}/x.mp3"),
        "file:///etc/passwd".to_string(),
        format!("ftp://127.0.0.1:{port}/x.mp3"),
    ];
    let events: Vec<Event> = targets
        .iter()
        .enumerate()
        .map(|(i, url)| onoff(&format!("ssrf-{i}"), Some(url), None, ""))
        .collect();
    let refs: Vec<(&Event, i32)> = events.iter().map(|e| (e, 1)).collect();
    kafka.publish(&refs).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.allow_private_targets", false))
    }));
    wait("every target dead-lettered", || {
        kafka.count(Topic::RecordingsDlq) >= targets.len() as i64
    })
    .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="refused""#,
    );
    archiver.stop().await;

    assert_eq!(media.connections(), 0, "no connection was attempted");
    assert_eq!(refused, targets.len() as f64);
    assert_eq!(kafka.count(Topic::Recordings), 0);
    assert!(files(dir.path()).is_empty());
    for letter in kafka.read(Topic::RecordingsDlq) {
        let error = letter.header(ERROR_HEADER).unwrap();
        assert!(error.starts_with("recording[0]: refused: "), "{error}");
    }
}

/// A Xarios `recordingIds: [".."]` once made the archiver request the
/// folder above the template's path, the template's secret attached. Ids
/// that are dot-segments, plainly or percent-encoded, are dead-lettered
/// with the reason, with no request; the event's good id is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segment_ids_are_dead_lettered_without_a_request() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/api/rec/rec-ok",
        [Reply::Audio(audio(13, 700), "audio/wav")],
    );
    media.script("/api/", [Reply::Audio(audio(14, 700), "audio/wav")]);
    let xarios = xarios("sess-dots", &["..", "%2e%2e", "rec-ok"]);
    kafka.publish(&[(&xarios, 1)]).await;

    let template = media.url("/api/rec/{id}?tenant={tenant}&key={secret}");
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 0))
            .merge(("recordings.templates.xarios.url_template", template))
            .merge(("recordings.templates.xarios.secret", XARIOS_SECRET))
    }));
    kafka
        .wait_for(Topic::RecordingsDlq, 1, "the bad ids dead-lettered")
        .await;
    let refused = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="invalid_value""#,
    );
    let archived = archiver.recordings("archived");
    archiver.stop().await;

    let requests = media.state.lock().unwrap().requests.clone();
    let targets: Vec<&str> = requests.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [format!(
            "/api/rec/rec-ok?tenant=tenant-1&key={XARIOS_SECRET}"
        )],
        "only the good id is requested"
    );
    assert_eq!(refused, 2.0);
    assert_eq!(archived, 1.0);
    assert_eq!(kafka.count(Topic::Recordings), 1);
    let letters = kafka.read(Topic::RecordingsDlq);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key_str(), xarios.identity);
    let dot_segment = "is a dot-segment (`.` or `..`, maybe percent-encoded)";
    assert_eq!(
        letters[0].header(ERROR_HEADER),
        Some(
            format!(
                "recording[0]: the value for {{id}} {dot_segment}; \
                 recording[1]: the value for {{id}} {dot_segment}"
            )
            .as_str()
        )
    );
}
