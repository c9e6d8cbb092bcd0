//! authz_filter: `authz::ListFilter::body` on a list answer (one message or a batch).
//!
//! Invariants, whenever the filter rewrites a body: the output is JSON; it has the input's
//! shape, entry by entry and in order (duplicate keys kept), with every byte outside the
//! filtered arrays unchanged, and each filtered array a subsequence of the input's (items
//! byte for byte); filtering the output again changes nothing (every kept item is readable
//! and allowed). Whether it rewrote or not, the answer a client's parser sees (serde's
//! `Value`, the last of repeated keys) lists only allowed items.
//!
//! Input: 1 byte list (tools, prompts, resources, templates), 1 byte deny-pattern length,
//! the deny pattern (bad ones fall back to `*_delete`), then the body.

use std::borrow::Cow;
use std::fmt;
use std::rc::Rc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use shardcat::authz::{Kind, List, ListFilter, Policy, RuleFile, Rules};

const LISTS: [List; 4] = [
    List::Tools,
    List::Prompts,
    List::Resources,
    List::ResourceTemplates,
];

/// An object's entries in order, duplicates kept, values raw.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    out.push((k, m.next_value::<&'de RawValue>()?));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn entries(text: &str) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<Entries<'_>>(text).ok().map(|e| e.0)
}

fn items(text: &str) -> Option<Vec<&RawValue>> {
    serde_json::from_str(text).ok()
}

/// `out` is `inp` with some items of `list`'s arrays (inside `result`s) removed.
fn same_but_fewer(inp: &str, out: &str, list: List, depth: u8) {
    match (entries(inp), entries(out)) {
        (Some(a), Some(b)) => {
            assert_eq!(a.len(), b.len(), "entries kept");
            for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
                assert_eq!(ka, kb, "keys in order");
                let (va, vb) = (va.get(), vb.get());
                match (depth, ka.as_ref()) {
                    (0, "result") => same_but_fewer(va, vb, list, 1),
                    (1, k) if k == list.key() && va != vb => subsequence(va, vb),
                    _ => assert_eq!(va, vb, "value of {ka:?} unchanged"),
                }
            }
        }
        _ if depth == 0 && inp.trim_start().starts_with('[') => {
            let (a, b) = (items(inp).expect("batch"), items(out).expect("batch out"));
            assert_eq!(a.len(), b.len(), "batch length kept");
            for (x, y) in a.iter().zip(&b) {
                same_but_fewer(x.get(), y.get(), list, 0);
            }
        }
        _ => assert_eq!(inp.trim(), out.trim(), "a non-object is left alone"),
    }
}

fn subsequence(inp: &str, out: &str) {
    let a = items(inp).expect("input array");
    let b = items(out).expect("output array");
    let mut it = a.iter().map(|r| r.get());
    for kept in b.iter().map(|r| r.get()) {
        assert!(
            it.any(|x| x == kept),
            "kept items are input items, in order"
        );
    }
}

/// What a client sees: every item of the list (last `result`, last key) is allowed.
fn client_sees_only_allowed(v: &Value, list: List, allows: &dyn Fn(&str) -> bool) {
    let msgs: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    for m in msgs {
        let Some(Value::Array(arr)) = m.get("result").and_then(|r| r.get(list.key())) else {
            continue;
        };
        for item in arr {
            let name = item.get(list.field()).and_then(Value::as_str);
            assert!(name.is_some_and(allows), "a client sees {item}");
        }
    }
}

pub fn run(data: &[u8]) {
    let [sel, len, rest @ ..] = data else { return };
    let list = LISTS[*sel as usize % LISTS.len()];
    let n = (*len as usize % 16).min(rest.len());
    let (pat, body) = rest.split_at(n);
    let pat = std::str::from_utf8(pat)
        .ok()
        .filter(|p| shardcat::authz::Glob::new(p).is_ok())
        .unwrap_or("*_delete");
    let deny = vec![pat.to_string()];
    let rule = RuleFile {
        subjects: vec!["*".into()],
        allow_tools: Some(vec!["*".into()]),
        deny_tools: deny.clone(),
        allow_prompts: Some(vec!["*".into()]),
        deny_prompts: deny.clone(),
        allow_resources: Some(vec!["*".into()]),
        deny_resources: deny,
        ..RuleFile::default()
    };
    let rules = Rules::with_default(&[rule], Policy::Deny).expect("valid rules");
    let grant = Rc::new(rules.grant("fuzz", &[] as &[&str]));
    let filter = ListFilter::one(grant.clone(), list);
    let kind: Kind = list.kind();
    let allows = |name: &str| grant.allows(kind, name);
    let out = filter.body(body);
    if let Some(out) = &out {
        // The filter keeps every byte it does not remove, so an answer `Value` cannot hold (a
        // number out of f64's range, which the filter reads without converting) stays one that
        // `Value` cannot hold; only an answer that parses must give an output that parses.
        if serde_json::from_slice::<Value>(body).is_ok() {
            let parsed: Value = serde_json::from_slice(out).expect("the output is JSON");
            client_sees_only_allowed(&parsed, list, &allows);
        }
        let (inp, outs) = (
            std::str::from_utf8(body).expect("UTF-8 in"),
            std::str::from_utf8(out).expect("UTF-8 out"),
        );
        same_but_fewer(inp, outs, list, 0);
        assert!(filter.body(out).is_none(), "filtering is idempotent");
    } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
        client_sees_only_allowed(&v, list, &allows);
    }
}
