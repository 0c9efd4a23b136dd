//! `gateway/openapi.yaml` cannot drift from the gateway. Its (path, method)
//! pairs are exactly the routes of `providers::all()` (default paths) plus
//! `/metrics`, `/healthz` and `/readyz`; and against the real gateway:
//! every documented operation is served, every other method on those paths
//! answers 405, the answers match the documented schemas, and each
//! documented way of sending the key is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use callstream_schemas::providers;
use callstream_testkit::{spawn_gateway, TestGateway};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const KEY: &str = "k-openapi-7c1e";

/// The endpoints every gateway serves besides the provider routes.
const FIXED: [(&str, &str); 6] = [
    ("/metrics", "GET"),
    ("/metrics", "HEAD"),
    ("/healthz", "GET"),
    ("/healthz", "HEAD"),
    ("/readyz", "GET"),
    ("/readyz", "HEAD"),
];

/// Methods probed on every documented path.
const PROBED: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

fn document() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway/openapi.yaml");
    let text = std::fs::read_to_string(&path).expect("gateway/openapi.yaml exists");
    serde_norway::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// path → upper-case methods, as documented.
fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let operations = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("a path item")
                .keys()
                .filter(|k| operations.contains(&k.as_str()))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// path → methods, as the code serves them with default settings.
fn served() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for provider in providers::all() {
        for route in provider.routes() {
            out.entry(route.default_path.to_string())
                .or_default()
                .extend(route.methods.iter().map(|m| m.as_str().to_string()));
        }
    }
    for (path, method) in FIXED {
        out.entry(path.to_string())
            .or_default()
            .insert(method.to_string());
    }
    out
}

fn is_webhook(path: &str) -> bool {
    !FIXED.iter().any(|(p, _)| *p == path)
}

/// A validator for `#/components/schemas/<name>`.
fn schema(doc: &Value, name: &str) -> jsonschema::Validator {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema {name} compiles: {e}"))
}

async fn body_matches(doc: &Value, name: &str, response: reqwest::Response, what: &str) {
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
    let errors: Vec<String> = schema(doc, name)
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {body} does not match {name}: {errors:?}"
    );
}

/// A request that any provider route accepts: an empty JSON object for a
/// body (dead-lettered, still 200), nothing for a GET.
fn harmless(gw: &TestGateway, method: &str, path: &str) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let url = if is_webhook(path) {
        gw.url(path)
    } else {
        gw.admin_url(path)
    };
    let request = gw.client.request(method.clone(), url);
    if method == Method::POST || method == Method::PUT || method == Method::PATCH {
        request
            .header("content-type", "application/json")
            .body("{}")
    } else {
        request
    }
}

#[test]
fn documented_operations_are_exactly_the_routes_the_code_serves() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document"
    );
    assert_eq!(
        documented(&doc),
        served(),
        "gateway/openapi.yaml paths and methods must be the provider routes plus {FIXED:?}"
    );

    // Every webhook operation documents the answers the gateway can give.
    for (path, methods) in documented(&doc) {
        for method in methods {
            let op = &doc["paths"][&path][method.to_ascii_lowercase()];
            let codes: BTreeSet<&str> = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: responses"))
                .keys()
                .map(String::as_str)
                .collect();
            let expected: &[&str] = if is_webhook(&path) {
                &["200", "400", "401", "404", "405", "408", "413", "503"]
            } else {
                &["200"]
            };
            for code in expected {
                assert!(codes.contains(code), "{method} {path}: no {code} answer");
            }
            let open = op["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(
                open,
                !is_webhook(&path),
                "{method} {path}: only the webhooks need a key"
            );
        }
    }
}

#[tokio::test]
async fn the_running_gateway_serves_the_documented_operations_and_refuses_other_methods() {
    let doc = document();
    let gw = spawn_gateway(|f| f).await;
    for (path, methods) in documented(&doc) {
        for method in &methods {
            let what = format!("{method} {path}");
            let response = harmless(&gw, method, &path)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let status = response.status();
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{what} is documented but answered {status}"
            );
            match (path.as_str(), method.as_str()) {
                (_, "HEAD") => {
                    assert_eq!(status, StatusCode::OK, "{what}");
                    assert!(response.bytes().await.expect("no body").is_empty());
                }
                ("/metrics", _) => {
                    assert_eq!(status, StatusCode::OK, "{what}");
                    let text = response.text().await.expect("metrics text");
                    assert!(text.contains("callstream_gateway_"), "{what}");
                }
                ("/healthz", _) => body_matches(&doc, "Alive", response, &what).await,
                ("/readyz", _) => {
                    assert_eq!(status, StatusCode::OK, "{what}");
                    body_matches(&doc, "Ready", response, &what).await
                }
                _ => {
                    assert_eq!(status, StatusCode::OK, "{what}");
                    body_matches(&doc, "Accepted", response, &what).await
                }
            }
        }
        for method in PROBED.iter().filter(|m| !methods.contains(**m)) {
            let what = format!("{method} {path} (not documented)");
            let response = harmless(&gw, method, &path)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{what} must answer 405"
            );
            let allow: BTreeSet<String> = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{what}: no Allow header"))
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            assert_eq!(&allow, &methods, "{what}: Allow");
            if *method != "HEAD" {
                body_matches(&doc, "Error", response, &what).await;
            }
        }
    }
    let response = gw.client.get(gw.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    body_matches(&doc, "Error", response, "GET /v1/nowhere").await;
    gw.stop().await;
}

#[tokio::test]
async fn each_documented_way_of_sending_the_key_is_accepted() {
    let doc = document();
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.api_keys", [KEY]))
            .merge(("sources.xarios.api_keys", [KEY]))
            .merge(("sources.telecmi.api_keys", [KEY]))
            .merge(("sources.twilio.api_keys", [KEY]))
            .merge(("sources.aircall.api_keys", [KEY]))
            .merge(("sources.telnyx.api_keys", [KEY]))
            .merge(("max_body_bytes", 4096))
    })
    .await;
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    // Each scheme alone is enough: the top-level requirement lists them one by one.
    let alternatives: BTreeSet<&str> = doc["security"]
        .as_array()
        .expect("top-level security")
        .iter()
        .map(|req| {
            let req = req.as_object().expect("a requirement");
            assert_eq!(req.len(), 1, "one scheme per alternative");
            req.keys().next().expect("one").as_str()
        })
        .collect();
    assert_eq!(
        alternatives,
        schemes.keys().map(String::as_str).collect::<BTreeSet<_>>()
    );

    for (path, methods) in documented(&doc) {
        if !is_webhook(&path) {
            continue;
        }
        let method = methods.iter().next().expect("a method");
        for (name, scheme) in schemes {
            let what = format!("{method} {path} with {name}");
            let request = harmless(&gw, method, &path);
            let request = match (scheme["type"].as_str(), scheme["in"].as_str()) {
                (Some("apiKey"), Some("header")) => {
                    let header = scheme["name"].as_str().expect("header name");
                    // Onoff's `Authorization: x-api-key <key>`.
                    let value = if header.eq_ignore_ascii_case("authorization") {
                        format!("x-api-key {KEY}")
                    } else {
                        KEY.to_string()
                    };
                    request.header(header, value)
                }
                (Some("apiKey"), Some("query")) => {
                    request.query(&[(scheme["name"].as_str().expect("parameter"), KEY)])
                }
                (Some("http"), _) if scheme["scheme"] == "bearer" => request.bearer_auth(KEY),
                other => panic!("{name}: scheme {other:?} not covered by this test"),
            };
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            body_matches(&doc, "Accepted", response, &what).await;
        }

        let what = format!("{method} {path} without a key");
        let response = harmless(&gw, method, &path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{what}"
        );
        body_matches(&doc, "Error", response, &what).await;

        let what = format!("{method} {path} with a wrong key");
        let response = harmless(&gw, method, &path)
            .header("x-api-key", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        body_matches(&doc, "Error", response, &what).await;
    }

    let what = "POST /v1/onoff/cdr over max_body_bytes";
    let response = gw
        .client
        .post(gw.url("/v1/onoff/cdr"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"pad\":\"{}\"}}", "x".repeat(8192)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{what}");
    body_matches(&doc, "Error", response, what).await;
    gw.stop().await;
}
