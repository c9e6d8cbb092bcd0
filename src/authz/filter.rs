//! List filtering: the answer to `tools/list`, `prompts/list`, `resources/list` or
//! `resources/templates/list` loses the items a grant does not allow, and nothing else.
//!
//! How: the message is read once, as raw JSON, never as a tree (`Message`, a serde seed):
//! everything but `result` and the list in it is skipped, and the list's items are borrowed
//! slices of the input (`RawValue`); then only each item's `name` (`uri`, `uriTemplate`) is
//! read. The output is the input with the bytes from the first item to the last replaced by
//! the kept items joined by commas: key order, whitespace, numbers, `nextCursor` and every
//! other field stay byte for byte. Nothing removed: no copy (`None`).
//!
//! Invariants (`fuzz/checks/authz_filter.rs`): the output parses; its list is the input's
//! list with items removed, in order, each kept item allowed; everything else is unchanged.
//! Every `result` key and every list key is filtered when a message repeats one (a client's
//! parser may take the last); an item whose name cannot be read is dropped.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Grant, Kind};
use crate::codec::sse;
use crate::mcp;

/// A list answer the gateway filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl List {
    const ALL: [List; 4] = [
        List::Tools,
        List::Prompts,
        List::Resources,
        List::ResourceTemplates,
    ];

    /// The list a request method asks for.
    pub fn of_method(method: &str) -> Option<List> {
        match method {
            "tools/list" => Some(List::Tools),
            "prompts/list" => Some(List::Prompts),
            "resources/list" => Some(List::Resources),
            "resources/templates/list" => Some(List::ResourceTemplates),
            _ => None,
        }
    }

    /// The key of the array in the result.
    pub fn key(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources => "resources",
            List::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The item field that names it.
    pub fn field(self) -> &'static str {
        match self {
            List::Tools | List::Prompts => "name",
            List::Resources => "uri",
            List::ResourceTemplates => "uriTemplate",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            List::Tools => Kind::Tool,
            List::Prompts => Kind::Prompt,
            List::Resources | List::ResourceTemplates => Kind::Resource,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The filtering an exchange's answer needs: its grant, and which lists its requests asked
/// for. A POST of one request has one answer, so every response in it is filtered as that
/// list, whatever id it carries; in a batch, as any of the lists the batch asked for.
#[derive(Debug, Clone)]
pub struct ListFilter {
    grant: Rc<Grant>,
    lists: u8,
}

impl ListFilter {
    /// The filter for the answer to `body`. `None` (nothing to do) without a grant, when no
    /// request asks for a list, or when the grant allows every item of the lists asked for.
    pub fn new(grant: Option<&Rc<Grant>>, body: &mcp::Body<'_>) -> Option<ListFilter> {
        let grant = grant?;
        let lists = body
            .messages()
            .iter()
            .filter(|m| m.kind == mcp::Kind::Request)
            .filter_map(|m| m.method.and_then(List::of_method))
            .filter(|l| !grant.allows_all(l.kind()))
            .fold(0u8, |bits, l| bits | l.bit());
        (lists != 0).then(|| ListFilter {
            grant: grant.clone(),
            lists,
        })
    }

    /// The filter for one list, whatever the grant.
    pub fn one(grant: Rc<Grant>, list: List) -> ListFilter {
        ListFilter {
            grant,
            lists: list.bit(),
        }
    }

    /// A JSON body (one message or a batch of them) with the disallowed items taken out;
    /// `None` when nothing was taken out (or it is not JSON-RPC).
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(body).ok()?;
        let mut edits = Vec::new();
        if text.trim_start().starts_with('[') {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            for item in items {
                self.message_edits(text, item.get(), &mut edits);
            }
        } else {
            self.message_edits(text, text, &mut edits);
        }
        (!edits.is_empty()).then(|| splice(text, &edits))
    }

    /// One SSE event with its data filtered (`body`); every other line kept. An event that
    /// needs no change is returned as it came.
    pub fn event(&self, raw: Bytes) -> Bytes {
        let ev = sse::parse_sse_event(&raw);
        if ev.data.is_empty() {
            return raw;
        }
        match self.body(&ev.data) {
            Some(data) => Bytes::from(with_data(&raw, &data)),
            None => raw,
        }
    }

    /// Queues the replacements of the list items of `msg` (a slice of `whole`). A message that
    /// does not parse is left alone (a client could not read it either).
    fn message_edits(&self, whole: &str, msg: &str, edits: &mut Vec<(Range<usize>, String)>) {
        let mut found = Vec::new();
        let seed = Message {
            lists: self.lists,
            out: &mut found,
        };
        let mut de = serde_json::Deserializer::from_str(msg);
        if seed.deserialize(&mut de).and_then(|()| de.end()).is_err() {
            return;
        }
        for (list, items) in found {
            if let Some(edit) = self.kept(whole, list, &items) {
                edits.push(edit);
            }
        }
    }

    /// The span from the first item to the last (the brackets and the space around stay) and
    /// the allowed items joined by commas; `None` when every item is kept.
    fn kept(&self, whole: &str, list: List, items: &[&RawValue]) -> Option<(Range<usize>, String)> {
        let keep: Vec<bool> = items
            .iter()
            .map(|i| item_name(list, i.get()).is_some_and(|n| self.grant.allows(list.kind(), &n)))
            .collect();
        if keep.iter().all(|k| *k) {
            return None;
        }
        let (first, last) = (items.first()?, items.last()?);
        let range = span(whole, first.get()).start..span(whole, last.get()).end;
        let mut out = String::with_capacity(range.len());
        for (item, _) in items.iter().zip(&keep).filter(|(_, k)| **k) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(item.get());
        }
        Some((range, out))
    }
}

/// `filter_list` for one answer: `method` names the list (anything else: `None`).
pub fn filter_list(grant: &Rc<Grant>, method: &str, body: &[u8]) -> Option<Bytes> {
    let list = List::of_method(method)?;
    if grant.allows_all(list.kind()) {
        return None;
    }
    ListFilter::one(grant.clone(), list)
        .body(body)
        .map(Bytes::from)
}

/// The name an item goes by in `list`, if it is an object with exactly one such field (a
/// string). serde refuses a repeated field, so a name cannot hide behind another.
fn item_name(list: List, item: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow)]
        uri: Option<Cow<'a, str>>,
        #[serde(borrow, rename = "uriTemplate")]
        uri_template: Option<Cow<'a, str>>,
    }
    // serde reads a struct from an array too (positional fields): an item must be an object.
    if !item.starts_with('{') {
        return None;
    }
    let n: Named<'_> = serde_json::from_str(item).ok()?;
    let name = match list {
        List::Tools | List::Prompts => n.name,
        List::Resources => n.uri,
        List::ResourceTemplates => n.uri_template,
    };
    name.map(Cow::into_owned)
}

/// An object key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Each list's items found in a message, raw, in order.
type Found<'de> = Vec<(List, Vec<&'de RawValue>)>;

/// Reads a message in one pass: every `result` (repeats included), in it every key of a list
/// asked for (repeats included), and that list's items as raw slices; the rest is skipped.
struct Message<'a, 'de> {
    lists: u8,
    out: &'a mut Found<'de>,
}

/// A `result` value: an object is searched, anything else skipped (not an error: one of
/// several repeated `result`s may be anything).
struct ResultValue<'a, 'de>(Message<'a, 'de>);

/// A list's value: an array's items are taken, anything else skipped.
struct Items<'a, 'de> {
    list: List,
    out: &'a mut Found<'de>,
}

impl<'de> DeserializeSeed<'de> for Message<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Message<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = map.next_key()? {
            if k == "result" {
                let inner = Message {
                    lists: self.lists,
                    out: &mut *self.out,
                };
                map.next_value_seed(ResultValue(inner))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ResultValue<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Visitor methods that skip any value but the one a visitor looks for.
macro_rules! skip_other_values {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    };
}

impl<'de> Visitor<'de> for ResultValue<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a result")
    }
    skip_other_values!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Message { lists, out } = self.0;
        while let Some(Key(k)) = map.next_key()? {
            let asked = List::ALL
                .into_iter()
                .find(|l| lists & l.bit() != 0 && l.key() == k);
            match asked {
                Some(list) => map.next_value_seed(Items {
                    list,
                    out: &mut *out,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Items<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }
    skip_other_values!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        self.out.push((self.list, items));
        Ok(())
    }
}

/// Where `part` (borrowed from `whole`) lies in it.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(start + part.len() <= whole.len(), "a slice of the input");
    start..start + part.len()
}

/// `text` with each range (in order, disjoint) replaced.
fn splice(text: &str, edits: &[(Range<usize>, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for (range, with) in edits {
        debug_assert!(range.start >= at, "edits are in order and disjoint");
        out.extend_from_slice(&text.as_bytes()[at..range.start]);
        out.extend_from_slice(with.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(&text.as_bytes()[at..]);
    out
}

/// The event `raw` with its `data` lines replaced by `data` (one line each of its lines), at
/// the place of the first; the other lines (`event`, `id`, `retry`, comments) kept.
fn with_data(raw: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut written = false;
    let mut ended = false;
    for (line, whole) in sse::lines(raw) {
        let is_data = line == b"data" || line.starts_with(b"data:");
        if line.is_empty() {
            ended = true;
        }
        if !is_data {
            out.extend_from_slice(whole);
        } else if !written {
            for l in data.split(|b| *b == b'\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(l);
                out.push(b'\n');
            }
            written = true;
        }
    }
    if !ended {
        // An event cut off by the end of its stream (`SseSplitter::take_rest`) ends here.
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Policy, RuleFile, Rules};
    use super::*;
    use serde_json::Value;

    /// A tools/list answer of the official Python SDK (`mcp`, MCPServer): pydantic's
    /// `exclude_none` dump, inputSchema/outputSchema with titles, `jsonrpc` first.
    const PY_TOOLS: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","description":"Returns its text.","inputSchema":{"properties":{"text":{"title":"Text","type":"string"}},"required":["text"],"title":"echoArguments","type":"object"},"outputSchema":{"properties":{"result":{"title":"Result","type":"string"}},"required":["result"],"title":"echoOutput","type":"object"}},{"name":"db_delete","description":"Deletes.","inputSchema":{"properties":{},"title":"db_deleteArguments","type":"object"}},{"name":"progress","description":"Progress.","inputSchema":{"properties":{"count":{"title":"Count","type":"integer"}},"required":["count"],"title":"progressArguments","type":"object"}}],"nextCursor":"cGFnZTI="}}"#;

    /// The TypeScript SDK's (`McpServer`): `result` before `jsonrpc` and `id`, zod's JSON
    /// schema with `$schema`, `execution`.
    const TS_TOOLS: &str = r#"{"result":{"tools":[{"name":"echo","title":"Echo","description":"Returns its text.","inputSchema":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#"},"execution":{"taskSupport":"forbidden"}},{"name":"db_delete","inputSchema":{"type":"object","properties":{}},"execution":{"taskSupport":"forbidden"}}]},"jsonrpc":"2.0","id":"c1"}"#;

    fn grant(toml_rules: &str) -> Rc<Grant> {
        #[derive(Deserialize)]
        struct F {
            rules: Vec<RuleFile>,
        }
        let f: F = toml::from_str(toml_rules).unwrap();
        let rules = Rules::with_default(&f.rules, Policy::Deny).unwrap();
        Rc::new(rules.grant("ci", &["s"]))
    }

    fn ci() -> Rc<Grant> {
        grant(
            r#"
            [[rules]]
            subjects = ["*"]
            allow_tools = ["*"]
            deny_tools = ["*_delete"]
            allow_prompts = ["greet*"]
            allow_resources = ["file:///public/*"]
            "#,
        )
    }

    fn names(v: &Value, key: &str, field: &str) -> Vec<String> {
        v["result"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[field].as_str().unwrap().to_string())
            .collect()
    }

    /// `out` equals `input` as JSON once `key`'s list is filtered the same way.
    fn same_but_list(input: &str, out: &[u8], key: &str, kept: &[&str], field: &str) {
        let mut want: Value = serde_json::from_str(input).unwrap();
        let got: Value = serde_json::from_slice(out).unwrap();
        want["result"][key]
            .as_array_mut()
            .unwrap()
            .retain(|i| kept.contains(&i[field].as_str().unwrap()));
        assert_eq!(got, want);
    }

    #[test]
    fn filters_python_and_typescript_tool_lists() {
        let g = ci();
        let out = filter_list(&g, "tools/list", PY_TOOLS.as_bytes()).unwrap();
        same_but_list(PY_TOOLS, &out, "tools", &["echo", "progress"], "name");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["result"]["nextCursor"], "cGFnZTI=",
            "the page's cursor is kept"
        );
        // Bytes outside the array are the input's: key order kept.
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo""#));
        assert!(text.ends_with(r#"],"nextCursor":"cGFnZTI="}}"#));
        let out = filter_list(&g, "tools/list", TS_TOOLS.as_bytes()).unwrap();
        same_but_list(TS_TOOLS, &out, "tools", &["echo"], "name");
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .ends_with(r#"]},"jsonrpc":"2.0","id":"c1"}"#));
    }

    #[test]
    fn leaves_other_answers_alone() {
        let g = ci();
        let err = br#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no"}}"#;
        assert_eq!(filter_list(&g, "tools/list", err), None);
        assert_eq!(filter_list(&g, "tools/call", PY_TOOLS.as_bytes()), None);
        assert_eq!(filter_list(&g, "tools/list", b"not json"), None);
        let all = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"}]}}"#;
        assert_eq!(
            filter_list(&g, "tools/list", all),
            None,
            "nothing removed: no copy"
        );
        let odd = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":{"name":"db_delete"}}}"#;
        assert_eq!(filter_list(&g, "tools/list", odd), None, "not an array");
        let open = Rc::new(Grant::everything("x"));
        assert_eq!(filter_list(&open, "tools/list", PY_TOOLS.as_bytes()), None);
    }

    #[test]
    fn pages_are_filtered_each_on_its_own() {
        let g = ci();
        let page = |items: &str, cursor: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":3,"result":{{"tools":[{items}]{cursor},"_meta":{{"k":1}}}}}}"#
            )
        };
        let p1 = page(
            r#"{"name":"a_delete"},{"name":"b_delete"}"#,
            r#","nextCursor":"2""#,
        );
        let out = filter_list(&g, "tools/list", p1.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["result"]["tools"],
            serde_json::json!([]),
            "an emptied page stays a page"
        );
        assert_eq!(v["result"]["nextCursor"], "2");
        assert_eq!(v["result"]["_meta"]["k"], 1);
        let p2 = page(r#"{"name":"echo"},{"name":"c_delete"}"#, "");
        let out = filter_list(&g, "tools/list", p2.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&v, "tools", "name"), ["echo"]);
        assert!(
            v["result"].get("nextCursor").is_none(),
            "the last page has none"
        );
    }

    #[test]
    fn prompts_resources_and_templates() {
        let g = ci();
        let prompts = br#"{"jsonrpc":"2.0","id":1,"result":{"prompts":[{"name":"greeting","arguments":[{"name":"x"}]},{"name":"secret"}]}}"#;
        let v: Value =
            serde_json::from_slice(&filter_list(&g, "prompts/list", prompts).unwrap()).unwrap();
        assert_eq!(names(&v, "prompts", "name"), ["greeting"]);
        let res = br#"{"jsonrpc":"2.0","id":1,"result":{"resources":[{"uri":"file:///public/a","name":"a"},{"uri":"file:///etc/passwd","name":"file:///public/x"}]}}"#;
        let v: Value =
            serde_json::from_slice(&filter_list(&g, "resources/list", res).unwrap()).unwrap();
        assert_eq!(
            names(&v, "resources", "uri"),
            ["file:///public/a"],
            "by URI, not name"
        );
        let tpl = br#"{"jsonrpc":"2.0","id":1,"result":{"resourceTemplates":[{"uriTemplate":"file:///public/{path}","name":"p"},{"uriTemplate":"file:///{path}","name":"all"}]}}"#;
        let v: Value =
            serde_json::from_slice(&filter_list(&g, "resources/templates/list", tpl).unwrap())
                .unwrap();
        assert_eq!(
            names(&v, "resourceTemplates", "uriTemplate"),
            ["file:///public/{path}"]
        );
    }

    #[test]
    fn what_cannot_be_read_is_dropped_and_repeats_are_all_filtered() {
        let g = ci();
        let odd = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},["db_delete"],{"name":"echo","name":"db_delete"},{"title":"x"},7,{"name":"add"}]}}"#;
        let v: Value =
            serde_json::from_slice(&filter_list(&g, "tools/list", odd).unwrap()).unwrap();
        assert_eq!(
            v["result"]["tools"],
            serde_json::json!([{"name":"echo"},{"name":"add"}])
        );
        let twice = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"x_delete"}]},"result":{"tools":[{"name":"echo"}],"tools":[{"name":"y_delete"}]}}"#;
        let out = filter_list(&g, "tools/list", twice).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]},"result":{"tools":[{"name":"echo"}],"tools":[]}}"#
        );
        let escaped = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"db_delete"},{"name":"echo"}]}}"#;
        let v: Value =
            serde_json::from_slice(&filter_list(&g, "tools/list", escaped).unwrap()).unwrap();
        assert_eq!(names(&v, "tools", "name"), ["echo"]);
    }

    #[test]
    fn batches_and_the_filter_of_an_exchange() {
        let g = ci();
        let req = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#;
        let f = ListFilter::new(Some(&g), &mcp::classify(req).unwrap()).unwrap();
        let answer = br#"[ {"jsonrpc":"2.0","id":2,"result":{}} , {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a_delete"},{"name":"echo"}]}} ]"#;
        let out = f.body(answer).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"[ {"jsonrpc":"2.0","id":2,"result":{}} , {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"}]}} ]"#
        );
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        assert!(ListFilter::new(Some(&g), &mcp::classify(call).unwrap()).is_none());
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(ListFilter::new(None, &mcp::classify(list).unwrap()).is_none());
        let open = Rc::new(Grant::everything("x"));
        assert!(ListFilter::new(Some(&open), &mcp::classify(list).unwrap()).is_none());
        // A single request's answer is filtered whatever id it carries.
        let f = ListFilter::new(Some(&g), &mcp::classify(list).unwrap()).unwrap();
        let other_id = br#"{"jsonrpc":"2.0","id":1.0,"result":{"tools":[{"name":"a_delete"}]}}"#;
        assert!(f.body(other_id).is_some());
    }

    #[test]
    fn sse_events_keep_their_other_lines() {
        let f = ListFilter::one(ci(), List::Tools);
        // The Python SDK (sse-starlette) ends lines with CRLF.
        let ev = format!("event: message\r\nid: 7\r\nretry: 300\r\ndata: {PY_TOOLS}\r\n\r\n");
        let out = f.event(Bytes::from(ev.clone()));
        let fields = sse::parse_sse_event(&out);
        assert_eq!(fields.id.as_deref(), Some("7"));
        assert_eq!(fields.retry_ms, Some(300));
        assert!(out.starts_with(b"event: message\r\n"));
        assert!(
            out.ends_with(b"\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        same_but_list(
            PY_TOOLS,
            &fields.data,
            "tools",
            &["echo", "progress"],
            "name",
        );
        // Data over several lines, and an event cut off at the end of its stream.
        let multi = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"tools\":[{\"name\":\"x_delete\"}]}}";
        let out = f.event(Bytes::from(multi));
        let v: Value = serde_json::from_slice(&sse::parse_sse_event(&out).data).unwrap();
        assert_eq!(v["result"]["tools"], serde_json::json!([]));
        assert!(out.ends_with(b"\n\n"));
        let untouched =
            Bytes::from_static(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n\n");
        assert_eq!(f.event(untouched.clone()), untouched);
        let comment = Bytes::from_static(b": keepalive\n\n");
        assert_eq!(f.event(comment.clone()), comment);
    }
}
