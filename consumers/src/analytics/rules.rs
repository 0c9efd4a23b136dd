//! The counting rules (see the module comment of [`crate::analytics`]):
//! what one event adds to the KPI tables, and under which keys.

use chrono::{DateTime, Utc};

use callstream_schemas::call::Call;
use callstream_schemas::{Direction, Event, Kind, Party, ProviderId, Status};

use crate::unique::{direction_str, status_str};

/// The interval lengths KPIs are rolled up by, in minutes.
pub const INTERVALS_MINUTES: [i32; 2] = [1, 15];

/// What an event adds to a KPI row (or, negated, takes back).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub calls_offered: i64,
    pub calls_answered: i64,
    pub calls_missed: i64,
    pub calls_voicemail: i64,
    pub talk_seconds_sum: f64,
    pub talk_count: i64,
    pub ring_seconds_sum: f64,
    pub ring_count: i64,
    pub sms_sent: i64,
    pub sms_received: i64,
}

impl Counters {
    /// The counters of one event.
    pub fn of(event: &Event) -> Counters {
        let mut c = Counters::default();
        match event.kind {
            Kind::Call | Kind::Recording | Kind::Voicemail
                if !is_click_to_call_agent_leg(event) =>
            {
                // A voicemail event counts as voicemail unless answered.
                let status = if event.kind == Kind::Voicemail && event.status != Status::Answered {
                    Status::Voicemail
                } else {
                    event.status
                };
                c = Counters::one_call(
                    status,
                    event.talk_seconds.or(event.duration_seconds),
                    event.ring_seconds,
                );
            }
            Kind::Sms => match event.direction {
                Direction::Outbound => c.sms_sent = 1,
                Direction::Inbound => c.sms_received = 1,
                Direction::Internal | Direction::Unknown => {}
            },
            _ => {}
        }
        c
    }

    /// The counters of a merged call: one call offered with its final
    /// status, as an event of kind `call` counts; nothing for a call with
    /// only live steps, or that is only the agent leg of a TeleCMI
    /// click-to-call.
    pub fn of_call(call: &Call) -> Counters {
        let agent_leg_only = call.provider == ProviderId::Telecmi
            && call.direction == Direction::Outbound
            && call.external.number.is_none()
            && !call.legs.is_empty()
            && call.legs.iter().all(|l| {
                l.leg
                    .as_deref()
                    .is_some_and(|leg| leg.eq_ignore_ascii_case("a"))
            });
        if !call.r#final || agent_leg_only {
            return Counters::default();
        }
        Counters::one_call(
            call.status,
            call.talk_seconds.or(call.duration_seconds),
            call.ring_seconds,
        )
    }

    /// One call offered that ended with `status`.
    fn one_call(status: Status, talk: Option<f64>, ring: Option<f64>) -> Counters {
        let mut c = Counters {
            calls_offered: 1,
            ..Counters::default()
        };
        match status {
            Status::Answered => {
                c.calls_answered = 1;
                if let Some(talk) = talk {
                    c.talk_seconds_sum = talk;
                    c.talk_count = 1;
                }
            }
            Status::Voicemail => c.calls_voicemail = 1,
            _ => c.calls_missed = 1,
        }
        if let Some(ring) = ring {
            c.ring_seconds_sum = ring;
            c.ring_count = 1;
        }
        c
    }

    /// Adds `other` once (`sign` 1) or takes it back (`sign` -1).
    pub fn add(&mut self, other: &Counters, sign: i64) {
        let f = sign as f64;
        self.calls_offered += sign * other.calls_offered;
        self.calls_answered += sign * other.calls_answered;
        self.calls_missed += sign * other.calls_missed;
        self.calls_voicemail += sign * other.calls_voicemail;
        self.talk_seconds_sum += f * other.talk_seconds_sum;
        self.talk_count += sign * other.talk_count;
        self.ring_seconds_sum += f * other.ring_seconds_sum;
        self.ring_count += sign * other.ring_count;
        self.sms_sent += sign * other.sms_sent;
        self.sms_received += sign * other.sms_received;
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// The agent leg of a TeleCMI click-to-call: the normalizer leaves the
/// customer off it, since the customer is on leg `b`.
fn is_click_to_call_agent_leg(event: &Event) -> bool {
    event.provider == ProviderId::Telecmi
        && event.direction == Direction::Outbound
        && event
            .correlation
            .leg
            .as_deref()
            .is_some_and(|leg| leg.eq_ignore_ascii_case("a"))
        && event.external.number.is_none()
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

/// The agent: the internal party's id, else email, else number, else name.
pub fn agent_of(event: &Event) -> Option<&str> {
    party_agent(&event.internal)
}

fn party_agent(p: &Party) -> Option<&str> {
    non_empty(&p.id)
        .or_else(|| non_empty(&p.email))
        .or_else(|| non_empty(&p.number))
        .or_else(|| non_empty(&p.name))
}

/// The external-facing number: the internal party's number.
pub fn number_of(event: &Event) -> Option<&str> {
    non_empty(&event.internal.number)
}

/// Start of the `minutes`-long interval holding `at` (intervals are aligned
/// to the Unix epoch, so to the hour for 1 and 15 minutes).
pub fn bucket_start(at: DateTime<Utc>, minutes: i32) -> DateTime<Utc> {
    let step = i64::from(minutes.max(1)) * 60;
    let secs = at.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(step), 0).unwrap_or(at)
}

/// What one revision of an event contributes, and under which keys: one
/// row of `kpi_events`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Contribution {
    pub tenant: String,
    pub provider: String,
    pub kind: String,
    pub direction: String,
    pub status: String,
    /// The time it is bucketed by: `started_at`, else `received_at`.
    pub(crate) event_at: DateTime<Utc>,
    pub agent: Option<String>,
    pub number: Option<String>,
    pub counters: Counters,
}

impl Contribution {
    pub fn of(event: &Event) -> Contribution {
        Contribution {
            tenant: event.tenant.clone(),
            provider: event.provider.as_str().to_string(),
            kind: event.kind.as_str().to_string(),
            direction: direction_str(event.direction).to_string(),
            status: status_str(event.status).to_string(),
            event_at: event.started_at.unwrap_or(event.received_at),
            agent: agent_of(event).map(str::to_string),
            number: number_of(event).map(str::to_string),
            counters: Counters::of(event),
        }
    }

    /// What a merged call contributes: bucketed by its start, else by when
    /// its first event was received.
    pub fn of_call(call: &Call) -> Contribution {
        Contribution {
            tenant: call.tenant.clone(),
            provider: call.provider.as_str().to_string(),
            kind: Kind::Call.as_str().to_string(),
            direction: direction_str(call.direction).to_string(),
            status: status_str(call.status).to_string(),
            event_at: call
                .started_at
                .or_else(|| call.timeline.iter().map(|s| s.received_at).min())
                .unwrap_or_default(),
            agent: party_agent(&call.internal).map(str::to_string),
            number: non_empty(&call.internal.number).map(str::to_string),
            counters: Counters::of_call(call),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn buckets_are_aligned_to_the_interval() {
        let t = at("2024-03-05T10:29:59.900Z");
        assert_eq!(bucket_start(t, 1), at("2024-03-05T10:29:00Z"));
        assert_eq!(bucket_start(t, 15), at("2024-03-05T10:15:00Z"));
        assert_eq!(
            bucket_start(at("2024-03-05T10:30:00Z"), 15),
            at("2024-03-05T10:30:00Z")
        );
        assert_eq!(
            bucket_start(at("1969-12-31T23:59:30Z"), 15),
            at("1969-12-31T23:45:00Z")
        );
    }

    fn call(fields: serde_json::Value) -> Call {
        let mut call = serde_json::json!({
            "call_key": "telecmi:acme:c-1", "provider": "telecmi", "tenant": "acme",
            "final": true, "status": "answered", "direction": "outbound",
            "internal": {"id": "agent-7", "number": "+4420000"}, "external": {"number": "+4479000"},
            "timeline": [{"identity": "i-1", "kind": "call", "status": "answered",
                          "received_at": "2024-06-03T10:00:05Z"}],
        });
        for (k, v) in fields.as_object().unwrap() {
            call[k] = v.clone();
        }
        serde_json::from_value(call).unwrap()
    }

    #[test]
    fn a_call_counts_once_by_its_merged_status_and_only_when_final() {
        use serde_json::json;
        let answered =
            call(json!({"talk_seconds": 30.0, "duration_seconds": 41.0, "ring_seconds": 4.0}));
        let c = Contribution::of_call(&answered);
        assert_eq!(
            (
                c.counters.calls_offered,
                c.counters.calls_answered,
                c.counters.talk_seconds_sum
            ),
            (1, 1, 30.0)
        );
        assert_eq!(
            (c.counters.ring_count, c.counters.ring_seconds_sum),
            (1, 4.0)
        );
        assert_eq!(
            (c.agent.as_deref(), c.number.as_deref()),
            (Some("agent-7"), Some("+4420000"))
        );
        assert_eq!(
            c.event_at,
            at("2024-06-03T10:00:05Z"),
            "no start: its first event's receipt"
        );
        assert_eq!(c.kind, "call");
        let vm = Counters::of_call(&call(json!({"status": "voicemail"})));
        assert_eq!(
            (vm.calls_offered, vm.calls_voicemail, vm.calls_answered),
            (1, 1, 0)
        );
        for status in ["missed", "busy", "failed", "unknown"] {
            let c = Counters::of_call(&call(json!({"status": status})));
            assert_eq!((c.calls_offered, c.calls_missed), (1, 1), "{status}");
        }
        // Live steps only: not a call yet.
        assert!(Counters::of_call(&call(json!({"final": false}))).is_zero());
        // A click-to-call whose customer leg never came: the platform
        // ringing the agent, not a call; with leg b it is one.
        let leg_a = json!([{"leg_id": "u-a", "leg": "a"}]);
        let agent_only = call(json!({"legs": leg_a, "external": {}}));
        assert!(Counters::of_call(&agent_only).is_zero());
        let both =
            call(json!({"legs": [{"leg_id": "u-a", "leg": "a"}, {"leg_id": "u-b", "leg": "b"}]}));
        assert_eq!(Counters::of_call(&both).calls_offered, 1);
        let started = call(json!({"started_at": "2024-06-03T09:59:00Z"}));
        assert_eq!(
            Contribution::of_call(&started).event_at,
            at("2024-06-03T09:59:00Z")
        );
    }

    #[test]
    fn a_delta_and_its_negation_cancel_out() {
        let c = Counters {
            calls_offered: 1,
            calls_answered: 1,
            talk_seconds_sum: 37.5,
            talk_count: 1,
            ..Counters::default()
        };
        let mut sum = Counters::default();
        sum.add(&c, 1);
        sum.add(&c, -1);
        assert!(sum.is_zero());
    }
}
