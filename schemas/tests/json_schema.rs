//! The published JSON Schema files match the Rust types, and every event the
//! fixtures produce is valid against the published events schema.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Expect, CASES};

fn json_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/json"))
}

fn fixtures_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

#[test]
fn schema_files_are_up_to_date() {
    for (name, schema) in callstream_schemas::json_schemas() {
        let path = json_dir().join(name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == callstream_schemas::render_schema(&schema),
            "{} is missing or out of date with the Rust types; regenerate it with \
             `cargo run -p callstream-schemas --bin callstream-schemas` and commit the result",
            path.display()
        );
    }
}

#[test]
fn every_fixture_gives_what_its_case_expects_and_events_match_the_schema() {
    let schema_path = json_dir().join("callstream.events.v1.schema.json");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&schema_path).expect("events schema file exists"),
    )
    .expect("events schema is JSON");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("events schema compiles");

    let mut events = 0;
    for case in CASES {
        let outcome = common::normalize_as(case, case.payload.as_bytes());
        match (case.expect, outcome) {
            (Expect::Normalized, Ok(event)) => {
                // What is published: the sealed record's bytes.
                let document = common::sealed_json_is_the_event(&event)
                    .unwrap_or_else(|e| panic!("{}: {e}", case.fixture));
                let errors: Vec<String> = validator
                    .iter_errors(&document)
                    .map(|e| format!("{} at {}", e, e.instance_path))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{}: event violates the schema: {errors:#?}",
                    case.fixture
                );
                assert_eq!(
                    event.fingerprint,
                    event.compute_fingerprint(),
                    "{}",
                    case.fixture
                );
                events += 1;
            }
            (Expect::Refused(code), Err(error)) => {
                assert_eq!(error.code(), code, "{}: {error}", case.fixture)
            }
            (expected, outcome) => {
                panic!("{}: expected {expected:?}, got {outcome:?}", case.fixture)
            }
        }
    }
    assert!(events >= 25, "only {events} fixtures produced events");

    // The validator is not vacuous: formats and enums are checked.
    let valid = common::normalize_as(&CASES[0], CASES[0].payload.as_bytes()).expect("first case");
    for (field, bad) in [
        ("started_at", "yesterday"),
        ("event_id", "not-a-uuid"),
        ("kind", "fax"),
    ] {
        let mut document = serde_json::to_value(&*valid).expect("events serialize");
        document[field] = bad.into();
        assert!(
            !validator.is_valid(&document),
            "{field} = {bad} passed validation"
        );
    }
}

#[test]
fn every_fixture_file_has_a_case() {
    let mut on_disk = BTreeSet::new();
    for provider in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let provider = provider.expect("dir entry").path();
        for file in std::fs::read_dir(&provider).expect("provider fixtures dir") {
            let file = file.expect("dir entry").path();
            let relative = file.strip_prefix(fixtures_dir()).expect("below fixtures");
            on_disk.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    let listed: BTreeSet<String> = CASES.iter().map(|c| c.fixture.to_string()).collect();
    assert_eq!(on_disk, listed, "add new fixtures to tests/common/mod.rs");
}
