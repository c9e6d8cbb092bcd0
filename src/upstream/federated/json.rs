//! Raw-JSON helpers for byte-exact edits: where a value borrowed by serde (`&RawValue`) sits
//! in the text it was read from, splicing new text over such spans, and reading objects
//! field by field without building a `serde_json::Value`.
//!
//! Why raw: an edit must keep every other byte as it came (key order, number spelling, large
//! integers a `Value` would round through `f64`, escapes), and list pages and resource
//! contents can be large.
//!
//! Invariants: a span is only ever taken of a value borrowed from the same text (checked: a
//! value from elsewhere gives `None`); splicing a JSON value over a JSON value's span keeps
//! the text JSON.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The byte range of `inner` within `outer`, when `inner` is borrowed from `outer`.
pub fn span(outer: &[u8], inner: &RawValue) -> Option<Range<usize>> {
    let base = outer.as_ptr() as usize;
    let start = (inner.get().as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(inner.get().len())?;
    (end <= outer.len()).then_some(start..end)
}

/// `text` with each range replaced by its text. Ranges must be in order and not overlap;
/// `None` when they are not (a caller's mistake, never a peer's).
pub fn splice(text: &[u8], edits: &[(Range<usize>, String)]) -> Option<Vec<u8>> {
    let grow: usize = edits.iter().map(|(_, t)| t.len()).sum();
    let mut out = Vec::with_capacity(text.len() + grow);
    let mut at = 0;
    for (range, new) in edits {
        if range.start < at || range.end > text.len() || range.start > range.end {
            return None;
        }
        out.extend_from_slice(&text[at..range.start]);
        out.extend_from_slice(new.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(&text[at..]);
    Some(out)
}

/// `s` as a JSON string literal.
pub fn string(s: &str) -> String {
    // Serializing a str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Whether `text` starts (after whitespace) an object. serde's derived structs also read
/// arrays, as positional fields: a message, params or an item must be an object.
pub fn is_object(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `raw` read as `T` when it is an object. Duplicate fields of `T` fail (serde refuses them),
/// so an object that says two things is not understood.
pub fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    let text = raw.get();
    if !is_object(text.as_bytes()) {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// `bytes` read as `T` when they are an object (see `object`).
pub fn object_of<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if !is_object(bytes) {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// The string a raw JSON value holds, `None` when it is not a string.
pub fn str_of(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }

    #[test]
    fn spans_and_splices_keep_other_bytes() {
        let text = br#"{"z":1, "id" : 123456789012345678901234, "a":[1.50]}"#;
        let msg: Msg<'_> = object_of(text).unwrap();
        let id = msg.id.unwrap();
        let range = span(text, id).unwrap();
        assert_eq!(&text[range.clone()], b"123456789012345678901234");
        let out = splice(text, &[(range, string("x\"y"))]).unwrap();
        assert_eq!(out, br#"{"z":1, "id" : "x\"y", "a":[1.50]}"#);
        let elsewhere: Box<RawValue> = serde_json::from_str("1").unwrap();
        assert_eq!(span(text, &elsewhere), None);
        assert_eq!(
            splice(b"abc", &[(2..3, "x".into()), (0..1, "y".into())]),
            None
        );
    }

    #[test]
    fn objects_only() {
        assert!(
            object_of::<Msg<'_>>(b"[1]").is_none(),
            "positional fields are not read"
        );
        assert!(
            object_of::<Msg<'_>>(br#"{"id":1,"id":2}"#).is_none(),
            "duplicates refused"
        );
        assert!(object_of::<Msg<'_>>(b" {}").is_some());
    }
}
