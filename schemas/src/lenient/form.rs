//! Url-encoded pairs (a form body or a query string) as a nested JSON
//! object.

use serde_json::{Map, Value};

/// Deepest key path the form decoder builds (`a[b][c]...`). Real payloads
/// need four levels; the cap keeps hostile names from building values deep
/// enough to exhaust the stack when they are dropped or serialized.
const MAX_FORM_DEPTH: usize = 8;

/// One step of a form field name's path.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    /// `[n]` or `.n`.
    Index(usize),
    /// `[]`: append.
    Push,
}

/// Decodes url-encoded pairs (a form body or a query string) into a nested
/// JSON object. Names may be flat (`dur`), bracketed (`cdr[dur]`,
/// `cdr[recordingIds][]`, `cdr[directoryMatches][0][fields][companyName]`)
/// or dotted (`cdr.dur`). A value that is itself a JSON object is used as
/// that object, so one field may carry a whole JSON document. Every other
/// value stays a string; the lenient readers accept numeric strings.
///
/// Conflicting names resolve to the last one seen. Indices only order
/// entries: `[5]` on a two-element list appends, so a hostile index cannot
/// allocate a huge array.
pub(crate) fn form_to_json(input: &[u8]) -> Value {
    let mut root = Value::Object(Map::new());
    for (name, raw) in form_urlencoded::parse(input) {
        if name.is_empty() {
            continue;
        }
        let path = key_path(&name);
        if path.len() > MAX_FORM_DEPTH {
            continue;
        }
        let value = match serde_json::from_str::<Value>(&raw) {
            Ok(object @ Value::Object(_)) => object,
            _ => Value::String(raw.into_owned()),
        };
        place(&mut root, &path, value);
    }
    root
}

/// Splits a field name into its path. A name that is not well formed
/// (unbalanced brackets, empty dotted parts) is one flat key, verbatim.
fn key_path(name: &str) -> Vec<Segment> {
    let flat = || vec![Segment::Key(name.to_string())];
    let (head, mut rest) = match name.find('[') {
        Some(at) => name.split_at(at),
        None => (name, ""),
    };
    if head.is_empty() || head.split('.').any(str::is_empty) {
        return flat();
    }
    let mut path: Vec<Segment> = head.split('.').map(named_segment).collect();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) else {
            return flat();
        };
        let (part, tail) = inner;
        path.push(match part {
            "" => Segment::Push,
            _ => named_segment(part),
        });
        rest = tail;
    }
    path
}

/// `0`, `12`: a list index; anything else: an object key.
fn named_segment(part: &str) -> Segment {
    match part.parse::<usize>() {
        Ok(i) if part.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(i),
        _ => Segment::Key(part.to_string()),
    }
}

/// Stores `value` at `path` below `slot`, creating (or, on conflict,
/// replacing) objects and arrays on the way.
fn place(slot: &mut Value, path: &[Segment], value: Value) {
    let Some((segment, tail)) = path.split_first() else {
        *slot = value;
        return;
    };
    let child = match segment {
        Segment::Key(key) => object_entry(slot, key.clone()),
        // An index below an object (`tags[0]` after `tags[x]`) is just a key.
        Segment::Index(i) if slot.is_object() => object_entry(slot, i.to_string()),
        Segment::Index(i) => array_slot(slot, Some(*i)),
        Segment::Push => array_slot(slot, None),
    };
    place(child, tail, value);
}

fn object_entry(slot: &mut Value, key: String) -> &mut Value {
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => map.entry(key).or_insert(Value::Null),
        other => other,
    }
}

fn array_slot(slot: &mut Value, at: Option<usize>) -> &mut Value {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(items) => {
            let i = at.filter(|&i| i < items.len()).unwrap_or_else(|| {
                items.push(Value::Null);
                items.len() - 1
            });
            // In bounds: either checked above or the element just pushed.
            &mut items[i]
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_names_nest() {
        let decoded = form_to_json(
            b"cdr[dur]=10&cdr.ring=3&flat=x\
              &cdr[recordingIds][]=r1&cdr[recordingIds][]=r2\
              &cdr[ids][0]=a&cdr[ids][1]=b&cdr[ids][0]=a2\
              &cdr[directoryMatches][0][fields][companyName]=Acme+Ltd\
              &cdr[directoryMatches][0][fields][email]=a%40acme.test\
              &cdr.list.0=d0",
        );
        assert_eq!(
            decoded,
            json!({
                "flat": "x",
                "cdr": {
                    "dur": "10",
                    "ring": "3",
                    "recordingIds": ["r1", "r2"],
                    "ids": ["a2", "b"],
                    "directoryMatches": [{"fields": {"companyName": "Acme Ltd", "email": "a@acme.test"}}],
                    "list": ["d0"],
                }
            })
        );
    }

    #[test]
    fn form_values_holding_json_objects_are_parsed() {
        let decoded =
            form_to_json(b"payload=%7B%22a%22%3A%7B%22b%22%3A1%7D%7D&cdr=%7Bnot+json&n=%5B1%5D");
        assert_eq!(
            decoded,
            json!({"payload": {"a": {"b": 1}}, "cdr": "{not json", "n": "[1]"})
        );
    }

    #[test]
    fn odd_form_names_stay_flat_and_deep_ones_are_dropped() {
        let decoded =
            form_to_json(b"a[b=1&[x]=2&.y=3&z..w=4&k[9]=5&a[b][c][d][e][f][g][h][i]=6&=7");
        assert_eq!(
            decoded,
            json!({"a[b": "1", "[x]": "2", ".y": "3", "z..w": "4", "k": ["5"]})
        );
    }

    #[test]
    fn form_conflicts_resolve_to_the_last_name() {
        assert_eq!(form_to_json(b"a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(form_to_json(b"a[b]=2&a=1"), json!({"a": "1"}));
        assert_eq!(form_to_json(b"a[]=1&a[x]=2"), json!({"a": {"x": "2"}}));
        assert_eq!(
            form_to_json(b"a[x]=1&a[0]=2"),
            json!({"a": {"x": "1", "0": "2"}})
        );
    }
}
