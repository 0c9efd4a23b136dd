//! The fields of a declarative source: for each field of the event, where
//! its value comes from. Most come straight from the delivery by a JSON
//! pointer, with no interpreter involved; a `jq` expression is there for
//! what a pointer cannot say.

use std::collections::BTreeMap;

use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

use super::mapped::{text, to_json};
use super::program::{Program, RunError};

/// One field, as configured: a pointer (`"/data/id"`), a list of pointers
/// (the first present wins), or a table.
#[derive(Debug, Clone)]
pub enum FieldSpec {
    Pointer(String),
    FirstOf(Vec<String>),
    Table(FieldTable),
}

/// By hand rather than `untagged`, whose only error is "data did not match
/// any variant": a table's misspelt key is named, and anything else says
/// what a field may be.
impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let what = "a field is a JSON pointer (\"/data/id\"), a list of them, or a table with one of `pointer`, `value`, `template`, `jq`";
        match Value::deserialize(deserializer)? {
            Value::String(pointer) => Ok(FieldSpec::Pointer(pointer)),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(pointer) => Ok(pointer),
                    other => Err(D::Error::custom(format!("`{other}` in a list: {what}"))),
                })
                .collect::<Result<_, _>>()
                .map(FieldSpec::FirstOf),
            table @ Value::Object(_) => serde_json::from_value(table)
                .map(FieldSpec::Table)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("`{other}`: {what}"))),
        }
    }
}

/// A field as a table: exactly one of `pointer`, `value`, `template`, `jq`,
/// then optionally `map` and `default`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldTable {
    /// A JSON pointer, or a list of them (the first present wins).
    pointer: Option<OneOrMany>,
    /// A constant.
    value: Option<Value>,
    /// Text with `{/pointer}` placeholders (`"{/data/id}:{/event}"`); an
    /// absent value is empty text.
    template: Option<String>,
    /// A jq expression on the delivery.
    jq: Option<String>,
    /// The value's text looked up here; what is not here takes `default`.
    map: Option<BTreeMap<String, Value>>,
    /// The value when there is none (or, with `map`, none mapped).
    default: Option<Value>,
    /// For a list: this pointer into each item (items without it are left
    /// out), before `join`.
    each: Option<String>,
    /// For a list: its items' text joined with this separator (empty:
    /// absent). `notes = { pointer = "/comments", each = "/text", join = "\n" }`.
    join: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Every field a source may set: the mapped event's, and the parts of its
/// parties and correlation by dotted name.
pub const NAMES: &[&str] = &[
    "id",
    "kind",
    "status",
    "direction",
    "tenant",
    "provider_status",
    "provider_event_type",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_seconds",
    "ring_seconds",
    "talk_seconds",
    "hold_seconds",
    "internal",
    "internal.id",
    "internal.name",
    "internal.email",
    "internal.number",
    "internal.company",
    "external",
    "external.id",
    "external.name",
    "external.email",
    "external.number",
    "external.company",
    "sms_body",
    "notes",
    "tags",
    "recording",
    "voicemail",
    "correlation",
    "correlation.call_id",
    "correlation.conversation_id",
    "correlation.leg_id",
    "correlation.leg",
    "custom",
];

/// A JSON pointer, compiled: its keys as values, ready to look up.
#[derive(Debug, Clone)]
pub(super) struct Pointer(Vec<(String, Val, Option<usize>)>);

impl Pointer {
    /// RFC 6901: `""` is the whole delivery, `/a/b` its `a`'s `b`; `~1`
    /// stands for `/` and `~0` for `~` in a key.
    pub(super) fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer(Vec::new()));
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON pointer (they start with `/`: `/data/id`)"
            ));
        };
        Ok(Pointer(
            rest.split('/')
                .map(|token| {
                    let key = token.replace("~1", "/").replace("~0", "~");
                    let index = key.parse::<usize>().ok();
                    (key.clone(), Val::from(key), index)
                })
                .collect(),
        ))
    }

    /// The value it points at; `None` through anything absent.
    pub(super) fn get<'v>(&self, document: &'v Val) -> Option<&'v Val> {
        let mut at = document;
        for (_, key, index) in &self.0 {
            at = match at {
                Val::Obj(object) => object.get(key)?,
                Val::Arr(items) => items.get((*index)?)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

/// Whether a value counts as there: not `null`, not blank text.
fn present(value: &Val) -> bool {
    match value {
        Val::Null => false,
        Val::TStr(s) | Val::BStr(s) => !s.trim_ascii().is_empty(),
        _ => true,
    }
}

#[derive(Debug)]
enum Part {
    Text(String),
    At(Pointer),
}

#[derive(Debug)]
enum Source {
    Pointers(Vec<Pointer>),
    Value(Val),
    Template(Vec<Part>),
    Jq(Program),
}

/// A field, compiled.
#[derive(Debug)]
pub(super) struct Field {
    /// The field's dotted name.
    pub(super) name: String,
    source: Source,
    map: Option<BTreeMap<String, Value>>,
    default: Option<Value>,
    each: Option<Pointer>,
    join: Option<String>,
}

/// A variable, compiled.
#[derive(Debug)]
pub(super) enum VarSource {
    Pointer {
        pointer: Pointer,
        name: String,
        required: bool,
    },
    Jq(Program),
}

impl VarSource {
    /// `vars` are the variables declared before it.
    pub(super) fn compile(var: &super::Var, vars: &[String]) -> Result<VarSource, String> {
        match (&var.jq, &var.pointer) {
            (Some(code), None) if !var.required => Ok(VarSource::Jq(
                Program::compile(code, vars).map_err(|e| format!("jq {e}"))?,
            )),
            (None, Some(pointer)) => Ok(VarSource::Pointer {
                pointer: Pointer::parse(pointer)?,
                name: pointer.trim_start_matches('/').replace('/', "."),
                required: var.required,
            }),
            (Some(_), None) => Err(
                "`required` goes with `pointer`; a jq expression refuses with `missing_field(...)`"
                    .into(),
            ),
            _ => Err("give exactly one of `jq`, `pointer`".into()),
        }
    }

    /// Its value for `document` (`null` when there is none).
    pub(super) fn value(&self, document: &Val, globals: &[Val]) -> Result<Val, RunError> {
        match self {
            VarSource::Pointer {
                pointer,
                name,
                required,
            } => match pointer.get(document).filter(|v| present(v)) {
                Some(value) => Ok(value.clone()),
                None if *required => Err(RunError::Refused {
                    reason: "missing_field".into(),
                    detail: name.clone(),
                }),
                None => Ok(Val::Null),
            },
            VarSource::Jq(program) => {
                Ok(program.run(document.clone(), globals)?.unwrap_or(Val::Null))
            }
        }
    }
}

fn template(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("`{text}`: a `{{` without its `}}`"))?;
        parts.push(Part::At(Pointer::parse(&rest[open + 1..open + close])?));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

impl Field {
    /// Compiles field `name`; `vars` are the source's variables, which its
    /// jq may read. The error is for a person, without the setting.
    pub(super) fn compile(name: &str, spec: &FieldSpec, vars: &[String]) -> Result<Field, String> {
        if !NAMES.contains(&name) {
            return Err(format!(
                "`{name}` is not a field of the event (fields: {})",
                NAMES.join(", ")
            ));
        }
        let pointers = |list: &[String]| {
            list.iter()
                .map(|p| Pointer::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let table = match spec {
            FieldSpec::Pointer(p) => FieldTable {
                pointer: Some(OneOrMany::One(p.clone())),
                ..FieldTable::default()
            },
            FieldSpec::FirstOf(list) => FieldTable {
                pointer: Some(OneOrMany::Many(list.clone())),
                ..FieldTable::default()
            },
            FieldSpec::Table(table) => table.clone(),
        };
        let given = [
            table.pointer.is_some(),
            table.value.is_some(),
            table.template.is_some(),
            table.jq.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give exactly one of `pointer`, `value`, `template`, `jq`".into());
        }
        let source = if let Some(pointer) = &table.pointer {
            Source::Pointers(match pointer {
                OneOrMany::One(p) => vec![Pointer::parse(p)?],
                OneOrMany::Many(list) => pointers(list)?,
            })
        } else if let Some(value) = &table.value {
            Source::Value(super::to_val(value))
        } else if let Some(text) = &table.template {
            Source::Template(template(text)?)
        } else {
            let code = table.jq.as_deref().unwrap_or_default();
            Source::Jq(Program::compile(code, vars).map_err(|e| format!("jq {e}"))?)
        };
        Ok(Field {
            name: name.to_string(),
            source,
            map: table.map,
            default: table.default,
            each: table.each.as_deref().map(Pointer::parse).transpose()?,
            join: table.join,
        })
    }

    /// The field's value for `document`, if it has one.
    pub(super) fn value(&self, document: &Val, globals: &[Val]) -> Result<Option<Value>, RunError> {
        let found = match &self.source {
            Source::Pointers(pointers) => pointers
                .iter()
                .find_map(|p| p.get(document).filter(|v| present(v)))
                .cloned(),
            Source::Value(value) => Some(value.clone()),
            Source::Template(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::At(p) => {
                            out.push_str(&p.get(document).and_then(text).unwrap_or_default())
                        }
                    }
                }
                // Trimmed, so that `{/first} {/last}` with one of them
                // absent gives the other alone.
                let out = out.trim();
                (!out.is_empty()).then(|| Val::from(out.to_string()))
            }
            Source::Jq(program) => program.run(document.clone(), globals)?,
        };
        let found = found.filter(|v| !matches!(v, Val::Null));
        let found = match (&self.each, found) {
            (Some(each), Some(Val::Arr(items))) => Some(
                items
                    .iter()
                    .filter_map(|item| {
                        each.get(item)
                            .filter(|v| matches!(v, Val::Arr(_) | Val::Obj(_)) || text(v).is_some())
                            .cloned()
                    })
                    .collect(),
            ),
            (_, found) => found,
        };
        let found = match (&self.join, found) {
            (Some(separator), Some(found)) => {
                let texts: Vec<String> = match &found {
                    Val::Arr(items) => items.iter().filter_map(text).collect(),
                    scalar => text(scalar).into_iter().collect(),
                };
                (!texts.is_empty()).then(|| Val::from(texts.join(separator)))
            }
            (_, found) => found,
        };
        Ok(match &self.map {
            Some(map) => found
                .as_ref()
                .and_then(text)
                .and_then(|key| map.get(&key).cloned())
                .or_else(|| self.default.clone()),
            None => found.as_ref().map(to_json).or_else(|| self.default.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = jaq_json::read::parse_single(br#"{"a": {"b/c": [10, {"~d": "x"}]}, "e": null}"#)
            .unwrap();
        let at = |p: &str| Pointer::parse(p).unwrap().get(&doc).map(|v| v.to_string());
        assert_eq!(at("/a/b~1c/0").as_deref(), Some("10"));
        assert_eq!(at("/a/b~1c/1/~0d").as_deref(), Some("\"x\""));
        assert_eq!(at("/a/b~1c/2"), None);
        assert_eq!(at("/a/b~1c/x"), None);
        assert_eq!(at("/e/f"), None);
        assert!(at("").is_some());
        assert!(Pointer::parse("a/b").is_err());
    }

    #[test]
    fn templates_and_maps() {
        let doc = jaq_json::read::parse_single(br#"{"id": 12, "ev": "call.ended", "dir": " IN "}"#)
            .unwrap();
        let field = |spec: &str| {
            let spec: FieldSpec = serde_json::from_str(spec).unwrap();
            Field::compile("provider_status", &spec, &[])
                .unwrap()
                .value(&doc, &[])
                .unwrap()
        };
        assert_eq!(
            field(r#"{"template": "{/id}:{/ev}:{/none}"}"#),
            Some("12:call.ended:".into())
        );
        assert_eq!(field(r#"["/none", "/id"]"#), Some(12.into()));
        assert_eq!(
            field(r#"{"pointer": "/dir", "map": {"IN": "inbound"}}"#),
            Some("inbound".into())
        );
        assert_eq!(
            field(r#"{"pointer": "/ev", "map": {"IN": "inbound"}, "default": "unknown"}"#),
            Some("unknown".into())
        );
        assert_eq!(
            field(r#"{"pointer": "/none", "default": 0}"#),
            Some(0.into())
        );
        assert_eq!(field(r#"{"value": "fixed"}"#), Some("fixed".into()));
        assert_eq!(
            field(r#"{"jq": ".ev | split(\".\") | last"}"#),
            Some("ended".into())
        );
        assert_eq!(field(r#"{"jq": "empty"}"#), None);
        let wrong = |name: &str, spec: &str| {
            let spec: FieldSpec = serde_json::from_str(spec).unwrap();
            Field::compile(name, &spec, &[]).unwrap_err()
        };
        let unreadable = |spec: &str| {
            serde_json::from_str::<FieldSpec>(spec)
                .unwrap_err()
                .to_string()
        };
        assert!(unreadable(r#"{"pointer": "/a", "shade": 1}"#).contains("unknown field `shade`"));
        assert!(unreadable("7").contains("a field is a JSON pointer"));
        assert!(unreadable(r#"["/a", 7]"#).contains("in a list"));
        assert!(wrong("stauts", r#""/s""#).contains("not a field"));
        assert!(wrong("status", r#"{"pointer": "/s", "jq": "."}"#).contains("exactly one"));
        assert!(wrong("status", r#"{"template": "{/s"}"#).contains("without"));
        assert!(wrong("status", r#"{"jq": ".a |"}"#).starts_with("jq line 1"));
    }
}
