//! Archiving: recordings and voicemails stored with their hash, links not
//! ready yet polled, downloads side by side and in order, oversized bodies
//! and timeouts.

use super::*;

// ---- tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onoff_recording_and_voicemail_are_archived_with_their_hash() {
    let (kafka, media, dir) = setup().await;
    let (rec, vm) = (audio(1, 300_000), audio(2, 4_321));
    media.script("/r/1.mp3", [Reply::Audio(rec.clone(), "audio/mpeg")]);
    media.script("/v/1", [Reply::Audio(vm.clone(), "audio/wav; codecs=1")]);
    let rec_url = media.url("/r/1.mp3?expires=1709640000&sig=abc123");
    let event = onoff("call-1", Some(&rec_url), Some(&media.url("/v/1")), "");
    kafka.publish(&[(&event, 1)]).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| f));
    kafka
        .wait_for(Topic::Recordings, 2, "two recordings events")
        .await;
    assert_eq!(archiver.recordings("archived"), 1.0);
    assert_eq!(
        archiver.metric("callstream_recordings_downloaded_bytes_total", ""),
        (300_000 + 4_321) as f64
    );
    archiver.stop().await;

    assert_eq!(
        media.requests("/r/1.mp3"),
        ["/r/1.mp3?expires=1709640000&sig=abc123"]
    );
    assert_eq!(media.requests("/v/1").len(), 1);
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);
    let records = kafka.read(Topic::Recordings);
    assert_eq!(records.len(), 2);
    for record in &records {
        let value = record.json();
        assert_valid_recording(&value);
        assert_eq!(record.key_str(), event.identity);
        let (served, content_type, ext, source) = match value["media"].as_str().unwrap() {
            "recording" => (
                &rec,
                "audio/mpeg",
                "mp3",
                media.url("/r/1.mp3?expires=REDACTED&sig=REDACTED"),
            ),
            _ => (&vm, "audio/wav", "wav", media.url("/v/1")),
        };
        let file = file_of(&value);
        assert!(
            file.starts_with(dir.path().canonicalize().unwrap()),
            "{file:?}"
        );
        assert!(
            file.to_str().unwrap().contains("/acme/onoff/2024/03/05/"),
            "{file:?}"
        );
        assert_eq!(file.extension().unwrap(), ext);
        assert_eq!(
            &std::fs::read(&file).unwrap(),
            served,
            "stored bytes are the served bytes"
        );
        assert_eq!(value["sha256"], sha256sum(&file));
        assert_eq!(value["size_bytes"], served.len());
        assert_eq!(value["content_type"], content_type);
        assert_eq!(value["source"], json!({"kind": "url", "url": source}));
        assert_eq!(value["event_id"], event.event_id.to_string());
        assert_eq!(
            (value["provider"].as_str(), value["tenant"].as_str()),
            (Some("onoff"), Some("acme"))
        );
        assert_eq!(
            (value["revision"].as_i64(), value["index"].as_i64()),
            (Some(1), Some(0))
        );
    }
    // Two audio files, two manifests, nothing else (no staging files).
    assert_eq!(files(dir.path()).len(), 4, "{:?}", files(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_not_ready_are_polled_then_archived_or_dead_lettered() {
    let (kafka, media, dir) = setup().await;
    let late = audio(3, 1000);
    media.script(
        "/late.mp3",
        [
            Reply::Status(404),
            Reply::Status(404),
            Reply::Status(404),
            Reply::Audio(late.clone(), "audio/mpeg"),
        ],
    );
    media.script("/never.mp3", [Reply::Status(404)]);
    let ready = onoff("late-1", Some(&media.url("/late.mp3")), None, "");
    let never = onoff("never-1", Some(&media.url("/never.mp3")), None, "");
    kafka.publish(&[(&ready, 1), (&never, 1)]).await;

    let window = Duration::from_secs(1);
    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 1))
    }));
    wait("one archived, one dead-lettered", || {
        kafka.count(Topic::Recordings) >= 1 && kafka.count(Topic::RecordingsDlq) >= 1
    })
    .await;
    let retries = archiver.metric("callstream_recordings_not_ready_retries_total", "");
    let failed = archiver.metric(
        "callstream_recordings_failures_total",
        r#"reason="not_ready""#,
    );
    archiver.stop().await;

    assert_eq!(
        media.requests("/late.mp3").len(),
        4,
        "three 404s, then the audio"
    );
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(value["event_id"], ready.event_id.to_string());
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), late);

    let dead = kafka.read(Topic::RecordingsDlq);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key_str(), never.identity);
    assert_eq!(
        letter.payload,
        serde_json::to_vec(&never).unwrap(),
        "the unique record, unchanged"
    );
    assert_eq!(letter.header("cs_revision"), Some("1"));
    assert_eq!(
        letter.header(ERROR_HEADER),
        Some("recording[0]: HTTP 404: not ready")
    );
    let polls = media.request_times("/never.mp3");
    let attempts: usize = letter.header(ATTEMPTS_HEADER).unwrap().parse().unwrap();
    assert_eq!(attempts, polls.len());
    let span = polls.last().unwrap().1 - polls[0].1;
    assert!(
        span >= window.mul_f64(0.9),
        "polled for {span:?}, the window is {window:?}"
    );
    assert!(
        span < window * 3,
        "polled for {span:?}, far past the window"
    );
    assert!(retries >= (3 + attempts - 1) as f64, "{retries}");
    assert_eq!(failed, 1.0);
}

/// A link that is not ready holds only its own record: the records behind
/// it on its partition are archived meanwhile, but stay uncommitted (the
/// lag counts the waiting record and everything after it); a restart
/// archives the waiting one and finds the others already archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_not_ready_holds_only_its_own_record() {
    let (kafka, media, dir) = setup().await;
    let late = audio(21, 800);
    media.script("/later.mp3", [Reply::Status(404)]);
    let waiting = onoff("later-1", Some(&media.url("/later.mp3")), None, "");
    let mut events = vec![(waiting, 1)];
    for i in 0..3 {
        let path = format!("/ready-{i}.mp3");
        media.script(&path, [Reply::Audio(audio(30 + i, 500), "audio/mpeg")]);
        let url = media.url(&path);
        events.push((onoff(&format!("ready-{i}"), Some(&url), None, ""), 1));
    }
    // One partition, the waiting link first.
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 600))
    });

    let archiver = start(&settings);
    kafka
        .wait_for(
            Topic::Recordings,
            3,
            "the three ready links, behind the waiting one",
        )
        .await;
    // The three can finish before the waiting link's first retry (20 ms).
    wait("the waiting link still polled", || {
        media.requests("/later.mp3").len() >= 2
    })
    .await;
    wait("lag 4: the waiting record and the three after it", || {
        archiver.metric("callstream_recordings_lag_records", "") == 4.0
    })
    .await;
    assert_eq!(
        archiver.metric("callstream_recordings_in_progress_records", ""),
        1.0
    );
    archiver.stop().await;

    media.script("/later.mp3", [Reply::Audio(late.clone(), "audio/mpeg")]);
    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 7, "the late link, and the others again")
        .await;
    wait("lag 0", || {
        archiver.metric("callstream_recordings_lag_records", "") == 0.0
    })
    .await;
    assert_eq!(archiver.recordings("already_archived"), 3.0);
    archiver.stop().await;
    for i in 0..3 {
        let path = format!("/ready-{i}.mp3");
        assert_eq!(media.requests(&path).len(), 1, "{path} downloaded once");
    }
    let archived: Vec<Value> = kafka
        .read(Topic::Recordings)
        .iter()
        .map(Record::json)
        .collect();
    let late_one = archived
        .iter()
        .find(|v| v["identity"] == events[0].0.identity)
        .expect("the late link archived");
    assert_eq!(std::fs::read(file_of(late_one)).unwrap(), late);
}

/// At most `concurrency` downloads at once; an event's revisions one after
/// the other, never at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_run_side_by_side_up_to_the_limit_and_in_order_per_event() {
    let (kafka, media, dir) = setup().await;
    let slow = Duration::from_millis(1500);
    let mut events = Vec::new();
    for i in 0..3 {
        let path = format!("/slow-{i}.mp3");
        media.script(&path, [Reply::Hang(slow, audio(40 + i, 300))]);
        events.push((
            onoff(&format!("slow-{i}"), Some(&media.url(&path)), None, ""),
            1,
        ));
    }
    // Two revisions of one event, each with a link of its own.
    media.script("/first.mp3", [Reply::Hang(slow, audio(50, 300))]);
    media.script("/second.mp3", [Reply::Audio(audio(51, 300), "audio/mpeg")]);
    let first = onoff("twice", Some(&media.url("/first.mp3")), None, "");
    let second = onoff("twice", Some(&media.url("/second.mp3")), None, "v2");
    assert_eq!(first.identity, second.identity);
    events.push((first, 1));
    events.push((second, 2));
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.concurrency", 2))
            .merge(("recordings.timeout_ms", 10_000))
    }));
    kafka.wait_for(Topic::Recordings, 5, "every link").await;
    archiver.stop().await;

    let mut starts: Vec<Instant> = (0..3)
        .map(|i| media.request_times(&format!("/slow-{i}.mp3"))[0].1)
        .chain([media.request_times("/first.mp3")[0].1])
        .collect();
    starts.sort();
    // Two at once; each of the other two only once one of them ended.
    assert!(starts[1] - starts[0] < slow / 2, "two side by side");
    assert!(starts[2] - starts[0] >= slow.mul_f64(0.9), "a third waited");
    assert!(
        starts[3] - starts[0] >= slow.mul_f64(0.9),
        "a fourth waited"
    );
    let first_at = media.request_times("/first.mp3")[0].1;
    let second_at = media.request_times("/second.mp3")[0].1;
    assert!(
        second_at - first_at >= slow.mul_f64(0.9),
        "revision 2 started only after revision 1 finished"
    );
}

/// Revisions of an event queue behind its first, whose link is not ready;
/// the events after them are archived meanwhile, and the revisions follow
/// in order once the first is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_queued_behind_a_waiting_one_hold_back_no_other_event() {
    let (kafka, media, dir) = setup().await;
    media.script("/held-1.mp3", [Reply::Status(404)]);
    let mut events = Vec::new();
    for revision in 1..=3 {
        let path = format!("/held-{revision}.mp3");
        if revision > 1 {
            media.script(
                &path,
                [Reply::Audio(audio(60 + revision as u8, 400), "audio/mpeg")],
            );
        }
        let notes = format!("v{revision}");
        events.push((
            onoff("held", Some(&media.url(&path)), None, &notes),
            revision,
        ));
    }
    for i in 0..3 {
        let path = format!("/other-{i}.mp3");
        media.script(&path, [Reply::Audio(audio(70 + i, 400), "audio/mpeg")]);
        events.push((
            onoff(&format!("other-{i}"), Some(&media.url(&path)), None, ""),
            1,
        ));
    }
    // One partition: the held event's three revisions, then three others.
    produce_events(&kafka.bootstrap(), &events, Some(0)).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.not_ready_retry_secs", 600))
            .merge(("recordings.concurrency", 2))
    });

    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 3, "the three other events")
        .await;
    for revision in 2..=3 {
        let path = format!("/held-{revision}.mp3");
        assert!(
            media.requests(&path).is_empty(),
            "{path} waits for revision 1"
        );
    }
    wait("lag 6: nothing committed past the held revision", || {
        archiver.metric("callstream_recordings_lag_records", "") == 6.0
    })
    .await;
    assert_eq!(
        archiver.metric("callstream_recordings_in_progress_records", ""),
        1.0
    );
    archiver.stop().await;

    media.script("/held-1.mp3", [Reply::Audio(audio(61, 400), "audio/mpeg")]);
    let archiver = start(&settings);
    kafka
        .wait_for(
            Topic::Recordings,
            9,
            "the three revisions, and the others again",
        )
        .await;
    wait("lag 0", || {
        archiver.metric("callstream_recordings_lag_records", "") == 0.0
    })
    .await;
    archiver.stop().await;
    let times: Vec<Instant> = (1..=3)
        .map(|r| {
            let requests = media.request_times(&format!("/held-{r}.mp3"));
            requests.last().expect("downloaded").1
        })
        .collect();
    assert!(
        times[0] < times[1] && times[1] < times[2],
        "revisions downloaded in order"
    );
    let archived: Vec<Value> = kafka
        .read(Topic::Recordings)
        .iter()
        .map(Record::json)
        .collect();
    let held: Vec<&Value> = archived
        .iter()
        .filter(|v| v["identity"] == events[0].0.identity)
        .collect();
    assert_eq!(held.len(), 3, "each revision's link archived: {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_dead_lettered_and_timeouts_retried() {
    let (kafka, media, dir) = setup().await;
    media.script(
        "/declared.mp3",
        [Reply::Audio(audio(4, 50_000), "audio/mpeg")],
    );
    media.script("/streamed.mp3", [Reply::Unsized(audio(5, 50_000))]);
    let slow = audio(6, 2_000);
    media.script(
        "/slow.mp3",
        [
            Reply::Hang(Duration::from_millis(1500), slow.clone()),
            Reply::Audio(slow.clone(), "audio/mpeg"),
        ],
    );
    let declared = onoff("big-1", Some(&media.url("/declared.mp3")), None, "");
    let streamed = onoff("big-2", Some(&media.url("/streamed.mp3")), None, "");
    let timed_out = onoff("slow-1", Some(&media.url("/slow.mp3")), None, "");
    kafka
        .publish(&[(&declared, 1), (&streamed, 1), (&timed_out, 1)])
        .await;

    let archiver = start(&settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.max_bytes", 10_000))
            .merge(("recordings.timeout_ms", 500))
    }));
    wait("two dead letters and one archive", || {
        kafka.count(Topic::RecordingsDlq) >= 2 && kafka.count(Topic::Recordings) >= 1
    })
    .await;
    let retries = archiver.metric("callstream_recordings_retries_total", "");
    archiver.stop().await;

    for (path, event) in [("/declared.mp3", &declared), ("/streamed.mp3", &streamed)] {
        assert_eq!(media.requests(path).len(), 1, "{path}: too large is final");
        let letter = kafka
            .read(Topic::RecordingsDlq)
            .into_iter()
            .find(|r| r.key_str() == event.identity)
            .unwrap_or_else(|| panic!("no dead letter for {path}"));
        assert_eq!(
            letter.header(ERROR_HEADER),
            Some("recording[0]: larger than max_bytes (10000 bytes)")
        );
    }
    // Nothing of the oversized bodies stayed: only the slow one's audio and manifest.
    let stored = files(dir.path());
    assert_eq!(stored.len(), 2, "{stored:?}");
    let id = timed_out.event_id.to_string();
    assert!(
        stored.iter().all(|f| f.to_str().unwrap().contains(&id)),
        "{stored:?}"
    );

    assert_eq!(
        media.requests("/slow.mp3").len(),
        2,
        "timed out once, then served"
    );
    assert!(retries >= 1.0);
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(value["event_id"], id);
    assert_eq!(value["content_type"], "audio/mpeg");
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), slow);
}
