//! jsonrpc: `mcp::classify` on a POST body, and the stdio upstream's id and progress-token
//! rewriting (`upstream::stdio::rewrite_request`, then `restore` on the child's answers).
//!
//! Invariants: `classify` agrees with a full parse (a JSON tree that keeps duplicate keys and
//! knows which strings had escapes) on kind, method, id and `params.name`/`uri` of each
//! message, and on the error class: not JSON is a parse error (-32700), JSON that is not
//! JSON-RPC 2.0 is an invalid request (-32600). JSON-RPC 2.0 rules: a message is an object;
//! an id is a string or a number; `null` counts as absent. Known limitation, kept: a `method`
//! or `jsonrpc` string written with escapes is refused (classification borrows the text).
//!
//! A request rewritten for a child is one line (one LF, at the end, no CR) equal as JSON to
//! the request with its id, and its `params._meta.progressToken` when it has one, set to the
//! gateway's id; the child's response to that id, restored, carries the client's id again,
//! and its progress notification the client's token, on one line; lines about another id are
//! left alone.
//!
//! Input: 8 bytes gateway id, 1 byte answer template, then the body.

use arbitrary::Unstructured;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use shardcat::mcp::{self, Body, ClassifyError, Kind};
use shardcat::upstream::stdio;

#[path = "common.rs"]
mod common;

/// A JSON value as written: duplicate keys kept in order, escaped strings marked.
#[derive(Debug, Clone)]
enum J {
    Null,
    Scalar(Value),
    Str(String, bool),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<J, E> {
        Ok(J::Scalar(b.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<J, E> {
        Ok(J::Scalar(n.into()))
    }
    fn visit_i64<E>(self, n: i64) -> Result<J, E> {
        Ok(J::Scalar(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<J, E> {
        Ok(J::Scalar(
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<J, E> {
        Ok(J::Str(s.to_string(), false))
    }
    fn visit_str<E>(self, s: &str) -> Result<J, E> {
        Ok(J::Str(s.to_string(), true))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element()? {
            v.push(x);
        }
        Ok(J::Arr(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<J, A::Error> {
        let mut v = Vec::new();
        while let Some((k, x)) = a.next_entry::<J, J>()? {
            let J::Str(k, _) = k else {
                return Err(de::Error::custom("key"));
            };
            v.push((k, x));
        }
        Ok(J::Obj(v))
    }
}

impl J {
    /// The field `key` of an object: `Err` when it is there twice, `Ok(None)` when absent or
    /// null (as serde reads an `Option` field).
    fn field(fields: &[(String, J)], key: &str) -> Result<Option<J>, ()> {
        let mut hits = fields.iter().filter(|(k, _)| k == key);
        match (hits.next(), hits.next()) {
            (Some(_), Some(_)) => Err(()),
            (Some((_, J::Null)), None) | (None, _) => Ok(None),
            (Some((_, v)), None) => Ok(Some(v.clone())),
        }
    }
}

/// What `classify` must say about one message.
#[derive(Debug, PartialEq)]
struct Expected {
    kind: Kind,
    method: Option<String>,
    id: Option<Value>,
    name: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Parse,
    Invalid,
    Single(Expected),
    Batch(Vec<Expected>),
}

fn expect_message(j: &J) -> Result<Expected, ()> {
    let J::Obj(fields) = j else { return Err(()) };
    let get = |k| J::field(fields, k);
    let text = |v: Option<J>| match v {
        None => Ok(None),
        Some(J::Str(s, false)) => Ok(Some(s)),
        Some(_) => Err(()),
    };
    if text(get("jsonrpc")?)?.as_deref() != Some("2.0") {
        return Err(());
    }
    let method = text(get("method")?)?;
    let id = match get("id")? {
        None => None,
        Some(J::Str(s, _)) => Some(Value::String(s)),
        Some(J::Scalar(n @ Value::Number(_))) => Some(n),
        Some(_) => return Err(()),
    };
    let answered = get("result")?.is_some() || get("error")?.is_some();
    let kind = match (&method, &id, answered) {
        (Some(_), Some(_), false) => Kind::Request,
        (Some(_), None, false) => Kind::Notification,
        (None, Some(_), true) => Kind::Response,
        _ => return Err(()),
    };
    let named = matches!(
        method.as_deref(),
        Some("tools/call" | "prompts/get" | "resources/read")
    );
    let name = match get("params")? {
        Some(J::Obj(p)) if named => {
            let owned = |v: Option<J>| match v {
                None => Ok(None),
                Some(J::Str(s, _)) => Ok(Some(s)),
                Some(_) => Err(()),
            };
            let (name, uri) = (owned(J::field(&p, "name")?)?, owned(J::field(&p, "uri")?)?);
            if method.as_deref() == Some("resources/read") {
                uri
            } else {
                name
            }
        }
        Some(_) if named => return Err(()),
        _ => None,
    };
    Ok(Expected {
        kind,
        method,
        id,
        name,
    })
}

fn verdict(body: &[u8]) -> Option<Verdict> {
    if serde_json::from_slice::<de::IgnoredAny>(body).is_err() {
        return Some(Verdict::Parse);
    }
    // Valid JSON the tree cannot hold (a number out of f64 range, nesting past serde_json's
    // limit): nothing to compare with.
    let j: J = serde_json::from_slice(body).ok()?;
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    Some(match (batch, &j) {
        (true, J::Arr(items)) if items.is_empty() => Verdict::Invalid,
        (true, J::Arr(items)) => match items.iter().map(expect_message).collect() {
            Ok(v) => Verdict::Batch(v),
            Err(()) => Verdict::Invalid,
        },
        _ => match expect_message(&j) {
            Ok(m) => Verdict::Single(m),
            Err(()) => Verdict::Invalid,
        },
    })
}

fn seen(m: &mcp::Message<'_>) -> Expected {
    Expected {
        kind: m.kind,
        method: m.method.map(str::to_string),
        id: m.id.map(|raw| {
            let json = serde_json::from_str::<de::IgnoredAny>(raw).is_ok();
            assert!(json, "an id is raw JSON: {raw}");
            // A number past f64 (1e400) is JSON but no `Value`; `verdict` skips those bodies.
            serde_json::from_str(raw).unwrap_or(Value::Null)
        }),
        name: m.name.clone(),
    }
}

pub fn run(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let gw: u64 = common::take(&mut u);
    let template: u8 = common::take(&mut u);
    let body = u.take_rest();
    let got = match mcp::classify(body) {
        Err(ClassifyError::Parse(_)) => Verdict::Parse,
        Err(ClassifyError::Invalid(_)) => Verdict::Invalid,
        Ok(Body::Single(m)) => Verdict::Single(seen(&m)),
        Ok(Body::Batch(v)) => Verdict::Batch(v.iter().map(seen).collect()),
    };
    if let Some(want) = verdict(body) {
        assert_eq!(got, want, "classify disagrees with a full parse");
    }
    if let Verdict::Single(Expected {
        kind: Kind::Request,
        ..
    }) = got
    {
        rewrite_and_restore(body, gw, template);
    }
}

/// The progress token a request asks for: `params._meta.progressToken`, a string or number.
fn token_of(body: &[u8]) -> Option<Value> {
    let J::Obj(top) = serde_json::from_slice::<J>(body).ok()? else {
        return None;
    };
    let Some(J::Obj(params)) = J::field(&top, "params").ok()? else {
        return None;
    };
    // The child's peek of `params` reads these too; a duplicate of any makes it give up.
    J::field(&params, "progressToken").ok()?;
    J::field(&params, "requestId").ok()?;
    let Some(J::Obj(meta)) = J::field(&params, "_meta").ok()? else {
        return None;
    };
    match J::field(&meta, "progressToken").ok()? {
        Some(J::Str(s, _)) => Some(Value::String(s)),
        Some(J::Scalar(n @ Value::Number(_))) => Some(n),
        _ => None,
    }
}

fn one_line(line: &[u8]) {
    assert!(
        !line.contains(&b'\r'),
        "a CR in {:?}",
        String::from_utf8_lossy(line)
    );
    let lf = line.iter().filter(|&&b| b == b'\n').count();
    assert!(lf == 0 || (lf == 1 && line.ends_with(b"\n")), "{lf} LFs");
}

fn rewrite_and_restore(body: &[u8], gw: u64, template: u8) {
    let rw = stdio::rewrite_request(body, gw).expect("a classified request is rewritable");
    one_line(&rw.line);
    assert!(rw.line.ends_with(b"\n"));
    // A body with a number past f64 is JSON but no `Value`: nothing to compare with.
    let Ok(original) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let id: Value = serde_json::from_str(&rw.id).expect("raw id");
    let token: Option<Value> = rw
        .token
        .as_deref()
        .map(|t| serde_json::from_str(t).expect("raw token"));
    {
        let mut want = original;
        assert_eq!(Some(&id), want.get("id"));
        let expected_token = token_of(body);
        assert_eq!(token, expected_token, "the progress token taken");
        want["id"] = gw.into();
        if token.is_some() {
            want["params"]["_meta"]["progressToken"] = gw.into();
        }
        let line: Value = serde_json::from_slice(&rw.line).expect("the line is JSON");
        assert_eq!(line, want, "the rewritten line");
    }
    let answer = match template % 3 {
        0 => format!(r#"{{"jsonrpc":"2.0","id":{gw},"result":{{}}}}"#),
        1 => format!(
            r#"{{"result":{{"content":[{{"type":"text","text":"x"}}]}},"id":{gw},"jsonrpc":"2.0"}}"#
        ),
        _ => format!(
            r#"{{ "jsonrpc" : "2.0" , "error" : {{ "code" : -32601 , "message" : "m" }} , "id" : {gw} }}"#
        ),
    };
    let back = stdio::restore(answer.as_bytes(), gw, &rw.id, rw.token.as_deref())
        .expect("the answer to our id is restored");
    one_line(&back);
    let back: Value = serde_json::from_slice(&back).expect("restored answer is JSON");
    let mut want: Value = serde_json::from_str(&answer).expect("template");
    want["id"] = id;
    assert_eq!(back, want, "the restored answer");
    let other = stdio::restore(answer.as_bytes(), gw.wrapping_add(1), &rw.id, None);
    assert!(other.is_none(), "an answer to another id was restored");
    let progress = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{gw},"progress":1}}}}"#
    );
    let back = stdio::restore(progress.as_bytes(), gw, &rw.id, rw.token.as_deref())
        .expect("our progress notification is restored");
    one_line(&back);
    let back: Value = serde_json::from_slice(&back).expect("restored progress is JSON");
    assert_eq!(
        back["params"]["progressToken"],
        token.unwrap_or(Value::Null)
    );
}
