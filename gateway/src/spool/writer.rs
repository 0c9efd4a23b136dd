//! The spool's only writer: one thread that owns the active segment,
//! writes every waiting append, and fsyncs once for all of them (group
//! commit) before any of them is answered.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::format;
use super::segments::{segment_path, unreserve, Segment, State};

/// One frame to write; `reply` gets the outcome once it is fsynced.
pub(super) struct Append {
    pub(super) frame: format::Encoded,
    pub(super) spooled_at_ms: u64,
    /// The hash of the delivery's key, held since the append reserved it.
    pub(super) key: Option<u64>,
    pub(super) reply: oneshot::Sender<io::Result<()>>,
}

pub(super) enum Cmd {
    Append(Append),
    /// Close the active segment, if it holds anything, and start a new one.
    Seal {
        reply: oneshot::Sender<io::Result<()>>,
    },
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    // The new file's directory entry must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Owns the active segment file; the only code that writes segments.
pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    seq: u64,
    written: u64,
    /// Frames in the active segment: the next one's index.
    frames: u32,
    /// A failed write left bytes that could not be cut off: the next write
    /// must go to a new segment, or its frames would follow garbage and be
    /// cut off as a corrupt tail at the next start.
    must_roll: bool,
    state: Arc<Mutex<State>>,
}

impl Writer {
    /// The writer of segment `seq`, empty and just created as `file`.
    pub(super) fn new(
        dir: &Path,
        segment_bytes: u64,
        file: File,
        seq: u64,
        state: Arc<Mutex<State>>,
    ) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            seq,
            written: 0,
            frames: 0,
            must_roll: false,
            state,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        while let Some(cmd) = rx.blocking_recv() {
            let mut batch = vec![cmd];
            // Group commit: everything already waiting shares one fsync.
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Cmd>) {
        let mut appends = Vec::new();
        let mut seals = Vec::new();
        for cmd in batch {
            match cmd {
                Cmd::Append(append) => appends.push(append),
                Cmd::Seal { reply } => seals.push(reply),
            }
        }
        if !appends.is_empty() {
            let result = self.write_all(&appends);
            match result {
                Ok(()) => {
                    for Append { reply, .. } in appends {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(err) => {
                    // Cut off any partial frame, or frames appended after it
                    // (and acknowledged) would sit behind garbage.
                    if !self.must_roll {
                        if let Err(trunc) = self.file.set_len(self.written) {
                            tracing::error!(error = %trunc, "could not cut a failed spool write; starting a new segment");
                            self.must_roll = true;
                            let _ = self.roll();
                        }
                    }
                    tracing::error!(error = %err, "spool write failed");
                    {
                        let mut st = self.state.lock().expect("spool state lock");
                        for a in &appends {
                            unreserve(&mut st, a.frame.frame_len() as u64, a.key);
                        }
                    }
                    for Append { reply, .. } in appends {
                        let _ = reply.send(Err(io::Error::new(err.kind(), err.to_string())));
                    }
                }
            }
        }
        for reply in seals {
            let _ = reply.send(self.seal());
        }
    }

    fn write_all(&mut self, appends: &[Append]) -> io::Result<()> {
        if self.must_roll || self.written >= self.segment_bytes {
            self.roll()?;
        }
        let mut buf = Vec::with_capacity(appends.iter().map(|a| a.frame.frame_len()).sum());
        let mut index = self.frames;
        for a in appends {
            // Each frame's header names its offset and index in the segment.
            a.frame
                .write_at(self.written + buf.len() as u64, index, &mut buf);
            index = index.wrapping_add(1);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.written += buf.len() as u64;
        self.frames = index;
        let mut st = self.state.lock().expect("spool state lock");
        st.deliveries += appends.len() as u64;
        let seg = st
            .segments
            .back_mut()
            .expect("the active segment is always present");
        seg.bytes += buf.len() as u64;
        seg.deliveries += appends.len() as u64;
        seg.oldest_ms = seg.oldest_ms.or(appends.first().map(|a| a.spooled_at_ms));
        Ok(())
    }

    fn seal(&mut self) -> io::Result<()> {
        if self.written == 0 && !self.must_roll {
            return Ok(());
        }
        self.roll()
    }

    fn roll(&mut self) -> io::Result<()> {
        // Each frame was synced as it was written; this is for the file's
        // metadata. A file left broken by a failed write may refuse it:
        // leaving it is what matters then.
        if let Err(err) = self.file.sync_all() {
            if !self.must_roll {
                return Err(err);
            }
        }
        let seq = self.seq + 1;
        self.file = create_segment(&self.dir, seq)?;
        self.seq = seq;
        self.written = 0;
        self.frames = 0;
        self.must_roll = false;
        self.state
            .lock()
            .expect("spool state lock")
            .segments
            .push_back(Segment {
                seq,
                bytes: 0,
                deliveries: 0,
                oldest_ms: None,
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tokio::sync::oneshot;

    use super::*;
    use crate::spool::format::{self, Delivery};
    use crate::spool::key_hash;
    use crate::spool::segments::reserve;
    use crate::spool::tests::records;

    /// The writer over `file` as segment 1 of `dir`, and its state.
    fn writer_over(dir: &Path, file: File) -> (Writer, Arc<Mutex<State>>) {
        let state = Arc::new(Mutex::new(State::default()));
        state.lock().unwrap().segments.push_back(Segment {
            seq: 1,
            bytes: 0,
            deliveries: 0,
            oldest_ms: None,
        });
        let writer = Writer::new(dir, 1 << 20, file, 1, state.clone());
        (writer, state)
    }

    /// An append as [`Spool::append`] sends it, its reservation made.
    fn reserved_append(
        state: &Mutex<State>,
        key: &str,
        n: usize,
    ) -> (Cmd, oneshot::Receiver<io::Result<()>>) {
        let frame = format::Encoded::new(&Delivery {
            spooled_at_ms: 1,
            records: records(key, n),
        });
        let key = Some(key_hash(key));
        reserve(&mut state.lock().unwrap(), frame.frame_len() as u64, key);
        let (reply, done) = oneshot::channel();
        let append = Append {
            frame,
            spooled_at_ms: 1,
            key,
            reply,
        };
        (Cmd::Append(append), done)
    }

    #[test]
    fn a_failed_write_releases_its_reservation_even_with_nobody_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (mut writer, state) = writer_over(dir.path(), full);
        let (append, done) = reserved_append(&state, "k", 0);
        // The request was cancelled: its `append` future, and the
        // receiver, are gone.
        drop(done);
        writer.commit(vec![append]);
        let st = state.lock().unwrap();
        assert_eq!(st.bytes, 0, "the reserved bytes are given back");
        assert!(st.keys.is_empty(), "the key is no longer held");
    }

    #[test]
    fn after_a_failed_write_it_cannot_cut_off_the_next_goes_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        // Writes fail (ENOSPC) and so does cutting them off (EINVAL).
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let (mut writer, state) = writer_over(dir.path(), full);
        // And the new segment cannot be created yet either.
        let blocker = segment_path(dir.path(), 2);
        fs::write(&blocker, b"").unwrap();
        let (append, mut done) = reserved_append(&state, "k", 0);
        writer.commit(vec![append]);
        assert!(done.try_recv().unwrap().is_err());

        fs::remove_file(&blocker).unwrap();
        let (append, mut done) = reserved_append(&state, "k", 1);
        writer.commit(vec![append]);
        done.try_recv()
            .unwrap()
            .expect("written to a new segment, not behind the failed bytes");
        let written = fs::read(segment_path(dir.path(), 2)).unwrap();
        assert_eq!(format::scan(&written).deliveries.len(), 1);
        let st = state.lock().unwrap();
        assert_eq!(st.segments.back().unwrap().seq, 2);
        assert_eq!((st.deliveries, st.keys.len()), (1, 1));
    }
}
