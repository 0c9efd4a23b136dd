//! Calls, not only events: which events describe one call (its key), and
//! how they merge into the call's current state. Pure functions, so a
//! consumer that keeps each call's events can derive the call again at any
//! time, and a replay from scratch gives the same calls.
//!
//! **Call key**: `provider:tenant:<id>`, the id being the first the event
//! has of
//! 1. its conversation (`correlation.conversation_id`): TeleCMI's
//!    `conversation_uuid`, Twilio's `ParentCallSid`, Telnyx's
//!    `call_session_id`, the ids that group a call's legs;
//! 2. its call (`correlation.call_id`): Onoff's `id` (CDR, VM, RECORDING
//!    and updates), Xarios' `cdr.id` (every trigger), TeleCMI's
//!    `call_id`/`request_id` (a click-to-call's two legs), Twilio's
//!    `CallSid` (a parent call is its own conversation), Aircall's call id,
//!    a declarative source's `correlation.call_id`;
//! 3. its leg (`correlation.leg_id`).
//!
//! SMS, and events with none of these, belong to no call.
//!
//! **Merge rules** ([`Call::from_events`]), over the newest content of each
//! of the call's events (by identity), oldest received first:
//! - *Status*: the final events' (every kind but `call_progress`) by
//!   precedence, answered > voicemail > busy = failed > missed (between
//!   busy and failed, the newer); a voicemail event counts as voicemail.
//!   Live steps (ringing, waiting, answered, ended) are never final: a call
//!   with only steps is `final: false`, its status the newest step's.
//! - *Every other field*: the newest non-empty value, taken from the final
//!   events when any has one, else from the steps. Parties field by field
//!   (one leg may know the agent, the other the customer).
//! - *Kept whole*: the legs (`leg_id`, `leg`), every event (identity, kind,
//!   status, when received: Xarios' triggers, Onoff's CDR and VM), every
//!   recording (distinct), tags (by name, the newest of each), and the
//!   timeline of steps and final events in the order received.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Status, Tag};

/// The key of the call `event` belongs to, if any.
pub fn call_key(event: &Event) -> Option<String> {
    if event.kind == Kind::Sms {
        return None;
    }
    let c = &event.correlation;
    let id = [&c.conversation_id, &c.call_id, &c.leg_id]
        .into_iter()
        .find_map(|id| id.as_deref().map(str::trim).filter(|id| !id.is_empty()))?;
    Some(format!("{}:{}:{id}", event.provider.as_str(), event.tenant))
}

/// One leg of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Leg {
    pub leg_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
}

/// One event of a call, as the timeline lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    pub identity: String,
    pub kind: Kind,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_event_type: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A call's current state, merged from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Call {
    /// `provider:tenant:<id>` ([`call_key`]).
    pub call_key: String,
    pub provider: ProviderId,
    pub tenant: String,
    /// Whether a final event (not a live step) has arrived.
    pub r#final: bool,
    pub status: Status,
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<f64>,
    pub internal: Party,
    pub external: Party,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recordings: Vec<MediaRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<MediaRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<Leg>,
    /// Every event of the call, oldest received first.
    pub timeline: Vec<Step>,
}

/// Rank of a final status: higher wins.
fn rank(status: Status) -> u8 {
    match status {
        Status::Answered => 4,
        Status::Voicemail => 3,
        Status::Busy | Status::Failed => 2,
        Status::Missed => 1,
        _ => 0,
    }
}

/// The newest `Some` of `pick` over `events` (oldest first).
fn newest<T: Clone>(events: &[&Event], pick: impl Fn(&Event) -> Option<T>) -> Option<T> {
    events.iter().rev().find_map(|e| pick(e))
}

fn text(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

/// A call's events: the final ones, and all, oldest received first.
struct Members<'a> {
    finals: &'a [&'a Event],
    all: &'a [&'a Event],
}

impl Members<'_> {
    /// The newest `Some` of `pick` among the final events, else among all.
    fn field<T: Clone>(&self, pick: impl Fn(&Event) -> Option<T>) -> Option<T> {
        newest(self.finals, &pick).or_else(|| newest(self.all, &pick))
    }
}

impl Call {
    /// The call that `events` describe: those of `events` with the call key
    /// of the first that has one; for each identity only its newest
    /// content. `None` if none has a call key.
    pub fn from_events(events: &[Event]) -> Option<Call> {
        Call::from_refs(&events.iter().collect::<Vec<_>>())
    }

    /// [`Call::from_events`] over borrowed events.
    pub fn from_refs(events: &[&Event]) -> Option<Call> {
        let key = events.iter().find_map(|e| call_key(e))?;
        // The newest content of each identity (a later one in `events`
        // wins a tie), then oldest received first.
        let mut by_identity: BTreeMap<&str, &Event> = BTreeMap::new();
        for e in events
            .iter()
            .copied()
            .filter(|e| call_key(e).as_deref() == Some(key.as_str()))
        {
            match by_identity.get(e.identity.as_str()) {
                Some(have) if have.received_at > e.received_at => {}
                _ => {
                    by_identity.insert(&e.identity, e);
                }
            }
        }
        let mut all: Vec<&Event> = by_identity.into_values().collect();
        all.sort_by(|a, b| (a.received_at, &a.identity).cmp(&(b.received_at, &b.identity)));
        let finals: Vec<&Event> = all
            .iter()
            .copied()
            .filter(|e| e.kind != Kind::CallProgress)
            .collect();
        let first = all[0];
        // Fields from the final events when one has the field, else the steps.
        let members = Members {
            finals: &finals,
            all: &all,
        };
        let status = match finals
            .iter()
            .map(|e| {
                if e.kind == Kind::Voicemail {
                    Status::Voicemail
                } else {
                    e.status
                }
            })
            .enumerate()
            .max_by_key(|(i, s)| (rank(*s), *i))
        {
            Some((_, status)) => status,
            None => all.last().map_or(Status::Unknown, |e| e.status),
        };
        let party = |side: fn(&Event) -> &Party| Party {
            id: members.field(|e| text(&side(e).id)),
            name: members.field(|e| text(&side(e).name)),
            email: members.field(|e| text(&side(e).email)),
            number: members.field(|e| text(&side(e).number)),
            company: members.field(|e| text(&side(e).company)),
        };
        let mut tags: BTreeMap<String, Tag> = BTreeMap::new();
        let mut recordings: Vec<MediaRef> = Vec::new();
        let mut legs: Vec<Leg> = Vec::new();
        for e in &all {
            for tag in &e.tags {
                tags.insert(tag.name.clone(), tag.clone());
            }
            if let Some(recording) = &e.recording {
                if !recordings.contains(recording) {
                    recordings.push(recording.clone());
                }
            }
            if let Some(leg_id) = text(&e.correlation.leg_id) {
                let leg = Leg {
                    leg_id,
                    leg: text(&e.correlation.leg),
                };
                match legs.iter_mut().find(|l| l.leg_id == leg.leg_id) {
                    Some(known) if known.leg.is_none() => *known = leg,
                    Some(_) => {}
                    None => legs.push(leg),
                }
            }
        }
        Some(Call {
            call_key: key,
            provider: first.provider,
            tenant: first.tenant.clone(),
            r#final: !finals.is_empty(),
            status,
            direction: members
                .field(|e| (e.direction != Direction::Unknown).then_some(e.direction))
                .unwrap_or_default(),
            provider_status: newest(&finals, |e| text(&e.provider_status)),
            started_at: members.field(|e| e.started_at),
            answered_at: members.field(|e| e.answered_at),
            ended_at: members.field(|e| e.ended_at),
            duration_seconds: members.field(|e| e.duration_seconds),
            ring_seconds: members.field(|e| e.ring_seconds),
            talk_seconds: members.field(|e| e.talk_seconds),
            hold_seconds: members.field(|e| e.hold_seconds),
            internal: party(|e| &e.internal),
            external: party(|e| &e.external),
            notes: members.field(|e| text(&e.notes)),
            tags: tags.into_values().collect(),
            recordings,
            voicemail: newest(&all, |e| e.voicemail.clone()),
            legs,
            timeline: all
                .iter()
                .map(|e| Step {
                    identity: e.identity.clone(),
                    kind: e.kind,
                    status: e.status,
                    provider_event_type: e.provider_event_type.clone(),
                    received_at: e.received_at,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
