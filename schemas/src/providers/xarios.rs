//! Xarios (white-labelled cloud PBX analytics): the post-call webhook.
//!
//! One delivery per completed call session and trigger. The customer picks
//! the method (GET, POST or PUT) and, for POST/PUT, JSON or form data; GET
//! carries the payload in the query string. How nested `cdr.*` fields are
//! named in forms and queries is undocumented, so [`lenient::form_to_json`]
//! accepts bracketed, dotted and flat names, and a field holding the whole
//! JSON document; flat CDR names are moved under `cdr` here.
//!
//! Identity is `cdr.id` (the call session) plus `triggerId`, because several
//! triggers can fire for one call and each is a delivery of its own. Tenant
//! is the payload's `tenantId`, else the source's configured tenant.
//!
//! [`Event::custom`] is the trigger's `customData` as configured, verbatim:
//! the customer's own static keys, nothing of Xarios' mixed in (a key added
//! there could clash with one of theirs, or be taken for one). Fields the
//! event has no place for therefore stay in the raw record only: the CDR's
//! `type` (internal/external), `t2t` and `tz` (times are normalized to UTC
//! from their offsets), and a directory match's `crmId` (another system's
//! id, not the provider's, which `contactId` is), `title`, `jobTitle`,
//! `phone1`..`phone4` (the contact's numbers, not the number on the call)
//! and `field1`..`field10`.

use serde_json::{Map, Value};

use crate::event::{Direction, Event, Kind, MediaRef, Party, ProviderId, Sealed, Status, Tag};
use crate::lenient::{self, field};
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The Xarios post-call webhook source.
pub struct Xarios;

const ROUTES: &[Route] = &[Route {
    name: "postcall",
    default_path: "/v1/xarios/postcall",
    methods: &[Method::Get, Method::Post, Method::Put],
}];

/// CDR field names from the docs (with their misspellings). In a flat form
/// (`dur=10`) these move under `cdr`. `id` is not among them: at the top
/// level it is the changed entity's id, so a flat `id` stays there.
#[rustfmt::skip]
const CDR_FIELDS: &[&str] = &[
    "dType", "sVer", "pbxId", "pbxName", "tz", "start", "answer", "end", "dur", "ring", "talk",
    "hold", "park", "lost", "lostinPark", "aban", "ans", "short", "cause", "dir", "type", "t2t",
    "cliNum", "cliName", "cliLoc", "cliArea", "cliState", "cliCtry", "ddiNum", "ddiName",
    "fRngDevNum", "fRngDevName", "lRngDevNum", "lRngDevName", "lRgDevName", "ansDevNum",
    "ansDevName", "lAnsDevNum", "lAnsDevName", "fRngUsrNum", "fRngUsrName", "lRngUsrNum",
    "lRngUsrName", "ansUsrNum", "ansUsrName", "lAnsUsrNum", "lAnsUsrName", "fRngAgtNum",
    "fRngAgtName", "lRngAgtNum", "lRngAgtName", "ansAgtNum", "ansAgtName", "lAnsAgtNum",
    "lAnsAgtName", "rteID", "rteName", "fRngGroupName", "lRngGroupName", "ansGroupName", "hasRec",
    "rate", "rateCost", "rateBand", "rateName", "recordingIds", "directorymatches",
    "directoryMatches", "tags",
];

/// Where the call centre's side is named, best first: who answered, else
/// who rang last (a missed call belongs to whoever it rang). Devices are the
/// last resort; their "numbers" are often device ids such as `user_xxx`.
const INTERNAL_CANDIDATES: &[(&[&str], &[&str])] = &[
    (&["ansAgtName"], &["ansAgtNum"]),
    (&["ansUsrName"], &["ansUsrNum"]),
    (&["lRngAgtName"], &["lRngAgtNum"]),
    (&["lRngUsrName"], &["lRngUsrNum"]),
    (&["ansDevName"], &["ansDevNum"]),
    (&["lRngDevName", "lRgDevName"], &["lRngDevNum"]),
];

/// Reads the delivery into one JSON object shaped like the documented JSON.
fn document(req: &RawRequest<'_>) -> Result<Value, NormalizeError> {
    let mut doc = lenient::document(req)?;
    if let Value::Object(top) = &mut doc {
        unwrap_embedded_document(top);
        hoist_flat_cdr_fields(top);
        if let Some(Value::Object(cdr)) = top.get_mut("cdr") {
            decode_json_lists(cdr);
        }
    }
    Ok(doc)
}

/// The CDR's list fields, given as JSON text in one form or query field
/// (`cdr[recordingIds]=["r1","r2"]`): read as the lists they hold. (The
/// form decoder already reads a field holding a JSON object; it leaves
/// lists as text, since any field might start with `[`.) Text that is not
/// a JSON list stays as it is.
fn decode_json_lists(cdr: &mut Map<String, Value>) {
    const LISTS: [&str; 5] = [
        "recordingIds",
        "recordingIDs",
        "directoryMatches",
        "directorymatches",
        "tags",
    ];
    for key in LISTS {
        let Some(value) = cdr.get_mut(key) else {
            continue;
        };
        let Value::String(text) = value else {
            continue;
        };
        let text = text.trim();
        if !text.starts_with('[') {
            continue;
        }
        if let Ok(parsed @ Value::Array(_)) = serde_json::from_str(text) {
            *value = parsed;
        }
    }
}

/// `payload={"triggerId":..,"cdr":{..}}`: one form field held the whole
/// document. Its keys win over the field's siblings.
fn unwrap_embedded_document(top: &mut Map<String, Value>) {
    if top.contains_key("cdr") {
        return;
    }
    let wrapper = top
        .iter()
        .find(|(_, value)| value.get("cdr").is_some())
        .map(|(key, _)| key.clone());
    if let Some(Value::Object(inner)) = wrapper.and_then(|key| top.remove(&key)) {
        top.extend(inner);
    }
}

/// `dur=10` next to `cdr[id]=..`: flat CDR fields belong under `cdr`; a
/// value given both ways keeps the one spelled under `cdr`.
fn hoist_flat_cdr_fields(top: &mut Map<String, Value>) {
    // The document's few keys looked up among the CDR names, rather than
    // every CDR name looked up in the document (70 map searches each time).
    let names: Vec<String> = top
        .keys()
        .filter(|key| CDR_FIELDS.contains(&key.as_str()))
        .cloned()
        .collect();
    if names.is_empty() {
        return;
    }
    let flat: Vec<(String, Value)> = names
        .iter()
        .filter_map(|name| top.remove_entry(name))
        .collect();
    let cdr = top
        .entry("cdr")
        .or_insert_with(|| Value::Object(Map::new()));
    if !cdr.is_object() {
        *cdr = Value::Object(Map::new());
    }
    if let Value::Object(cdr) = cdr {
        for (name, value) in flat {
            cdr.entry(name).or_insert(value);
        }
    }
}

fn flag(cdr: &Value, name: &str) -> bool {
    lenient::boolean(cdr.get(name)) == Some(true)
}

fn internal_party(cdr: &Value) -> Party {
    INTERNAL_CANDIDATES
        .iter()
        .find_map(|(name_keys, number_keys)| {
            let name = lenient::string(field(cdr, name_keys));
            let number = lenient::string(field(cdr, number_keys));
            (name.is_some() || number.is_some()).then(|| Party {
                name,
                number,
                ..Party::default()
            })
        })
        .unwrap_or_default()
}

fn external_party(cdr: &Value, direction: Direction) -> Party {
    // The CLI is the calling number and the DDI the dialled one. Inbound, the
    // caller is the customer (the DDI is our own line). Outbound, the CLI is
    // the number we present and the DDI is the customer we dialled. Internal,
    // "both" and unknown calls have no customer side; the CLI, the side that
    // started the call, is the most useful "other party".
    let (number_key, name_key) = match direction {
        Direction::Outbound => ("ddiNum", "ddiName"),
        _ => ("cliNum", "cliName"),
    };
    let contact = match field(cdr, &["directoryMatches", "directorymatches"]) {
        Some(Value::Array(matches)) => matches.first(),
        single @ Some(Value::Object(_)) => single,
        _ => None,
    };
    let fields = contact.and_then(|c| c.get("fields"));
    let from_contact = |key: &str| lenient::string(fields.and_then(|f| f.get(key)));
    Party {
        id: lenient::string(contact.and_then(|c| c.get("contactId"))),
        // The directory match is the customer as the business knows them;
        // the CLI name is whatever the network presented.
        name: from_contact("fullName").or_else(|| lenient::string(cdr.get(name_key))),
        email: from_contact("email"),
        number: lenient::string(cdr.get(number_key)),
        company: from_contact("companyName"),
    }
}

/// Tags are documented as "an array containing a key/value pair" and shown
/// as an object (`{"Support": "step1"}`); both shapes are read.
fn tags(value: Option<&Value>) -> Vec<Tag> {
    match value {
        Some(Value::Object(map)) => map.iter().filter_map(|(k, v)| tag(k, v)).collect(),
        Some(Value::Array(items)) => items.iter().flat_map(tags_in_entry).collect(),
        _ => Vec::new(),
    }
}

/// One entry of a tag array: `{"key": k, "value": v}`, `{k: v}` or a bare name.
fn tags_in_entry(entry: &Value) -> Vec<Tag> {
    match (entry, lenient::string(field(entry, &["key", "name"]))) {
        (Value::Object(_), Some(name)) => tag(&name, entry.get("value").unwrap_or(&Value::Null))
            .into_iter()
            .collect(),
        (Value::Object(_), None) => tags(Some(entry)),
        (bare, _) => lenient::string(Some(bare))
            .and_then(|name| tag(&name, &Value::Null))
            .into_iter()
            .collect(),
    }
}

fn tag(name: &str, value: &Value) -> Option<Tag> {
    let name = name.trim();
    (!name.is_empty()).then(|| Tag {
        name: name.to_string(),
        value: lenient::string(Some(value)),
        ..Tag::default()
    })
}

fn recording(cdr: &Value) -> Option<MediaRef> {
    let ids: Vec<String> = match field(cdr, &["recordingIds", "recordingIDs"]) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|id| lenient::string(Some(id)))
            .collect(),
        single => lenient::string(single).into_iter().collect(),
    };
    (flag(cdr, "hasRec") || !ids.is_empty()).then(|| MediaRef {
        ids,
        ..MediaRef::default()
    })
}

impl Provider for Xarios {
    fn id(&self) -> ProviderId {
        ProviderId::Xarios
    }

    fn routes(&self) -> &'static [Route] {
        ROUTES
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let doc = document(req)?;
        let cdr = doc.get("cdr").unwrap_or(&Value::Null);
        let cdr_id =
            lenient::string(cdr.get("id")).ok_or(NormalizeError::MissingField("cdr.id"))?;
        let trigger = lenient::string(field(&doc, &["triggerId", "triggerID"]));
        let tenant = lenient::string(field(&doc, &["tenantId", "tenantID"]))
            .unwrap_or_else(|| ctx.default_tenant.to_string());

        let mut event = Event::new(ProviderId::Xarios, tenant, Kind::Call, ctx);
        // `ans` is a 1/0 flag: an explicit 0 is a call nobody answered (an
        // outbound call the customer did not pick up has no `lost`/`aban`).
        event.status = match lenient::boolean(cdr.get("ans")) {
            Some(true) => Status::Answered,
            Some(false) => Status::Missed,
            None if flag(cdr, "lost") || flag(cdr, "aban") => Status::Missed,
            None => Status::Unknown,
        };
        event.provider_status = lenient::string(cdr.get("cause"));
        event.provider_event_type = trigger.clone();
        // `dir`: 0 unknown, 1 internal, 2 incoming, 3 outgoing, 4 "both".
        // The docs say no more of 4 than that word. A session that went both
        // ways is neither inbound nor outbound as the call centre sees it,
        // and `internal` is already `dir` 1, so 4 is `unknown` rather than a
        // guessed side. `unknown` then covers 0, 4, a missing `dir` and an
        // unreadable one; which it was stays in the raw record, as `custom`
        // holds `customData` alone (see the module comment).
        event.direction = match lenient::integer(cdr.get("dir")) {
            Some(1) => Direction::Internal,
            Some(2) => Direction::Inbound,
            Some(3) => Direction::Outbound,
            _ => Direction::Unknown,
        };
        event.started_at = lenient::timestamp(cdr.get("start"), "cdr.start")?;
        event.answered_at = lenient::timestamp(cdr.get("answer"), "cdr.answer")?;
        event.ended_at = lenient::timestamp(cdr.get("end"), "cdr.end")?;
        event.duration_seconds = lenient::number(cdr.get("dur"));
        event.ring_seconds = lenient::number(cdr.get("ring"));
        event.talk_seconds = lenient::number(cdr.get("talk"));
        event.hold_seconds = lenient::number(cdr.get("hold"));
        event.internal = internal_party(cdr);
        event.external = external_party(cdr, event.direction);
        event.tags = tags(cdr.get("tags"));
        event.recording = recording(cdr);
        event.custom = field(&doc, &["customData"]).cloned();
        event.correlation.call_id = Some(cdr_id.clone());

        let provider_id = match trigger {
            Some(trigger) => format!("{cdr_id}:{trigger}"),
            None => cdr_id,
        };
        Ok(event.seal(&provider_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::{get, post, utc, FORM, JSON, TENANT};
    use serde_json::json;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/xarios/", $name))
        };
    }

    const OUTBOUND_ID: &str =
        "c1d2e3f4-3333-4a5b-9c8d-000000000003:5b0e8c1a-1111-4e2f-9a3b-000000000001";

    #[test]
    fn the_docs_example_is_invalid_json() {
        assert!(matches!(
            post(
                &Xarios,
                "POST",
                "postcall",
                JSON,
                fixture!("doc-example-verbatim.json")
            ),
            Err(NormalizeError::Malformed { format: "JSON", .. })
        ));
    }

    #[test]
    fn the_docs_example_once_fixed() {
        let event = post(
            &Xarios,
            "POST",
            "postcall",
            JSON,
            fixture!("doc-example-fixed.json"),
        )
        .expect("normalizes");
        let zero = "00000000-0000-0000-0000-000000000000";
        assert_eq!(event.identity, format!("xarios:{zero}:call:{zero}:{zero}"));
        assert_eq!(event.tenant, zero);
        assert_eq!(
            (event.kind, event.status, event.direction),
            (Kind::Call, Status::Missed, Direction::Inbound)
        );
        assert_eq!(event.provider_status.as_deref(), Some("NORMAL_CLEARING"));
        assert_eq!(event.provider_event_type.as_deref(), Some(zero));
        assert_eq!(event.started_at, utc("2024-05-29T08:37:35Z"));
        assert_eq!(event.answered_at, None);
        assert_eq!(event.ended_at, utc("2024-05-29T08:37:45Z"));
        assert_eq!(
            (
                event.duration_seconds,
                event.ring_seconds,
                event.talk_seconds
            ),
            (Some(10.0), Some(10.0), None)
        );
        assert_eq!(
            event.internal,
            Party {
                name: Some("Test User".into()),
                number: Some("302".into()),
                ..Party::default()
            }
        );
        assert_eq!(
            event.external,
            Party {
                id: Some(zero.into()),
                name: Some("Example Contact".into()),
                email: Some("Email Address".into()),
                number: Some("+447000000000".into()),
                company: Some("Company".into()),
            }
        );
        assert_eq!(
            event.tags,
            vec![Tag {
                name: "Support".into(),
                value: Some("step1".into()),
                ..Tag::default()
            }]
        );
        assert_eq!(event.recording.map(|r| r.ids), Some(vec![zero.to_string()]));
        assert_eq!(event.custom, Some(json!({"hook": "post call"})));
        assert_eq!(event.correlation.call_id.as_deref(), Some(zero));
    }

    #[test]
    fn answered_outbound_with_spelling_variants_and_string_flags() {
        let event = post(
            &Xarios,
            "POST",
            "postcall",
            JSON,
            fixture!("answered-outbound.json"),
        )
        .expect("normalizes");
        assert_eq!(
            event.identity,
            format!("xarios:acme-tenant-7:call:{OUTBOUND_ID}")
        );
        assert_eq!(
            (event.kind, event.status, event.direction),
            (Kind::Call, Status::Answered, Direction::Outbound)
        );
        assert_eq!(event.started_at, utc("2024-06-03T18:00:05.250Z"));
        assert_eq!(event.answered_at, utc("2024-06-03T18:00:12Z"));
        assert_eq!(event.ended_at, utc("2024-06-03T18:06:42Z"));
        assert_eq!(
            [
                event.duration_seconds,
                event.ring_seconds,
                event.talk_seconds,
                event.hold_seconds
            ],
            [Some(397.0), Some(7.0), Some(370.0), Some(20.0)]
        );
        // The answering agent wins over the answering user and the devices.
        assert_eq!(
            (
                event.internal.name.as_deref(),
                event.internal.number.as_deref()
            ),
            (Some("Bob Smith"), Some("2101"))
        );
        // Outbound: the customer is the dialled number, named by the directory.
        assert_eq!(
            event.external,
            Party {
                id: Some("contact-42".into()),
                name: Some("Carol Jones".into()),
                email: Some("carol@jones.example".into()),
                number: Some("+13055550199".into()),
                company: Some("Jones & Co".into()),
            }
        );
        let tags: Vec<(&str, Option<&str>)> = event
            .tags
            .iter()
            .map(|t| (t.name.as_str(), t.value.as_deref()))
            .collect();
        assert_eq!(tags, [("Priority", Some("1")), ("Sales", Some("won"))]);
        assert_eq!(
            event.recording.map(|r| r.ids),
            Some(vec!["rec-0001".to_string(), "rec-0002".to_string()])
        );
        assert_eq!(
            event.custom,
            Some(json!({"hook": "post call", "env": "prod"}))
        );
    }

    #[test]
    fn every_method_and_format_gives_the_same_event() {
        let reference = post(
            &Xarios,
            "POST",
            "postcall",
            JSON,
            fixture!("answered-outbound.json"),
        )
        .expect("normalizes");
        let deliveries = [
            (
                "PUT json",
                post(
                    &Xarios,
                    "PUT",
                    "postcall",
                    JSON,
                    fixture!("answered-outbound.json"),
                ),
            ),
            (
                "POST json, no type",
                post(
                    &Xarios,
                    "POST",
                    "postcall",
                    None,
                    fixture!("answered-outbound.json"),
                ),
            ),
            (
                "POST json labelled form",
                post(
                    &Xarios,
                    "POST",
                    "postcall",
                    FORM,
                    fixture!("answered-outbound.json"),
                ),
            ),
            (
                "POST bracketed form",
                post(
                    &Xarios,
                    "POST",
                    "postcall",
                    FORM,
                    fixture!("answered-outbound.form"),
                ),
            ),
            (
                "PUT bracketed form",
                post(
                    &Xarios,
                    "PUT",
                    "postcall",
                    FORM,
                    fixture!("answered-outbound.form"),
                ),
            ),
            (
                "POST one JSON field",
                post(
                    &Xarios,
                    "POST",
                    "postcall",
                    FORM,
                    fixture!("answered-outbound-payload-field.form"),
                ),
            ),
            (
                "GET dotted query",
                get(&Xarios, "postcall", fixture!("answered-outbound.query")),
            ),
            (
                "GET bracketed query",
                get(&Xarios, "postcall", fixture!("answered-outbound.form")),
            ),
        ];
        for (how, event) in deliveries {
            assert_eq!(event.as_ref(), Ok(&reference), "{how}");
        }
    }

    #[test]
    fn missed_inbound_as_flat_form_fields() {
        let event = post(
            &Xarios,
            "POST",
            "postcall",
            FORM,
            fixture!("missed-inbound-flat.form"),
        )
        .expect("normalizes");
        // No trigger id: the CDR id alone.
        assert_eq!(
            event.identity,
            "xarios:acme-tenant-7:call:c1d2e3f4-3333-4a5b-9c8d-000000000011"
        );
        assert_eq!(
            (event.status, event.direction),
            (Status::Missed, Direction::Inbound)
        );
        assert_eq!(event.provider_status.as_deref(), Some("ORIGINATOR_CANCEL"));
        assert_eq!(event.provider_event_type, None);
        assert_eq!(event.started_at, utc("2024-06-03T08:00:00Z"));
        assert_eq!(
            (event.duration_seconds, event.ring_seconds),
            (Some(25.0), Some(25.0))
        );
        assert_eq!(
            (
                event.external.number.as_deref(),
                event.external.name.as_deref()
            ),
            (Some("+447700900123"), Some("MOBILE CALLER"))
        );
        assert_eq!(
            (
                event.internal.name.as_deref(),
                event.internal.number.as_deref()
            ),
            (Some("Test User"), Some("302"))
        );
        assert_eq!(
            event
                .tags
                .first()
                .map(|t| (t.name.as_str(), t.value.as_deref())),
            Some(("Queue", Some("Support")))
        );
        assert_eq!(event.recording, None);
        assert_eq!(event.custom, Some(json!({"hook": "missed"})));
    }

    #[test]
    fn list_fields_given_as_json_text_in_a_form() {
        let lists = [
            ("cdr[recordingIds]", r#"["rec-1","rec-2"]"#),
            (
                "cdr[directoryMatches]",
                r#"[{"contactId":"k-1","fields":{"fullName":"Ann Lee","companyName":"Acme"}}]"#,
            ),
            ("cdr[tags]", r#"{"Queue":"Support"}"#),
        ];
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("cdr[id]", "c-9")
            .append_pair("cdr[dir]", "2");
        for (name, value) in lists {
            form.append_pair(name, value);
        }
        let event = post(&Xarios, "POST", "postcall", FORM, &form.finish()).expect("normalizes");
        assert_eq!(
            event.recording.map(|r| r.ids),
            Some(vec!["rec-1".to_string(), "rec-2".to_string()])
        );
        assert_eq!(
            (
                event.external.id.as_deref(),
                event.external.name.as_deref(),
                event.external.company.as_deref()
            ),
            (Some("k-1"), Some("Ann Lee"), Some("Acme"))
        );
        assert_eq!(
            event
                .tags
                .first()
                .map(|t| (t.name.as_str(), t.value.as_deref())),
            Some(("Queue", Some("Support")))
        );

        // Text that only looks like JSON is kept as text.
        let odd = post(
            &Xarios,
            "POST",
            "postcall",
            FORM,
            "cdr[id]=c-10&cdr[recordingIds]=%5Bnot-json",
        )
        .expect("normalizes");
        assert_eq!(
            odd.recording.map(|r| r.ids),
            Some(vec!["[not-json".to_string()])
        );
    }

    #[test]
    fn internal_call_with_the_cdr_as_one_json_query_field() {
        let event = get(
            &Xarios,
            "postcall",
            fixture!("internal-cdr-json-field.query"),
        )
        .expect("normalizes");
        assert_eq!(
            event.identity,
            "xarios:acme-tenant-7:call:c1d2e3f4-3333-4a5b-9c8d-000000000020:5b0e8c1a-1111-4e2f-9a3b-000000000001"
        );
        assert_eq!(
            (event.status, event.direction),
            (Status::Answered, Direction::Internal)
        );
        assert_eq!(event.answered_at, utc("2024-06-03T10:00:03Z"));
        assert_eq!((event.talk_seconds, event.hold_seconds), (Some(57.0), None));
        assert_eq!(
            (
                event.internal.name.as_deref(),
                event.internal.number.as_deref()
            ),
            (Some("Dan"), Some("302"))
        );
        assert_eq!(
            (
                event.external.name.as_deref(),
                event.external.number.as_deref()
            ),
            (Some("Alice"), Some("301"))
        );
        assert_eq!(event.custom, None);
    }

    #[test]
    fn directions_tenant_and_status_fallbacks() {
        for (dir, expected) in [
            (json!(0), Direction::Unknown),
            (json!(1), Direction::Internal),
            (json!("2"), Direction::Inbound),
            (json!(3.0), Direction::Outbound),
            // "both": no honest canonical side (see `normalize`).
            (json!(4), Direction::Unknown),
            (json!("x"), Direction::Unknown),
        ] {
            let body = json!({"cdr": {"id": "c", "dir": dir, "aban": "1"}}).to_string();
            let event = post(&Xarios, "POST", "postcall", JSON, &body).expect("normalizes");
            assert_eq!(event.direction, expected, "{dir}");
            assert_eq!(
                (event.tenant.as_str(), event.status),
                (TENANT, Status::Missed)
            );
            assert_eq!(event.identity, format!("xarios:{TENANT}:call:c"));
        }
        let bare =
            post(&Xarios, "POST", "postcall", JSON, r#"{"cdr": {"id": 42}}"#).expect("normalizes");
        assert_eq!(
            (bare.status, bare.correlation.call_id.as_deref()),
            (Status::Unknown, Some("42"))
        );
        for (cdr, expected) in [
            (
                json!({"id": "c", "dir": 3, "ans": 0, "lost": 0, "aban": 0}),
                Status::Missed,
            ),
            (json!({"id": "c", "dir": 3, "ans": "0"}), Status::Missed),
            (json!({"id": "c", "ans": 1, "lost": 1}), Status::Answered),
            (json!({"id": "c", "lost": "1"}), Status::Missed),
        ] {
            let body = json!({ "cdr": cdr }).to_string();
            let event = post(&Xarios, "POST", "postcall", JSON, &body).expect("normalizes");
            assert_eq!(event.status, expected, "{cdr}");
        }
    }

    #[test]
    fn both_ways_is_unknown_with_the_caller_as_the_other_party() {
        let body = json!({
            "cdr": {
                "id": "c-both", "dir": 4, "type": 2, "ans": 1,
                "cliNum": "+447700900555", "cliName": "CALLER",
                "ddiNum": "+441610000000", "ddiName": "Main line",
            },
            "customData": {"hook": "post call"},
        });
        let event = post(&Xarios, "POST", "postcall", JSON, &body.to_string()).expect("normalizes");
        // No honest side for "both": not `inbound`, `outbound` or `internal`.
        assert_eq!(
            (event.direction, event.status),
            (Direction::Unknown, Status::Answered)
        );
        // The side that started the call, as for any call without a customer side.
        assert_eq!(
            (
                event.external.number.as_deref(),
                event.external.name.as_deref()
            ),
            (Some("+447700900555"), Some("CALLER"))
        );
        // `dir` is not slipped into the customer's `customData`.
        assert_eq!(event.custom, Some(json!({"hook": "post call"})));
    }

    #[test]
    fn fields_without_a_place_in_the_event_stay_out_of_it() {
        let contact = json!({
            "contactId": "contact-7",
            "fields": {
                "fullName": "Ann Lee", "companyName": "Acme", "email": "ann@acme.example",
            },
        });
        let plain = json!({
            "triggerId": "t-1",
            "cdr": {
                "id": "c-extras", "dir": 2, "cliNum": "+447700900123",
                "directoryMatches": [contact],
            },
            "customData": {"hook": "post call"},
        });
        let mut full = plain.clone();
        full["cdr"]["type"] = json!(2);
        full["cdr"]["t2t"] = json!(0);
        full["cdr"]["tz"] = json!("Europe/London");
        let fields = &mut full["cdr"]["directoryMatches"][0]["fields"];
        fields["crmId"] = json!("crm-991");
        fields["title"] = json!("Dr");
        fields["jobTitle"] = json!("CTO");
        for n in 1..=4 {
            fields[format!("phone{n}")] = json!(format!("+4477009001{n:02}"));
        }
        for n in 1..=10 {
            fields[format!("field{n}")] = json!(format!("value {n}"));
        }

        let event = post(&Xarios, "POST", "postcall", JSON, &full.to_string()).expect("normalizes");
        // The contact id is the provider's; the CRM id and the contact's
        // numbers do not stand in for the party's id or the call's number.
        assert_eq!(
            event.external,
            Party {
                id: Some("contact-7".into()),
                name: Some("Ann Lee".into()),
                email: Some("ann@acme.example".into()),
                number: Some("+447700900123".into()),
                company: Some("Acme".into()),
            }
        );
        // `custom` is `customData` verbatim, nothing of Xarios' mixed in.
        assert_eq!(event.custom, Some(json!({"hook": "post call"})));
        // So the event is the one the delivery gives without those fields.
        let without =
            post(&Xarios, "POST", "postcall", JSON, &plain.to_string()).expect("normalizes");
        assert_eq!(event, without);
    }

    #[test]
    fn deliveries_that_cannot_be_normalized() {
        assert_eq!(
            post(
                &Xarios,
                "POST",
                "postcall",
                FORM,
                fixture!("flat-without-cdr-id.form")
            ),
            Err(NormalizeError::MissingField("cdr.id"))
        );
        assert_eq!(
            post(
                &Xarios,
                "POST",
                "postcall",
                JSON,
                r#"{"triggerId": "t", "cdr": {"id": ""}}"#
            ),
            Err(NormalizeError::MissingField("cdr.id"))
        );
        assert!(matches!(
            post(
                &Xarios,
                "POST",
                "postcall",
                JSON,
                fixture!("bad-start-time.json")
            ),
            Err(NormalizeError::InvalidField {
                field: "cdr.start",
                ..
            })
        ));
        assert_eq!(get(&Xarios, "postcall", ""), Err(NormalizeError::EmptyBody));
        assert!(matches!(
            post(
                &Xarios,
                "POST",
                "postcall",
                Some("multipart/form-data; boundary=b"),
                "--b\r\n"
            ),
            Err(NormalizeError::Malformed { format: "form", .. })
        ));
    }
}
