//! What a replay did to each record, and in total.
//!
//! "Change" means what `callstream-dedup` would see: it drops an event
//! whose identity already had that fingerprint and forwards anything else.
//! A replayed record is compared with what the gateway made of the same
//! delivery when it received it:
//!
//! * the raw record's key says whether it was normalized then (the key is
//!   the identity) or dead-lettered (the key is the request id);
//! * for a normalized one, the `callstream.events.v1` record carrying the
//!   same `cs_request_id` near the raw record's time gives its fingerprint
//!   (the events published within 5 minutes of the replayed range are read
//!   first, one request id and fingerprint each held in memory).
//!
//! The comparison is with the gateway's own record, not with earlier
//! replays: an update or a new event that an earlier replay already
//! published is reported again, and dedup drops it then. DLQ records were
//! all dead-lettered, so a DLQ replay reads no events.

use std::collections::BTreeMap;
use std::fmt;

use callstream_schemas::{Event, Kind, Status};

use super::range::PartitionRange;
use super::rebuild::Failure;

/// The fields of a re-derived event worth a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub identity: String,
    pub fingerprint: String,
    pub kind: Kind,
    pub status: Status,
}

impl Derived {
    pub(crate) fn of(event: &Event) -> Derived {
        Derived {
            identity: event.identity.clone(),
            fingerprint: event.fingerprint.clone(),
            kind: event.kind,
            status: event.status,
        }
    }
}

/// What replaying one record means downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same identity and fingerprint as the original event: dedup drops it.
    Unchanged(Derived),
    /// Same identity, new content: dedup forwards it as the next revision.
    Updated {
        event: Derived,
        old_fingerprint: String,
    },
    /// Dead-lettered when received, an event now: dedup forwards it
    /// (unless an earlier replay already published it).
    New(Derived),
    /// Normalized then under another identity: the new one is forwarded as a
    /// distinct event and the old one stays downstream (a wrong `--tenant`
    /// shows up here).
    Reidentified {
        event: Derived,
        old_identity: String,
    },
    /// Normalized then, but no original event with its request id was found
    /// near the raw record's time: dedup decides.
    Unverified(Derived),
    /// Not normalizable, then and now.
    StillFailing(Failure),
    /// Normalized then (under `old_identity`), not now: the current
    /// normalizer refuses what an older one accepted.
    Regressed {
        failure: Failure,
        old_identity: String,
    },
}

/// One record read by a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub partition: i32,
    pub offset: i64,
    /// `cs_request_id`, when the record has one.
    pub request_id: Option<String>,
    pub verdict: Verdict,
}

impl Outcome {
    /// Everything but an exact resend of the original is worth a line.
    pub fn is_change(&self) -> bool {
        !matches!(self.verdict, Verdict::Unchanged(_))
    }
}

fn status_str(status: Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{status:?}"))
}

/// A fingerprint's first 12 hex digits: enough to tell two apart.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

impl fmt::Display for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.identity,
            self.kind.as_str(),
            status_str(self.status)
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("{}:{}", self.partition, self.offset);
        match &self.verdict {
            Verdict::Unchanged(e) => write!(f, "unchanged    {at} {e}"),
            Verdict::Updated {
                event,
                old_fingerprint,
            } => write!(
                f,
                "updated      {at} {event} (fingerprint {} -> {})",
                short(old_fingerprint),
                short(&event.fingerprint)
            ),
            Verdict::New(e) => write!(f, "new          {at} {e} (was dead-lettered)"),
            Verdict::Reidentified {
                event,
                old_identity,
            } => write!(
                f,
                "reidentified {at} {event} (was {old_identity}, which stays downstream)"
            ),
            Verdict::Unverified(e) => write!(f, "unverified   {at} {e} (original event not found)"),
            Verdict::StillFailing(fail) => {
                write!(f, "failing      {at} {}: {}", fail.reason, fail.detail)
            }
            Verdict::Regressed {
                failure,
                old_identity,
            } => write!(
                f,
                "regressed    {at} {old_identity} {}: {} (normalized when received)",
                failure.reason, failure.detail
            ),
        }?;
        if let Some(id) = &self.request_id {
            write!(f, " request_id={id}")?;
        }
        Ok(())
    }
}

/// Totals of a replay, printed at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The topic replayed.
    pub topic: String,
    /// What was read, per partition.
    pub ranges: Vec<PartitionRange>,
    pub dry_run: bool,
    /// Records of `callstream.events.v1` read to find the original events
    /// (raw replays only).
    pub originals_scanned: Option<u64>,
    pub read: u64,
    pub unchanged: u64,
    pub updated: u64,
    pub new: u64,
    pub reidentified: u64,
    pub unverified: u64,
    /// Records acknowledged by Kafka on `callstream.events.v1` (0 in a dry run).
    pub published: u64,
    /// Re-derived events Kafka refuses as records (too large for the topic
    /// or the producer, invalid): logged, not published.
    pub refused: u64,
    /// Records that do not normalize, per reason (regressions included).
    pub failing: BTreeMap<&'static str, u64>,
    /// Of `failing`, those that normalized when received.
    pub regressed: u64,
}

impl Report {
    /// Records that normalize: published, or would be in a dry run.
    pub fn normalized(&self) -> u64 {
        self.unchanged + self.updated + self.new + self.reidentified + self.unverified
    }

    pub fn failed(&self) -> u64 {
        self.failing.values().sum()
    }

    pub(crate) fn count(&mut self, outcome: &Outcome) {
        self.read += 1;
        match &outcome.verdict {
            Verdict::Unchanged(_) => self.unchanged += 1,
            Verdict::Updated { .. } => self.updated += 1,
            Verdict::New(_) => self.new += 1,
            Verdict::Reidentified { .. } => self.reidentified += 1,
            Verdict::Unverified(_) => self.unverified += 1,
            Verdict::StillFailing(failure) => *self.failing.entry(failure.reason).or_default() += 1,
            Verdict::Regressed { failure, .. } => {
                self.regressed += 1;
                *self.failing.entry(failure.reason).or_default() += 1;
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = super::range::describe(&self.ranges);
        writeln!(f, "replayed {} {ranges}", self.topic)?;
        if let Some(n) = self.originals_scanned {
            writeln!(f, "compared with {n} original events")?;
        }
        writeln!(f, "read {} records", self.read)?;
        writeln!(
            f,
            "normalized {}: unchanged {}, updated {}, new {}, reidentified {}, unverified {}",
            self.normalized(),
            self.unchanged,
            self.updated,
            self.new,
            self.reidentified,
            self.unverified
        )?;
        if self.dry_run {
            writeln!(
                f,
                "dry run: published nothing (would publish {})",
                self.normalized()
            )?;
        } else {
            writeln!(f, "published {} events", self.published)?;
            if self.refused > 0 {
                writeln!(
                    f,
                    "refused by Kafka {} (too large or invalid; logged, not published)",
                    self.refused
                )?;
            }
        }
        let reasons: Vec<String> = self
            .failing
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        write!(f, "not normalized {} (not re-published)", self.failed())?;
        if !reasons.is_empty() {
            write!(f, ": {}", reasons.join(", "))?;
        }
        writeln!(f)?;
        if self.regressed > 0 {
            writeln!(
                f,
                "regressed {}: normalized when received, refused now; check the normalizer",
                self.regressed
            )?;
        }
        Ok(())
    }
}
