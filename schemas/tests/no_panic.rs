//! No delivery, however broken, makes a provider panic: random bytes,
//! JSON-ish and form-ish bodies built from real field names, mutated
//! fixtures, and arbitrary routes, methods, query strings and content types.
//! Whatever normalizes must also be a sealed, self-consistent event.

mod common;

use callstream_schemas::declared::{Declaration, DeclaredSource};
use callstream_schemas::{providers, NormalizeError, Provider, RawRequest};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the providers read, so generated bodies get past the first checks.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "id", "eventName", "callStarted", "callEnded", "callDuration", "callDirection", "callStatus",
    "voicemailUrl", "voicemailDuration", "callRecordingUrl", "tags", "tagName", "date",
    "smsDirection", "body", "externalNumber", "externalCompanyName", "triggerId", "triggerID",
    "tenantId", "customData", "cdr", "start", "answer", "end", "dur", "ring", "ans", "lost", "aban",
    "dir", "cliNum", "ddiNum", "ansAgtName", "lRgDevName", "hasRec", "recordingIds",
    "directoryMatches", "directorymatches", "fields", "contactId", "key", "value", "type", "appid",
    "app_id", "cmiuuid", "status", "time", "direction", "to", "from", "callerid", "leg", "user",
    "virtual_number", "answeredsec", "waitedsec", "filename", "record", "custom", "extra_params",
    "voicemail", "voicename", "payload",
];

#[rustfmt::skip]
const VALUES: &[&str] = &[
    "CDR", "VM", "RECORDING", "SMS", "VMS", "ANSWERED", "INBOUND", "SENT", "cdr", "event",
    "answered", "user-missed", "hangup", "inbound", "outbound", "a", "none", "true", "1", "0", "2",
    "3", "", "2024-05-29T09:37:35+01:00", "2024-05-29T09:37:35+0100", "2024-05-29T09:37:35",
    "1650630551178", "1650630551", "99999999999999999999", "-1", "NaN", "1e400",
    "{\"crm\":\"true\"}", "{\"cdr\":{\"id\":\"x\"}}", "http://x/vm.mp3",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(VALUES).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(
                prop::sample::select(KEYS).prop_map(String::from),
                inner,
                0..10
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Form field names: flat, bracketed, dotted, pushed, deep and broken.
fn form_name() -> impl Strategy<Value = String> {
    (
        prop::sample::select(KEYS),
        vec(
            prop_oneof![
                prop::sample::select(KEYS).prop_map(|k| format!("[{k}]")),
                prop::sample::select(KEYS).prop_map(|k| format!(".{k}")),
                (0usize..4).prop_map(|i| format!("[{i}]")),
                Just("[]".to_string()),
                Just("[".to_string()),
                "[0-9]{1,20}".prop_map(|i| format!("[{i}]")),
            ],
            0..12,
        ),
    )
        .prop_map(|(head, tail)| format!("{head}{}", tail.concat()))
}

fn form_text() -> impl Strategy<Value = String> {
    vec(
        (
            form_name(),
            prop_oneof![
                prop::sample::select(VALUES).prop_map(String::from),
                ".{0,16}"
            ],
        ),
        0..24,
    )
    .prop_map(|pairs| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        btree_map(
            prop::sample::select(KEYS).prop_map(String::from),
            json_value(),
            0..12
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())
            .to_string()
            .into_bytes()),
        form_text().prop_map(String::into_bytes),
        "[\\[{\"]{0,300}".prop_map(String::into_bytes),
    ]
}

fn route() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["cdr", "sms", "postcall", "event"][..]).prop_map(String::from),
        "[a-z]{0,8}",
    ]
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["GET", "POST", "PUT"][..]).prop_map(String::from),
        ".{0,6}",
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(
            &[
                "application/json",
                "application/json; charset=utf-8",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "text/plain",
            ][..]
        )
        .prop_map(String::from),
        ".{0,32}",
    ])
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), form_text(), ".{0,64}"]
}

/// Normalizes with every provider; fails the property if an event is not sealed.
fn check_all(
    method: &str,
    route: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let req = RawRequest {
        method,
        route,
        query,
        content_type,
        body,
    };
    for provider in providers::all() {
        check(provider.as_ref(), &req)?;
    }
    check(declared_aircall(), &req)?;
    Ok(())
}

/// The worked example of `docs/declared-sources.md`: a declared source runs
/// jq on whatever arrives, so it is tried with the rest.
fn declared_aircall() -> &'static DeclaredSource {
    static SOURCE: std::sync::OnceLock<DeclaredSource> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        let text = include_str!("../../docs/examples/aircall-declared.toml");
        let doc: toml::Value = toml::from_str(text).expect("the example is TOML");
        let declaration: Declaration = doc["sources"]["aircall_declared"]["declared"]
            .clone()
            .try_into()
            .expect("a declaration");
        DeclaredSource::compile("aircall_declared", &declaration).expect("the example compiles")
    })
}

fn check(provider: &dyn Provider, req: &RawRequest<'_>) -> Result<(), TestCaseError> {
    let normalized = provider.normalize(req, &common::ctx());
    // A declared source turns a panic into a dead letter; it must not panic either.
    if let Err(NormalizeError::MappingFailed(detail)) = &normalized {
        prop_assert!(!detail.contains("panicked"), "{}", detail);
    }
    if let Ok(event) = normalized {
        prop_assert_eq!(event.provider, provider.id());
        let prefix = format!("{}:", provider.id().as_str());
        prop_assert!(
            event.identity.starts_with(&prefix),
            "identity {}",
            event.identity
        );
        prop_assert_eq!(&event.fingerprint, &event.compute_fingerprint());
        // The canonical writer hashes exactly what the first release hashed,
        // so a resend of an event seen before an upgrade is still a resend.
        prop_assert_eq!(&event.fingerprint, &common::tree_fingerprint(&event));
        let sealed = common::sealed_json_is_the_event(&event);
        prop_assert!(sealed.is_ok(), "{:?}", sealed);
    }
    Ok(())
}

/// Byte-level damage to a fixture: truncation, flips, insertions, deletions.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Flip(at, b)),
        (any::<usize>(), vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Damage::Delete(at, n)),
    ]
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for damage in damages {
        let len = bytes.len().max(1);
        match damage {
            Damage::Truncate(at) => bytes.truncate(at % len),
            Damage::Flip(at, b) => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= b;
                }
            }
            Damage::Insert(at, new) => {
                let at = (at % len).min(bytes.len());
                bytes.splice(at..at, new.iter().copied());
            }
            Damage::Delete(at, n) => {
                let start = (at % len).min(bytes.len());
                let end = (start + n).min(bytes.len());
                bytes.drain(start..end);
            }
        }
    }
    bytes
}

/// Replaces the `pick`-th field (at the top level or inside `cdr`) of a JSON
/// fixture with `value`, so the rest of the delivery stays plausible.
fn replace_field(fixture: &str, pick: usize, value: Value) -> Option<Vec<u8>> {
    let mut document: Value = serde_json::from_str(fixture).ok()?;
    let target = match document.get("cdr") {
        Some(Value::Object(_)) if pick % 2 == 1 => document.get_mut("cdr")?,
        _ => &mut document,
    };
    let object = target.as_object_mut()?;
    let key = object.keys().nth(pick % object.len().max(1))?.clone();
    object.insert(key, value);
    Some(document.to_string().into_bytes())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_deliveries_never_panic(
        method in method(),
        route in route(),
        query in query(),
        content_type in content_type(),
        body in any_body(),
    ) {
        check_all(&method, &route, &query, content_type.as_deref(), &body)?;
    }

    #[test]
    fn query_only_deliveries_never_panic(route in route(), query in query()) {
        check_all("GET", &route, &query, None, b"")?;
    }

    #[test]
    fn damaged_fixtures_never_panic(pick in any::<prop::sample::Index>(), damages in vec(damage(), 1..6)) {
        let case = pick.get(common::CASES);
        let damaged = apply(case.payload.as_bytes().to_vec(), &damages);
        let _ = common::normalize_as(case, &damaged);
        check_all(case.method, case.route, "", case.content_type, &damaged)?;
    }

    #[test]
    fn fixtures_with_one_odd_field_never_panic(
        pick in any::<prop::sample::Index>(),
        field in any::<usize>(),
        value in json_value(),
    ) {
        let normalizing: Vec<&common::Case> =
            common::CASES.iter().filter(|c| c.expect == common::Expect::Normalized).collect();
        let case = *pick.get(&normalizing);
        if let Some(body) = replace_field(case.payload, field, value) {
            let outcome = common::normalize_as(&common::Case { via: common::Via::Body, ..*case }, &body);
            if let Ok(event) = outcome {
                prop_assert_eq!(event.provider, case.provider, "{}", case.fixture);
                prop_assert_eq!(&event.fingerprint, &event.compute_fingerprint(), "{}", case.fixture);
                prop_assert_eq!(&event.fingerprint, &common::tree_fingerprint(&event), "{}", case.fixture);
                let sealed = common::sealed_json_is_the_event(&event);
                prop_assert!(sealed.is_ok(), "{}: {:?}", case.fixture, sealed);
            }
        }
    }
}
