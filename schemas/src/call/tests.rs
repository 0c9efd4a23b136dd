//! The call model per provider: real deliveries through the normalizers,
//! merged. Each provider's way of naming one call, and each merge rule.

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::*;
use crate::providers::testkit::{post, FORM, JSON};
use crate::providers::{aircall::Aircall, onoff::Onoff, telecmi::Telecmi, telnyx::Telnyx};
use crate::providers::{twilio::Twilio, xarios::Xarios};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{path}")).expect("a fixture")
}

fn json_fixture(path: &str) -> Value {
    serde_json::from_str(&fixture(path)).expect("a JSON fixture")
}

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap() + Duration::minutes(n)
}

/// `event` as received `n` minutes after noon.
fn at(mut event: Event, n: i64) -> Event {
    event.received_at = minute(n);
    event
}

fn json(provider: &dyn crate::Provider, route: &str, body: &Value) -> Event {
    post(provider, "POST", route, JSON, &body.to_string()).expect("normalizes")
}

#[test]
fn onoff_a_missed_call_then_its_voicemail_is_one_call_to_voicemail() {
    let cdr = json!({"id": "c-1", "eventName": "CDR", "callStatus": "MISSED_CALL", "callDirection": "INBOUND",
        "externalNumber": "+33612345678", "onoffUserEmail": "agent@acme.example", "callStarted": "2024-06-01T10:00:00Z"});
    let mut vm = cdr.clone();
    vm["callStatus"] = "VMS".into();
    vm["voicemailUrl"] = "https://onoff.example/vm/c-1.mp3".into();
    let mut notes = cdr.clone();
    notes["callNotes"] = "Call back tomorrow".into();
    let missed = at(json(&Onoff, "cdr", &cdr), 0);
    let voicemail = at(json(&Onoff, "cdr", &vm), 2);
    let updated = at(json(&Onoff, "cdr", &notes), 5);
    assert_ne!(missed.identity, voicemail.identity, "two events");
    assert_eq!(call_key(&missed), call_key(&voicemail));
    let call = Call::from_events(&[missed.clone(), voicemail, updated]).unwrap();
    assert_eq!(call.call_key, "onoff:default-tenant:c-1");
    assert_eq!((call.r#final, call.status), (true, Status::Voicemail));
    assert_eq!(
        call.voicemail.and_then(|v| v.url).as_deref(),
        Some("https://onoff.example/vm/c-1.mp3")
    );
    assert_eq!(
        call.notes.as_deref(),
        Some("Call back tomorrow"),
        "the CDR's newest content"
    );
    assert_eq!(
        call.timeline.len(),
        2,
        "the CDR (newest content) and the voicemail"
    );
    assert_eq!(call.direction, Direction::Inbound);
    // An SMS is no call.
    let sms = json!({"id": "s-1", "eventName": "SMS", "smsDirection": "SENT", "body": "hi", "date": "2024-06-01T10:00:00Z"});
    assert_eq!(call_key(&json(&Onoff, "sms", &sms)), None);
}

#[test]
fn xarios_two_triggers_of_one_cdr_are_one_call() {
    let mut first = json_fixture("xarios/answered-outbound.json");
    let mut second = first.clone();
    first["triggerId"] = "trigger-a".into();
    second["triggerId"] = "trigger-b".into();
    let a = at(json(&Xarios, "postcall", &first), 0);
    let b = at(json(&Xarios, "postcall", &second), 1);
    assert_ne!(a.identity, b.identity, "one event per trigger");
    let call = Call::from_events(&[a.clone(), b]).unwrap();
    assert_eq!(call.timeline.len(), 2, "both triggers are kept");
    assert_eq!(call.status, a.status);
    assert_eq!(
        call.call_key,
        format!(
            "xarios:{}:{}",
            a.tenant,
            a.correlation.call_id.clone().unwrap()
        )
    );
}

#[test]
fn telecmi_click_to_call_legs_join_by_call_id_and_live_events_by_conversation() {
    let leg_a = at(
        json(&Telecmi, "cdr", &json_fixture("telecmi/c2c-leg-a.json")),
        0,
    );
    let leg_b = at(
        json(&Telecmi, "cdr", &json_fixture("telecmi/c2c-leg-b.json")),
        1,
    );
    let call = Call::from_events(&[leg_b.clone(), leg_a.clone()]).unwrap();
    assert_eq!(call.legs.len(), 2);
    assert_eq!(
        call.legs
            .iter()
            .map(|l| l.leg.as_deref())
            .collect::<Vec<_>>(),
        [Some("a"), Some("b")],
        "in the order received"
    );
    assert_eq!(call.recordings.len(), 1, "leg b's recording");
    assert_eq!(
        call.external.number, leg_b.external.number,
        "the customer, from leg b"
    );
    assert_eq!(call.status, Status::Answered);

    // Live steps, then the CDR of the same conversation.
    let steps: Vec<Event> = ["waiting", "started", "answered", "hangup"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            at(
                json(
                    &Telecmi,
                    "event",
                    &json_fixture(&format!("telecmi/event-{s}.json")),
                ),
                i as i64,
            )
        })
        .collect();
    let live = Call::from_events(&steps).unwrap();
    assert!(!live.r#final, "steps only: not final");
    assert_eq!(live.status, steps[3].status, "the newest step's");
    let mut cdr = json_fixture("telecmi/incoming-answered.json");
    cdr["conversation_uuid"] = "7a1b2c3d-0005-4000-8000-00000000c005".into();
    let cdr = at(json(&Telecmi, "cdr", &cdr), 9);
    let mut all = steps.clone();
    all.push(cdr.clone());
    let call = Call::from_events(&all).unwrap();
    assert_eq!(
        call.call_key,
        "telecmi:2222223:7a1b2c3d-0005-4000-8000-00000000c005"
    );
    assert_eq!((call.r#final, call.status), (true, Status::Answered));
    assert_eq!(call.timeline.len(), 5);
    assert_eq!(
        call.talk_seconds, cdr.talk_seconds,
        "times from the final event"
    );
}

#[test]
fn twilio_a_child_leg_joins_its_parent() {
    let parent_form = fixture("twilio/status-completed-doc.form");
    let parent = at(
        post(&Twilio, "POST", "voice", FORM, &parent_form).unwrap(),
        0,
    );
    let parent_sid = parent.correlation.call_id.clone().unwrap();
    let child_form = parent_form.replace(&parent_sid, "CAchild0000000000000000000000000")
        + &format!("&ParentCallSid={parent_sid}");
    let child = at(
        post(&Twilio, "POST", "voice", FORM, &child_form).unwrap(),
        1,
    );
    assert_eq!(call_key(&child), call_key(&parent));
    let call = Call::from_events(&[parent, child]).unwrap();
    assert_eq!(call.call_key, format!("twilio:default-tenant:{parent_sid}"));
    assert_eq!(call.legs.len(), 2);
}

#[test]
fn aircall_a_comment_revises_the_call_and_steps_join_it() {
    let created = at(
        json(
            &Aircall,
            "webhook",
            &json_fixture("aircall/call-created-doc.json"),
        ),
        0,
    );
    let ended_body = json_fixture("aircall/call-ended-answered.json");
    let mut created_same_call = json_fixture("aircall/call-created-doc.json");
    created_same_call["data"]["id"] = ended_body["data"]["id"].clone();
    let step = at(json(&Aircall, "webhook", &created_same_call), 1);
    let ended = at(json(&Aircall, "webhook", &ended_body), 2);
    let mut commented_body = ended_body.clone();
    commented_body["event"] = "call.commented".into();
    commented_body["data"]["comments"] = json!([{"content": "Happy customer"}]);
    let commented = at(json(&Aircall, "webhook", &commented_body), 3);
    assert_ne!(call_key(&created), call_key(&ended), "another call");
    let call = Call::from_events(&[ended, commented, step]).unwrap();
    assert_eq!(
        call.timeline.len(),
        2,
        "the step, and the call in its newest content"
    );
    assert_eq!(call.notes.as_deref(), Some("Happy customer"));
    assert_eq!((call.r#final, call.status), (true, Status::Answered));
}

#[test]
fn telnyx_the_hangup_takes_its_direction_from_the_initiated_step() {
    let hangup = at(
        json(
            &Telnyx,
            "webhook",
            &json_fixture("telnyx/call-hangup-doc.json"),
        ),
        5,
    );
    let mut initiated = json_fixture("telnyx/call-initiated-doc.json");
    initiated["data"]["payload"]["call_session_id"] =
        json_fixture("telnyx/call-hangup-doc.json")["data"]["payload"]["call_session_id"].clone();
    let initiated = at(json(&Telnyx, "webhook", &initiated), 0);
    assert_eq!(hangup.direction, Direction::Unknown);
    let call = Call::from_events(&[hangup.clone(), initiated]).unwrap();
    assert_eq!(
        call.direction,
        Direction::Inbound,
        "joined from call.initiated"
    );
    assert_eq!(call.status, hangup.status, "the final event's");
    assert!(call.r#final);
}

/// Events of one call with these (kind, status), received in that order.
fn with_statuses(statuses: &[(Kind, Status)]) -> Vec<Event> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, (kind, status))| {
            let mut e = Event::new(
                ProviderId::Onoff,
                "t".into(),
                *kind,
                &crate::providers::testkit::ctx(),
            );
            e.status = *status;
            e.correlation.call_id = Some("c".into());
            at(e.seal(&format!("e{i}")).into_event(), i as i64)
        })
        .collect()
}

#[test]
fn status_precedence_and_steps() {
    use Kind::{Call as C, CallProgress as P, Voicemail as V};
    let status = |s: &[(Kind, Status)]| {
        let call = Call::from_events(&with_statuses(s)).unwrap();
        (call.r#final, call.status)
    };
    assert_eq!(
        status(&[(C, Status::Answered), (C, Status::Missed)]),
        (true, Status::Answered)
    );
    assert_eq!(
        status(&[(C, Status::Missed), (V, Status::Unknown)]),
        (true, Status::Voicemail)
    );
    assert_eq!(
        status(&[(C, Status::Voicemail), (C, Status::Answered)]),
        (true, Status::Answered)
    );
    assert_eq!(
        status(&[(C, Status::Busy), (C, Status::Failed)]),
        (true, Status::Failed),
        "the newer of equals"
    );
    assert_eq!(
        status(&[(C, Status::Failed), (C, Status::Busy)]),
        (true, Status::Busy)
    );
    assert_eq!(
        status(&[(C, Status::Missed), (P, Status::Answered)]),
        (true, Status::Missed),
        "a step is never final"
    );
    assert_eq!(
        status(&[(P, Status::Ringing), (P, Status::Answered)]),
        (false, Status::Answered)
    );
    // Order of arrival in the input does not matter, only received_at.
    let mut events = with_statuses(&[(C, Status::Busy), (C, Status::Failed)]);
    events.reverse();
    assert_eq!(Call::from_events(&events).unwrap().status, Status::Failed);
}

/// `docs/calls.md` quotes this module's call key and merge rules verbatim.
#[test]
fn the_docs_quote_the_merge_rules() {
    let source = include_str!("../call.rs");
    let doc: Vec<&str> = source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect();
    let doc = doc.join("\n");
    let rules = &doc[doc.find("**Call key**").expect("the key section")..];
    let rules = rules
        .trim_end()
        .replace("[`Call::from_events`]", "`Call::from_events`");
    let page = include_str!("../../../docs/calls.md");
    assert!(
        page.contains(&rules),
        "docs/calls.md must quote the call key and merge rules of schemas/src/call.rs:\n{rules}"
    );
}
