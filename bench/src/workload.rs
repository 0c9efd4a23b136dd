//! The requests every system under test receives: realistic, varied provider
//! webhooks (every provider and event kind), unique ids, and a share of
//! resends. Request `i` of a run is a pure function of `(run, i)`, so every
//! system gets the same sequence and a resend is byte-identical to the
//! delivery it repeats.

use std::borrow::Cow;

use anyhow::Context as _;
use callstream_kafka::wire::Delivery;
use callstream_schemas::raw::redact_query;
use callstream_schemas::{providers, Provider, DEFAULT_TENANT};

/// One webhook delivery.
pub struct Request {
    pub method: &'static str,
    /// Path and query.
    pub target: String,
    pub content_type: Option<&'static str>,
    /// `Authorization` header value (Onoff).
    pub authorization: Option<&'static str>,
    pub body: String,
}

/// The API key the harness configures for every source.
pub const KEY: &str = "bench-key-0001";
const ONOFF_AUTH: &str = "x-api-key bench-key-0001";

/// Share of deliveries that repeat an earlier one, in percent.
pub const RESEND_PERCENT: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    OnoffCdr,
    OnoffVoicemail,
    OnoffRecording,
    OnoffSms,
    XariosJson,
    XariosForm,
    XariosGet,
    TelecmiCdr,
    TelecmiEvent,
}

/// (kind, weight in percent): roughly what a call centre's traffic looks like.
const MIX: [(Kind, u64); 9] = [
    (Kind::OnoffCdr, 25),
    (Kind::OnoffVoicemail, 5),
    (Kind::OnoffRecording, 10),
    (Kind::OnoffSms, 20),
    (Kind::XariosJson, 10),
    (Kind::XariosForm, 5),
    (Kind::XariosGet, 5),
    (Kind::TelecmiCdr, 15),
    (Kind::TelecmiEvent, 5),
];

/// splitmix64: a cheap, well-mixed hash of the request index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The kind of a delivery whose hash is `h`, from bits the fields drawn
/// from its low bits do not use.
fn kind_of(h: u64) -> Kind {
    let mut pick = (h >> 16) % 100;
    for (kind, weight) in MIX {
        if pick < weight {
            return kind;
        }
        pick -= weight;
    }
    unreachable!("weights sum to 100")
}

/// Which original delivery request `i` carries: itself, or (for a resend)
/// one of the up to 1,000 before it.
pub fn original_of(i: u64) -> u64 {
    let mut j = i;
    // A resend may pick another resend: follow it to the first delivery.
    loop {
        let h = mix(j ^ 0x5EED);
        if j > 0 && h % 100 < RESEND_PERCENT {
            j = j - 1 - (h >> 8) % j.min(1000);
        } else {
            return j;
        }
    }
}

/// Whether request `i` repeats an earlier one.
pub fn is_resend(i: u64) -> bool {
    original_of(i) != i
}

const NAMES: [&str; 6] = [
    "John Doe",
    "Amélie Laurent",
    "Priya Raman",
    "Kwame Mensah",
    "Zoë O'Brien",
    "Li Wei",
];
const WORDS: [&str; 8] = [
    "customer",
    "asked",
    "about",
    "invoice",
    "callback",
    "tomorrow",
    "refund",
    "escalated",
];

fn notes(h: u64) -> String {
    let n = (h % 24) as usize;
    (0..n)
        .map(|k| WORDS[((h >> (k % 16)) as usize + k) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn number(h: u64, prefix: &str) -> String {
    format!("{prefix}{:09}", h % 1_000_000_000)
}

fn iso(seconds: u64) -> String {
    chrono::DateTime::from_timestamp(1_700_000_000 + seconds as i64, 0)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The kind of request `i` (a resend has its original's).
#[allow(dead_code)] // the normalization benchmark's and the tests'
pub fn kind_of_request(i: u64) -> Kind {
    kind_of(mix(original_of(i)))
}

/// Delivery `i` of run `run` (a short tag that keeps ids unique across runs).
pub fn request(run: &str, i: u64) -> Request {
    let j = original_of(i);
    let h = mix(j);
    let id = format!("{run}-{j}");
    let agent = NAMES[(h % NAMES.len() as u64) as usize];
    let start = j * 7 % 86_400;
    let duration = h % 1_800;
    match kind_of(h) {
        kind @ (Kind::OnoffCdr | Kind::OnoffVoicemail | Kind::OnoffRecording) => {
            let (event, status, extra) = match kind {
                Kind::OnoffVoicemail => (
                    "VM",
                    "VMS",
                    format!(r#","voicemailUrl":"https://files.onoff.app/vm/{id}.mp3""#),
                ),
                Kind::OnoffRecording => (
                    "RECORDING",
                    "ANSWERED",
                    format!(
                        r#","callRecordingUrl":"https://files.onoff.app/rec/{id}.mp3?sig={h:x}""#
                    ),
                ),
                _ => (
                    "CDR",
                    ["ANSWERED", "MISSED", "REJECTED"][(h % 3) as usize],
                    String::new(),
                ),
            };
            Request {
                method: "POST",
                target: "/v1/onoff/cdr".into(),
                content_type: Some("application/json"),
                authorization: Some(ONOFF_AUTH),
                body: format!(
                    r##"{{"id":"{id}","eventName":"{event}","onoffUserName":"{agent}","onoffUserEmail":"agent{a}@example.com","onoffUserNumber":"{user}","externalNumber":"{ext}","externalName":"Caller {c}","callStarted":"{started}","callEnded":"{ended}","callDuration":{duration},"callDirection":"{dir}","callStatus":"{status}","callNotes":"{notes}","tags":[{{"tagId":"tag-{t}","tagName":"Queue {t}","tagColor":"#32A8FF"}}]{extra}}}"##,
                    a = h % 50,
                    user = number(h % 50, "+33"),
                    ext = number(h >> 20, "+44"),
                    c = h % 997,
                    started = iso(start),
                    ended = iso(start + duration),
                    dir = if h & 1 == 0 { "INBOUND" } else { "OUTBOUND" },
                    notes = notes(h >> 7),
                    t = h % 7,
                ),
            }
        }
        Kind::OnoffSms => Request {
            method: "POST",
            target: "/v1/onoff/sms".into(),
            content_type: Some("application/json"),
            authorization: Some(ONOFF_AUTH),
            body: format!(
                r#"{{"id":"{id}","eventName":"SMS","onoffUserName":"{agent}","onoffUserNumber":"{user}","externalNumber":"{ext}","date":"{date}","smsDirection":"{dir}","body":"{text}"}}"#,
                user = number(h % 50, "+33"),
                ext = number(h >> 20, "+44"),
                date = iso(start),
                dir = if h & 1 == 0 { "SENT" } else { "RECEIVED" },
                text = notes(h >> 9),
            ),
        },
        Kind::XariosJson => Request {
            method: if h & 1 == 0 { "POST" } else { "PUT" },
            target: format!("/v1/xarios/postcall?token={KEY}"),
            content_type: Some("application/json"),
            authorization: None,
            body: format!(
                r#"{{"triggerId":"trig-{t}","id":"user-{u}","tenantId":"tenant-{tenant}","cdr":{{"id":"{id}","dType":"CloudSessionCdr","sVer":1,"tz":"Europe/London","start":"{started}","end":"{ended}","dur":{duration},"ring":{ring},"lost":{lost},"cause":"NORMAL_CLEARING","dir":{dir},"type":2,"cliNum":"{cli}","ddiNum":"{ddi}","lRngUsrName":"{agent}","lRngUsrNum":"{ext}","hasRec":0,"tags":{{"Support":"step{t}"}}}},"customData":{{"hook":"post call"}}}}"#,
                t = h % 3,
                u = h % 40,
                tenant = h % 4,
                started = iso(start),
                ended = iso(start + duration),
                ring = h % 30,
                lost = h % 2,
                dir = 1 + h % 2,
                cli = number(h >> 20, "+44"),
                ddi = number(h >> 30, "+44161"),
                ext = 300 + h % 40,
            ),
        },
        kind @ (Kind::XariosForm | Kind::XariosGet) => {
            let form = format!(
                "triggerId=trig-{t}&tenantId=tenant-{tenant}&cdr%5Bid%5D={id}&cdr%5Bdur%5D={duration}&cdr%5Blost%5D={lost}&cdr%5Bdir%5D={dir}&cdr%5Bstart%5D={started}&cdr%5BcliNum%5D=%2B{cli}&cdr%5BlRngUsrNum%5D={ext}",
                t = h % 3,
                tenant = h % 4,
                lost = h % 2,
                dir = 1 + h % 2,
                started = iso(start).replace(':', "%3A"),
                cli = h % 1_000_000_000,
                ext = 300 + h % 40,
            );
            if kind == Kind::XariosGet {
                Request {
                    method: "GET",
                    target: format!("/v1/xarios/postcall?token={KEY}&{form}"),
                    content_type: None,
                    authorization: None,
                    body: String::new(),
                }
            } else {
                Request {
                    method: "PUT",
                    target: format!("/v1/xarios/postcall?token={KEY}"),
                    content_type: Some("application/x-www-form-urlencoded"),
                    authorization: None,
                    body: form,
                }
            }
        }
        Kind::TelecmiCdr => {
            // TeleCMI sends numbers as ints or as strings; both appear.
            let to = if h & 2 == 0 {
                format!("{}", 440_000_000_000 + h % 1_000_000)
            } else {
                format!("\"{}\"", 919_000_000_000 + h % 1_000_000)
            };
            Request {
                method: "POST",
                target: format!("/v1/telecmi/cdr?token={KEY}"),
                content_type: Some("application/json"),
                authorization: None,
                body: format!(
                    r#"{{"virtual_number":"440000000000","call_id":"{id}","custom":"{{\"crm\":\"true\"}}","leg":"{leg}","type":"cdr","appid":2222223,"to":{to},"cmiuuid":"{id}-{leg}","status":"{status}","user":"{user}_2222223","time":{time},"direction":"{dir}","answeredsec":{duration},"hangup_reason":"recv_bye","request_id":"req-{id}"}}"#,
                    leg = if h & 4 == 0 { "a" } else { "b" },
                    status = if h.is_multiple_of(5) {
                        "missed"
                    } else {
                        "answered"
                    },
                    user = 200 + h % 30,
                    time = 1_650_630_551_178 + j,
                    dir = if h & 1 == 0 { "inbound" } else { "outbound" },
                ),
            }
        }
        Kind::TelecmiEvent => Request {
            method: "POST",
            target: format!("/v1/telecmi/event?token={KEY}"),
            content_type: Some("application/json"),
            authorization: None,
            body: format!(
                r#"{{"type":"event","app_id":"2222223","cmiuuid":"{id}","status":"{status}","direction":"inbound","from":{from},"time":{time}}}"#,
                status = ["started", "answered", "hangup"][(h % 3) as usize],
                from = 919_000_000_000 + h % 1_000_000,
                time = 1_650_630_551_178 + j,
            ),
        },
    }
}

/// Request `i` of `run` as the gateway receives it on the default paths,
/// with no tenant configured: its provider (an index into `providers`),
/// the delivery (request id `<run>-req-<i>`, received at a fixed instant
/// `i` ms after 2023-11-14T22:13:20Z) and the body.
pub fn delivery(
    run: &str,
    i: u64,
    providers: &[Box<dyn Provider>],
) -> anyhow::Result<(usize, Delivery<'static>, Vec<u8>)> {
    let req = request(run, i);
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let (provider, route) = providers::by_default_path(providers, path)
        .with_context(|| format!("no provider serves {path}"))?;
    let delivery = Delivery {
        request_id: format!("{run}-req-{i}").into(),
        source: providers[provider].id().as_str().into(),
        route: route.name.into(),
        method: req.method.into(),
        path: path.to_string().into(),
        query: redact_query(query).into(),
        content_type: req.content_type.map(Cow::Borrowed),
        received_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64)
            .expect("in range"),
        source_tenant: Some(DEFAULT_TENANT.into()),
        copied: Vec::new(),
    };
    Ok((provider, delivery, req.body.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_kind_appears_in_its_share_and_resends_repeat_bodies_exactly() {
        let n = 20_000u64;
        let mut kinds: HashMap<String, u64> = HashMap::new();
        let mut resends = 0;
        for i in 0..n {
            let r = request("t", i);
            let j = original_of(i);
            if j != i {
                resends += 1;
                assert!(j < i);
                assert_eq!(
                    r.body,
                    request("t", j).body,
                    "a resend repeats its original"
                );
                assert_eq!(r.target, request("t", j).target);
            } else {
                *kinds
                    .entry(format!("{:?}", kind_of_request(i)))
                    .or_default() += 1;
            }
        }
        let share = resends as f64 / n as f64;
        assert!((0.08..0.12).contains(&share), "resend share {share}");
        for (kind, weight) in MIX {
            let got = kinds[&format!("{kind:?}")] as f64 / (n - resends) as f64 * 100.0;
            assert!(
                (got - weight as f64).abs() < 2.0,
                "{kind:?}: {got}% vs {weight}%"
            );
        }
    }

    #[test]
    fn json_bodies_are_valid_json() {
        for i in 0..2_000 {
            let r = request("t", i);
            if r.content_type == Some("application/json") {
                serde_json::from_str::<serde_json::Value>(&r.body)
                    .unwrap_or_else(|e| panic!("request {i}: {e}: {}", r.body));
            }
        }
    }
}
