//! Counting calls, not events: the events of one call (its call key,
//! [`callstream_schemas::call::call_key`]) are merged into the call
//! ([`Call::from_events`]) and the call is counted once, in `kpi_calls`.
//! `kpi_calls` keeps the newest content of each of the call's events
//! (`members`), so when one changes, or a new one joins, the call is merged
//! again, its old contribution taken back and the new one added.
//!
//! The merge depends only on the set of contents, not on the order they
//! arrive in, so a replay from scratch gives the same tables. Two
//! transactions touching one call (two instances during a rebalance) are
//! serialized by the call's advisory lock ([`crate::calls::lock`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Transaction;

use callstream_kafka::wire::UniqueEvent;
use callstream_schemas::call::Call;
use callstream_schemas::Event;

use super::rules::Contribution;
use super::tables::{Rollup, Statements};
use super::Pending;
use crate::unique::content_order;

/// One event of a call as `kpi_calls.members` keeps it: read back
/// (owned), or from the batch (borrowed, not copied).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member<'a> {
    revision: i32,
    event: Cow<'a, Event>,
}

impl Member<'_> {
    /// Whether `record` is newer, different content of this event.
    fn is_replaced_by(&self, record: &UniqueEvent) -> bool {
        self.event.fingerprint != record.event.fingerprint
            && (self.event.received_at, self.revision) < content_order(record)
    }
}

/// Counts the calls of `records` (each with its call key) into `rollup`.
pub(crate) async fn count(
    statements: &Statements,
    tx: &Transaction<'_>,
    records: Vec<(String, &UniqueEvent)>,
    rollup: &mut Rollup,
    pending: &mut Pending,
) -> Result<(), tokio_postgres::Error> {
    let mut by_call: BTreeMap<String, Vec<&UniqueEvent>> = BTreeMap::new();
    for (key, record) in records {
        by_call.entry(key).or_default().push(record);
    }
    let keys: Vec<&str> = by_call.keys().map(String::as_str).collect();
    crate::calls::lock(tx, &keys).await?;
    let mut before = statements.load_calls(tx, &keys).await?;
    let mut changed = Vec::new();
    for (key, records) in &by_call {
        let (mut members, old) = match before.remove(key) {
            Some((json, old)) => match serde_json::from_str::<Vec<Member>>(&json) {
                Ok(members) => (members, Some(old)),
                // Written here from `Member`s: only a hand edit gets here.
                // Counted again from this batch's events alone.
                Err(e) => {
                    tracing::error!(call_key = %key, error = %e, "kpi_calls members unreadable; counting the call from its new events");
                    (Vec::new(), Some(old))
                }
            },
            None => (Vec::new(), None),
        };
        let mut merged = false;
        for record in records {
            match members
                .iter_mut()
                .find(|m| m.event.event_id == record.event.event_id)
            {
                Some(m) if !m.is_replaced_by(record) => {}
                Some(m) => {
                    *m = Member {
                        revision: record.revision,
                        event: Cow::Borrowed(&record.event),
                    };
                    merged = true;
                }
                None => {
                    members.push(Member {
                        revision: record.revision,
                        event: Cow::Borrowed(&record.event),
                    });
                    merged = true;
                }
            }
        }
        if !merged {
            continue;
        }
        let events: Vec<&Event> = members.iter().map(|m| m.event.as_ref()).collect();
        let Some(call) = Call::from_refs(&events) else {
            continue; // every member has this key: unreachable
        };
        let mut new = Contribution::of_call(&call);
        match &old {
            Some(old) => {
                // Without a start time a call stays in the interval it was
                // first counted in: notes added a week later are not a call
                // a week later.
                if call.started_at.is_none() {
                    new.event_at = old.event_at;
                }
                if *old != new {
                    rollup.add(old, -1);
                    rollup.add(&new, 1);
                    if old.counters.is_zero() {
                        pending.first_count(&new);
                    } else {
                        pending.recounted += 1;
                    }
                }
            }
            None => {
                rollup.add(&new, 1);
                pending.first_count(&new);
            }
        }
        let members = serde_json::to_vec(&members).expect("members always serialize");
        changed.push((key.clone(), members, new));
    }
    statements.store_calls(tx, &changed).await
}
