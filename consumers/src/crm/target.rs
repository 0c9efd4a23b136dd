//! One target's work on a record of one of its inputs (events, calls,
//! archived recordings), each input in its own consumer group: records in
//! order, each committed only once it was delivered, dead-lettered, or
//! skipped (the loop is `callstream_kafka::per_record`).

use callstream_kafka::dead_letter::DeadLetters;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use callstream_schemas::call::{call_key, Call};
use callstream_schemas::recording::RecordingArchived;
use callstream_schemas::{Event, Kind, Topic};

use super::deliver::{Deliverer, Delivery, Work};
use super::metrics::{EventOutcome, TargetMetrics};
use super::CALL_KINDS;
use callstream_kafka::per_record::RecordHandler;
use callstream_kafka::wire::{
    decode_call, decode_recording, decode_unique, header_str, By, GaveUp, WireError,
    CALL_STATE_TYPE,
};

/// Pause after a Kafka error before trying again to dead-letter.
pub(crate) const KAFKA_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Which topic a target's loop reads, in its own consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// `callstream.events.unique.v1`: the events that name no call (SMS);
    /// the others reach the target as their call.
    Events,
    /// `callstream.calls.v1`: each call's merged state.
    Calls,
    /// `callstream.recordings.v1`: archived copies (HubSpot targets).
    Recordings,
}

impl Input {
    pub fn topic(self) -> Topic {
        match self {
            Input::Events => Topic::EventsUnique,
            Input::Calls => Topic::Calls,
            Input::Recordings => Topic::Recordings,
        }
    }

    /// The `input` label of the lag metric.
    pub fn label(self) -> &'static str {
        match self {
            Input::Events => "events",
            Input::Calls => "calls",
            Input::Recordings => "recordings",
        }
    }

    /// Its consumer group: the target's (`<group_prefix>-<target>`) for
    /// events, as before calls existed, so an upgrade keeps its position;
    /// that with `-calls` or `-recordings` for the others.
    pub fn group(self, target_group: &str) -> String {
        match self {
            Input::Events => target_group.to_string(),
            other => format!("{target_group}-{}", other.label()),
        }
    }
}

/// What a record of `input` holds for a target.
pub(crate) enum Decoded {
    Call(Box<Call>, i64),
    Event(Box<Event>, i64),
    Recording(Box<RecordingArchived>),
}

impl Decoded {
    /// Reads `msg`, a record of `input`.
    pub fn read<M: Message>(msg: &M, input: Input) -> Result<Decoded, WireError> {
        match input {
            Input::Calls => decode_call(msg).map(|(c, r)| Decoded::Call(Box::new(c), r)),
            Input::Recordings => decode_recording(msg).map(|r| Decoded::Recording(Box::new(r))),
            Input::Events => {
                decode_unique(msg).map(|u| Decoded::Event(Box::new(u.event), i64::from(u.revision)))
            }
        }
    }

    /// Reads a dead letter, a copy of a record of any input with its
    /// headers: a call state says so in `ce_type`; an archived recording
    /// has no headers of its own, and is tried when the letter is not an
    /// event.
    pub fn of_letter<M: Message>(msg: &M) -> Result<Decoded, WireError> {
        match header_str(msg, "ce_type") {
            Some(CALL_STATE_TYPE) => Decoded::read(msg, Input::Calls),
            Some(_) => Decoded::read(msg, Input::Events),
            None => Decoded::read(msg, Input::Events)
                .or_else(|e| Decoded::read(msg, Input::Recordings).map_err(|_| e)),
        }
    }

    /// The work it is for a target taking `kinds`; `None` when it skips it:
    /// a kind it does not take, a call with no final event yet (its live
    /// steps alone), or an event that is delivered as part of its call.
    pub fn work(&self, kinds: &[Kind]) -> Option<Work<'_>> {
        match self {
            Decoded::Call(call, revision) => (call.r#final
                && kinds.iter().any(|k| CALL_KINDS.contains(k)))
            .then_some(Work::Call {
                call,
                revision: *revision,
            }),
            Decoded::Event(event, revision) => {
                (kinds.contains(&event.kind) && call_key(event).is_none()).then_some(Work::Event {
                    event,
                    revision: *revision,
                })
            }
            Decoded::Recording(archived) => Some(Work::Recording(archived)),
        }
    }
}

/// One target's work on a record of one input: deliver it, or
/// dead-letter it. The loop around it is [`PerRecordLoop`].
pub(crate) struct TargetHandler {
    pub name: String,
    pub input: Input,
    pub dead_letters: DeadLetters,
    pub deliverer: Arc<Deliverer>,
    pub kinds: Vec<Kind>,
    pub metrics: TargetMetrics,
}

impl RecordHandler for TargetHandler {
    type Outcome = EventOutcome;

    /// Delivers or dead-letters one record; `None` if shutdown interrupted it.
    async fn handle(
        &self,
        msg: &OwnedMessage,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<EventOutcome> {
        let decoded = match Decoded::read(msg, self.input) {
            Ok(decoded) => decoded,
            Err(e) => {
                let error = format!("undecodable record: {e}");
                return self.dead_letter(msg, &error, 0, shutdown).await;
            }
        };
        let Some(work) = decoded.work(&self.kinds) else {
            return Some(EventOutcome::Skipped);
        };
        match self.deliverer.deliver(work, shutdown).await {
            Delivery::Delivered => Some(EventOutcome::Delivered),
            Delivery::Abandoned => None,
            Delivery::Failed { error, attempts } => {
                tracing::warn!(
                    crm_target = %self.name,
                    input = self.input.label(),
                    subject = %work.subject(),
                    attempts,
                    %error,
                    "CRM delivery failed; dead-lettering"
                );
                self.dead_letter(msg, &error.to_string(), attempts, shutdown)
                    .await
            }
        }
    }

    fn finished(&self, outcome: EventOutcome) {
        self.metrics.event(outcome);
    }
}

impl TargetHandler {
    /// Copies the record to the dead-letter topic with why it failed; see
    /// [`callstream_kafka::dead_letter::dead_letter`]. `None` if shutdown came first.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        error: &str,
        attempts: u32,
        shutdown: &watch::Receiver<bool>,
    ) -> Option<EventOutcome> {
        let why = GaveUp {
            by: By::Crm {
                target: self.name.as_str().into(),
            },
            error: error.into(),
            attempts,
        };
        let acked = self
            .dead_letters
            .write(msg, &why, shutdown, |_| {
                self.metrics.dlq_produce_errors.inc()
            })
            .await;
        acked.then_some(EventOutcome::DeadLettered)
    }
}
