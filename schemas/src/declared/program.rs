//! The jq expressions of a declarative source (its `vars` and its `jq`
//! fields): each compiled once with jaq, run once per delivery.
//!
//! An expression gets the delivery as its input (a JSON body, or form or
//! query parameters as an object of strings) and the variables `$route`,
//! `$method` and `$query` (the query parameters, an object), then the
//! source's `vars` declared before it. It gives one value or none.
//!
//! Besides jq's standard library (as jaq implements it, without `env`,
//! `$ENV`, `input`, `debug` and the other filters that reach outside the
//! delivery) it may call the filters of [`PRELUDE`], which refuse a
//! delivery with one of the gateway's dead-letter reasons.

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::Val;

/// Filters a mapping may call to refuse a delivery: it is dead-lettered
/// (and answered 200) with that reason, as a built-in provider's would be.
pub const PRELUDE: &str = r#"
def refuse($reason; $detail): error({"callstream_refuse": $reason, "detail": $detail});
def unknown_event_type($type): refuse("unknown_event_type"; $type | tostring);
def missing_field($field): refuse("missing_field"; $field);
def invalid_field($field; $detail): refuse("invalid_field"; "\($field): \($detail)");
def halt: error("halt is not available in a mapping");
def halt($code): halt;
def halt_error: halt;
def halt_error($code): halt;
def debug: .;
def debug(msgs): .;
def stderr: .;
def type: __callstream_type;
def text: __callstream_text;
"#;

/// The reasons [`PRELUDE`]'s `refuse` may give.
pub const REFUSALS: [&str; 3] = ["unknown_event_type", "missing_field", "invalid_field"];

/// Standard filters a mapping may not call: `env` reads the environment,
/// where secrets live; `now` would make a replay disagree with the
/// gateway. Those that stop the process or write to its output (`halt`,
/// `debug`, `stderr`) are redefined by [`PRELUDE`] instead, since the
/// standard definitions call them.
const DENIED: &[&str] = &["env", "now", "input", "inputs", "input_filename"];

/// Natives behind [`PRELUDE`]: `type` by the value's variant (jaq's
/// standard `type` orders the value against `""`, `[]` and `{}`, which
/// sorts an object's keys: microseconds per call on a webhook body), and
/// `text`, the built-in providers' lenient reading of a value as text.
fn natives<D: for<'a> jaq_core::DataT<V<'a> = Val>>(
) -> impl Iterator<Item = jaq_core::native::Fun<D>> {
    use jaq_core::box_iter::{box_once, BoxIter};
    let filters: [jaq_core::native::Filter<jaq_core::RunPtr<D>>; 2] = [
        ("__callstream_type", Box::new([]), |cv| {
            let name = match cv.1 {
                Val::Null => "null",
                Val::Bool(_) => "boolean",
                Val::Num(_) => "number",
                Val::TStr(_) | Val::BStr(_) => "string",
                Val::Arr(_) => "array",
                Val::Obj(_) => "object",
            };
            box_once(Ok(Val::from(name.to_string())))
        }),
        ("__callstream_text", Box::new([]), |cv| -> BoxIter<'_, _> {
            match super::mapped::text(&cv.1) {
                Some(text) => box_once(Ok(Val::from(text))),
                None => Box::new(core::iter::empty()),
            }
        }),
    ];
    filters
        .into_iter()
        .map(|(name, arity, run)| (name, arity, jaq_core::Native::<D>::new(run)))
}

/// The variables every expression may read, before the source's `vars`.
pub const GLOBALS: [&str; 3] = ["$route", "$method", "$query"];

type Data = data::JustLut<Val>;

/// A compiled mapping.
pub struct Program {
    filter: jaq_core::Filter<Data>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Program")
    }
}

/// Where and why a mapping does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// 1-based line and column in the program.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// What running a mapping on one delivery gave instead of one value.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The program called `refuse` (through [`PRELUDE`]).
    Refused { reason: String, detail: String },
    /// Any other error, or no value, or more than one.
    Failed(String),
}

/// The 1-based line and column of byte `at` in `code`.
fn position(code: &str, at: usize) -> (usize, usize) {
    let before = &code[..at.min(code.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    (line, column)
}

fn error_at(code: &str, part: &str, message: String) -> CompileError {
    // A part that is not inside `code` (the prelude's, or an empty slice
    // at its end) is placed at the end.
    let inside = code.as_ptr() as usize <= part.as_ptr() as usize
        && part.as_ptr() as usize + part.len() <= code.as_ptr() as usize + code.len();
    let at = if inside {
        load::span(code, part).start
    } else {
        code.len()
    };
    let (line, column) = position(code, at);
    CompileError {
        line,
        column,
        message,
    }
}

fn found(token: &str) -> String {
    if token.is_empty() {
        "the end of the program".into()
    } else {
        format!("`{}`", token.chars().take(40).collect::<String>())
    }
}

impl Program {
    /// Compiles `code`, which may read [`GLOBALS`] and then `vars` (each
    /// written with its `$`); the first error, with its position, if it
    /// does not.
    pub fn compile(code: &str, vars: &[String]) -> Result<Program, CompileError> {
        let prelude = load::parse(PRELUDE, |p| p.defs()).expect("the prelude parses");
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs())
            .chain(prelude);
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !DENIED.contains(name))
            .chain(natives());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errors| {
                let (_, error) = errors.into_iter().next().expect("an error was reported");
                match error {
                    load::Error::Io(mut io) => {
                        let (part, message) = io.remove(0);
                        error_at(code, part, message)
                    }
                    load::Error::Lex(mut lex) => {
                        let (expected, part) = lex.remove(0);
                        error_at(code, part, format!("expected {}", expected.as_str()))
                    }
                    load::Error::Parse(mut parse) => {
                        let (expected, part) = parse.remove(0);
                        let message =
                            format!("expected {}, found {}", expected.as_str(), found(part));
                        error_at(code, part, message)
                    }
                }
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .with_global_vars(GLOBALS.into_iter().chain(vars.iter().map(String::as_str)))
            .compile(modules)
            .map_err(|errors| {
                let (_, mut undefined) = errors.into_iter().next().expect("an error was reported");
                let (name, kind) = undefined.remove(0);
                let message = match kind {
                    jaq_core::compile::Undefined::Filter(arity) => {
                        format!("undefined filter `{name}/{arity}`")
                    }
                    other => format!("undefined {} `{name}`", other.as_str()),
                };
                error_at(code, name, message)
            })?;
        Ok(Program { filter })
    }

    /// Runs the expression on `input` with `globals` (the values of
    /// [`GLOBALS`] and then of the `vars` it was compiled with): its value,
    /// or `None` when it gives none.
    pub fn run(&self, input: Val, globals: &[Val]) -> Result<Option<Val>, RunError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new(globals.iter().cloned()));
        // Not `jaq_core::unwrap_valr`: it exits the process on `halt`.
        let mut outputs = self.filter.id.run((ctx, input)).map(|v| {
            v.map_err(|e| {
                e.get_err()
                    .unwrap_or_else(|_| jaq_core::Error::new(Val::from("halt".to_string())))
            })
        });
        let first = match outputs.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(run_error(e)),
            Some(Ok(value)) => value,
        };
        match outputs.next() {
            None => Ok(Some(first)),
            Some(Err(e)) => Err(run_error(e)),
            Some(Ok(_)) => Err(RunError::Failed(
                "the expression gave more than one value (collect them in a list: `[...]`)".into(),
            )),
        }
    }
}

fn run_error(error: jaq_core::Error<Val>) -> RunError {
    let message = error.to_string();
    let value = error.into_val();
    if let Val::Obj(object) = &value {
        let get = |key: &str| {
            object.get(&Val::from(key.to_string())).map(|v| match v {
                Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                other => other.to_string(),
            })
        };
        if let Some(reason) = get("callstream_refuse") {
            return RunError::Refused {
                reason,
                detail: get("detail").unwrap_or_default(),
            };
        }
    }
    RunError::Failed(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(code: &str, input: &str) -> Result<String, RunError> {
        let program = Program::compile(code, &["$x".to_string()]).expect("compiles");
        let input = jaq_json::read::parse_single(input.as_bytes()).expect("JSON");
        let globals = [
            Val::from("webhook".to_string()),
            Val::from("POST".to_string()),
            Val::obj(Default::default()),
            Val::from(7isize),
        ];
        program
            .run(input, &globals)
            .map(|v| v.map_or_else(|| "(none)".to_string(), |v| v.to_string()))
    }

    #[test]
    fn a_program_maps_its_input_with_the_standard_library() {
        assert_eq!(
            run(
                r#"{id: .a, n: (.b | map(. * 2) | add), r: $route, x: $x}"#,
                r#"{"a": "x", "b": [1, 2]}"#
            )
            .unwrap(),
            r#"{"id":"x","n":6,"r":"webhook","x":7}"#
        );
    }

    #[test]
    fn compile_errors_say_where() {
        let e = Program::compile("{id: .a,\n  kind: (.b | nosuch)}", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 15), "{e}");
        assert!(e.message.contains("nosuch"), "{e}");
        let e = Program::compile("{id: .a,\n kind: }", &[]).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Program::compile("{id: \"abc", &[]).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("quote"), "{e}");
    }

    #[test]
    fn filters_that_reach_outside_the_delivery_are_not_there() {
        for denied in ["env", "$ENV", "input", "now"] {
            assert!(Program::compile(denied, &[]).is_err(), "{denied} compiled");
        }
        // What would stop the gateway or write to its logs is harmless.
        for stopped in ["halt", "halt(1)", "halt_error", "\"x\" | halt_error(3)"] {
            assert!(
                matches!(run(stopped, "{}"), Err(RunError::Failed(_))),
                "{stopped}"
            );
        }
        assert_eq!(
            run("debug | stderr | debug(1) | .a", r#"{"a": 1}"#),
            Ok("1".into())
        );
    }

    #[test]
    fn refusals_and_failures_are_told_apart() {
        assert_eq!(
            run("unknown_event_type(.type)", r#"{"type": "user.created"}"#),
            Err(RunError::Refused {
                reason: "unknown_event_type".into(),
                detail: "user.created".into()
            })
        );
        assert!(matches!(
            run(".a.b", r#"{"a": 1}"#),
            Err(RunError::Failed(_))
        ));
        assert_eq!(run("empty", "{}"), Ok("(none)".into()));
        assert!(
            Program::compile("$y", &[]).is_err(),
            "an undeclared variable"
        );
        assert!(
            matches!(run("1, 2", "{}"), Err(RunError::Failed(m)) if m.contains("more than one"))
        );
    }
}
