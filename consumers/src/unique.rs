//! What the PostgreSQL consumers share about a batch of unique events: the
//! newest revision of each event, and the text of the enums they store in
//! columns and use as metric labels.

use std::collections::HashMap;

use uuid::Uuid;

use callstream_schemas::{Direction, Status};

use callstream_kafka::wire::UniqueEvent;

/// The highest revision of each `event_id` in `batch`, in first-seen order.
///
/// One batch may hold an event and its update (or a resend of either); an
/// `INSERT ... ON CONFLICT DO UPDATE` must not touch one row twice, and only
/// the newest revision matters. Of two records with the same revision (a
/// resend) the first is kept.
pub(crate) fn latest_revisions(batch: &[UniqueEvent]) -> Vec<&UniqueEvent> {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(batch.len());
    let mut latest: Vec<&UniqueEvent> = Vec::with_capacity(batch.len());
    for e in batch {
        match index.get(&e.event.event_id) {
            Some(&i) => {
                if e.revision > latest[i].revision {
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
