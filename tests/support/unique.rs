//! Records of `callstream.events.unique.v1` for the PostgreSQL consumers'
//! tests: calls and SMS described as a test means them ([`Spec`]), turned
//! into events by the real provider normalizers from webhook bodies, and
//! [`scenario`], a mixed load with resends and updates.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use callstream_schemas::{Context, Event, ProviderId, RawRequest, Topic};

/// A test time.
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("an RFC 3339 time")
}

/// The unique topic's name.
pub fn unique_topic() -> &'static str {
    Topic::EventsUnique.default_name()
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Missed,
    /// Not offered by Xarios, whose webhook has no voicemail.
    Voicemail,
}

/// A call as a provider would report it.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub provider: ProviderId,
    /// The provider's id of the call.
    pub id: String,
    pub tenant: String,
    pub inbound: bool,
    pub outcome: Outcome,
    /// Onoff: the user's email; Xarios: the agent's extension; TeleCMI: the user id.
    pub agent: String,
    /// The line: Onoff user number, TeleCMI virtual number (Xarios has none).
    pub line: String,
    pub customer: String,
    /// `None`: the provider left the start out (Onoff only).
    pub started_at: Option<DateTime<Utc>>,
    /// Talk time of an answered call (Onoff reports it as the duration).
    pub talk_seconds: u32,
    /// Ring time (Xarios and TeleCMI; Onoff does not report it).
    pub ring_seconds: u32,
    /// Free text; a change makes an update (new fingerprint, same identity).
    pub notes: String,
}

/// An Onoff SMS.
#[derive(Debug, Clone)]
pub struct SmsSpec {
    pub id: String,
    pub tenant: String,
    pub sent: bool,
    pub agent: String,
    pub line: String,
    pub customer: String,
    pub at: DateTime<Utc>,
    pub body: String,
}

/// What a test produces. `Progress` (a TeleCMI live step) and `AgentLeg`
/// (the agent leg of a TeleCMI click-to-call) are stored but never counted.
#[derive(Debug, Clone)]
pub enum Spec {
    Call(CallSpec),
    Sms(SmsSpec),
    Progress {
        id: String,
        tenant: String,
        at: DateTime<Utc>,
    },
    AgentLeg {
        id: String,
        tenant: String,
        agent: String,
        line: String,
        at: DateTime<Utc>,
    },
    /// Another event of the call the [`CallSpec`] describes: one call, so
    /// counted once, with it.
    Joined(CallSpec, Joined),
}

/// The other event of a call in [`Spec::Joined`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// Xarios: the same CDR from a second post-call trigger.
    SecondTrigger,
    /// Onoff: the voicemail record (`VM`) of a missed call: the call went
    /// to voicemail.
    Voicemail,
}

fn normalize(
    provider: ProviderId,
    route: &str,
    body: &serde_json::Value,
    ctx: &Context<'_>,
) -> Event {
    let body = body.to_string();
    let providers = callstream_schemas::providers::all();
    let normalizer = providers
        .iter()
        .find(|p| p.id() == provider)
        .expect("provider is registered");
    normalizer
        .normalize(
            &RawRequest {
                method: "POST",
                route,
                query: "",
                content_type: Some("application/json"),
                body: body.as_bytes(),
            },
            ctx,
        )
        .unwrap_or_else(|e| panic!("{provider:?} {route} body does not normalize ({e}): {body}"))
        .into_event()
}

impl CallSpec {
    /// Whether the provider reports ring time.
    pub fn reports_ring(&self) -> bool {
        self.provider != ProviderId::Onoff
    }

    fn event(&self, ctx: &Context<'_>) -> Event {
        self.event_by(ctx, "post-call")
    }

    /// The event, from the Xarios post-call trigger `trigger`.
    fn event_by(&self, ctx: &Context<'_>, trigger: &str) -> Event {
        let answered = self.outcome == Outcome::Answered;
        let talk = if answered { self.talk_seconds } else { 0 };
        match self.provider {
            ProviderId::Onoff => {
                let mut body = json!({
                    "id": self.id, "eventName": "CDR",
                    "onoffUserName": "Agent", "onoffUserEmail": self.agent,
                    "onoffUserNumber": self.line, "externalNumber": self.customer,
                    "callDirection": if self.inbound { "INBOUND" } else { "OUTBOUND" },
                    "callStatus": match self.outcome {
                        Outcome::Answered => "ANSWERED",
                        Outcome::Missed => "MISSED_CALL",
                        Outcome::Voicemail => "VMS",
                    },
                    "callDuration": talk, "callNotes": self.notes,
                });
                if let Some(start) = self.started_at {
                    body["callStarted"] = json!(start.to_rfc3339());
                }
                normalize(ProviderId::Onoff, "cdr", &body, ctx)
            }
            ProviderId::Xarios => {
                assert_ne!(self.outcome, Outcome::Voicemail, "Xarios has no voicemail");
                let (agent_key, customer_key) = match (answered, self.inbound) {
                    (true, true) => ("ansAgtNum", "cliNum"),
                    (true, false) => ("ansAgtNum", "ddiNum"),
                    (false, true) => ("lRngAgtNum", "cliNum"),
                    (false, false) => ("lRngAgtNum", "ddiNum"),
                };
                let start = self.started_at.expect("Xarios calls have a start");
                let mut cdr = json!({
                    "id": self.id, "start": start.to_rfc3339(),
                    "dur": self.ring_seconds + talk, "ring": self.ring_seconds, "talk": talk,
                    "ans": u8::from(answered), "lost": u8::from(!answered),
                    "dir": if self.inbound { 2 } else { 3 },
                });
                cdr[agent_key] = json!(self.agent);
                cdr[customer_key] = json!(self.customer);
                let body = json!({
                    "triggerId": trigger, "tenantId": self.tenant, "cdr": cdr,
                    "customData": {"notes": self.notes},
                });
                normalize(ProviderId::Xarios, "postcall", &body, ctx)
            }
            ProviderId::Telecmi => {
                let start = self.started_at.expect("TeleCMI calls have a start");
                let mut body = json!({
                    "type": "cdr", "appid": self.tenant, "cmiuuid": self.id,
                    "status": if answered { "answered" } else { "missed" },
                    "user": self.agent, "virtual_number": self.line,
                    "time": start.timestamp_millis(),
                    "direction": if self.inbound { "inbound" } else { "outbound" },
                    "answeredsec": talk, "waitedsec": self.ring_seconds,
                    "custom": json!({"notes": self.notes}).to_string(),
                });
                body[if self.inbound { "from" } else { "to" }] = json!(self.customer);
                if self.outcome == Outcome::Voicemail {
                    body["voicename"] = json!(format!("vm_{}.mp3", self.id));
                }
                normalize(ProviderId::Telecmi, "cdr", &body, ctx)
            }
            _ => {
                unreachable!("the workload makes no {:?} calls", self.provider)
            }
        }
    }
}

impl Spec {
    /// The normalized event, as received at `received_at`.
    pub fn event(&self, received_at: DateTime<Utc>) -> Event {
        let tenant = match self {
            Spec::Call(c) | Spec::Joined(c, _) => &c.tenant,
            Spec::Sms(s) => &s.tenant,
            Spec::Progress { tenant, .. } | Spec::AgentLeg { tenant, .. } => tenant,
        };
        let ctx = Context {
            default_tenant: tenant,
            received_at,
            request_id: "test-request",
            raw_topic: Topic::Raw.default_name(),
        };
        match self {
            Spec::Call(call) => call.event(&ctx),
            Spec::Joined(call, Joined::SecondTrigger) => call.event_by(&ctx, "post-call-2"),
            Spec::Joined(call, Joined::Voicemail) => {
                let mut body = json!({
                    "id": call.id, "eventName": "VM", "onoffUserName": "Agent",
                    "onoffUserEmail": call.agent, "onoffUserNumber": call.line,
                    "externalNumber": call.customer,
                    "callDirection": if call.inbound { "INBOUND" } else { "OUTBOUND" },
                    "callStatus": "MISSED_CALL", "voicemailDuration": 12,
                    "voicemailUrl": format!("https://media.example/vm/{}.mp3", call.id),
                });
                if let Some(start) = call.started_at {
                    body["callStarted"] = json!(start.to_rfc3339());
                }
                normalize(ProviderId::Onoff, "cdr", &body, &ctx)
            }
            Spec::Sms(sms) => {
                let body = json!({
                    "id": sms.id, "eventName": "SMS", "onoffUserEmail": sms.agent,
                    "onoffUserNumber": sms.line, "externalNumber": sms.customer,
                    "date": sms.at.to_rfc3339(),
                    "smsDirection": if sms.sent { "SENT" } else { "RECEIVED" },
                    "body": sms.body,
                });
                normalize(ProviderId::Onoff, "sms", &body, &ctx)
            }
            Spec::Progress { id, tenant, at } => {
                let body = json!({
                    "type": "event", "app_id": tenant, "cmiuuid": id, "status": "started",
                    "direction": "inbound", "from": "+15550000000", "time": at.timestamp_millis(),
                });
                normalize(ProviderId::Telecmi, "event", &body, &ctx)
            }
            Spec::AgentLeg {
                id,
                tenant,
                agent,
                line,
                at,
            } => {
                let body = json!({
                    "type": "cdr", "appid": tenant, "cmiuuid": id, "leg": "a",
                    "request_id": format!("c2c-{id}"), "status": "answered", "user": agent,
                    "virtual_number": line, "to": "+15551112222", "direction": "outbound",
                    "time": at.timestamp_millis(), "answeredsec": 15,
                });
                normalize(ProviderId::Telecmi, "cdr", &body, &ctx)
            }
        }
    }
}

/// One record to produce: an event, its revision, and when the gateway
/// received it.
#[derive(Debug, Clone)]
pub struct Revision {
    pub spec: Spec,
    pub revision: i32,
    pub received_at: DateTime<Utc>,
}

impl Revision {
    pub fn event(&self) -> Event {
        self.spec.event(self.received_at)
    }

    /// This record's content under a higher revision, changed by `update`.
    pub fn updated(&self, revision: i32, update: impl FnOnce(&mut Spec)) -> Revision {
        let mut spec = self.spec.clone();
        update(&mut spec);
        Revision {
            spec,
            revision,
            received_at: self.received_at,
        }
    }
}

/// The newest content of each identity, as the consumers keep it: received
/// later, then a higher revision; the first of equal ones, and never the
/// same content again (an exact resend, even received later).
pub fn finals(records: &[Revision]) -> HashMap<String, Revision> {
    let mut out: HashMap<String, Revision> = HashMap::new();
    for r in records {
        let event = r.event();
        let newer = match out.get(&event.identity) {
            None => true,
            Some(have) => {
                (have.received_at, have.revision) < (r.received_at, r.revision)
                    && have.event().fingerprint != event.fingerprint
            }
        };
        if newer {
            out.insert(event.identity, r.clone());
        }
    }
    out
}

/// A missed Xarios call received at 10:01, and `update` of it received a
/// week later as revision 1 again: what dedup forwards once its window has
/// forgotten the call.
pub fn a_call_and_its_update_after_the_window(
    update: impl FnOnce(&mut Spec),
) -> (Revision, Revision) {
    let first = Revision {
        spec: spec("late", 4, at("2024-06-03T10:00:00Z")),
        revision: 1,
        received_at: at("2024-06-03T10:01:00Z"),
    };
    assert!(
        matches!(&first.spec, Spec::Call(c) if c.outcome == Outcome::Missed),
        "{:?}",
        first.spec
    );
    let mut late = first.updated(1, update);
    late.received_at = at("2024-06-10T09:00:00Z");
    (first, late)
}

/// Sets a spec's notes (an update that changes no count).
pub fn set_notes(spec: &mut Spec, notes: &str) {
    match spec {
        Spec::Call(c) => c.notes = notes.to_string(),
        Spec::Sms(s) => s.body = notes.to_string(),
        Spec::Progress { .. } | Spec::AgentLeg { .. } | Spec::Joined(..) => {}
    }
}

/// The `i`-th event of a mixed load: three providers, two tenants, both
/// directions, answered / missed / voicemail calls from five agents per
/// provider on three lines, SMS both ways, an Onoff call without a start
/// time, TeleCMI live steps and click-to-call agent legs; start times spread
/// over the two hours after `base`.
pub fn spec(prefix: &str, i: usize, base: DateTime<Utc>) -> Spec {
    let tenant = ["acme", "globex"][(i / 3) % 2].to_string();
    let at = base + chrono::Duration::seconds((i as i64 * 53) % 7200);
    let id = format!("{prefix}-{i}");
    let line = format!("+4420{:07}", i % 3);
    if i.is_multiple_of(23) {
        return Spec::Progress { id, tenant, at };
    }
    if i % 23 == 11 {
        return Spec::AgentLeg {
            id,
            agent: format!("{}_{tenant}", 200 + i % 5),
            tenant,
            line,
            at,
        };
    }
    if i % 11 == 5 {
        return Spec::Sms(SmsSpec {
            id,
            agent: format!("agent{}@{tenant}.example", i % 5),
            tenant,
            sent: i.is_multiple_of(2),
            line,
            customer: format!("+4479{i:08}"),
            at,
            body: "v1".into(),
        });
    }
    let provider = [ProviderId::Onoff, ProviderId::Xarios, ProviderId::Telecmi][i % 3];
    let outcome = match (i % 7, provider) {
        (0..=3, _) => Outcome::Answered,
        (6, ProviderId::Onoff | ProviderId::Telecmi) => Outcome::Voicemail,
        _ => Outcome::Missed,
    };
    let agent = match provider {
        ProviderId::Onoff => format!("agent{}@{tenant}.example", i % 5),
        ProviderId::Xarios => format!("{}", 2100 + i % 5),
        ProviderId::Telecmi => format!("{}_{tenant}", 200 + i % 5),
        _ => unreachable!("not among the providers above"),
    };
    Spec::Call(CallSpec {
        provider,
        id,
        tenant,
        inbound: !(i / 2).is_multiple_of(3),
        outcome,
        agent,
        line,
        customer: format!("+4479{i:08}"),
        started_at: (provider != ProviderId::Onoff || i % 19 != 1).then_some(at),
        talk_seconds: 5 + (i % 60) as u32,
        ring_seconds: (i % 25) as u32,
        notes: "v1".into(),
    })
}

/// `n` events ([`spec`]) received at `received_at`, with what a real topic
/// holds besides: resends (the same revision again), notes updates
/// (revision 2), missed calls later reported answered (revision 2, the counts
/// change), updates out of order (revision 3 before revision 2), and a
/// resend of revision 1 after its update; and for some calls another event
/// of the same call ([`Spec::Joined`]). Most repeats come after all first
/// revisions, some right behind their original (same batch).
pub fn scenario(
    prefix: &str,
    n: usize,
    base: DateTime<Utc>,
    received_at: DateTime<Utc>,
) -> Vec<Revision> {
    let mut first = Vec::with_capacity(n);
    let mut later = Vec::new();
    for i in 0..n {
        let r = Revision {
            spec: spec(prefix, i, base),
            revision: 1,
            received_at,
        };
        let mut repeats = repeats(&r, i);
        repeats.extend(joined(&r, i));
        first.push(r);
        if i % 20 < 10 {
            later.extend(repeats);
        } else {
            first.extend(repeats);
        }
    }
    first.extend(later);
    first
}

/// The other event of some calls [`scenario`] adds for its `i`-th event
/// (only for calls it does not update, so both events agree): a second
/// Xarios trigger, or the voicemail record of an Onoff missed call.
fn joined(r: &Revision, i: usize) -> Option<Revision> {
    let Spec::Call(c) = &r.spec else { return None };
    if i % 10 < 5 || !i.is_multiple_of(4) {
        return None;
    }
    let how = match (c.provider, c.outcome) {
        (ProviderId::Xarios, _) => Joined::SecondTrigger,
        (ProviderId::Onoff, Outcome::Missed) => Joined::Voicemail,
        _ => return None,
    };
    Some(Revision {
        spec: Spec::Joined(c.clone(), how),
        revision: 1,
        received_at: r.received_at,
    })
}

/// The resends and updates [`scenario`] adds for its `i`-th event.
fn repeats(r: &Revision, i: usize) -> Vec<Revision> {
    match i % 10 {
        1 => vec![r.clone()],
        2 => vec![r.updated(2, |s| set_notes(s, "v2"))],
        3 => match &r.spec {
            Spec::Call(c) if c.outcome == Outcome::Missed => vec![
                r.updated(2, |s| {
                    if let Spec::Call(c) = s {
                        c.outcome = Outcome::Answered;
                        c.talk_seconds = 42;
                    }
                }),
                r.clone(),
            ],
            _ => vec![],
        },
        4 => vec![
            r.updated(3, |s| set_notes(s, "v3")),
            r.updated(2, |s| set_notes(s, "v2")),
        ],
        _ => vec![],
    }
}
