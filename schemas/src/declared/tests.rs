//! Declarative sources: the worked example against its built-in twin,
//! and what a wrong declaration or a failing mapping gives.

use serde_json::{json, Value};

use super::*;
use crate::providers::aircall::Aircall;
use crate::providers::testkit::{ctx, FORM, JSON};
use crate::Event;

/// The worked example of `docs/declared-sources.md`, as a user writes it.
const EXAMPLE: &str = include_str!("../../../docs/examples/aircall-declared.toml");

fn declaration(toml_text: &str, source: &str) -> Declaration {
    let doc: toml::Value = toml::from_str(toml_text).expect("valid TOML");
    doc["sources"][source]["declared"]
        .clone()
        .try_into()
        .expect("a declaration")
}

fn example() -> DeclaredSource {
    DeclaredSource::compile(
        "aircall_declared",
        &declaration(EXAMPLE, "aircall_declared"),
    )
    .unwrap_or_else(|e| panic!("{}: {}", e.setting, e.problem))
}

fn deliver(provider: &dyn Provider, route: &str, body: &Value) -> Result<Sealed, NormalizeError> {
    let body = body.to_string();
    let req = RawRequest {
        method: "POST",
        route,
        query: "",
        content_type: JSON,
        body: body.as_bytes(),
    };
    provider.normalize(&req, &ctx())
}

/// The event as JSON, with what names its source (provider, identity and
/// what derives from it) taken out.
fn content(event: Event) -> Value {
    let identity = event.identity.clone();
    let mut json = serde_json::to_value(event).unwrap();
    let object = json.as_object_mut().unwrap();
    for derived in ["provider", "event_id", "fingerprint", "identity"] {
        object.remove(derived);
    }
    let (_, rest) = identity.split_once(':').unwrap();
    object.insert("identity_after_provider".into(), rest.into());
    json
}

use crate::providers::aircall::tests::{created, ended as built_in_ended};

/// The built-in's ended call, with a contact whose last name is blank.
fn ended(answered: bool) -> Value {
    let mut body = built_in_ended(answered);
    body["data"]["contact"] =
        json!({"id": 77, "first_name": "Ada", "last_name": " ", "company_name": "Acme"});
    body
}

/// Deliveries of every shape the built-in source tells apart, and some
/// it refuses.
fn deliveries() -> Vec<(&'static str, Value)> {
    let mut out = vec![
        ("created", created()),
        ("answered", ended(true)),
        ("missed", ended(false)),
    ];
    let mut vm = ended(false);
    vm["data"]["voicemail"] = "https://aircall-voicemails.example/123.mp3".into();
    out.push(("voicemail", vm));
    let mut commented = ended(true);
    commented["event"] = "call.commented".into();
    commented["data"]["comments"] =
        json!([{"id": 1, "content": "Call back Monday"}, {"content": " "}, 3, {"content": "VIP"}]);
    commented["data"]["tags"] = json!([{"id": 9, "name": "VIP", "color": "#ff0000"}, {"name": ""}, {"id": 2, "name": 42}, {"id": 3}]);
    out.push(("commented", commented));
    let mut early_tag = created();
    early_tag["event"] = "call.tagged".into();
    out.push(("tagged while ringing", early_tag));
    for step in [
        "call.answered",
        "call.hungup",
        "call.voicemail_left",
        "call.transferred",
    ] {
        let mut body = created();
        body["event"] = step.into();
        body["data"]["direction"] = "inbound".into();
        out.push((step, body));
    }
    let mut no_timestamp = created();
    no_timestamp.as_object_mut().unwrap().remove("timestamp");
    out.push(("no timestamp", no_timestamp));
    let mut string_id = ended(true);
    string_id["data"]["id"] = " 123 ".into();
    string_id["data"]["duration"] = "64".into();
    out.push(("text numbers", string_id));
    let mut user = created();
    user["resource"] = "user".into();
    user["event"] = "user.created".into();
    out.push(("a user event", user));
    let mut no_id = created();
    no_id["data"]["id"] = Value::Null;
    out.push(("no id", no_id));
    let mut no_event = created();
    no_event.as_object_mut().unwrap().remove("event");
    out.push(("no event", no_event));
    let mut ms = created();
    ms["data"]["started_at"] = 1732622895000u64.into();
    out.push(("milliseconds", ms));
    let mut not_object = created();
    not_object["data"] = "x".into();
    out.push(("data not an object", not_object));
    // And every Aircall fixture of the integration tests.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/aircall");
    for entry in std::fs::read_dir(dir).expect("the Aircall fixtures") {
        let path = entry.unwrap().path();
        let name: &'static str = Box::leak(path.display().to_string().into_boxed_str());
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((name, serde_json::from_str(&text).expect("a JSON fixture")));
    }
    out
}

#[test]
fn the_worked_example_gives_the_built_in_sources_events() {
    let declared = example();
    let mut compared = 0;
    for (name, body) in deliveries() {
        let built_in = deliver(&Aircall, "webhook", &body);
        let mapped = deliver(&declared, "webhook", &body);
        match (built_in, mapped) {
            (Ok(a), Ok(b)) => {
                assert_eq!(b.provider.as_str(), "aircall_declared");
                assert!(b.identity.starts_with("aircall_declared:"), "{name}");
                assert_eq!(content(a.into_event()), content(b.into_event()), "{name}");
                compared += 1;
            }
            (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{name}: {a} / {b}"),
            (a, b) => panic!("{name}: built-in {a:?}, declared {b:?}"),
        }
    }
    assert!(compared >= 10, "only {compared} deliveries normalized");
}

#[test]
fn a_declared_source_is_its_own_provider_and_serves_its_routes() {
    let declared = example();
    assert_eq!(declared.id(), ProviderId::Declared("aircall_declared"));
    let route = &declared.routes()[0];
    assert_eq!(
        (route.name, route.default_path),
        ("webhook", "/v1/aircall-declared/webhook")
    );
    assert_eq!(route.methods, &[Method::Post]);
    // Its events read back as its provider.
    let sealed = deliver(&declared, "webhook", &ended(true)).unwrap();
    let back: Event = serde_json::from_slice(sealed.json()).unwrap();
    assert_eq!(back.provider, declared.id());
}

/// A source `acme` whose fields are `fields` (TOML lines), with `extra`
/// declaration lines.
fn source(fields: &str, extra: &str) -> Result<DeclaredSource, DeclarationError> {
    let text = format!(
        "[sources.acme.declared]\nroutes.calls = {{ path = \"/v1/acme\" }}\n{extra}\n[sources.acme.declared.fields]\n{fields}\n"
    );
    DeclaredSource::compile("acme", &declaration(&text, "acme"))
}

const ID_KIND: &str = "id = \"/id\"\nkind = { value = \"call\" }";

#[test]
fn a_wrong_declaration_says_which_setting_and_where() {
    let e = source(
        "id = \"/id\"\nkind = { jq = \'\'\'\nif .k then\n  (.k | nosuch) else \"call\" end\'\'\' }",
        "",
    )
    .err()
    .unwrap();
    assert_eq!(e.setting, "declared.fields.kind");
    assert!(
        e.problem
            .starts_with("jq line 2, column 9: undefined filter `nosuch/0`"),
        "{}",
        e.problem
    );
    let e = source("id = { jq = \"{id: .id\" }\nkind = \"/k\"", "")
        .err()
        .unwrap();
    assert!(e.problem.contains("expected"), "{}", e.problem);
    let e = source(ID_KIND, "vars = [{ name = \"v\", jq = \"$w\" }]")
        .err()
        .unwrap();
    assert_eq!(e.setting, "declared.vars[0] (v)");
    assert!(
        e.problem.contains("undefined variable `$w`"),
        "{}",
        e.problem
    );
    for name in ["route", "9x", "a-b"] {
        let vars = format!("vars = [{{ name = \"{name}\", jq = \".\" }}]");
        assert_eq!(
            source(ID_KIND, &vars).err().unwrap().setting,
            "declared.vars[0]"
        );
    }
    let e = source("kind = \"/k\"", "").err().unwrap();
    assert_eq!(e.setting, "declared.fields.id");
    let e = source(&format!("{ID_KIND}\nstauts = \"/s\""), "")
        .err()
        .unwrap();
    assert_eq!(e.setting, "declared.fields.stauts");
    let e = source(
        &format!("{ID_KIND}\ninternal = \"/a\"\n\"internal.id\" = \"/b\""),
        "",
    )
    .err();
    assert_eq!(e.unwrap().setting, "declared.fields.internal.id");
    let e = source(&format!("{ID_KIND}\nstatus = \"data.status\""), "")
        .err()
        .unwrap();
    assert!(e.problem.contains("not a JSON pointer"), "{}", e.problem);
    let e = source(ID_KIND, "time_format = \"unix\"").err().unwrap();
    assert_eq!(e.setting, "declared.time_format");
    let e = source(
        ID_KIND,
        "routes.get = { path = \"/v1/get\", methods = [\"GET\"] }",
    )
    .err();
    assert_eq!(e.unwrap().setting, "declared.routes.get.methods");
    let e = source(ID_KIND, "routes.bad = { path = \"v1/bad\" }").err();
    assert_eq!(e.unwrap().setting, "declared.routes.bad.path");
    let decl = declaration(
        &format!("[sources.x.declared]\nroutes.r = {{ path = \"/r\" }}\n[sources.x.declared.fields]\n{ID_KIND}\n"),
        "x",
    );
    for name in ["aircall", "Acme", "9acme", "a-b", ""] {
        assert!(DeclaredSource::compile(name, &decl).is_err(), "{name:?}");
    }
}

fn map_one(
    fields: &str,
    extra: &str,
    body: &str,
    content_type: Option<&str>,
) -> Result<Event, NormalizeError> {
    let source = source(fields, extra).unwrap_or_else(|e| panic!("{}: {}", e.setting, e.problem));
    let req = RawRequest {
        method: "POST",
        route: "calls",
        query: "tenant=t1",
        content_type,
        body: body.as_bytes(),
    };
    source.normalize(&req, &ctx()).map(Sealed::into_event)
}

#[test]
fn a_delivery_the_mapping_cannot_handle_is_refused_with_a_reason() {
    let code = |fields: &str, body: &str| map_one(fields, "", body, JSON).unwrap_err().code();
    let with = |extra: &str| format!("{ID_KIND}\n{extra}");
    assert_eq!(
        code(&with("notes = { jq = \".a.b.c\" }"), r#"{"id": 1, "a": 1}"#),
        "mapping_failed"
    );
    assert_eq!(
        code(
            &with("notes = { jq = \".a[]\" }"),
            r#"{"id": 1, "a": [1, 2]}"#
        ),
        "mapping_failed"
    );
    assert_eq!(
        code(&with("status = \"/s\""), r#"{"id": 1, "s": "phoned"}"#),
        "invalid_field"
    );
    assert_eq!(
        code(&with("internal = \"/s\""), r#"{"id": 1, "s": "x"}"#),
        "invalid_field"
    );
    assert_eq!(code(ID_KIND, r#"{"id": "  "}"#), "missing_field");
    assert_eq!(code(ID_KIND, r#"{}"#), "missing_field");
    assert_eq!(
        code(
            "id = { jq = 'missing_field(\"call_id\")' }\nkind = \"/k\"",
            "{}"
        ),
        "missing_field"
    );
    assert_eq!(
        code("id = { jq = 'refuse(\"nope\"; 1)' }\nkind = \"/k\"", "{}"),
        "mapping_failed"
    );
    assert_eq!(code(ID_KIND, "not json"), "malformed");
    let vars = "vars = [{ name = \"t\", jq = \'if .type == \"ping\" then unknown_event_type(.type) else .type end\' }]";
    let e = map_one(ID_KIND, vars, r#"{"id": 1, "type": "ping"}"#, JSON).unwrap_err();
    assert_eq!(e, NormalizeError::UnknownEventType("ping".into()));
    let e = map_one(
        &with("notes = { jq = \".a.b\" }"),
        "",
        r#"{"id": 1, "a": 1}"#,
        JSON,
    )
    .unwrap_err();
    assert!(e.to_string().contains("field `notes`"), "{e}");
    let vars = "vars = [{ name = \"deep\", jq = \".a.b\" }]";
    let e = map_one(ID_KIND, vars, r#"{"id": 1, "a": 1}"#, JSON).unwrap_err();
    assert!(e.to_string().contains("variable `deep`"), "{e}");
}

#[test]
fn formats_times_variables_and_request_values() {
    let fields = r#"id = "/call"
kind = { value = "call" }
status = { pointer = "/s", map = { missed = "missed", ok = "answered" } }
tenant = { jq = "$query.tenant" }
started_at = "/at"
provider_event_type = { jq = '"\($method) \($route) \($n)"' }"#;
    let extra = "formats = [\"form\"]\ntime_format = \"%d/%m/%Y %H:%M:%S\"\nvars = [{ name = \"n\", jq = \".call | tonumber\" }, { name = \"m\", jq = \"$n * 2\" }]";
    let e = map_one(
        fields,
        extra,
        "call=7&s=missed&at=26%2F11%2F2024+12%3A08%3A15",
        FORM,
    )
    .unwrap();
    assert_eq!(e.identity, "acme:t1:call:7");
    assert_eq!(e.status, crate::Status::Missed);
    assert_eq!(
        e.started_at.unwrap().to_rfc3339(),
        "2024-11-26T12:08:15+00:00"
    );
    assert_eq!(e.provider_event_type.as_deref(), Some("POST calls 7"));
    // JSON only by default: a form delivery is refused, and says why.
    let e = map_one(ID_KIND, "", "id=7", FORM).unwrap_err();
    assert_eq!(e.code(), "malformed");
    assert!(e.to_string().contains("accepts json"), "{e}");
    let e = map_one(
        &format!("{ID_KIND}\nstarted_at = \"/at\""),
        "time_format = \"unix_seconds\"",
        r#"{"id": 1, "at": "soon"}"#,
        JSON,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            NormalizeError::InvalidField {
                field: "started_at",
                ..
            }
        ),
        "{e}"
    );
}

/// `docs/declared-sources.md` shows the worked example as it is, and its
/// first declaration compiles and maps a delivery as the page says.
#[test]
fn the_documentation_holds_its_examples() {
    let page = include_str!("../../../docs/declared-sources.md");
    assert!(
        page.contains(EXAMPLE),
        "the page quotes examples/aircall-declared.toml verbatim"
    );
    let first = page
        .split("```toml\n")
        .nth(1)
        .and_then(|block| block.split("\n```").next())
        .expect("a TOML block");
    let source = DeclaredSource::compile("acme_pbx", &declaration(first, "acme_pbx"))
        .unwrap_or_else(|e| panic!("{}: {}", e.setting, e.problem));
    let body = r#"{"call_id": "c-9", "disposition": "NOANSWER", "start": 1732622895, "billsec": "0",
        "agent": "a-1", "did": "+441610000000", "caller": "+447000000000"}"#;
    let e = deliver(&source, "calls", &serde_json::from_str(body).unwrap())
        .unwrap()
        .into_event();
    assert_eq!(e.identity, "acme_pbx:default-tenant:call:c-9");
    assert_eq!(e.status, crate::Status::Missed);
    assert_eq!(
        e.started_at.unwrap().to_rfc3339(),
        "2024-11-26T12:08:15+00:00"
    );
    assert_eq!(e.external.number.as_deref(), Some("+447000000000"));
}

/// A body nested deeper than any webhook, as an attacker sends it: jaq's
/// JSON reader recurses once per level without a limit, so 100,000 levels
/// overflowed the gateway's stack and killed the process. It is refused
/// as malformed, as a built-in provider refuses it (serde_json stops at
/// 128 levels).
#[test]
fn a_body_nested_too_deep_is_refused_not_a_crash() {
    let source = example();
    for body in [
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        format!(r#"{{"a":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000)),
        // Unclosed, and brackets inside strings do not count.
        format!(
            r#"{{"s":"{}","a":{}"#,
            "[".repeat(1_000),
            "{\"b\":".repeat(50_000)
        ),
    ] {
        let req = RawRequest {
            method: "POST",
            route: "webhook",
            query: "",
            content_type: JSON,
            body: body.as_bytes(),
        };
        let refused = source.normalize(&req, &ctx()).unwrap_err();
        assert_eq!(refused.code(), "malformed", "{refused}");
    }
    // A body as deep as a real one still maps (the strings' brackets are
    // text, not depth).
    let mut body = built_in_ended(true);
    body["data"]["tags"] = json!([{"name": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]);
    assert!(deliver(&source, "webhook", &body).is_ok());
}
