//! Declarative sources: a platform added by configuration, without a
//! release. A source `sources.<name>` with a `declared` table is one; its
//! routes, the body formats it accepts, how its times are written, and
//! where each field of the event comes from ([`fields`]): a JSON pointer
//! into the delivery, a constant, a template, a value map, or a jq
//! expression ([`program`]) with variables computed once per delivery
//! (`docs/declared-sources.md` says why these).
//!
//! A declared source is a [`Provider`] like the built-in ones: the gateway
//! serves it, verifies its signature, publishes its raw deliveries and
//! dead-letters what its mapping refuses; replay applies a fixed mapping
//! to the raw topic again.

pub mod fields;
mod mapped;
pub mod program;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use fields::{Field, FieldSpec};
use mapped::Mapped;
pub use mapped::TimeFormat;
use program::RunError;

use crate::event::{ProviderId, Sealed};
use crate::lenient;
pub use crate::lenient::BodyFormat;
use crate::provider::{Context, Method, NormalizeError, Provider, RawRequest, Route};

/// The `declared` table of a source, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    /// By route name: its default path and methods (default `["POST"]`).
    /// `sources.<name>.paths.<route>` moves a route, as for a built-in.
    pub routes: BTreeMap<String, DeclaredRoute>,
    /// Body formats accepted: `json`, `form` (url-encoded), `query` (GET,
    /// or an empty body, with the fields in the query string). Default:
    /// `["json"]`.
    #[serde(default = "json_only")]
    pub formats: Vec<BodyFormat>,
    /// How the fields' times are written ([`TimeFormat`]): `iso8601`
    /// (default), `unix_seconds`, `unix_millis`, `rfc2822`, or a strftime
    /// pattern.
    #[serde(default)]
    pub time_format: Option<String>,
    /// jq expressions computed once per delivery, in order, before the
    /// fields: each is `$<name>` in those after it and in the `jq` fields.
    /// One may refuse the delivery (`unknown_event_type(...)`).
    #[serde(default)]
    pub vars: Vec<Var>,
    /// By field name (`id`, `kind`, `status`, `internal.number`, ...):
    /// where its value comes from. `id` and `kind` are required.
    pub fields: BTreeMap<String, FieldSpec>,
}

/// One of `vars`: a jq expression, or a JSON pointer into the delivery
/// (no interpreter: the cheap way to name a value used several times).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Var {
    pub name: String,
    #[serde(default)]
    pub jq: Option<String>,
    #[serde(default)]
    pub pointer: Option<String>,
    /// With `pointer`: a delivery without the value (absent, `null`,
    /// blank) is refused as `missing_field`.
    #[serde(default)]
    pub required: bool,
}

fn json_only() -> Vec<BodyFormat> {
    vec![BodyFormat::Json]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredRoute {
    pub path: String,
    #[serde(default = "post_only")]
    pub methods: Vec<Method>,
}

fn post_only() -> Vec<Method> {
    vec![Method::Post]
}

/// Why a declaration cannot be served: the setting, below
/// `sources.<name>.`, and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationError {
    pub setting: String,
    pub problem: String,
}

fn refused(setting: impl Into<String>, problem: impl Into<String>) -> DeclarationError {
    DeclarationError {
        setting: setting.into(),
        problem: problem.into(),
    }
}

/// A declared source, compiled: a [`Provider`].
pub struct DeclaredSource {
    id: ProviderId,
    routes: &'static [Route],
    formats: Vec<BodyFormat>,
    times: TimeFormat,
    /// With their names, for a failure's message.
    vars: Vec<(String, fields::VarSource)>,
    fields: Vec<Field>,
}

impl DeclaredSource {
    /// Checks and compiles the declaration of source `name`. Routes are
    /// built once per start (they live as long as the process, as a
    /// built-in provider's do).
    pub fn compile(
        name: &str,
        declaration: &Declaration,
    ) -> Result<DeclaredSource, DeclarationError> {
        if !ProviderId::is_valid_declared_name(name) {
            return Err(refused(
                "declared",
                format!("`{name}` cannot name a declarative source: use a lowercase letter, then lowercase letters, digits or `_` (at most 63), and not a built-in provider's name"),
            ));
        }
        let id = ProviderId::from_name(name).expect("a valid declared name");
        if declaration.routes.is_empty() {
            return Err(refused("declared.routes", "needs at least one route"));
        }
        if declaration.formats.is_empty() {
            return Err(refused(
                "declared.formats",
                "needs at least one of json, form, query",
            ));
        }
        let mut routes = Vec::new();
        for (route, declared) in &declaration.routes {
            let setting = format!("declared.routes.{route}");
            if route.is_empty()
                || !route
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(refused(&setting, "a route name is letters, digits and `_`"));
            }
            if !declared.path.starts_with('/') {
                return Err(refused(format!("{setting}.path"), "must start with `/`"));
            }
            if declared.methods.is_empty() {
                return Err(refused(
                    format!("{setting}.methods"),
                    "needs at least one of GET, POST, PUT",
                ));
            }
            if declared.methods.contains(&Method::Get)
                && !declaration.formats.contains(&BodyFormat::Query)
            {
                return Err(refused(
                    format!("{setting}.methods"),
                    "GET carries its fields in the query string: add `query` to declared.formats",
                ));
            }
            let mut methods = declared.methods.clone();
            methods.dedup();
            routes.push(Route {
                name: Box::leak(route.clone().into_boxed_str()),
                default_path: Box::leak(declared.path.clone().into_boxed_str()),
                methods: Box::leak(methods.into_boxed_slice()),
            });
        }
        let times = match &declaration.time_format {
            None => TimeFormat::default(),
            Some(text) => {
                TimeFormat::parse(text).map_err(|e| refused("declared.time_format", e))?
            }
        };
        let mut names: Vec<String> = Vec::new();
        let mut vars = Vec::new();
        for (i, var) in declaration.vars.iter().enumerate() {
            let setting = format!("declared.vars[{i}]");
            let valid = var
                .name
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && var
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            let name = format!("${}", var.name);
            if !valid || program::GLOBALS.contains(&name.as_str()) || names.contains(&name) {
                return Err(refused(
                    setting,
                    format!("`{}` cannot name a variable: letters, digits and `_`, not `route`, `method` or `query`, and each once", var.name),
                ));
            }
            let compiled = fields::VarSource::compile(var, &names)
                .map_err(|e| refused(format!("declared.vars[{i}] ({})", var.name), e))?;
            vars.push((var.name.clone(), compiled));
            names.push(name);
        }
        for required in ["id", "kind"] {
            if !declaration.fields.contains_key(required) {
                return Err(refused(
                    format!("declared.fields.{required}"),
                    "is required",
                ));
            }
        }
        let mut fields = Vec::new();
        for (name, spec) in &declaration.fields {
            if let Some((parent, _)) = name.split_once('.') {
                if declaration.fields.contains_key(parent) {
                    return Err(refused(
                        format!("declared.fields.{name}"),
                        format!("`{parent}` is given whole too: give one or the other"),
                    ));
                }
            }
            let field = Field::compile(name, spec, &names)
                .map_err(|e| refused(format!("declared.fields.{name}"), e))?;
            fields.push(field);
        }
        Ok(DeclaredSource {
            id,
            routes: Box::leak(routes.into_boxed_slice()),
            formats: declaration.formats.clone(),
            times,
            vars,
            fields,
        })
    }

    fn map(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        let format = BodyFormat::of(req);
        if !self.formats.contains(&format) {
            let accepted: Vec<&str> = self.formats.iter().map(|f| f.as_str()).collect();
            return Err(NormalizeError::Malformed {
                format: "declared source",
                detail: format!(
                    "a {} delivery, where this source accepts {}",
                    format.as_str(),
                    accepted.join(", ")
                ),
            });
        }
        // A JSON object body is read straight into the program's values
        // (half the cost of going through a `serde_json::Value`); any
        // other body, and every refusal's wording, as the built-in
        // providers read them. jaq's reader recurses once per level with
        // no limit, so a body nested deeper than serde_json reads (a
        // hostile one: it overflowed the stack) goes that other way too,
        // and is refused there.
        let body = lenient::without_bom(req.body.trim_ascii());
        let direct = match format {
            BodyFormat::Json if nests_at_most(body, MAX_JSON_DEPTH) => {
                jaq_json::read::parse_single(body)
                    .ok()
                    .filter(|v| matches!(v, jaq_json::Val::Obj(_)))
            }
            _ => None,
        };
        let input = match direct {
            Some(input) => input,
            None => to_val(&lenient::document(req)?),
        };
        let query = if req.query.is_empty() {
            jaq_json::Val::obj(Default::default())
        } else {
            to_val(&lenient::form_to_json(req.query.as_bytes()))
        };
        let failed = |e: RunError| match e {
            RunError::Refused { reason, detail } => refusal(&reason, detail),
            RunError::Failed(detail) => NormalizeError::MappingFailed(detail),
        };
        let mut globals = Vec::with_capacity(program::GLOBALS.len() + self.vars.len());
        globals.push(jaq_json::Val::from(req.route.to_string()));
        globals.push(jaq_json::Val::from(req.method.to_string()));
        globals.push(query);
        for (name, var) in &self.vars {
            let value = var.value(&input, &globals).map_err(|e| match failed(e) {
                NormalizeError::MappingFailed(detail) => {
                    NormalizeError::MappingFailed(format!("variable `{name}`: {detail}"))
                }
                other => other,
            })?;
            globals.push(value);
        }
        let mut object = serde_json::Map::new();
        for field in &self.fields {
            let Some(value) = field.value(&input, &globals).map_err(|e| match failed(e) {
                NormalizeError::MappingFailed(detail) => {
                    NormalizeError::MappingFailed(format!("field `{}`: {detail}", field.name))
                }
                other => other,
            })?
            else {
                continue;
            };
            match field.name.split_once('.') {
                None => {
                    object.insert(field.name.clone(), value);
                }
                Some((parent, child)) => {
                    let parent = object
                        .entry(parent)
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Value::Object(parent) = parent {
                        parent.insert(child.to_string(), value);
                    }
                }
            }
        }
        Mapped::read(Value::Object(object))?.into_sealed(self.id, &self.times, ctx)
    }
}

/// A `refuse(reason; detail)` from a mapping, as the error a built-in
/// provider would give.
fn refusal(reason: &str, detail: String) -> NormalizeError {
    match reason {
        "unknown_event_type" => NormalizeError::UnknownEventType(detail),
        "missing_field" => NormalizeError::MissingFieldNamed(detail),
        "invalid_field" => NormalizeError::InvalidField {
            field: "mapping",
            detail,
        },
        other => NormalizeError::MappingFailed(format!(
            "refuse(\"{other}\"; ...): the reason is not one of {}; detail: {detail}",
            program::REFUSALS.join(", ")
        )),
    }
}

/// The deepest nesting read into a program's values: serde_json's own
/// limit, which the built-in providers' reading has.
const MAX_JSON_DEPTH: usize = 128;

/// Whether the arrays and objects of `json` nest at most `max` deep
/// (brackets inside strings skipped). Not a validation: a malformed body
/// that passes is refused by the reader.
fn nests_at_most(json: &[u8], max: usize) -> bool {
    // Nothing can nest deeper than it has brackets: a webhook has a few
    // dozen, counted in a vectorised pass; only a body with more is read
    // byte by byte.
    if memchr::memchr2_iter(b'[', b'{', json).count() <= max {
        return true;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

pub(super) fn to_val(value: &Value) -> jaq_json::Val {
    use serde::Deserialize as _;
    jaq_json::Val::deserialize(value).expect("every JSON value is a jaq value")
}

impl Provider for DeclaredSource {
    fn id(&self) -> ProviderId {
        self.id
    }

    fn routes(&self) -> &'static [Route] {
        self.routes
    }

    fn normalize(&self, req: &RawRequest<'_>, ctx: &Context<'_>) -> Result<Sealed, NormalizeError> {
        // A mapping is the user's program run by a library: if either
        // panics, that delivery is dead-lettered, the gateway goes on.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.map(req, ctx)))
            .unwrap_or_else(|_| {
                Err(NormalizeError::MappingFailed(
                    "the mapping panicked (a bug: please report it with the delivery)".into(),
                ))
            })
    }
}

#[cfg(test)]
mod tests;
