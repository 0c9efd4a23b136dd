//! `schemas/asyncapi.yaml` cannot drift from the code: it lists exactly the
//! topics of `Topic::ALL` under their default names, references every
//! generated JSON Schema file (and nothing else under `json/`), every `$ref`
//! resolves, and the header names and values it promises are the ones the
//! code writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use callstream_schemas::{providers, raw, Context, NormalizeError, RawRequest, Topic};
use serde_json::Value;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    let path = crate_dir().join("asyncapi.yaml");
    let text = std::fs::read_to_string(&path).expect("schemas/asyncapi.yaml exists");
    serde_norway::from_str(&text).expect("asyncapi.yaml is valid YAML")
}

/// The node a local reference (`#/a/b`) points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("`{reference}` is not a local reference"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("`{reference}` does not resolve in asyncapi.yaml"))
}

/// Follows local references until a node that is not one.
fn follow<'a>(doc: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        if !reference.starts_with('#') {
            break;
        }
        node = resolve(doc, reference);
    }
    node
}

/// Every `$ref` in the document, with where it is.
fn refs(node: &Value, at: String, out: &mut Vec<(String, String)>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    let target = value.as_str().expect("a $ref is a string");
                    out.push((at.clone(), target.to_string()));
                } else {
                    refs(value, format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                refs(item, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The single message of the channel with this address.
fn message_of<'a>(doc: &'a Value, address: &str) -> &'a Value {
    let channel = doc["channels"]
        .as_object()
        .expect("channels")
        .values()
        .find(|c| c["address"] == address)
        .unwrap_or_else(|| panic!("no channel for {address}"));
    let messages = channel["messages"].as_object().expect("channel messages");
    assert_eq!(messages.len(), 1, "{address}: one message per topic");
    follow(doc, messages.values().next().expect("one message"))
}

/// Header names a message schema promises (through `$ref` and `allOf`),
/// reading generated schema files where it points at them.
fn header_names(doc: &Value, schema: &Value, out: &mut BTreeSet<String>) {
    let schema = follow(doc, schema);
    if let Some(file) = schema.get("$ref").and_then(Value::as_str) {
        let path = crate_dir().join(file);
        let text = std::fs::read_to_string(&path).expect("referenced file exists");
        let generated: Value = serde_json::from_str(&text).expect("schema file is JSON");
        header_names(doc, &generated, out);
        return;
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            header_names(doc, part, out);
        }
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        out.extend(properties.keys().cloned());
    }
}

#[test]
fn every_topic_is_a_channel_under_its_default_name_and_nothing_else() {
    let doc = document();
    assert!(
        doc["asyncapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.") || v.starts_with("2.6")),
        "an AsyncAPI 3.x (or 2.6) document"
    );
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .expect("channels is a map")
        .iter()
        .map(|(name, channel)| {
            channel["address"]
                .as_str()
                .unwrap_or_else(|| panic!("channel {name} has an address"))
        })
        .collect();
    let documented: BTreeSet<&str> = addresses.iter().copied().collect();
    assert_eq!(
        addresses.len(),
        documented.len(),
        "a topic documented twice"
    );
    let code: BTreeSet<&str> = Topic::ALL.iter().map(|t| t.default_name()).collect();
    assert_eq!(
        documented, code,
        "asyncapi.yaml channels must be exactly Topic::ALL with default names"
    );
}

#[test]
fn every_reference_resolves_and_every_generated_schema_is_referenced() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    let published: BTreeSet<String> = callstream_schemas::json_schemas()
        .into_iter()
        .map(|(name, _)| format!("./json/{name}"))
        .collect();
    let mut files = BTreeSet::new();
    for (at, target) in &found {
        if target.starts_with('#') {
            resolve(&doc, target);
            continue;
        }
        let path: PathBuf = crate_dir().join(target);
        assert!(
            path.is_file(),
            "{at}: `{target}` does not exist (regenerate the schema files with \
             `cargo run -p callstream-schemas --bin callstream-schemas`)"
        );
        assert!(
            published.contains(target),
            "{at}: `{target}` is not a schema file the crate publishes (json_schemas())"
        );
        files.insert(target.clone());
    }
    let missing: Vec<&String> = published.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "generated schema files no message in asyncapi.yaml uses: {missing:?}"
    );
    // Every operation points at a channel of the document.
    for (name, op) in doc["operations"].as_object().expect("operations") {
        let channel = op["channel"]["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}"));
        assert!(channel.starts_with("#/channels/"), "{name}: {channel}");
    }
}

#[test]
fn event_payloads_are_the_generated_event_schema() {
    let doc = document();
    let events_file = "./json/callstream.events.v1.schema.json";
    for topic in [Topic::Events, Topic::EventsUnique, Topic::CrmDlq] {
        let message = message_of(&doc, topic.default_name());
        assert_eq!(
            message["payload"]["$ref"],
            events_file,
            "{}: payload",
            topic.default_name()
        );
    }
    // The referenced file is the one generated from `Event`, byte for byte.
    let (_, schema) = callstream_schemas::json_schemas()
        .into_iter()
        .find(|(name, _)| *name == "callstream.events.v1.schema.json")
        .expect("the events schema is published");
    let on_disk = std::fs::read_to_string(crate_dir().join(events_file)).expect("events schema");
    assert_eq!(on_disk, callstream_schemas::render_schema(&schema));

    let raw_headers = "./json/callstream.raw.v1.headers.schema.json";
    let raw = message_of(&doc, Topic::Raw.default_name());
    assert_eq!(raw["headers"]["$ref"], raw_headers);
}

#[test]
fn promised_headers_are_the_ones_the_code_writes() {
    let doc = document();

    // Raw records: the RawMeta fields, plus the copied request headers.
    let mut names = BTreeSet::new();
    header_names(
        &doc,
        &message_of(&doc, Topic::Raw.default_name())["headers"],
        &mut names,
    );
    for name in [
        raw::H_REQUEST_ID,
        raw::H_SOURCE,
        raw::H_ROUTE,
        raw::H_METHOD,
        raw::H_PATH,
        raw::H_QUERY,
        raw::H_CONTENT_TYPE,
        raw::H_RECEIVED_AT,
        raw::H_SOURCE_TENANT,
    ] {
        assert!(names.contains(name), "raw headers lack {name}");
    }
    let raw_message = serde_json::to_string(&message_of(&doc, Topic::Raw.default_name())).unwrap();
    for (_, copied) in raw::COPIED_HEADERS {
        assert!(
            raw_message.contains(copied),
            "the raw message does not mention {copied}"
        );
    }

    // DLQ: the reasons are exactly NormalizeError's codes.
    let dlq = message_of(&doc, Topic::Dlq.default_name());
    let mut names = BTreeSet::new();
    header_names(&doc, &dlq["headers"], &mut names);
    assert!(names.contains(raw::H_DLQ_REASON) && names.contains(raw::H_DLQ_DETAIL));
    let reasons: BTreeSet<&str> = dlq["headers"]["allOf"]
        .as_array()
        .expect("DLQ headers extend the raw ones")
        .iter()
        .find_map(|part| part["properties"][raw::H_DLQ_REASON]["enum"].as_array())
        .expect("cs_dlq_reason lists its values")
        .iter()
        .map(|v| v.as_str().expect("a reason is a string"))
        .collect();
    // Every code() is in CODES: the provider module's unit test.
    let codes: BTreeSet<&str> = NormalizeError::CODES.into_iter().collect();
    assert_eq!(reasons, codes, "cs_dlq_reason values");

    // Unique events add the revision header to the CloudEvents ones.
    let mut names = BTreeSet::new();
    header_names(
        &doc,
        &message_of(&doc, Topic::EventsUnique.default_name())["headers"],
        &mut names,
    );
    assert!(names.contains(callstream_schemas::event::REVISION_HEADER));
    assert!(names.contains("ce_id") && names.contains(raw::H_REQUEST_ID));

    // Consumers' dead letters: the unique record's headers plus their own.
    for (topic, added) in [
        (
            Topic::CrmDlq,
            &[raw::H_CRM_TARGET, raw::H_CRM_ERROR, raw::H_CRM_ATTEMPTS][..],
        ),
        (
            Topic::RecordingsDlq,
            &[raw::H_RECORDINGS_ERROR, raw::H_RECORDINGS_ATTEMPTS][..],
        ),
    ] {
        let mut names = BTreeSet::new();
        header_names(
            &doc,
            &message_of(&doc, topic.default_name())["headers"],
            &mut names,
        );
        for name in added
            .iter()
            .chain(&[callstream_schemas::event::REVISION_HEADER, "ce_id"])
        {
            assert!(
                names.contains(*name),
                "{} headers lack {name}",
                topic.default_name()
            );
        }
    }

    // ce_type: one value per event kind of the generated schema.
    let events = message_of(&doc, Topic::Events.default_name());
    let ce_types: BTreeSet<String> = follow(&doc, &events["headers"])["properties"]["ce_type"]
        ["enum"]
        .as_array()
        .expect("ce_type lists its values")
        .iter()
        .map(|v| v.as_str().expect("string").to_string())
        .collect();
    let (_, schema) = callstream_schemas::json_schemas()
        .into_iter()
        .find(|(name, _)| *name == "callstream.events.v1.schema.json")
        .expect("events schema");
    let schema = serde_json::to_value(schema).expect("schema is JSON");
    let kinds: BTreeSet<String> = schema["$defs"]["Kind"]["oneOf"]
        .as_array()
        .expect("Kind is a oneOf of constants")
        .iter()
        .map(|k| format!("io.callstream.{}.v1", k["const"].as_str().expect("const")))
        .collect();
    assert_eq!(ce_types, kinds, "ce_type values");
}

/// The raw topic's examples: one per built-in provider, each with headers
/// the raw-headers schema accepts, the provider's default path for its
/// route, and a body that provider normalizes.
#[test]
fn every_provider_has_a_raw_example_that_normalizes() {
    let doc = document();
    let examples = doc
        .pointer("/components/messages/rawDelivery/examples")
        .and_then(Value::as_array)
        .expect("rawDelivery has examples");
    let headers_schema: Value = serde_json::from_str(
        &std::fs::read_to_string(crate_dir().join("json/callstream.raw.v1.headers.schema.json"))
            .expect("the raw headers schema"),
    )
    .expect("JSON");
    let validator = jsonschema::options()
        .build(&headers_schema)
        .expect("a valid schema");
    let mut seen = BTreeSet::new();
    for example in examples {
        let headers = &example["headers"];
        assert!(
            validator.is_valid(headers),
            "{}: {:?}",
            example["name"],
            validator
                .iter_errors(headers)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        let source = headers["cs_source"].as_str().expect("cs_source");
        let route = headers["cs_route"].as_str().expect("cs_route");
        let provider = providers::all()
            .into_iter()
            .find(|p| p.id().as_str() == source)
            .unwrap_or_else(|| panic!("no provider `{source}`"));
        let declared = provider
            .routes()
            .iter()
            .find(|r| r.name == route)
            .unwrap_or_else(|| panic!("{source} has no route `{route}`"));
        assert_eq!(headers["cs_path"], declared.default_path, "{source}");
        let body = example["payload"].as_str().expect("a payload");
        let req = RawRequest {
            method: headers["cs_method"].as_str().expect("cs_method"),
            route,
            query: headers["cs_query"].as_str().unwrap_or_default(),
            content_type: headers["cs_content_type"].as_str(),
            body: body.as_bytes(),
        };
        let ctx = Context {
            default_tenant: "default",
            received_at: chrono::Utc::now(),
            request_id: "example",
            raw_topic: Topic::Raw.default_name(),
        };
        if let Err(e) = provider.normalize(&req, &ctx) {
            panic!("{source}'s example does not normalize: {e}");
        }
        seen.insert(source.to_string());
    }
    let all: BTreeSet<String> = providers::all()
        .iter()
        .map(|p| p.id().as_str().to_string())
        .collect();
    assert_eq!(seen, all, "one example per provider");
}
