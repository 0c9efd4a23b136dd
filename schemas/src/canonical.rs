//! Canonical JSON: every object's keys in byte order, no whitespace. The
//! bytes are exactly `serde_json::to_value(v)?.to_string()` (serde_json's
//! `Map` is a `BTreeMap`), which is what event fingerprints hash; written
//! directly instead of through a `Value` tree, whose maps, keys and nodes
//! were half the cost of normalizing an event (BENCHMARKS.md).
//!
//! Each object's fields are written in the order they come, then the
//! object's bytes are reordered by key through a reused buffer: two copies
//! per object, no allocation per field or (once warm) per object.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Display;
use std::ops::Range;

use serde::ser::{self, Serialize};
use serde_json::Error;
use sha2::{Digest, Sha256};

/// `value` as canonical JSON, leaving out the top-level fields in `skip`.
pub(crate) fn to_vec_without<T: Serialize + ?Sized>(
    value: &T,
    skip: &'static [&'static str],
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(1024);
    value.serialize(Canonical {
        out: &mut out,
        skip,
        hashing: None,
    })?;
    Ok(out)
}

/// [`to_vec_hashed`]'s answer.
#[derive(Debug)]
pub(crate) struct Hashed {
    /// `to_vec(value)`.
    pub json: Vec<u8>,
    /// SHA-256 of `to_vec_without(value, unhashed)`.
    pub digest: [u8; 32],
    /// Where the value of the top-level field named by `locate` is in `json`.
    pub(crate) located: Option<Range<usize>>,
}

/// Canonical JSON of all of `value` and, in the same pass, the SHA-256 of
/// what [`to_vec_without`]`(value, unhashed)` would write: a record and its
/// fingerprint for the price of one serialization.
pub(crate) fn to_vec_hashed<T: Serialize + ?Sized>(
    value: &T,
    unhashed: &'static [&'static str],
    locate: &'static str,
) -> Result<Hashed, Error> {
    let mut out = Vec::with_capacity(1024);
    let mut hashing = Hashing {
        hasher: Sha256::new(),
        unhashed,
        locate,
        located: None,
        done: false,
    };
    value.serialize(Canonical {
        out: &mut out,
        skip: &[],
        hashing: Some(&mut hashing),
    })?;
    if !hashing.done {
        // Not an object: nothing to leave out, the digest is of it all.
        hashing.hasher.update(&out);
    }
    Ok(Hashed {
        digest: hashing.hasher.finalize().into(),
        located: hashing.located,
        json: out,
    })
}

/// `value` as canonical JSON.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    to_vec_without(value, &[])
}

struct Canonical<'a> {
    out: &'a mut Vec<u8>,
    /// Fields of the top-level object to leave out (empty below it).
    skip: &'static [&'static str],
    /// The top-level object's digest, for `to_vec_hashed` (none below it).
    hashing: Option<&'a mut Hashing>,
}

/// The top level of [`to_vec_hashed`]: what it hashes besides writing.
struct Hashing {
    hasher: Sha256,
    unhashed: &'static [&'static str],
    locate: &'static str,
    located: Option<Range<usize>>,
    /// A top-level object was written (and hashed field by field).
    done: bool,
}

impl<'a> Canonical<'a> {
    fn nested(out: &'a mut Vec<u8>) -> Canonical<'a> {
        Canonical {
            out,
            skip: &[],
            hashing: None,
        }
    }

    /// A scalar, formatted by serde_json itself.
    fn scalar<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Error> {
        serde_json::to_writer(&mut *self.out, v)
    }

    fn object(self) -> Object<'a> {
        let start = self.out.len();
        Object {
            out: self.out,
            skip: self.skip,
            hashing: self.hashing,
            start,
            fields: SPARE_FIELDS.with_borrow_mut(Vec::pop).unwrap_or_default(),
            pending_key: None,
            closes_variant: false,
        }
    }

    /// `{"variant":` before a variant's content; `}` closes it.
    fn open_variant(&mut self, variant: &str) -> Result<(), Error> {
        self.out.push(b'{');
        serde_json::to_writer(&mut *self.out, variant)?;
        self.out.push(b':');
        Ok(())
    }
}

impl<'a> ser::Serializer for Canonical<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Object<'a>;
    type SerializeStruct = Object<'a>;
    type SerializeStructVariant = Object<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        // As `to_value` does: a Number when it fits, else an error.
        self.scalar(&serde_json::to_value(v)?)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.scalar(&serde_json::to_value(v)?)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        // `to_value` widens an f32 to f64 before formatting.
        self.scalar(&serde_json::Value::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.scalar(&serde_json::Value::from(v))
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.scalar(&v)
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.scalar(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.scalar(v)
    }
    fn collect_str<T: Display + ?Sized>(self, v: &T) -> Result<(), Error> {
        // Timestamps: formatted straight into the output, no `String` between.
        (&mut serde_json::Serializer::new(&mut *self.out)).collect_str(v)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.scalar(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.open_variant(variant)?;
        value.serialize(Canonical::nested(&mut *self.out))?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>, Error> {
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Seq<'a>, Error> {
        self.open_variant(variant)?;
        self.out.push(b'[');
        Ok(Seq {
            out: self.out,
            first: true,
            variant: true,
        })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'a>, Error> {
        Ok(self.object())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Object<'a>, Error> {
        Ok(self.object())
    }
    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Object<'a>, Error> {
        self.open_variant(variant)?;
        Ok(Object {
            closes_variant: true,
            ..Canonical::nested(self.out).object()
        })
    }
}

pub struct Seq<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Inside `{"variant":[...]}`: close the wrapper too.
    variant: bool,
}

impl Seq<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        value.serialize(Canonical::nested(&mut *self.out))
    }

    fn close(self) -> Result<(), Error> {
        self.out.push(b']');
        if self.variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

/// serde has a trait per kind of sequence and of object; for canonical
/// JSON they differ only in their names.
macro_rules! forward {
    ($ty:ident: $($trait:ident::$method:ident),+) => {$(
        impl ser::$trait for $ty<'_> {
            type Ok = ();
            type Error = Error;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )+};
    ($ty:ident keyed: $($trait:ident),+) => {$(
        impl ser::$trait for $ty<'_> {
            type Ok = ();
            type Error = Error;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Error> {
                self.field(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), Error> {
                self.close()
            }
        }
    )+};
}

forward!(
    Seq: SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

type Fields = Vec<(Cow<'static, str>, Range<usize>)>;

thread_local! {
    /// Buffers reused from one object to the next (an event has a dozen):
    /// field lists for the objects open at once, and the bytes of the one
    /// being reordered.
    static SPARE_FIELDS: RefCell<Vec<Fields>> = const { RefCell::new(Vec::new()) };
    static REORDERED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers beyond these are freed rather than kept per thread (a
/// large `custom` document must not pin its size in every worker).
const KEEP_BYTES: usize = 64 * 1024;
const KEEP_FIELD_LISTS: usize = 16;
const KEEP_FIELDS: usize = 256;

/// An object being written: each value goes to `out` as it comes, its key
/// and byte range noted; `end` rewrites the region sorted by key.
pub struct Object<'a> {
    out: &'a mut Vec<u8>,
    skip: &'static [&'static str],
    hashing: Option<&'a mut Hashing>,
    start: usize,
    fields: Fields,
    /// A map key waiting for its value.
    pending_key: Option<String>,
    /// Inside `{"variant":{...}}`: close the wrapper too.
    closes_variant: bool,
}

impl Object<'_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Error> {
        if self.skip.contains(&key.as_ref()) {
            return Ok(());
        }
        let from = self.out.len();
        value.serialize(Canonical::nested(&mut *self.out))?;
        self.fields.push((key, from..self.out.len()));
        Ok(())
    }

    fn close(mut self) -> Result<(), Error> {
        // Stable: of equal keys the last one written wins, as in a map insert.
        self.fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hashing = self.hashing.take();
        REORDERED.with_borrow_mut(|buf| -> Result<(), Error> {
            buf.clear();
            buf.push(b'{');
            if let Some(h) = hashing.as_deref_mut() {
                h.hasher.update(b"{");
            }
            let values = &self.out[self.start..];
            let mut first = true;
            let mut first_hashed = true;
            for (i, (key, range)) in self.fields.iter().enumerate() {
                if self.fields.get(i + 1).is_some_and(|next| next.0 == *key) {
                    continue;
                }
                if !std::mem::take(&mut first) {
                    buf.push(b',');
                }
                let field_start = buf.len();
                serde_json::to_writer(&mut *buf, key.as_ref())?;
                buf.push(b':');
                let value_start = buf.len();
                buf.extend_from_slice(&values[range.start - self.start..range.end - self.start]);
                if let Some(h) = hashing.as_deref_mut() {
                    if key == h.locate {
                        h.located = Some(self.start + value_start..self.start + buf.len());
                    }
                    if !h.unhashed.contains(&key.as_ref()) {
                        if !std::mem::take(&mut first_hashed) {
                            h.hasher.update(b",");
                        }
                        h.hasher.update(&buf[field_start..]);
                    }
                }
            }
            buf.push(b'}');
            self.out.truncate(self.start);
            self.out.extend_from_slice(buf);
            if buf.capacity() > KEEP_BYTES {
                *buf = Vec::new();
            }
            Ok(())
        })?;
        if let Some(h) = hashing {
            h.hasher.update(b"}");
            h.done = true;
        }
        if self.closes_variant {
            self.out.push(b'}');
        }
        let mut fields = std::mem::take(&mut self.fields);
        fields.clear();
        SPARE_FIELDS.with_borrow_mut(|spare| {
            if spare.len() < KEEP_FIELD_LISTS && fields.capacity() <= KEEP_FIELDS {
                spare.push(fields);
            }
        });
        Ok(())
    }
}

/// A map key as `to_value` accepts one: a string, or a number or bool
/// written as one.
fn key_string<T: Serialize + ?Sized>(key: &T) -> Result<String, Error> {
    match serde_json::to_value(key)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        _ => Err(ser::Error::custom("key must be a string")),
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.pending_key = Some(key_string(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| <Error as ser::Error>::custom("map value without a key"))?;
        self.field(Cow::Owned(key), value)
    }
    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

forward!(Object keyed: SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;

    /// What canonical JSON is defined as.
    fn tree<T: Serialize>(v: &T) -> String {
        serde_json::to_value(v).unwrap().to_string()
    }

    fn canonical<T: Serialize>(v: &T) -> String {
        String::from_utf8(to_vec(v).unwrap()).unwrap()
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        Struct { z: bool, a: Option<f64> },
    }

    #[derive(Serialize)]
    struct Inner {
        zeta: &'static str,
        alpha: Vec<Shape>,
    }

    #[derive(Serialize)]
    struct Outer {
        yes: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u64>,
        b: Inner,
        a: HashMap<i32, &'static str>,
        f32: f32,
        f64: f64,
        nan: f64,
        text: &'static str,
        c: char,
        unit: (),
        doc: Value,
        big: i128,
    }

    fn outer() -> Outer {
        Outer {
            yes: None,
            skipped: None,
            b: Inner {
                zeta: "z",
                alpha: vec![
                    Shape::Unit,
                    Shape::Newtype(7),
                    Shape::Tuple(-3, "t".into()),
                    Shape::Struct {
                        z: true,
                        a: Some(0.1),
                    },
                ],
            },
            a: HashMap::from([(10, "ten"), (2, "two"), (-1, "minus")]),
            f32: 0.1,
            f64: 1e300,
            nan: f64::NAN,
            text: "quote \" backslash \\ newline \n tab \t nul \u{0} é 📞",
            c: '\u{1f}',
            unit: (),
            doc: json!({"z": [1, {"y": null, "b": 2.5}], "a": {"é": true, "E": false}, "": -0.0}),
            big: 12345,
        }
    }

    #[test]
    fn writes_what_the_value_tree_writes() {
        assert_eq!(canonical(&outer()), tree(&outer()));
        for doc in [
            json!(null),
            json!([]),
            json!({}),
            json!("s"),
            json!([{"b": 1, "a": [{"d": {}, "c": []}]}]),
            json!({"k": u64::MAX, "n": i64::MIN, "f": 1.5e-7}),
        ] {
            assert_eq!(canonical(&doc), doc.to_string());
        }
    }

    #[test]
    fn objects_are_sorted_by_key_bytes() {
        let out = canonical(&json!({"b": 1, "a": {"d": 1, "c": 2}, "B": 0}));
        assert_eq!(out, r#"{"B":0,"a":{"c":2,"d":1},"b":1}"#);
    }

    #[test]
    fn leaves_out_only_top_level_fields() {
        #[derive(Serialize)]
        struct T {
            raw: u8,
            keep: Inner2,
        }
        #[derive(Serialize)]
        struct Inner2 {
            raw: u8,
        }
        let out = to_vec_without(
            &T {
                raw: 1,
                keep: Inner2 { raw: 2 },
            },
            &["raw"],
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"keep":{"raw":2}}"#);
    }

    #[test]
    fn hashes_what_to_vec_without_writes_in_the_same_pass() {
        use sha2::{Digest, Sha256};
        let check = |value: &Value, unhashed: &'static [&'static str], locate: &'static str| {
            let hashed = to_vec_hashed(value, unhashed, locate).unwrap();
            assert_eq!(hashed.json, to_vec(value).unwrap(), "{value}");
            let without = to_vec_without(value, unhashed).unwrap();
            assert_eq!(
                hashed.digest,
                <[u8; 32]>::from(Sha256::digest(&without)),
                "{value} without {unhashed:?}"
            );
            let located = hashed.located.map(|r| &hashed.json[r]);
            let expected = value.get(locate).map(|v| v.to_string().into_bytes());
            assert_eq!(located, expected.as_deref(), "{value} at {locate}");
        };
        let doc = json!({
            "m": {"fp": "nested, not top level", "z": 1},
            "fp": "0000",
            "a": [1, {"fp": 2}],
            "raw": {"x": null},
            "zz": "last",
        });
        for unhashed in [
            &[][..],
            &["fp"],
            &["fp", "raw"],
            &["a", "zz"],
            &["a", "fp", "m", "raw", "zz"],
        ] {
            check(&doc, unhashed, "fp");
            check(&doc, unhashed, "absent");
        }
        // First and last fields left out; not objects at all.
        check(&json!({"a": 1, "b": 2, "c": 3}), &["a", "c"], "b");
        for doc in [json!(null), json!([{"fp": 1}]), json!("fp"), json!({})] {
            check(&doc, &["fp"], "fp");
        }
        assert_eq!(
            to_vec_hashed(&outer(), &["b"], "b").unwrap().json,
            to_vec(&outer()).unwrap()
        );
    }

    #[test]
    fn refuses_what_the_value_tree_refuses() {
        let unkeyable = HashMap::from([(vec![1u8], 1)]);
        assert!(serde_json::to_value(&unkeyable).is_err());
        assert!(to_vec(&unkeyable).is_err());
        assert!(to_vec(&(u128::MAX)).is_err() == serde_json::to_value(u128::MAX).is_err());
    }
}
