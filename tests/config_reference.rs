//! The configuration reference (`docs/configuration.md` for the gateway,
//! `docs/consumers.md` for the consumers) names every setting: each leaf of
//! the gateway's and the consumers' defaults appears in it, spelled as in
//! TOML (`sources.<provider>.…` for the per-provider ones), so a new
//! setting cannot ship undocumented. (CRM targets and recording URL
//! templates have no defaults, so their keys are not seen here.)

use figment::Figment;
use serde_json::Value;

fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, value, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Every setting the defaults hold, as dotted paths.
fn settings_of(defaults: Figment) -> Vec<String> {
    let value: Value = defaults.extract().expect("the defaults extract");
    let mut out = Vec::new();
    leaves("", &value, &mut out);
    out
}

/// `sources.onoff` is documented as `sources.<provider>.…`.
fn as_documented(setting: &str) -> String {
    match setting.strip_prefix("sources.") {
        Some(rest) => {
            let rest = rest.split_once('.').map_or("", |(_, tail)| tail);
            format!(
                "sources.<provider>{}",
                if rest.is_empty() { "" } else { "." }
            ) + rest
        }
        None => setting.to_string(),
    }
}

fn undocumented(readme: &str, settings: Vec<String>) -> Vec<String> {
    settings
        .into_iter()
        .map(|s| as_documented(&s))
        .filter(|s| !readme.contains(&format!("`{s}`")) && !readme.contains(&format!("`{s}.")))
        .collect()
}

#[test]
fn every_setting_is_in_the_configuration_reference() {
    let page = |name: &str| {
        std::fs::read_to_string(format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("docs/{name}: {e}"))
    };
    let missing: Vec<String> = undocumented(
        &page("configuration.md"),
        settings_of(callstream_gateway::config::Settings::defaults()),
    )
    .into_iter()
    .map(|s| format!("{s} (docs/configuration.md)"))
    .chain(
        undocumented(
            &page("consumers.md"),
            settings_of(callstream_consumers::config::Settings::defaults()),
        )
        .into_iter()
        .map(|s| format!("{s} (docs/consumers.md)")),
    )
    .collect();
    assert!(missing.is_empty(), "settings not documented: {missing:?}");
}

#[test]
fn the_check_catches_an_undocumented_setting() {
    let settings = vec!["spool.dir".to_string(), "sources.onoff".to_string()];
    assert!(undocumented(
        "`spool.dir` and `sources.<provider>.tenant`",
        settings.clone()
    )
    .is_empty());
    assert_eq!(
        undocumented("`sources.<provider>.tenant`", settings),
        ["spool.dir"]
    );
}
