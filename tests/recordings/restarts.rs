//! Shutdown and restarts: a download cancelled and finished after a
//! restart, and each link downloaded once across resends, restarts and
//! replays.

use super::*;

/// Shutdown does not wait for a slow download: it is cancelled, its record
/// stays uncommitted, and the restarted archiver downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_download_and_the_restart_finishes_it() {
    let (kafka, media, dir) = setup().await;
    let served = audio(13, 5_000);
    media.script(
        "/stuck.mp3",
        [
            Reply::Hang(Duration::from_secs(30), served.clone()),
            Reply::Audio(served.clone(), "audio/mpeg"),
        ],
    );
    let event = onoff("stuck-1", Some(&media.url("/stuck.mp3")), None, "");
    kafka.publish(&[(&event, 1)]).await;
    let settings = settings(&kafka, dir.path(), |f| {
        f.merge(("recordings.timeout_ms", 60_000))
    });

    let archiver = start(&settings);
    wait("the download to start", || {
        media.requests("/stuck.mp3").len() == 1
    })
    .await;
    let stopping = Instant::now();
    archiver.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(kafka.count(Topic::Recordings), 0);
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);

    let archiver = start(&settings);
    kafka
        .wait_for(Topic::Recordings, 1, "the restart's archive")
        .await;
    archiver.stop().await;
    assert_eq!(media.requests("/stuck.mp3").len(), 2);
    let value = kafka.read(Topic::Recordings)[0].json();
    assert_eq!(std::fs::read(file_of(&value)).unwrap(), served);
    assert_eq!(files(dir.path()).len(), 2, "audio and manifest only");
}

/// One Onoff call: the same revision twice, an update without a new link
/// (revision 2), a new link (revision 3); later a second new link (revision
/// 4) to the restarted archiver, and a replay of everything under a new
/// group. Each link is downloaded exactly once. Published: revision 1
/// twice (identical bytes), revision 3 once, revision 4 once, and in the
/// replay revision 4 once more (identical bytes): five events in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_link_is_downloaded_once_across_resends_restarts_and_replays() {
    let (kafka, media, dir) = setup().await;
    let (a, b, c) = (audio(7, 1_500), audio(8, 2_500), audio(9, 3_500));
    media.script("/a.mp3", [Reply::Audio(a.clone(), "audio/mpeg")]);
    media.script("/b.mp3", [Reply::Audio(b.clone(), "audio/mpeg")]);
    media.script("/c.mp3", [Reply::Audio(c.clone(), "audio/mpeg")]);
    let rev1 = onoff("same-1", Some(&media.url("/a.mp3")), None, "");
    let rev2 = onoff("same-1", Some(&media.url("/a.mp3")), None, "called back");
    let rev3 = onoff("same-1", Some(&media.url("/b.mp3")), None, "called back");
    let rev4 = onoff("same-1", Some(&media.url("/c.mp3")), None, "called back");
    kafka
        .publish(&[(&rev1, 1), (&rev1, 1), (&rev2, 2), (&rev3, 3)])
        .await;

    let first = settings(&kafka, dir.path(), |f| f);
    let archiver = start(&first);
    kafka
        .wait_for(Topic::Recordings, 3, "three recordings events")
        .await;
    let skipped = archiver.recordings("skipped");
    archiver.stop().await;
    assert_eq!(skipped, 1.0, "revision 2 changed no link");

    // Restart in the same group: only the new record is processed.
    let archiver = start(&first);
    kafka.publish(&[(&rev4, 4)]).await;
    kafka
        .wait_for(Topic::Recordings, 4, "the fourth recordings event")
        .await;
    archiver.stop().await;

    // Replay from the beginning in a new group: nothing is downloaded.
    let replay = settings(&kafka, dir.path(), |f| f);
    let archiver = start(&replay);
    kafka
        .wait_for(Topic::Recordings, 5, "the replay's recordings event")
        .await;
    let again = archiver.recordings("already_archived");
    archiver.stop().await;
    assert_eq!(again, 1.0);

    for path in ["/a.mp3", "/b.mp3", "/c.mp3"] {
        assert_eq!(media.requests(path).len(), 1, "{path} downloaded once");
    }
    let records = kafka.read(Topic::Recordings);
    assert_eq!(records.len(), 5);
    let revisions: Vec<i64> = records
        .iter()
        .map(|r| r.json()["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions, [1, 1, 3, 4, 4]);
    assert_eq!(
        records[0].payload, records[1].payload,
        "a resend republishes the same bytes"
    );
    assert_eq!(
        records[3].payload, records[4].payload,
        "a replay republishes the same bytes"
    );
    for (record, served) in [(&records[0], &a), (&records[2], &b), (&records[3], &c)] {
        let file = file_of(&record.json());
        assert_eq!(
            &std::fs::read(&file).unwrap(),
            served,
            "each link has its own object"
        );
        assert_eq!(record.json()["sha256"], sha256sum(&file));
    }
    assert_eq!(kafka.count(Topic::RecordingsDlq), 0);
}
