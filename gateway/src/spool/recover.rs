//! Start-up recovery: what a previous run left in the spool directory
//! becomes the spool's state again, whatever happened to the files.
//!
//! Guarantee: every intact delivery in a segment is replayed, wherever the
//! damage is (see [`super::format`]); nothing is deleted that could still
//! matter. Damaged bytes are copied to `quarantine/` before their segment
//! can ever be deleted, and an entry that cannot be read at all (an I/O
//! error, a directory in a segment's name) is moved there whole. Neither
//! stops the gateway: it serves, and says what it found in the log and in
//! `callstream_gateway_spool_{lost_deliveries,quarantined_bytes,unreadable_entries}_total`.
//!
//! What breaks it: damage that the checksums cannot see (crc32 lets one in
//! four billion damaged frames through), or bytes inserted into or removed
//! from the middle of a segment (frames are bound to their offset: the ones
//! after such a shift are quarantined, not replayed; disks damage in place).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{self, Scan};
use super::segments::{segment_path, segment_seqs, Segment, State};
use super::{delivery_key, key_hash, now_ms};
use crate::metrics::Metrics;

/// Where damaged bytes and unreadable entries are moved, under the spool
/// directory. Never read back by the gateway: for people.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Reads a segment file; [`std::fs::read`] except in tests, which inject
/// read errors (EIO) that a real disk would give.
pub(super) type ReadSegment = fn(&Path) -> io::Result<Vec<u8>>;

/// The recovered state, the segments whose damage is already quarantined
/// (so draining them does not count it again), and the next free
/// segment number.
pub(super) struct Recovered {
    pub state: State,
    pub(crate) quarantined: Vec<u64>,
    pub(crate) next_seq: u64,
}

pub(super) fn recover(dir: &Path, metrics: &Metrics, read: ReadSegment) -> io::Result<Recovered> {
    let mut recovered = Recovered {
        state: State::default(),
        quarantined: Vec::new(),
        next_seq: 1,
    };
    for seq in segment_seqs(dir)? {
        // Above every name taken, even one that stays in the way.
        recovered.next_seq = seq + 1;
        let path = segment_path(dir, seq);
        let buf = match read(&path) {
            Ok(buf) => buf,
            Err(err) => {
                set_aside_unreadable(dir, &path, &err, metrics);
                continue;
            }
        };
        let scan = format::scan(&buf);
        if !scan.damaged.is_empty() {
            quarantine(dir, seq, &buf, &scan, metrics);
            recovered.quarantined.push(seq);
        }
        if scan.deliveries.is_empty() {
            // Its damage, if any, is in quarantine now.
            if let Err(err) = fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %err, "cannot delete an empty spool segment");
            }
            continue;
        }
        let st = &mut recovered.state;
        for d in &scan.deliveries {
            if let Some(key) = delivery_key(&d.records) {
                *st.keys.entry(key_hash(key)).or_default() += 1;
            }
        }
        st.bytes += buf.len() as u64;
        st.deliveries += scan.deliveries.len() as u64;
        st.segments.push_back(Segment {
            seq,
            bytes: buf.len() as u64,
            deliveries: scan.deliveries.len() as u64,
            oldest_ms: scan.deliveries.first().map(|d| d.spooled_at_ms),
        });
    }
    Ok(recovered)
}

/// Copies each damaged range of segment `seq` to its own file in
/// `quarantine/`, fsynced, and counts and logs what was lost. A failure to
/// copy is logged and counted as unreadable; it never stops the gateway.
pub(super) fn quarantine(dir: &Path, seq: u64, buf: &[u8], scan: &Scan, metrics: &Metrics) {
    let bytes = scan.damaged_bytes();
    metrics.spool_corrupt.inc();
    metrics.spool_lost.inc_by(scan.lost);
    metrics.spool_quarantined_bytes.inc_by(bytes as u64);
    let stamp = now_ms();
    let written = scan.damaged.iter().try_for_each(|range| {
        let name = format!("{seq:020}-{:012}-{stamp}.bin", range.start);
        write_synced(&quarantine_dir(dir)?.join(name), &buf[range.clone()])
    });
    let folder = dir.join(QUARANTINE_DIR);
    match written.and_then(|()| sync_dir(&folder)) {
        Ok(()) => tracing::error!(
            segment = %segment_path(dir, seq).display(),
            kept_deliveries = scan.deliveries.len(),
            lost_deliveries = scan.lost,
            damaged_ranges = scan.damaged.len(),
            quarantined_bytes = bytes,
            quarantine = %folder.display(),
            error = ?scan.first_error,
            "spool segment is damaged: replaying every intact delivery, damaged bytes quarantined"
        ),
        Err(err) => {
            metrics.spool_unreadable.inc();
            tracing::error!(
                segment = %segment_path(dir, seq).display(),
                kept_deliveries = scan.deliveries.len(),
                lost_deliveries = scan.lost,
                damaged_bytes = bytes,
                error = %err,
                "spool segment is damaged, and its damaged bytes could not be quarantined: replaying every intact delivery"
            );
        }
    }
}

/// An entry named like a segment that cannot be read: moved whole to
/// `quarantine/` if it can be, left where it is otherwise; either way
/// skipped, so the gateway serves.
pub(super) fn set_aside_unreadable(dir: &Path, path: &Path, err: &io::Error, metrics: &Metrics) {
    metrics.spool_unreadable.inc();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let moved = quarantine_dir(dir).and_then(|folder| {
        let to = folder.join(format!("{}-{}", name.unwrap_or_default(), now_ms()));
        fs::rename(path, &to)?;
        sync_dir(&folder)?;
        sync_dir(dir)?;
        Ok(to)
    });
    match moved {
        Ok(to) => tracing::error!(
            entry = %path.display(),
            moved_to = %to.display(),
            error = %err,
            "cannot read a spool segment: moved to quarantine, serving without it"
        ),
        Err(move_err) => tracing::error!(
            entry = %path.display(),
            error = %err,
            move_error = %move_err,
            "cannot read a spool segment, nor move it to quarantine: serving without it"
        ),
    }
}

fn quarantine_dir(dir: &Path) -> io::Result<PathBuf> {
    let folder = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&folder)?;
    Ok(folder)
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::tests::records;
    use crate::spool::Spool;

    async fn fill(dir: &Path, n: usize) {
        let spool = Spool::open(dir, 1 << 20, 1 << 20, Metrics::new()).unwrap();
        for i in 0..n {
            spool.append(&records(&format!("k{i}"), i)).await.unwrap();
        }
    }

    fn quarantined(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<_> = fs::read_dir(dir.join(QUARANTINE_DIR))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    fn eio(path: &Path) -> io::Result<Vec<u8>> {
        if path.ends_with(format!("{:020}.seg", 1)) {
            return Err(io::Error::from_raw_os_error(5));
        }
        fs::read(path)
    }

    #[tokio::test]
    async fn a_read_error_sets_the_segment_aside_and_the_rest_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 3).await;
        // A later run spooled more, in segment 2 on.
        fill(dir.path(), 2).await;
        let metrics = Metrics::new();
        let r = recover(dir.path(), &metrics, eio).unwrap();
        assert_eq!(
            r.state.deliveries, 2,
            "segment 1 failed to read; the rest is kept"
        );
        assert_eq!(metrics.spool_unreadable.get(), 1);
        let moved = quarantined(dir.path());
        assert_eq!(moved.len(), 1, "{moved:?}");
        let whole = format::scan(&fs::read(&moved[0]).unwrap());
        assert_eq!(whole.deliveries.len(), 3, "moved whole, bytes untouched");
        assert!(!segment_path(dir.path(), 1).exists());
        assert!(r.next_seq > 2);
    }

    #[tokio::test]
    async fn an_entry_that_cannot_even_be_moved_is_skipped_and_its_name_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 2).await;
        // A directory in a segment's name, and the quarantine folder's
        // name taken by a file, so it cannot be moved either.
        let in_the_way = segment_path(dir.path(), 7);
        fs::create_dir_all(in_the_way.join("x")).unwrap();
        fs::write(dir.path().join(QUARANTINE_DIR), b"").unwrap();
        let metrics = Metrics::new();
        let r = recover(dir.path(), &metrics, |p| fs::read(p)).unwrap();
        assert_eq!(r.state.deliveries, 2);
        assert_eq!(metrics.spool_unreadable.get(), 1);
        assert!(in_the_way.exists());
        assert_eq!(r.next_seq, 8, "a new segment must not collide with it");
    }

    #[tokio::test]
    async fn damaged_ranges_are_copied_to_quarantine_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 5).await;
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let metrics = Metrics::new();
        let r = recover(dir.path(), &metrics, |p| fs::read(p)).unwrap();
        assert_eq!(r.state.deliveries, 4);
        assert_eq!(r.quarantined, vec![1]);
        assert_eq!(metrics.spool_lost.get(), 1);
        let scan = format::scan(&bytes);
        let range = scan.damaged[0].clone();
        assert!(range.contains(&at));
        assert_eq!(metrics.spool_quarantined_bytes.get(), range.len() as u64);
        let files = quarantined(dir.path());
        assert_eq!(files.len(), 1);
        assert_eq!(fs::read(&files[0]).unwrap(), bytes[range]);
    }
}
