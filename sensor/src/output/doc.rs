//! A borrowed JSON document for the hot lines: built with `&'static str` keys and borrowed
//! strings, serialised straight into the output buffer. It writes exactly what
//! `serde_json::Value` plus [`super::prune`] would (keys in byte order, nulls and objects
//! left empty omitted, arrays as they are) without the tree of owned keys and values that
//! cost most of a connection line's time.

use std::borrow::Cow;

use serde::{
    Serialize, Serializer,
    ser::{SerializeMap, SerializeSeq},
};
use serde_json::Value;

/// One JSON value.
pub enum J<'a> {
    Null,
    Bool(bool),
    U64(u64),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Obj<'a>),
    /// A (rarely present) part built as a `Value`: pruned as the whole document would be.
    Val(Cow<'a, Value>),
    /// A part serialised once (already pruned, never null or `{}`): copied as it is.
    Raw(&'a str),
}

/// An object: entries in any order, written sorted by key.
#[derive(Default)]
pub struct Obj<'a>(pub Vec<(&'a str, J<'a>)>);

impl<'a> Obj<'a> {
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub fn put(&mut self, key: &'a str, v: impl Into<J<'a>>) -> &mut Self {
        self.0.push((key, v.into()));
        self
    }
}

impl<'a> J<'a> {
    /// A `Value` part, pruned now (nulls and emptied objects inside it go).
    pub fn val(mut v: Value) -> Self {
        super::prune(&mut v);
        J::Val(Cow::Owned(v))
    }

    /// Whether every object in it has its keys in order already (no sort when written).
    #[cfg(test)]
    pub fn presorted(&self) -> bool {
        match self {
            J::Obj(o) => {
                o.0.is_sorted_by(|a, b| a.0 <= b.0) && o.0.iter().all(|(_, v)| v.presorted())
            }
            J::Arr(items) => items.iter().all(J::presorted),
            _ => true,
        }
    }

    /// What `prune` would drop: null, or an object with nothing left in it.
    fn void(&self) -> bool {
        match self {
            J::Null => true,
            J::Obj(o) => o.0.iter().all(|(_, v)| v.void()),
            J::Raw(_) => false,
            J::Val(v) => match v.as_ref() {
                Value::Null => true,
                Value::Object(m) => m.is_empty(),
                _ => false,
            },
            _ => false,
        }
    }
}

impl J<'_> {
    /// Appends the JSON text: what `serde_json::to_writer` would write for the pruned
    /// `Value` (see `Serialize` below, which the tests hold it to).
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(true) => out.extend_from_slice(b"true"),
            J::Bool(false) => out.extend_from_slice(b"false"),
            J::U64(n) => {
                use std::io::Write as _;
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{n}");
            }
            J::Str(t) => string(out, t),
            J::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            J::Obj(o) => o.write(out),
            J::Val(v) => {
                // Serialising a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, v.as_ref());
            }
            J::Raw(r) => out.extend_from_slice(r.as_bytes()),
        }
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    // Only the characters that need escaping go through serde_json.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

impl Obj<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let mut entry = |k: &str, v: &J, out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
            // Keys are field names (ASCII letters, digits, '_', '@'): nothing to escape.
            debug_assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_@".contains(&b))
            );
            out.push(b'"');
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b"\":");
            v.write(out);
        };
        // Byte order, as the BTreeMap of a `Value` object orders its keys. The hot lines
        // put their keys in order already; anything else is sorted here.
        if self.0.is_sorted_by(|a, b| a.0 <= b.0) {
            for (k, v) in self.0.iter().filter(|(_, v)| !v.void()) {
                entry(k, v, out);
            }
        } else {
            let mut entries: Vec<&(&str, J)> = self.0.iter().filter(|(_, v)| !v.void()).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                entry(k, v, out);
            }
        }
        out.push(b'}');
    }
}

impl<'a> From<&'a str> for J<'a> {
    fn from(s: &'a str) -> Self {
        J::Str(Cow::Borrowed(s))
    }
}

impl From<String> for J<'_> {
    fn from(s: String) -> Self {
        J::Str(Cow::Owned(s))
    }
}

impl From<u64> for J<'_> {
    fn from(n: u64) -> Self {
        J::U64(n)
    }
}

impl From<u32> for J<'_> {
    fn from(n: u32) -> Self {
        J::U64(n.into())
    }
}

impl From<u16> for J<'_> {
    fn from(n: u16) -> Self {
        J::U64(n.into())
    }
}

impl From<u8> for J<'_> {
    fn from(n: u8) -> Self {
        J::U64(n.into())
    }
}

impl From<usize> for J<'_> {
    fn from(n: usize) -> Self {
        J::U64(n as u64)
    }
}

impl From<bool> for J<'_> {
    fn from(b: bool) -> Self {
        J::Bool(b)
    }
}

impl<'a> From<Obj<'a>> for J<'a> {
    fn from(o: Obj<'a>) -> Self {
        J::Obj(o)
    }
}

impl<'a, T: Into<J<'a>>> From<Option<T>> for J<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(J::Null, Into::into)
    }
}

impl Serialize for J<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Null => s.serialize_unit(),
            J::Bool(b) => s.serialize_bool(*b),
            J::U64(n) => s.serialize_u64(*n),
            J::Str(t) => s.serialize_str(t),
            J::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            J::Obj(o) => o.serialize(s),
            J::Val(v) => v.serialize(s),
            J::Raw(r) => serde_json::from_str::<Value>(r)
                .map_err(serde::ser::Error::custom)?
                .serialize(s),
        }
    }
}

impl Serialize for Obj<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.0.iter().filter(|(_, v)| !v.void()).count();
        let mut map = s.serialize_map(Some(len))?;
        // Byte order, as the BTreeMap of a `Value` object orders its keys. The hot lines
        // put their keys in order already; anything else is sorted here.
        if self.0.is_sorted_by(|a, b| a.0 <= b.0) {
            for (k, v) in self.0.iter().filter(|(_, v)| !v.void()) {
                map.serialize_entry(k, v)?;
            }
        } else {
            let mut entries: Vec<&(&str, J)> = self.0.iter().filter(|(_, v)| !v.void()).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_a_pruned_value_writes() {
        let mut inner = Obj::default();
        inner.put("z", 1u8).put("a", J::Null).put("m", "x");
        let mut empty = Obj::default();
        empty.put("gone", J::Null).put("also", Obj::default());
        let mut o = Obj::default();
        o.put("b", inner)
            .put("a", J::Arr(vec![J::Null, "s".into()]))
            .put("e", empty)
            .put("v", J::val(json!({"k": null, "n": {"x": null}, "y": 1.5})))
            .put("w", J::val(json!({"k": null})))
            .put("@t", String::from("q\n\"\u{7f}\u{1}é")) // escaped as serde_json escapes
            .put("r", J::Raw(r#"{"x":[1,"y"]}"#))
            .put("n", u64::MAX)
            .put("B", true);
        let doc = J::Obj(o);
        let direct = serde_json::to_string(&doc).unwrap();
        let mut written = Vec::new();
        doc.write(&mut written);
        assert_eq!(String::from_utf8(written).unwrap(), direct);
        let mut v = json!({
            "b": {"z": 1, "a": null, "m": "x"},
            "a": [null, "s"],
            "e": {"gone": null, "also": {}},
            "v": {"k": null, "n": {"x": null}, "y": 1.5},
            "w": {"k": null},
            "@t": "q\n\"\u{7f}\u{1}é",
            "r": {"x": [1, "y"]},
            "n": u64::MAX,
            "B": true,
        });
        super::super::prune(&mut v);
        assert_eq!(direct, serde_json::to_string(&v).unwrap());
    }
}
