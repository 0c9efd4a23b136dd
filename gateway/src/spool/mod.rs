//! Durable write-ahead spool for deliveries Kafka could not take in time.
//!
//! Guarantee: [`Spool::append`] returns `Ok` only after the delivery's frame
//! is written *and fsynced* to a segment file, so the gateway may answer 200
//! for it. Appends from concurrent requests are group-committed: the writer
//! thread takes every append waiting, writes them, and syncs once.
//!
//! Segments are deleted only after the drainer (see [`crate::deliver`]) had
//! every record in them acknowledged by Kafka; a crash while draining
//! replays the segment from its start, so Kafka may see a spooled delivery
//! twice (at-least-once; the dedup consumer drops the copy), never zero times.
//!
//! What breaks it: a disk or filesystem that acknowledges `fsync` without
//! persisting (some virtualized or consumer disks), or losing the spool
//! directory itself.

pub mod format;
mod recover;
mod segments;
mod settings;
mod writer;

#[cfg(feature = "testkit")]
pub use recover::QUARANTINE_DIR;
pub use settings::SpoolSettings;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::metrics::Metrics;
use callstream_kafka::publish::OutRecord;
pub use format::Delivery;
use segments::{
    discard_segment, release, remove_segment, reserve, segment_path, unreserve, Segment, State,
    SEGMENT_SUFFIX,
};
use writer::{Append, Cmd};

/// Where deliveries Kafka refuses as records are set aside.
pub(crate) const REJECTED_DIR: &str = "rejected";

/// Reads of the same sealed segment that may fail in a row before it is
/// set aside as unreadable (with the drainer's backoff, about 20 s): a
/// segment that stays unreadable would otherwise hold the whole spool, and
/// every delivery after it, for ever.
const READ_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Arc<Mutex<State>>,
    /// Drained segments whose file could be neither deleted nor emptied;
    /// retried at every [`Spool::finish`].
    undeleted: Mutex<Vec<u64>>,
    /// Segments whose damage is already in quarantine and counted.
    quarantined: Mutex<Vec<u64>>,
    /// The segment whose reads failed last, and how many times in a row.
    read_failures: Mutex<(u64, u32)>,
    writer: mpsc::UnboundedSender<Cmd>,
    /// Wakes the drainer when something was appended.
    pub appended: Notify,
    metrics: Metrics,
}

/// A sealed segment handed to the drainer.
pub(crate) struct SealedSegment {
    pub seq: u64,
    pub deliveries: Vec<Delivery>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering what a
    /// previous run left (see [`recover`]): every intact delivery is kept
    /// for replay; damage and unreadable entries are quarantined, counted
    /// and logged, and never stop the gateway.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        metrics: Metrics,
    ) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let recover::Recovered {
            mut state,
            quarantined,
            next_seq,
        } = recover::recover(dir, &metrics, |path| fs::read(path))?;
        if state.deliveries > 0 {
            tracing::warn!(
                deliveries = state.deliveries,
                bytes = state.bytes,
                "spool holds deliveries from a previous run: replaying them to Kafka"
            );
        }
        state.segments.push_back(Segment {
            seq: next_seq,
            bytes: 0,
            deliveries: 0,
            oldest_ms: None,
        });
        let active = writer::create_segment(dir, next_seq)?;
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = writer::Writer::new(dir, segment_bytes, active, next_seq, state.clone());
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))?;
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state,
            undeleted: Mutex::new(Vec::new()),
            quarantined: Mutex::new(quarantined),
            read_failures: Mutex::new((0, 0)),
            writer: tx,
            appended: Notify::new(),
            metrics,
        };
        spool.update_gauges();
        Ok(spool)
    }

    /// Appends one delivery durably; `Ok` means it is fsynced.
    pub async fn append(&self, records: &[OutRecord]) -> Result<(), SpoolError> {
        let spooled_at_ms = now_ms();
        let frame = format::Encoded::new(&Delivery {
            spooled_at_ms,
            records: records.to_vec(),
        });
        let len = frame.frame_len() as u64;
        let key = delivery_key(records).map(key_hash);
        {
            let mut st = self.state.lock().expect("spool state lock");
            if st.bytes + len > self.max_bytes {
                return Err(SpoolError::Full {
                    max_bytes: self.max_bytes,
                });
            }
            // Reserve before writing so concurrent appends cannot overshoot
            // the bound, and so the key is "held" from now on.
            reserve(&mut st, len, key);
        }
        // From here the writer owns the reservation: it releases it if the
        // write fails, even when this future was dropped (the request
        // cancelled) before the answer came.
        let (reply, done) = oneshot::channel();
        let sent = self.writer.send(Cmd::Append(Append {
            frame,
            spooled_at_ms,
            key,
            reply,
        }));
        let result = match sent {
            Ok(()) => done
                .await
                .unwrap_or_else(|_| Err(io::Error::other("spool writer stopped"))),
            Err(_) => {
                unreserve(&mut self.state.lock().expect("spool state lock"), len, key);
                Err(io::Error::other("spool writer stopped"))
            }
        };
        if let Err(err) = result {
            self.update_gauges();
            return Err(err.into());
        }
        self.metrics.spool_appended.inc();
        self.update_gauges();
        self.appended.notify_one();
        Ok(())
    }

    /// Whether deliveries for `key` are waiting in the spool.
    #[cfg(feature = "testkit")]
    pub fn holds(&self, key: &str) -> bool {
        self.holds_hash(key_hash(key))
    }

    /// [`Spool::holds`], for a key already hashed by [`key_hash`].
    pub(crate) fn holds_hash(&self, hash: u64) -> bool {
        self.state
            .lock()
            .expect("spool state lock")
            .keys
            .contains_key(&hash)
    }

    /// Deliveries waiting in the spool.
    pub fn len(&self) -> u64 {
        self.state.lock().expect("spool state lock").deliveries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest segment, sealing the active one first if it is the only
    /// one with data. `None` when the spool is empty.
    pub(crate) async fn oldest_sealed(&self) -> io::Result<Option<SealedSegment>> {
        let (seq, buf) = loop {
            if self.oldest_inactive().is_none() && !self.is_empty() {
                let (reply, done) = oneshot::channel();
                if self.writer.send(Cmd::Seal { reply }).is_err() {
                    return Err(io::Error::other("spool writer stopped"));
                }
                done.await
                    .map_err(|_| io::Error::other("spool writer stopped"))??;
            }
            // The oldest, not necessarily the one the seal closed: an append
            // the writer took first may have rolled to a new segment, which
            // the seal then closed, while the full one before it still waits.
            let Some(seq) = self.oldest_inactive() else {
                return Ok(None);
            };
            let path = segment_path(&self.dir, seq);
            let reading = path.clone();
            let read = tokio::task::spawn_blocking(move || fs::read(reading))
                .await
                .map_err(io::Error::other)?;
            let mut failures = self.read_failures.lock().expect("spool read failures lock");
            match read {
                Ok(buf) => {
                    *failures = (0, 0);
                    break (seq, buf);
                }
                Err(err) => {
                    let in_a_row = if failures.0 == seq { failures.1 + 1 } else { 1 };
                    *failures = (seq, in_a_row);
                    if in_a_row < READ_ATTEMPTS {
                        return Err(io::Error::new(
                            err.kind(),
                            format!(
                                "{} (attempt {in_a_row} of {READ_ATTEMPTS}): {err}",
                                path.display()
                            ),
                        ));
                    }
                    *failures = (0, 0);
                    drop(failures);
                    self.set_aside_unreadable(seq, &path, &err);
                }
            }
        };
        let scan = format::scan(&buf);
        if !scan.damaged.is_empty() {
            let mut quarantined = self.quarantined.lock().expect("spool quarantine lock");
            if !quarantined.contains(&seq) {
                // Sealed segments were fsynced frame by frame; this means
                // the disk changed under us since start-up.
                recover::quarantine(&self.dir, seq, &buf, &scan, &self.metrics);
                quarantined.push(seq);
            }
        }
        Ok(Some(SealedSegment {
            seq,
            deliveries: scan.deliveries,
        }))
    }

    /// The oldest segment no longer written to, if any.
    fn oldest_inactive(&self) -> Option<u64> {
        let st = self.state.lock().expect("spool state lock");
        (st.segments.len() > 1).then(|| st.segments[0].seq)
    }

    /// Sealed segment `seq` cannot be read, after [`READ_ATTEMPTS`]: it is
    /// moved to quarantine (if it can be) and leaves the spool, its
    /// deliveries counted lost, so the rest drains. Their keys stay held
    /// (which ones is in the unreadable file): deliveries for them keep
    /// going through the spool, in order, until it is empty.
    fn set_aside_unreadable(&self, seq: u64, path: &Path, err: &io::Error) {
        recover::set_aside_unreadable(&self.dir, path, err, &self.metrics);
        let mut st = self.state.lock().expect("spool state lock");
        if let Some(seg) = remove_segment(&mut st, seq) {
            self.metrics.spool_lost.inc_by(seg.deliveries);
            tracing::error!(
                seq,
                lost_deliveries = seg.deliveries,
                "a spool segment stayed unreadable: draining the rest without it"
            );
        }
        drop(st);
        self.update_gauges();
    }

    /// One delivery of a segment was acknowledged by Kafka.
    pub fn delivered(&self, records: &[OutRecord]) {
        self.release(records);
        self.metrics.spool_drained.inc();
    }

    /// One delivery of a segment no longer holds its key back: acknowledged
    /// by Kafka, or set aside.
    fn release(&self, records: &[OutRecord]) {
        if let Some(key) = delivery_key(records) {
            release(
                &mut self.state.lock().expect("spool state lock").keys,
                key_hash(key),
            );
        }
    }

    /// A delivery of segment `seq` (its `index`-th) that Kafka refuses as a
    /// record, on every attempt: moved, fsynced, to `rejected/` under the
    /// spool directory, in the spool's own frame format, so that the rest of
    /// the spool can drain; its key is no longer held. Returns the file
    /// written. (To replay it after raising the topic's limit: move it back
    /// as a segment named with a higher number than any there,
    /// `<20 digits>.seg`, and restart.)
    pub fn set_aside(&self, seq: u64, index: usize, delivery: &Delivery) -> io::Result<PathBuf> {
        let dir = self.dir.join(REJECTED_DIR);
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{seq:020}-{index:06}.{SEGMENT_SUFFIX}"));
        recover::write_synced(&path, &format::encode(delivery))?;
        recover::sync_dir(&dir)?;
        recover::sync_dir(&self.dir)?;
        self.release(&delivery.records);
        self.metrics.spool_set_aside.inc();
        Ok(path)
    }

    /// Every delivery of segment `seq` was acknowledged (or set aside): it
    /// leaves the spool, and its file is deleted. When the file can be
    /// neither deleted nor emptied (a read-only remount), the segment still
    /// leaves the spool, so it is not drained (and its keys released)
    /// again; deleting it is retried at the next `finish`, and a restart
    /// before then replays it (at-least-once).
    pub fn finish(&self, seq: u64) -> io::Result<()> {
        {
            let mut st = self.state.lock().expect("spool state lock");
            remove_segment(&mut st, seq);
        }
        self.quarantined
            .lock()
            .expect("spool quarantine lock")
            .retain(|&q| q != seq);
        self.update_gauges();
        let mut undeleted = self.undeleted.lock().expect("spool undeleted lock");
        undeleted.push(seq);
        let mut failed = None;
        undeleted.retain(|&seq| match discard_segment(&self.dir, seq) {
            Ok(()) => false,
            Err(err) => {
                // Named, so ops can delete exactly this file by hand.
                let path = segment_path(&self.dir, seq);
                failed = Some(io::Error::new(
                    err.kind(),
                    format!("{}: {err}", path.display()),
                ));
                true
            }
        });
        self.metrics.spool_undeleted.set(undeleted.len() as i64);
        failed.map_or(Ok(()), Err)
    }

    /// Refreshes the spool gauges (also called before each metrics scrape,
    /// so the age of the oldest delivery keeps moving).
    pub(crate) fn update_gauges(&self) {
        let st = self.state.lock().expect("spool state lock");
        self.metrics.spool_bytes.set(st.bytes as i64);
        self.metrics.spool_records.set(st.deliveries as i64);
        let oldest = st.segments.iter().filter_map(|s| s.oldest_ms).min();
        let age = oldest.map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
        self.metrics.spool_oldest_age.set(age);
    }
}

/// The key that orders a delivery: its first record's (the raw record's).
fn delivery_key(records: &[OutRecord]) -> Option<&str> {
    records.first().map(|r| r.key.as_str())
}

/// How the spool (and the per-key lock) identify a key.
pub(crate) fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::segments::segment_seqs;
    use super::*;
    use callstream_kafka::publish::header;
    use callstream_schemas::Topic;

    /// One raw record for `key`, its body and request id numbered `n`.
    pub(super) fn records(key: &str, n: usize) -> Vec<OutRecord> {
        vec![OutRecord {
            topic: Topic::Raw,
            key: key.to_string(),
            payload: format!("body-{n}").into_bytes(),
            headers: vec![header("cs_request_id", format!("req-{n}"))],
        }]
    }

    fn open(dir: &Path, metrics: &Metrics) -> Spool {
        Spool::open(dir, 1 << 20, 1 << 20, metrics.clone()).unwrap()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        segment_seqs(dir)
            .unwrap()
            .into_iter()
            .map(|s| segment_path(dir, s))
            .collect()
    }

    async fn fill(dir: &Path, n: usize) {
        let spool = open(dir, &Metrics::new());
        for i in 0..n {
            spool
                .append(&records(&format!("k{}", i % 3), i))
                .await
                .unwrap();
        }
    }

    /// Reopens the spool and returns every delivery it would replay.
    async fn replay(dir: &Path, metrics: &Metrics) -> Vec<Delivery> {
        let spool = open(dir, metrics);
        let mut out = Vec::new();
        while let Some(seg) = spool.oldest_sealed().await.unwrap() {
            for d in &seg.deliveries {
                spool.delivered(&d.records);
            }
            out.extend(seg.deliveries);
            spool.finish(seg.seq).unwrap();
        }
        assert!(spool.is_empty());
        assert!(!spool.holds("k0"));
        out
    }

    #[tokio::test]
    async fn appends_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 10).await;
        let metrics = Metrics::new();
        let spool = open(dir.path(), &metrics);
        assert_eq!(spool.len(), 10);
        assert!(spool.holds("k1"));
        assert_eq!(metrics.spool_records.get(), 10);
        drop(spool);
        let replayed = replay(dir.path(), &metrics).await;
        let bodies: Vec<_> = replayed
            .iter()
            .map(|d| String::from_utf8(d.records[0].payload.clone()).unwrap())
            .collect();
        assert_eq!(
            bodies,
            (0..10).map(|i| format!("body-{i}")).collect::<Vec<_>>()
        );
        assert_eq!(metrics.spool_corrupt.get(), 0);
        assert!(
            segment_files(dir.path()).len() <= 1,
            "drained segments are deleted"
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_quarantined_counted_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 5).await;
        let file = segment_files(dir.path())
            .into_iter()
            .find(|p| fs::metadata(p).unwrap().len() > 0)
            .unwrap();
        let len = fs::metadata(&file).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let metrics = Metrics::new();
        let replayed = replay(dir.path(), &metrics).await;
        assert_eq!(replayed.len(), 4);
        assert_eq!(metrics.spool_corrupt.get(), 1);
        assert_eq!(metrics.spool_lost.get(), 1);
        assert!(dir.path().join(QUARANTINE_DIR).read_dir().unwrap().count() == 1);
    }

    #[tokio::test]
    async fn a_flipped_byte_and_trailing_garbage_are_both_recovered_from() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 6).await;
        let file = segment_files(dir.path())
            .into_iter()
            .find(|p| fs::metadata(p).unwrap().len() > 0)
            .unwrap();
        let mut bytes = fs::read(&file).unwrap();
        let at = bytes.len() - 2;
        bytes[at] ^= 0xff;
        bytes.extend_from_slice(b"\x13\x37garbage after a crash");
        fs::write(&file, &bytes).unwrap();
        let metrics = Metrics::new();
        let replayed = replay(dir.path(), &metrics).await;
        assert_eq!(
            replayed.len(),
            5,
            "the last frame fails its checksum; the five before it survive"
        );
        assert_eq!(metrics.spool_corrupt.get(), 1);
    }

    #[tokio::test]
    async fn an_entirely_garbage_segment_is_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 3).await;
        fs::write(segment_path(dir.path(), 99), b"not a spool segment at all").unwrap();
        let metrics = Metrics::new();
        let replayed = replay(dir.path(), &metrics).await;
        assert_eq!(replayed.len(), 3);
        assert_eq!(metrics.spool_corrupt.get(), 1);
        assert!(!segment_path(dir.path(), 99).exists());
    }

    #[tokio::test]
    async fn the_bound_is_enforced_and_released_by_draining() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let frame_len = format::encode(&Delivery {
            spooled_at_ms: 0,
            records: records("k", 0),
        })
        .len() as u64;
        let spool = Spool::open(dir.path(), frame_len * 3, 1 << 20, metrics.clone()).unwrap();
        for i in 0..3 {
            spool.append(&records("k", i)).await.unwrap();
        }
        assert!(matches!(
            spool.append(&records("k", 3)).await,
            Err(SpoolError::Full { .. })
        ));
        let seg = spool.oldest_sealed().await.unwrap().unwrap();
        seg.deliveries
            .iter()
            .for_each(|d| spool.delivered(&d.records));
        spool.finish(seg.seq).unwrap();
        spool.append(&records("k", 4)).await.unwrap();
        assert_eq!(spool.len(), 1);
    }

    #[tokio::test]
    async fn the_oldest_segment_drains_first_when_an_append_rolls_before_a_seal() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 10, Metrics::new()).unwrap();
        // Fills segment 1 past its size: the writer rolls at the next write.
        spool.append(&records("k", 0)).await.unwrap();
        // The append reaches the writer first, rolls to segment 2 and
        // writes there; the seal then closes segment 2.
        let second = records("k", 1);
        let (appended, oldest) = tokio::join!(spool.append(&second), spool.oldest_sealed());
        appended.unwrap();
        let oldest = oldest.unwrap().unwrap();
        assert_eq!(
            oldest.deliveries[0].records[0].payload, b"body-0",
            "segment {} was handed out before segment 1",
            oldest.seq
        );
    }

    #[tokio::test]
    async fn a_drained_segment_that_cannot_be_deleted_is_not_drained_again() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let spool = open(dir.path(), &metrics);
        spool.append(&records("k", 0)).await.unwrap();
        let first = spool.oldest_sealed().await.unwrap().unwrap();
        spool.append(&records("k", 1)).await.unwrap();
        // Neither removable nor writable: a directory in its place.
        let path = segment_path(dir.path(), first.seq);
        fs::remove_file(&path).unwrap();
        fs::create_dir_all(path.join("in-the-way")).unwrap();

        spool.delivered(&first.deliveries[0].records);
        let err = spool.finish(first.seq).unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert_eq!(metrics.spool_undeleted.get(), 1, "ops can see it");
        assert!(spool.holds("k"), "the later delivery still holds its key");
        assert_eq!(spool.len(), 1);
        let next = spool.oldest_sealed().await.unwrap().unwrap();
        assert_ne!(next.seq, first.seq, "not handed out again");
        assert_eq!(next.deliveries[0].records[0].payload, b"body-1");

        // Deleting it is retried with the next segment's.
        fs::remove_dir_all(&path).unwrap();
        fs::write(&path, b"").unwrap();
        spool.delivered(&next.deliveries[0].records);
        spool.finish(next.seq).unwrap();
        assert!(!path.exists());
        assert_eq!(metrics.spool_undeleted.get(), 0);
        assert!(!spool.holds("k"));
    }

    #[tokio::test]
    async fn a_segment_that_stays_unreadable_is_set_aside_and_the_rest_drains() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let spool = open(dir.path(), &metrics);
        spool.append(&records("k", 0)).await.unwrap();
        spool.append(&records("gone", 1)).await.unwrap();
        let first = spool.oldest_sealed().await.unwrap().unwrap();
        spool.append(&records("k", 2)).await.unwrap();
        // The sealed segment becomes unreadable under the running gateway
        // (a failing disk; here a directory in its place, EISDIR).
        let path = segment_path(dir.path(), first.seq);
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();

        for attempt in 1..READ_ATTEMPTS {
            let err = spool.oldest_sealed().await.err().expect("unreadable");
            let said = err.to_string();
            assert!(
                said.contains(&format!("attempt {attempt} of {READ_ATTEMPTS}")),
                "{said}"
            );
            assert!(said.contains(&*path.to_string_lossy()), "{said}");
            assert_eq!(spool.len(), 3, "nothing given up before the last attempt");
        }
        let next = spool
            .oldest_sealed()
            .await
            .unwrap()
            .expect("the rest drains");
        assert_ne!(next.seq, first.seq);
        assert_eq!(next.deliveries[0].records[0].payload, b"body-2");
        assert_eq!(metrics.spool_unreadable.get(), 1);
        assert_eq!(metrics.spool_lost.get(), 2);
        assert_eq!(spool.len(), 1);
        assert!(!path.exists(), "moved to quarantine");
        assert_eq!(
            fs::read_dir(dir.path().join(recover::QUARANTINE_DIR))
                .unwrap()
                .count(),
            1
        );
        // Its keys stay held (which they are is in the lost file) until the
        // spool is empty.
        assert!(spool.holds("gone"));
        spool.delivered(&next.deliveries[0].records);
        spool.finish(next.seq).unwrap();
        assert!(spool.is_empty());
        assert!(!spool.holds("gone") && !spool.holds("k"));
        assert!(spool.oldest_sealed().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn segments_roll_at_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 200, Metrics::new()).unwrap();
        for i in 0..20 {
            spool.append(&records("k", i)).await.unwrap();
        }
        assert!(segment_files(dir.path()).len() > 3);
        drop(spool);
        assert_eq!(replay(dir.path(), &Metrics::new()).await.len(), 20);
    }
}
