//! The Grafana dashboard and the Prometheus alerts cannot drift from the
//! code: every metric they query is one the code registers, every label
//! and label value they filter or group on is one the code writes, and
//! every table or column the SQL panels read is in the migrations.
//! (PromQL syntax and the alerts' behaviour are checked by `promtool` in CI.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Labels Prometheus itself adds (scrape targets, histogram buckets).
const PROMETHEUS_LABELS: [&str; 3] = ["job", "instance", "le"];

/// What the Rust sources spell as string literals.
struct Code {
    /// Literals that are a whole metric name (`"callstream_gateway_..."`).
    names: BTreeSet<String>,
    /// Literals with placeholders (`"callstream_{consumer}_{name}"`).
    templates: Vec<String>,
    /// Every identifier-like literal (`"outcome"`, `"consumed_records_total"`).
    words: BTreeSet<String>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn code() -> Code {
    let mut files = Vec::new();
    for dir in ["gateway/src", "consumers/src", "kafka/src", "schemas/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut code = Code {
        names: BTreeSet::new(),
        templates: Vec::new(),
        words: BTreeSet::new(),
    };
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source file");
        // Between two quotes with nothing but identifier characters (and
        // `{}` placeholders) is a string literal such as "outcome"; code
        // between two literals always has spaces or punctuation.
        for piece in text.split('"') {
            let identifier_like = !piece.is_empty()
                && piece
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_{}".contains(c));
            if !identifier_like {
                continue;
            }
            if piece.contains('{') {
                if piece.starts_with("callstream_") {
                    code.templates.push(piece.to_string());
                }
            } else {
                if piece.starts_with("callstream_") {
                    code.names.insert(piece.to_string());
                }
                code.words.insert(piece.to_string());
            }
        }
    }
    assert!(
        code.names.contains("callstream_gateway_requests_total"),
        "the source scan finds the gateway's metrics"
    );
    code
}

/// Whether `name` is a template with each `{placeholder}` replaced by a
/// literal the code spells (`callstream_{consumer}_{name}` with `store`
/// and `lag_records`).
fn fills(template: &str, name: &str, words: &BTreeSet<String>) -> bool {
    match template.find('{') {
        None => template == name,
        Some(open) => {
            let close = template[open..].find('}').expect("closed placeholder") + open;
            let (before, after) = (&template[..open], &template[close + 1..]);
            let Some(rest) = name.strip_prefix(before) else {
                return false;
            };
            (1..=rest.len()).any(|n| words.contains(&rest[..n]) && fills(after, &rest[n..], words))
        }
    }
}

impl Code {
    fn has_metric(&self, name: &str) -> bool {
        let exported = |n: &str| {
            self.names.contains(n) || self.templates.iter().any(|t| fills(t, n, &self.words))
        };
        exported(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(exported))
    }

    fn has_label(&self, label: &str) -> bool {
        PROMETHEUS_LABELS.contains(&label) || self.words.contains(label)
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Metric names a PromQL expression uses.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("callstream_") {
        let preceded = rest[..at].chars().last().is_some_and(is_ident);
        let len = rest[at..]
            .find(|c: char| !is_ident(c))
            .unwrap_or(rest.len() - at);
        if !preceded {
            out.push(rest[at..at + len].to_string());
        }
        rest = &rest[at + len..];
    }
    out
}

/// (label, value) of every matcher in a PromQL expression, and the label
/// names of every `by (...)` / `on (...)` / `without (...)`.
fn labels_in(expr: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut matchers = Vec::new();
    let mut grouped = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            let end = expr[i..].find('}').expect("closed selector") + i;
            for matcher in expr[i + 1..end].split(',') {
                let matcher = matcher.trim();
                if matcher.is_empty() {
                    continue;
                }
                let op = matcher.find(['=', '!']).expect("a matcher has an operator");
                let label = matcher[..op].trim().to_string();
                let value = matcher[op..]
                    .trim_start_matches(['=', '!', '~'])
                    .trim()
                    .trim_matches('"')
                    .to_string();
                matchers.push((label, value));
            }
            i = end + 1;
            continue;
        }
        i += 1;
    }
    for keyword in ["by", "on", "without", "group_left", "group_right"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let preceded = rest[..at].chars().last().is_some_and(is_ident);
            let after = rest[at + keyword.len()..].trim_start();
            if !preceded && after.starts_with('(') {
                let close = after.find(')').expect("closed label list");
                grouped.extend(
                    after[1..close]
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
            rest = &rest[at + keyword.len()..];
        }
    }
    (matchers, grouped)
}

/// Checks one PromQL expression; returns what the code does not know.
fn check_promql(code: &Code, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for metric in metrics_in(expr) {
        if !code.has_metric(&metric) {
            problems.push(format!("unknown metric `{metric}`"));
        }
    }
    let (matchers, grouped) = labels_in(expr);
    for label in grouped {
        if !code.has_label(&label) {
            problems.push(format!("unknown label `{label}`"));
        }
    }
    for (label, value) in matchers {
        if !code.has_label(&label) {
            problems.push(format!("unknown label `{label}`"));
        }
        // Plain values (and alternatives) must be values the code writes;
        // variables and real regular expressions are not checked.
        if PROMETHEUS_LABELS.contains(&label.as_str()) || value.contains('$') {
            continue;
        }
        for alternative in value.split('|') {
            if alternative.chars().all(is_ident) && !code.words.contains(alternative) {
                problems.push(format!("`{label}` is never `{alternative}` in the code"));
            }
        }
    }
    problems
}

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/dashboards/callstream.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard exists");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn dashboard_queries_only_metrics_and_labels_the_code_exports() {
    let code = code();
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let mut queries = 0;
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert!(panel["gridPos"].is_object(), "{title}: no gridPos");
        let uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
        assert!(
            uid == "${prometheus}" || uid == "${postgres}",
            "{title}: data source `{uid}` is not one of the dashboard's variables"
        );
        for target in panel["targets"].as_array().expect("panels have targets") {
            if let Some(expr) = target["expr"].as_str() {
                queries += 1;
                problems.extend(
                    check_promql(&code, expr)
                        .into_iter()
                        .map(|p| format!("{title}: {p}")),
                );
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["definition"].as_str() {
            if let Some(args) = query.strip_prefix("label_values(") {
                let (metric, label) = args
                    .trim_end_matches(')')
                    .split_once(',')
                    .expect("label_values(metric, label)");
                if !code.has_metric(metric.trim()) || !code.has_label(label.trim()) {
                    problems.push(format!("variable {}: {query}", variable["name"]));
                }
            }
        }
    }
    assert!(queries >= 40, "only {queries} PromQL queries found");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Words of a SQL query that are not keywords, functions, Grafana
/// variables or quoted text: tables, views and columns.
fn sql_identifiers(sql: &str) -> BTreeSet<String> {
    const SQL: [&str; 20] = [
        "select",
        "distinct",
        "as",
        "from",
        "where",
        "and",
        "or",
        "in",
        "group",
        "by",
        "order",
        "limit",
        "desc",
        "asc",
        "sum",
        "nullif",
        "round",
        "numeric",
        "double",
        "precision",
    ];
    let mut unquoted = String::new();
    let mut quote = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None => unquoted.push(c),
        }
    }
    unquoted
        .split(|c: char| !is_ident(c) && c != '$')
        .map(str::to_ascii_lowercase)
        .filter(|w| {
            !w.is_empty()
                && !w.starts_with('$')
                && !w.chars().all(|c| c.is_ascii_digit())
                && !SQL.contains(&w.as_str())
        })
        .collect()
}

#[test]
fn dashboard_sql_reads_only_tables_and_columns_of_the_migrations() {
    let mut migrations = String::new();
    for entry in std::fs::read_dir(root().join("consumers/migrations")).expect("migrations") {
        let path = entry.expect("entry").path();
        migrations.push_str(
            &std::fs::read_to_string(path)
                .expect("migration")
                .to_lowercase(),
        );
        migrations.push('\n');
    }
    let words: BTreeSet<&str> = migrations
        .split(|c: char| !is_ident(c))
        .filter(|w| !w.is_empty())
        .collect();

    let dashboard = dashboard();
    let mut queries: Vec<(String, &str)> = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(sql) = target["rawSql"].as_str() {
                queries.push((panel["title"].as_str().unwrap_or("?").to_string(), sql));
            }
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["datasource"]["uid"] == "${postgres}" {
            let sql = variable["query"].as_str().expect("SQL variable query");
            queries.push((format!("variable {}", variable["name"]), sql));
        }
    }
    assert!(
        queries.len() >= 5,
        "only {} SQL queries found",
        queries.len()
    );
    let mut problems = Vec::new();
    for (title, sql) in &queries {
        let relation = sql
            .split_whitespace()
            .skip_while(|w| !w.eq_ignore_ascii_case("from"))
            .nth(1)
            .unwrap_or_else(|| panic!("{title}: no FROM"));
        let created = [
            format!("create table {relation} "),
            format!("create view {relation} "),
        ];
        if !created.iter().any(|c| migrations.contains(c.as_str())) {
            problems.push(format!("{title}: no table or view `{relation}`"));
        }
        for identifier in sql_identifiers(sql) {
            if !words.contains(identifier.as_str()) {
                problems.push(format!("{title}: `{identifier}` is not in the migrations"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn alert_rules_query_only_metrics_and_labels_the_code_exports() {
    let code = code();
    let path = root().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).expect("alerts.yml exists");
    let rules: Value = serde_norway::from_str(&text).expect("alerts.yml is YAML");
    let mut problems = Vec::new();
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            alerts += 1;
            for annotation in ["summary", "runbook"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|t| t.len() > 20),
                    "{name}: no {annotation}"
                );
            }
            let expr = rule["expr"].as_str().expect("expr");
            problems.extend(
                check_promql(&code, expr)
                    .into_iter()
                    .map(|p| format!("{name}: {p}")),
            );
        }
    }
    assert!(alerts >= 10, "only {alerts} alerts");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_checks_catch_what_the_code_does_not_export() {
    let code = code();
    assert!(code.has_metric("callstream_store_lag_records"));
    assert!(code.has_metric("callstream_gateway_request_duration_seconds_bucket"));
    assert!(!code.has_metric("callstream_store_lag_record"));
    assert!(!code.has_metric("callstream_nothing_lag_records"));
    let problems = check_promql(
        &code,
        r#"sum by (source, colour) (rate(callstream_gateway_requests_total{outcome=~"published|teleported"}[5m]))"#,
    );
    assert_eq!(
        problems,
        [
            "unknown label `colour`",
            "`outcome` is never `teleported` in the code"
        ]
    );
    let sql = sql_identifiers(
        r#"SELECT bucket_start AS "time", sum(x::double precision) FROM kpi_report WHERE $__timeFilter(bucket_start) AND tenant IN ($t) AND direction = 'inbound' LIMIT 5"#,
    );
    assert_eq!(
        sql.into_iter().collect::<Vec<_>>(),
        ["bucket_start", "direction", "kpi_report", "tenant", "x"]
    );
}
