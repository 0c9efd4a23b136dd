//! What dedup decides with: per input partition, the identities seen
//! within the window and their fingerprints. Pure logic, no I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What the dedup remembers about one identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Revision last forwarded (1 = first content).
    #[serde(rename = "r")]
    pub revision: u32,
    /// Event time (ms) the identity was last seen; drives the window.
    #[serde(rename = "s")]
    pub(crate) last_seen_ms: i64,
    /// Fingerprints forwarded so far (first 64 bits, hex); a few per identity.
    #[serde(rename = "f")]
    pub fingerprints: Vec<u64>,
}

/// The decision for one incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First content of the identity: forward as revision 1.
    New,
    /// New content for a known identity: forward with this revision.
    Update(u32),
    /// Content already forwarded: drop.
    Duplicate,
}

/// Dedup state of one input partition. Pure logic, no I/O.
#[derive(Debug, Default)]
pub struct PartitionState {
    seen: HashMap<String, Seen>,
    /// Highest event time seen; the window is measured back from it.
    high_water_ms: i64,
    /// The window's cutoff must reach this before the next sweep.
    next_sweep_ms: i64,
}

/// Sweeps for expired identities run each time the cutoff has advanced by
/// this share of the window (so identities are remembered for the window and
/// at most 1/64 longer). Sweeping on every batch scanned the whole state each
/// time, which made the cost per event grow with the state (BENCHMARKS.md).
const SWEEP_EVERY_WINDOW_SHARE: i64 = 64;

impl PartitionState {
    /// Decides on an event and records it. Returns the verdict and, unless
    /// it is a duplicate, the new state to write to the changelog.
    pub fn observe(
        &mut self,
        identity: &str,
        fingerprint: &str,
        event_ms: i64,
    ) -> (Verdict, Option<Seen>) {
        let fp = fingerprint_bits(fingerprint);
        self.high_water_ms = self.high_water_ms.max(event_ms);
        match self.seen.get_mut(identity) {
            Some(seen) if seen.fingerprints.contains(&fp) => (Verdict::Duplicate, None),
            Some(seen) => {
                seen.revision += 1;
                seen.fingerprints.push(fp);
                seen.last_seen_ms = seen.last_seen_ms.max(event_ms);
                (Verdict::Update(seen.revision), Some(seen.clone()))
            }
            None => {
                let seen = Seen {
                    revision: 1,
                    last_seen_ms: event_ms,
                    fingerprints: vec![fp],
                };
                self.seen.insert(identity.to_string(), seen.clone());
                (Verdict::New, Some(seen))
            }
        }
    }

    /// Forgets identities not seen within `window_ms` of the newest event
    /// (in sweeps: see [`SWEEP_EVERY_WINDOW_SHARE`]); returns them so
    /// tombstones can be written.
    pub(crate) fn evict(&mut self, window_ms: i64) -> Vec<String> {
        let cutoff = self.high_water_ms.saturating_sub(window_ms);
        if cutoff < self.next_sweep_ms {
            return Vec::new();
        }
        self.next_sweep_ms = cutoff + (window_ms / SWEEP_EVERY_WINDOW_SHARE).max(1);
        let old: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, s)| s.last_seen_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.seen.remove(k);
        }
        old
    }

    /// Applies one changelog record (restore).
    pub fn restore(&mut self, identity: &str, seen: Option<Seen>) {
        match seen {
            Some(seen) => {
                self.high_water_ms = self.high_water_ms.max(seen.last_seen_ms);
                self.seen.insert(identity.to_string(), seen);
            }
            None => {
                self.seen.remove(identity);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The first 64 bits of a hex fingerprint: enough to tell one identity's
/// few contents apart.
fn fingerprint_bits(fingerprint: &str) -> u64 {
    fingerprint
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            // Not a SHA-256 hex: hash whatever it is, deterministically.
            fingerprint.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP1: &str = "aaaaaaaaaaaaaaaa0000";
    const FP2: &str = "bbbbbbbbbbbbbbbb0000";

    #[test]
    fn resends_are_dropped_and_new_content_is_the_next_revision() {
        let mut s = PartitionState::default();
        assert_eq!(s.observe("a", FP1, 1_000).0, Verdict::New);
        assert_eq!(s.observe("a", FP1, 2_000).0, Verdict::Duplicate);
        let (verdict, seen) = s.observe("a", FP2, 3_000);
        assert_eq!(verdict, Verdict::Update(2));
        assert_eq!(seen.unwrap().fingerprints.len(), 2);
        // An earlier content arriving again (a retried chunk) is still a duplicate.
        assert_eq!(s.observe("a", FP1, 4_000).0, Verdict::Duplicate);
        assert_eq!(
            s.observe("b", FP1, 4_000).0,
            Verdict::New,
            "identities are independent"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_window_is_measured_in_event_time() {
        let mut s = PartitionState::default();
        s.observe("old", FP1, 0);
        s.observe("recent", FP1, 9_000);
        s.observe("new", FP1, 10_000);
        assert_eq!(s.evict(5_000), vec!["old".to_string()]);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.observe("old", FP1, 10_001).0,
            Verdict::New,
            "forgotten after the window"
        );
    }

    #[test]
    fn sweeps_wait_for_the_cutoff_to_move_a_64th_of_the_window() {
        let mut s = PartitionState::default();
        s.observe("a", FP1, 0);
        s.observe("b", FP1, 100);
        s.observe("now", FP1, 6_400);
        assert_eq!(s.evict(6_400), Vec::<String>::new(), "nothing older than 0");
        s.observe("later", FP1, 6_450);
        // Cutoff 50: "a" is expired but the next sweep waits for cutoff 100.
        assert!(s.evict(6_400).is_empty());
        s.observe("later2", FP1, 6_600);
        // Cutoff 200 passed 100: one sweep takes both.
        let mut gone = s.evict(6_400);
        gone.sort();
        assert_eq!(gone, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn restore_replays_the_changelog_including_tombstones() {
        let mut live = PartitionState::default();
        let mut log = Vec::new();
        for (id, fp, t) in [("a", FP1, 1), ("b", FP1, 2), ("a", FP2, 3)] {
            if let (_, Some(seen)) = live.observe(id, fp, t) {
                log.push((id.to_string(), Some(seen)));
            }
        }
        log.push(("b".to_string(), None));
        let mut restored = PartitionState::default();
        for (id, seen) in log {
            restored.restore(&id, seen);
        }
        assert_eq!(restored.len(), 1);
        assert_eq!(restored.observe("a", FP2, 4).0, Verdict::Duplicate);
        assert_eq!(
            restored.observe("a", "cccccccccccccccc", 5).0,
            Verdict::Update(3)
        );
        assert_eq!(restored.observe("b", FP1, 6).0, Verdict::New);
    }

    #[test]
    fn state_round_trips_through_its_changelog_encoding() {
        let seen = Seen {
            revision: 3,
            last_seen_ms: 1_700_000_000_000,
            fingerprints: vec![1, u64::MAX],
        };
        let bytes = serde_json::to_vec(&seen).unwrap();
        assert_eq!(serde_json::from_slice::<Seen>(&bytes).unwrap(), seen);
    }
}
