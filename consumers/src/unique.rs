//! What the PostgreSQL consumers share about a batch of unique events: the
//! newest content of each event, and the text of the enums they store in
//! columns and use as metric labels.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use callstream_schemas::{Direction, Status};

use callstream_kafka::wire::UniqueEvent;

/// Which of two contents of an event is newer: the one received later,
/// then the higher revision. Dedup numbers revisions only while its window
/// remembers an identity, so an update that arrives after the window comes
/// out as revision 1 again; its later `received_at` still makes it newer.
/// A replay carries the original `received_at`, so it orders as first
/// received. Both consumers order by this, in SQL as
/// `(received_at, revision)`.
pub(crate) fn content_order(e: &UniqueEvent) -> (DateTime<Utc>, i32) {
    (e.event.received_at, e.revision)
}

/// The newest content ([`content_order`]) of each `event_id` in `batch`,
/// in first-seen order.
///
/// One batch may hold an event and its update (or a resend of either); an
/// `INSERT ... ON CONFLICT DO UPDATE` must not touch one row twice, and only
/// the newest content matters. Of two records in the same order, or with
/// the same content (a resend, however late), the first is kept.
pub(crate) fn latest_revisions(batch: &[UniqueEvent]) -> Vec<&UniqueEvent> {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
    let mut latest: Vec<&UniqueEvent> = Vec::with_capacity(batch.len());
    for e in batch {
        match index.get(&e.event.event_id) {
            Some(&i) => {
                if content_order(e) > content_order(latest[i])
                    && e.event.fingerprint != latest[i].event.fingerprint
                {
                    latest[i] = e;
                }
            }
            None => {
                index.insert(e.event.event_id, latest.len());
                latest.push(e);
            }
        }
    }
    latest
}

/// The serialized name of a direction (`inbound`, ...).
pub(crate) fn direction_str(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
        Direction::Internal => "internal",
        Direction::Unknown => "unknown",
    }
}

/// The serialized name of a status (`answered`, ...).
pub(crate) fn status_str(status: Status) -> &'static str {
    match status {
        Status::Answered => "answered",
        Status::Missed => "missed",
        Status::Busy => "busy",
        Status::Failed => "failed",
        Status::Voicemail => "voicemail",
        Status::Waiting => "waiting",
        Status::Ringing => "ringing",
        Status::Ended => "ended",
        Status::Completed => "completed",
        Status::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_serialized_enums() {
        for d in [
            Direction::Inbound,
            Direction::Outbound,
            Direction::Internal,
            Direction::Unknown,
        ] {
            assert_eq!(serde_json::to_value(d).ok(), Some(direction_str(d).into()));
        }
        for s in [
            Status::Answered,
            Status::Missed,
            Status::Busy,
            Status::Failed,
            Status::Voicemail,
            Status::Waiting,
            Status::Ringing,
            Status::Ended,
            Status::Completed,
            Status::Unknown,
        ] {
            assert_eq!(serde_json::to_value(s).ok(), Some(status_str(s).into()));
        }
    }
}
