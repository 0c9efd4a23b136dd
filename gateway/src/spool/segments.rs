//! Segment bookkeeping: which segment files exist, how many bytes and
//! deliveries each holds, and which record keys have deliveries in the
//! spool; and the files themselves (names, listing, discarding). The
//! [`Spool`](super::Spool) API, the writer and recovery share this state.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub(super) const SEGMENT_SUFFIX: &str = "seg";

/// One segment file; the last in the queue is the one being appended to.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) bytes: u64,
    pub(super) deliveries: u64,
    pub(super) oldest_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) segments: VecDeque<Segment>,
    pub(super) bytes: u64,
    pub(super) deliveries: u64,
    /// Deliveries in the spool per record key (by its 64-bit hash): while a
    /// key has any, newer deliveries for it must be spooled too, or they
    /// would overtake. Hashes, not the keys: ~16 bytes per spooled delivery
    /// instead of ~90, which kept a full 1 GiB spool at ~100 MiB of RSS
    /// (BENCHMARKS.md). A collision only sends an unrelated key's delivery
    /// through the spool too: still durable, still in order.
    pub(super) keys: HashMap<u64, u32>,
}

pub(super) fn reserve(st: &mut State, bytes: u64, key: Option<u64>) {
    st.bytes += bytes;
    if let Some(hash) = key {
        *st.keys.entry(hash).or_default() += 1;
    }
}

pub(super) fn unreserve(st: &mut State, bytes: u64, key: Option<u64>) {
    st.bytes -= bytes;
    if let Some(hash) = key {
        release(&mut st.keys, hash);
    }
}

pub(super) fn release(keys: &mut HashMap<u64, u32>, hash: u64) {
    if let Some(n) = keys.get_mut(&hash) {
        *n -= 1;
        if *n == 0 {
            keys.remove(&hash);
        }
    }
}

/// Segment `seq` leaves the spool's state, if it is there.
pub(super) fn remove_segment(st: &mut State, seq: u64) -> Option<Segment> {
    let pos = st.segments.iter().position(|s| s.seq == seq)?;
    let seg = st.segments.remove(pos)?;
    st.bytes -= seg.bytes;
    st.deliveries -= seg.deliveries;
    if st.bytes == 0 {
        // Nothing stored or reserved holds a key now. Only the keys of an
        // unreadable segment set aside can be left over; they end here.
        st.keys.clear();
    }
    Some(seg)
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_SUFFIX}"))
}

pub(super) fn segment_seqs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(&format!(".{SEGMENT_SUFFIX}"))?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Deletes a drained segment's file; failing that, empties it (an empty
/// segment is removed, not replayed, at start-up).
pub(super) fn discard_segment(dir: &Path, seq: u64) -> io::Result<()> {
    let path = segment_path(dir, seq);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => {
            let emptied = OpenOptions::new().write(true).open(&path).and_then(|file| {
                file.set_len(0)?;
                file.sync_all()
            });
            match emptied {
                Ok(()) => Ok(()),
                Err(_) => Err(err),
            }
        }
    }
}
