//! One answer for the client from the answers of a route's servers ("members", in route
//! order): `initialize` (handshake era), `server/discover` (2026-07-28), and one page of a
//! merged list (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`).
//!
//! Rules:
//! - A member whose answer failed, is malformed, or does not speak the version the route
//!   settles on is *left out*, with a reason: listed in the result's `_meta` under
//!   `LEFT_OUT_META_KEY` and returned, so the runtime applies `failure_mode` (open: serve the
//!   rest; closed: fail) and counts it. No member at all: `Err` with every reason.
//! - Capabilities are the union of the included members': objects merged key by key,
//!   booleans (`listChanged`, `subscribe`) OR-ed, any other value the first member's. What
//!   the gateway cannot route (a capability it does not know) is the runtime's to strip.
//! - The gateway names itself and the route (`gateway_info`); each member's `instructions`
//!   appear under a heading with its name.
//! - A merged list page holds each asked member's items in member order, each renamed by the
//!   route's `Names` (and left out when `Names` hides it); every other byte of an item is
//!   kept as it came (the items are spliced, never rebuilt). `nextCursor` is present while any
//!   member has more.
//! - 2026-07-28 results must validate strictly (`schema/2026-07-28/schema.ts`): a list page
//!   whose members' pages carry `resultType`/`ttlMs`/`cacheScope` gets all three, with the
//!   smallest `ttlMs` and `public` only when every page is public; a `server/discover` result
//!   has `resultType`, `supportedVersions`, `capabilities`, `ttlMs` and `cacheScope`, and the
//!   gateway's `serverInfo` in `_meta`. A result with a member left out is not to be cached
//!   (`ttlMs` 0): the member may be back on the next request.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::cursor::{Cursor, CursorError, Position};
use super::json;
use super::names::{Kind, Names};
use crate::config::ServerConfig;
use crate::mcp;

/// `_meta` key listing the members left out of a merged result, as
/// `[{"server": name, "reason": why}]` (reverse-DNS prefix, as the schema's `MetaObject` asks).
pub const LEFT_OUT_META_KEY: &str = "dev.shardcat/left_out";
/// 2026-07-28 `ResultMetaObject` key naming the implementation that answers.
const SERVER_INFO_META_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// A merged `initialize` or `server/discover` result.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The result object for the client.
    pub result: Value,
    /// Members whose answers it holds, in route order.
    pub included: Vec<usize>,
    /// Members left out, each with the reason.
    pub left_out: Vec<(usize, String)>,
}

/// How the gateway names itself to a client of the route at `route_path` (an
/// `Implementation`: `name` and `version` required).
pub fn gateway_info(route_path: &str) -> Value {
    json!({
        "name": "shardcat",
        "title": format!("shardcat {route_path}"),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn server_name<'a>(members: &'a [&ServerConfig], i: usize) -> &'a str {
    members.get(i).map_or("", |m| m.name.as_str())
}

/// Merges the members' `initialize` results (`answers[i]`: member `i`'s result object, or why
/// it failed). The protocol version is the client's requested one when any member answered
/// it; otherwise the one most members answered (the newest on a tie). Members that answered
/// another version are left out.
pub fn merge_initialize(
    route_path: &str,
    members: &[&ServerConfig],
    answers: &[Result<Value, String>],
    requested_version: &str,
) -> Result<Merged, Vec<(usize, String)>> {
    let versions: Vec<Result<&str, String>> = answers.iter().map(answered_version).collect();
    let chosen = choose_version(&versions, requested_version);
    let mut included = Vec::new();
    let mut left_out = Vec::new();
    for (i, v) in versions.into_iter().enumerate() {
        match (v, chosen) {
            (Err(why), _) => left_out.push((i, why)),
            (Ok(v), Some(c)) if v != c => left_out.push((
                i,
                format!("answered protocol version {v}; the route speaks {c}"),
            )),
            (Ok(_), _) => included.push(i),
        }
    }
    let Some(version) = chosen else {
        return Err(left_out);
    };
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities(answers, &included),
        "serverInfo": gateway_info(route_path),
    });
    if let Some(text) = instructions(members, answers, &included) {
        result["instructions"] = text.into();
    }
    if !left_out.is_empty() {
        result["_meta"] = json!({ LEFT_OUT_META_KEY: left_out_json(members, &left_out) });
    }
    Ok(Merged {
        result,
        included,
        left_out,
    })
}

/// The version an `initialize` result names, when the gateway speaks it.
fn answered_version(answer: &Result<Value, String>) -> Result<&str, String> {
    let result = answer.as_ref().map_err(Clone::clone)?;
    let v = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or("malformed initialize result: no protocolVersion")?;
    match mcp::Version::parse(v) {
        Some(_) => Ok(v),
        None => Err(format!(
            "answered protocol version {v}, which the gateway does not speak"
        )),
    }
}

fn choose_version<'a>(versions: &[Result<&'a str, String>], requested: &str) -> Option<&'a str> {
    let ok: Vec<&str> = versions
        .iter()
        .filter_map(|v| v.as_ref().ok().copied())
        .collect();
    if let Some(v) = ok.iter().find(|v| **v == requested) {
        return Some(v);
    }
    let count = |v: &str| ok.iter().filter(|w| **w == v).count();
    ok.iter()
        .copied()
        .max_by_key(|v| (count(v), mcp::Version::parse(v)))
}

/// The union of the included members' capabilities.
fn capabilities(answers: &[Result<Value, String>], included: &[usize]) -> Value {
    let mut caps = Map::new();
    for &i in included {
        let theirs = answers[i].as_ref().ok().and_then(|r| r.get("capabilities"));
        if let Some(Value::Object(theirs)) = theirs {
            union(&mut caps, theirs);
        }
    }
    Value::Object(caps)
}

/// Merges `from` into `into`: objects key by key, booleans OR-ed, otherwise the first value
/// stays. Depth is bounded by serde_json's parse depth (128).
fn union(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
            (Some(Value::Object(a)), Value::Object(b)) => union(a, b),
            (Some(Value::Bool(a)), Value::Bool(b)) => *a |= *b,
            _ => {}
        }
    }
}

/// Each included member's instructions under a heading with its name.
fn instructions(
    members: &[&ServerConfig],
    answers: &[Result<Value, String>],
    included: &[usize],
) -> Option<String> {
    let parts: Vec<String> = included
        .iter()
        .filter_map(|&i| {
            let text = answers[i]
                .as_ref()
                .ok()?
                .get("instructions")?
                .as_str()?
                .trim();
            (!text.is_empty()).then(|| format!("## {}\n\n{text}", server_name(members, i)))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

fn left_out_json(members: &[&ServerConfig], left_out: &[(usize, String)]) -> Value {
    left_out
        .iter()
        .map(|(i, why)| json!({"server": server_name(members, *i), "reason": why}))
        .collect()
}

/// Merges the members' 2026-07-28 `server/discover` results. Members whose
/// `supportedVersions` lack `requested_version` (the version the client speaks) are left
/// out; the result's `supportedVersions` are the known versions every included member lists.
pub fn merge_discover(
    route_path: &str,
    members: &[&ServerConfig],
    answers: &[Result<Value, String>],
    requested_version: &str,
) -> Result<Merged, Vec<(usize, String)>> {
    let mut included = Vec::new();
    let mut left_out = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        match discover_fits(answer, requested_version) {
            Ok(()) => included.push(i),
            Err(why) => left_out.push((i, why)),
        }
    }
    if included.is_empty() {
        return Err(left_out);
    }
    let listed = |i: usize, v: &str| {
        let vs = answers[i]
            .as_ref()
            .ok()
            .and_then(|r| r.get("supportedVersions"));
        vs.and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(|w| w.as_str() == Some(v)))
    };
    let versions: Vec<&str> = mcp::KNOWN_VERSIONS
        .iter()
        .rev()
        .copied()
        .filter(|v| included.iter().all(|&i| listed(i, v)))
        .collect();
    let results: Vec<&Value> = included
        .iter()
        .filter_map(|&i| answers[i].as_ref().ok())
        .collect();
    let (ttl, scope) = cache_hints(results.iter().copied(), !left_out.is_empty());
    let mut meta = json!({ SERVER_INFO_META_KEY: gateway_info(route_path) });
    if !left_out.is_empty() {
        meta[LEFT_OUT_META_KEY] = left_out_json(members, &left_out);
    }
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": versions,
        "capabilities": capabilities(answers, &included),
        "ttlMs": ttl,
        "cacheScope": scope,
        "_meta": meta,
    });
    if let Some(text) = instructions(members, answers, &included) {
        result["instructions"] = text.into();
    }
    Ok(Merged {
        result,
        included,
        left_out,
    })
}

/// Why a `server/discover` answer cannot be part of the route's, if it cannot.
fn discover_fits(answer: &Result<Value, String>, requested: &str) -> Result<(), String> {
    let result = answer.as_ref().map_err(Clone::clone)?;
    if !result.is_object() {
        return Err("malformed discover result: not an object".into());
    }
    match result.get("resultType").map(|t| t.as_str()) {
        None | Some(Some("complete")) => {}
        Some(t) => return Err(format!("discover result of resultType {t:?}")),
    }
    let versions = result.get("supportedVersions").and_then(Value::as_array);
    let Some(versions) = versions else {
        return Err("malformed discover result: no supportedVersions".into());
    };
    if !versions.iter().any(|v| v.as_str() == Some(requested)) {
        return Err(format!("does not support protocol version {requested}"));
    }
    Ok(())
}

/// `ttlMs` and `cacheScope` of a merged result: the smallest TTL (a page without one counts
/// as 0, and so does a result with a member left out) and `public` only when all are.
fn cache_hints<'a>(
    results: impl Iterator<Item = &'a Value>,
    degraded: bool,
) -> (Value, &'static str) {
    let mut ttl = f64::INFINITY;
    let mut public = true;
    for r in results {
        let t = r.get("ttlMs").and_then(Value::as_f64).filter(|t| *t >= 0.0);
        ttl = ttl.min(t.unwrap_or(0.0));
        public &= r.get("cacheScope").and_then(Value::as_str) == Some("public");
    }
    if degraded || !ttl.is_finite() {
        ttl = 0.0;
    }
    (ttl_value(ttl), if public { "public" } else { "private" })
}

/// A TTL as JSON: an integer when it is one (the usual case), else the float.
fn ttl_value(ttl: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if ttl.fract() == 0.0 && ttl < EXACT {
        Value::from(ttl as u64)
    } else {
        serde_json::Number::from_f64(ttl).map_or(Value::from(0), Value::Number)
    }
}

/// The four list methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub fn of_method(method: &str) -> Option<ListKind> {
        Some(match method {
            "tools/list" => ListKind::Tools,
            "prompts/list" => ListKind::Prompts,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::ResourceTemplates,
            _ => return None,
        })
    }

    /// The method that lists this kind (`of_method`'s inverse).
    pub fn method(self) -> &'static str {
        match self {
            ListKind::Tools => "tools/list",
            ListKind::Prompts => "prompts/list",
            ListKind::Resources => "resources/list",
            ListKind::ResourceTemplates => "resources/templates/list",
        }
    }

    /// The result's array.
    pub fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The item's field that names it.
    pub fn key(self) -> &'static str {
        match self {
            ListKind::Tools | ListKind::Prompts => "name",
            ListKind::Resources => "uri",
            ListKind::ResourceTemplates => "uriTemplate",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            ListKind::Tools => Kind::Tool,
            ListKind::Prompts => Kind::Prompt,
            ListKind::Resources => Kind::Resource,
            ListKind::ResourceTemplates => Kind::Template,
        }
    }
}

/// One merged list page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedList {
    /// The result object's JSON.
    pub result: Vec<u8>,
    /// Where the members stand after this page; `None` when every one is done (the result
    /// then has no `nextCursor`).
    pub next: Option<Cursor>,
    /// Members left out of this page (no answer, a malformed page, a repeated cursor): each is
    /// done for this listing.
    pub left_out: Vec<(usize, String)>,
    /// Items dropped because they were not understood (not an object, no string key).
    pub dropped_items: usize,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    tools: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    prompts: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    resources: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "resourceTemplates")]
    resource_templates: Option<Vec<&'a RawValue>>,
    #[serde(default, rename = "nextCursor")]
    next_cursor: Option<String>,
    #[serde(default, rename = "resultType")]
    result_type: Option<String>,
    #[serde(default, rename = "ttlMs")]
    ttl_ms: Option<f64>,
    #[serde(default, rename = "cacheScope")]
    cache_scope: Option<String>,
}

#[derive(Deserialize)]
struct ItemKeys<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "uriTemplate")]
    uri_template: Option<&'a RawValue>,
}

/// An item understood: its text, its key, and where the key's value sits in the text.
struct Item<'a> {
    text: &'a str,
    key: String,
    at: std::ops::Range<usize>,
}

/// A member's page, read.
struct Read<'a> {
    member: usize,
    items: Vec<Item<'a>>,
    hints: Value,
    modern: bool,
}

/// Merges one page of a list. `pages[i]` is member `i`'s result object (raw JSON) for this
/// page; `None` for a member the cursor says is done, or one whose request failed. `cursor` is
/// the one the page was asked with (`Cursor::start` for the first). Refused only when the
/// next cursor cannot be written (a server's cursor too long to carry).
pub fn merge_list(
    kind: ListKind,
    names: &mut Names,
    pages: &[Option<&[u8]>],
    cursor: &Cursor,
) -> Result<MergedList, CursorError> {
    let mut next = cursor.clone();
    let mut left_out = Vec::new();
    let mut read = Vec::new();
    let mut dropped_items = 0;
    for member in 0..names.members() {
        let asked = cursor.position(member);
        if *asked == Position::Done {
            continue;
        }
        let page = pages
            .get(member)
            .copied()
            .flatten()
            .ok_or("no answer".to_string());
        match page.and_then(|p| read_page(kind, p, &mut dropped_items)) {
            Err(why) => {
                left_out.push((member, why));
                next.set(member, Position::Done);
            }
            Ok((page, next_cursor)) => {
                let position = match next_cursor {
                    Some(c) if *asked == Position::At(c.clone()) => {
                        left_out.push((member, "repeated its cursor".into()));
                        Position::Done
                    }
                    Some(c) => Position::At(c),
                    None => Position::Done,
                };
                next.set(member, position);
                read.push(Read { member, ..page });
            }
        }
    }
    for r in &read {
        names.observe(
            kind.kind(),
            r.member,
            r.items.iter().map(|i| i.key.as_str()),
        );
    }
    let next = (!next.is_done()).then_some(next);
    let result = write_list(kind, names, &read, next.as_ref(), &left_out)?;
    Ok(MergedList {
        result,
        next,
        left_out,
        dropped_items,
    })
}

/// A member's page: its understood items and cache hints, and its next cursor.
fn read_page<'a>(
    kind: ListKind,
    bytes: &'a [u8],
    dropped: &mut usize,
) -> Result<(Read<'a>, Option<String>), String> {
    let page: Page<'a> = json::object_of(bytes).ok_or("malformed list result")?;
    if let Some(t) = page.result_type.as_deref().filter(|t| *t != "complete") {
        return Err(format!("list result of resultType {t:?}"));
    }
    let modern = page.result_type.is_some() || page.ttl_ms.is_some() || page.cache_scope.is_some();
    let hints = json!({"ttlMs": page.ttl_ms, "cacheScope": page.cache_scope});
    let raw_items = match kind {
        ListKind::Tools => page.tools,
        ListKind::Prompts => page.prompts,
        ListKind::Resources => page.resources,
        ListKind::ResourceTemplates => page.resource_templates,
    };
    let raw_items =
        raw_items.ok_or_else(|| format!("malformed list result: no {}", kind.field()))?;
    let mut items = Vec::with_capacity(raw_items.len());
    for raw in raw_items {
        match read_item(kind, raw) {
            Some(item) => items.push(item),
            None => *dropped += 1,
        }
    }
    let read = Read {
        member: 0,
        items,
        hints,
        modern,
    };
    Ok((read, page.next_cursor))
}

fn read_item(kind: ListKind, raw: &RawValue) -> Option<Item<'_>> {
    let keys: ItemKeys<'_> = json::object(raw)?;
    let key_raw = match kind {
        ListKind::Tools | ListKind::Prompts => keys.name,
        ListKind::Resources => keys.uri,
        ListKind::ResourceTemplates => keys.uri_template,
    }?;
    let text = raw.get();
    Some(Item {
        text,
        key: json::str_of(key_raw)?,
        at: json::span(text.as_bytes(), key_raw)?,
    })
}

/// The merged result's JSON.
fn write_list(
    kind: ListKind,
    names: &Names,
    read: &[Read<'_>],
    next: Option<&Cursor>,
    left_out: &[(usize, String)],
) -> Result<Vec<u8>, CursorError> {
    let mut out = Vec::with_capacity(read.iter().map(|r| r.items.len() * 64).sum::<usize>() + 64);
    out.push(b'{');
    out.extend_from_slice(json::string(kind.field()).as_bytes());
    out.extend_from_slice(b":[");
    let mut first = true;
    for r in read {
        for item in &r.items {
            let Some(shown) = names.display(kind.kind(), r.member, &item.key) else {
                continue;
            };
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            let text = item.text.as_bytes();
            let renamed = (shown != item.key)
                .then(|| json::splice(text, &[(item.at.clone(), json::string(&shown))]))
                .flatten();
            out.extend_from_slice(renamed.as_deref().unwrap_or(text));
        }
    }
    out.push(b']');
    let mut tail = Map::new();
    if let Some(next) = next {
        tail.insert("nextCursor".into(), next.encode()?.into());
    }
    if read.iter().any(|r| r.modern) {
        let (ttl, scope) = cache_hints(read.iter().map(|r| &r.hints), !left_out.is_empty());
        tail.insert("resultType".into(), "complete".into());
        tail.insert("ttlMs".into(), ttl);
        tail.insert("cacheScope".into(), scope.into());
    }
    if !left_out.is_empty() {
        let list: Vec<Value> = left_out
            .iter()
            .map(|(i, why)| json!({"server": names.server(*i), "reason": why}))
            .collect();
        tail.insert("_meta".into(), json!({ LEFT_OUT_META_KEY: list }));
    }
    for (k, v) in tail {
        out.push(b',');
        out.extend_from_slice(json::string(&k).as_bytes());
        out.push(b':');
        out.extend_from_slice(v.to_string().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::glob::Glob;
    use crate::config::{HttpUpstreams, Prefix, Strategy, Upstream};
    use crate::upstream::federated::cursor::Binding;
    use crate::upstream::federated::names::DEFAULT_MAX_NAMES;

    fn server(name: &str) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            upstream: Upstream::Http(HttpUpstreams {
                targets: Vec::new(),
                strategy: Strategy::RoundRobin,
            }),
            tools: Default::default(),
            prompts: Default::default(),
            resources: Default::default(),
            prefix: Prefix::Conditional,
        }
    }

    fn servers(names: &[&str]) -> Vec<ServerConfig> {
        names.iter().map(|n| server(n)).collect()
    }

    fn refs(s: &[ServerConfig]) -> Vec<&ServerConfig> {
        s.iter().collect()
    }

    fn init(version: &str, caps: Value, instructions: Option<&str>) -> Result<Value, String> {
        let mut r = json!({
            "protocolVersion": version,
            "capabilities": caps,
            "serverInfo": {"name": "peer", "version": "1"},
        });
        if let Some(i) = instructions {
            r["instructions"] = i.into();
        }
        Ok(r)
    }

    #[test]
    fn initialize_leaves_out_a_failed_server_and_an_older_version() {
        let s = servers(&["alpha", "beta", "gamma"]);
        let answers = [
            init(
                "2025-11-25",
                json!({"tools": {"listChanged": true}}),
                Some("Use alpha."),
            ),
            init("2025-06-18", json!({"prompts": {}}), None),
            Err("connect: connection refused".to_string()),
        ];
        let m = merge_initialize("/fed", &refs(&s), &answers, "2025-11-25").unwrap();
        assert_eq!(m.included, [0]);
        assert_eq!(m.left_out.len(), 2);
        assert_eq!(m.left_out[0].0, 1);
        assert!(m.left_out[0].1.contains("2025-06-18"), "{:?}", m.left_out);
        assert_eq!(
            m.left_out[1],
            (2, "connect: connection refused".to_string())
        );
        let r = &m.result;
        assert_eq!(r["protocolVersion"], "2025-11-25");
        assert_eq!(r["capabilities"], json!({"tools": {"listChanged": true}}));
        assert_eq!(r["serverInfo"]["name"], "shardcat");
        assert_eq!(r["serverInfo"]["title"], "shardcat /fed");
        assert_eq!(r["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(r["instructions"], "## alpha\n\nUse alpha.");
        let meta = &r["_meta"][LEFT_OUT_META_KEY];
        assert_eq!(meta[0]["server"], "beta");
        assert_eq!(
            meta[1],
            json!({"server": "gamma", "reason": "connect: connection refused"})
        );
    }

    #[test]
    fn initialize_settles_on_the_version_most_servers_answered() {
        let s = servers(&["a", "b", "c", "d"]);
        let answers = [
            init(
                "2025-06-18",
                json!({"tools": {"listChanged": false}, "logging": {}}),
                Some("A"),
            ),
            init(
                "2025-06-18",
                json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}}),
                Some(" B "),
            ),
            init("2025-03-26", json!({}), None),
            Ok(json!({"capabilities": {}})),
        ];
        let m = merge_initialize("/mcp", &refs(&s), &answers, "2025-11-25").unwrap();
        assert_eq!(m.result["protocolVersion"], "2025-06-18");
        assert_eq!(m.included, [0, 1]);
        assert_eq!(
            m.result["capabilities"],
            json!({"tools": {"listChanged": true}, "logging": {}, "resources": {"subscribe": true}})
        );
        assert_eq!(m.result["instructions"], "## a\n\nA\n\n## b\n\nB");
        assert!(
            m.left_out[1].1.contains("no protocolVersion"),
            "{:?}",
            m.left_out
        );
        let none = merge_initialize("/mcp", &refs(&s[..1]), &[Err("down".into())], "2025-11-25");
        assert_eq!(none, Err(vec![(0, "down".to_string())]));
        let unknown = [init("2099-01-01", json!({}), None)];
        assert!(merge_initialize("/mcp", &refs(&s[..1]), &unknown, "2099-01-01").is_err());
    }

    /// The fields `schema/2026-07-28/schema.ts` requires of a `DiscoverResult`, with their types.
    fn assert_valid_discover(r: &Value) {
        assert_eq!(r["resultType"], "complete");
        let versions = r["supportedVersions"]
            .as_array()
            .expect("supportedVersions");
        assert!(versions.iter().all(Value::is_string));
        assert!(r["capabilities"].is_object());
        assert!(r["ttlMs"].as_f64().is_some_and(|t| t >= 0.0), "{r}");
        assert!(matches!(
            r["cacheScope"].as_str(),
            Some("public" | "private")
        ));
        let info = &r["_meta"][SERVER_INFO_META_KEY];
        assert!(
            info["name"].is_string() && info["version"].is_string(),
            "{r}"
        );
        if let Some(i) = r.get("instructions") {
            assert!(i.is_string());
        }
    }

    fn discover(versions: &[&str], ttl: u64, scope: &str) -> Result<Value, String> {
        Ok(json!({
            "resultType": "complete",
            "supportedVersions": versions,
            "capabilities": {"tools": {}},
            "ttlMs": ttl,
            "cacheScope": scope,
            "_meta": {SERVER_INFO_META_KEY: {"name": "peer", "version": "1"}},
        }))
    }

    #[test]
    fn discover_intersects_versions_and_narrows_caching() {
        let s = servers(&["a", "b", "c"]);
        let answers = [
            discover(&["2026-07-28", "2025-11-25"], 3_600_000, "public"),
            discover(&["2025-11-25", "2026-07-28"], 1000, "public"),
            discover(&["2026-07-28"], 5, "private"),
        ];
        let m = merge_discover("/fed", &refs(&s[..2]), &answers[..2], "2026-07-28").unwrap();
        assert_valid_discover(&m.result);
        assert_eq!(
            m.result["supportedVersions"],
            json!(["2026-07-28", "2025-11-25"])
        );
        assert_eq!(m.result["ttlMs"], 1000);
        assert_eq!(m.result["cacheScope"], "public");
        assert_eq!(m.result["_meta"][SERVER_INFO_META_KEY]["name"], "shardcat");
        let m = merge_discover("/fed", &refs(&s), &answers, "2026-07-28").unwrap();
        assert_eq!(m.result["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(
            (m.result["ttlMs"].clone(), m.result["cacheScope"].clone()),
            (json!(5), json!("private"))
        );
    }

    #[test]
    fn discover_leaves_out_what_does_not_fit_and_is_not_cached_then() {
        let s = servers(&["a", "b", "c", "d"]);
        let answers = [
            discover(&["2026-07-28"], 60_000, "public"),
            discover(&["2025-11-25"], 60_000, "public"),
            Ok(json!({"resultType": "input_required", "supportedVersions": ["2026-07-28"]})),
            Err("timed out".into()),
        ];
        let m = merge_discover("/fed", &refs(&s), &answers, "2026-07-28").unwrap();
        assert_valid_discover(&m.result);
        assert_eq!(m.included, [0]);
        assert_eq!(
            m.left_out.iter().map(|l| l.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(
            m.left_out[0].1.contains("does not support"),
            "{:?}",
            m.left_out
        );
        assert_eq!(
            m.result["ttlMs"], 0,
            "a result with a server left out is not cached"
        );
        assert_eq!(m.result["_meta"][LEFT_OUT_META_KEY][2]["server"], "d");
        assert!(merge_discover("/fed", &refs(&s[3..]), &answers[3..], "2026-07-28").is_err());
    }

    fn names_for(s: &[ServerConfig]) -> Names {
        Names::new(&refs(s), "__", DEFAULT_MAX_NAMES).unwrap()
    }

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn tool_names(v: &Value) -> Vec<&str> {
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn paginates_across_two_servers_with_the_cursor() {
        let s = servers(&["a", "b"]);
        let mut names = names_for(&s);
        let binding = Binding::new("/fed", &refs(&s));
        let a1 = br#"{"tools":[{"name":"echo","inputSchema":{"type":"object","maximum":123456789012345678901234567890}},{"name":"only_a"}],"nextCursor":"a-2"}"#;
        let b1 = br#"{"tools":[{"inputSchema":{},"name":"echo"}]}"#;
        let start = Cursor::start(binding);
        let page = merge_list(
            ListKind::Tools,
            &mut names,
            &[Some(&a1[..]), Some(&b1[..])],
            &start,
        )
        .unwrap();
        let v = parse(&page.result);
        assert_eq!(tool_names(&v), ["a__echo", "only_a", "b__echo"]);
        let text = std::str::from_utf8(&page.result).unwrap();
        assert!(text.contains(r#"{"name":"a__echo","inputSchema":{"type":"object","maximum":123456789012345678901234567890}}"#), "{text}");
        assert!(
            text.contains(r#"{"inputSchema":{},"name":"b__echo"}"#),
            "key order kept: {text}"
        );
        let next_text = v["nextCursor"].as_str().unwrap();
        let next = Cursor::decode(next_text, binding).unwrap();
        assert_eq!(
            next.positions(),
            [Position::At("a-2".into()), Position::Done]
        );
        assert_eq!(Some(next.clone()), page.next);
        assert_eq!(next.requests().collect::<Vec<_>>(), [(0, Some("a-2"))]);
        let a2 = br#"{"tools":[{"name":"late"}]}"#;
        let page = merge_list(ListKind::Tools, &mut names, &[Some(&a2[..]), None], &next).unwrap();
        let v = parse(&page.result);
        assert_eq!(tool_names(&v), ["late"]);
        assert!(v.get("nextCursor").is_none());
        assert_eq!(page.next, None);
        assert!(page.left_out.is_empty());
        assert!(
            v.get("resultType").is_none(),
            "handshake-era pages stay in their shape"
        );
    }

    #[test]
    fn a_failed_or_malformed_member_is_left_out_and_done() {
        let s = servers(&["a", "b", "c", "d"]);
        let mut names = names_for(&s);
        let binding = Binding::new("/fed", &refs(&s));
        let mut cursor = Cursor::start(binding);
        cursor.set(3, Position::At("same".into()));
        let a =
            br#"{"tools":[{"name":"x"},7,{"name":3},{"name":"y","name":"z"}],"nextCursor":"more"}"#;
        let c = br#"[{"tools":[]}]"#;
        let d = br#"{"tools":[{"name":"d1"}],"nextCursor":"same"}"#;
        let pages = [Some(&a[..]), None, Some(&c[..]), Some(&d[..])];
        let page = merge_list(ListKind::Tools, &mut names, &pages, &cursor).unwrap();
        let v = parse(&page.result);
        assert_eq!(tool_names(&v), ["x", "d1"]);
        assert_eq!(page.dropped_items, 3);
        let out: Vec<usize> = page.left_out.iter().map(|l| l.0).collect();
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(page.left_out[2].1, "repeated its cursor");
        let next = page.next.unwrap();
        assert_eq!(
            next.positions(),
            [
                Position::At("more".into()),
                Position::Done,
                Position::Done,
                Position::Done
            ]
        );
        assert_eq!(
            v["_meta"][LEFT_OUT_META_KEY][0],
            json!({"server": "b", "reason": "no answer"})
        );
    }

    #[test]
    fn modern_pages_keep_a_valid_2026_shape() {
        let s = servers(&["a", "b"]);
        let mut names = names_for(&s);
        let start = Cursor::start(Binding::new("/fed", &refs(&s)));
        let a = br#"{"resultType":"complete","prompts":[{"name":"greet"}],"ttlMs":5000,"cacheScope":"public"}"#;
        let b = br#"{"resultType":"complete","prompts":[{"name":"greet"}],"ttlMs":2000,"cacheScope":"private","_meta":{"io.modelcontextprotocol/serverInfo":{"name":"b","version":"1"}}}"#;
        let page = merge_list(
            ListKind::Prompts,
            &mut names,
            &[Some(&a[..]), Some(&b[..])],
            &start,
        )
        .unwrap();
        let v = parse(&page.result);
        assert_eq!(v["resultType"], "complete");
        assert_eq!(v["ttlMs"], 2000);
        assert_eq!(v["cacheScope"], "private");
        assert!(
            v.get("_meta").is_none(),
            "a member's serverInfo is not the route's"
        );
        assert_eq!(
            v["prompts"],
            json!([{"name": "a__greet"}, {"name": "b__greet"}])
        );
        let bad = br#"{"resultType":"input_required","prompts":[]}"#;
        let page = merge_list(
            ListKind::Prompts,
            &mut names,
            &[Some(&a[..]), Some(&bad[..])],
            &start,
        )
        .unwrap();
        let v = parse(&page.result);
        assert_eq!(v["ttlMs"], 0, "degraded");
        assert_eq!(v["cacheScope"], "public");
    }

    #[test]
    fn resources_are_marked_filtered_and_templates_too() {
        let mut s = servers(&["my_fs", "beta"]);
        s[1].resources
            .exclude
            .push(Glob::new("fed://beta/secret*").unwrap());
        let mut names = names_for(&s);
        let start = Cursor::start(Binding::new("/fed", &refs(&s)));
        let a = br#"{"resources":[{"uri":"fed://shared/readme","name":"shared"},{"uri":"fed://my_fs/readme","name":"r"}]}"#;
        let b = br#"{"resources":[{"uri":"fed://shared/readme","name":"shared"},{"uri":"fed://beta/secret","name":"s"}]}"#;
        let page = merge_list(
            ListKind::Resources,
            &mut names,
            &[Some(&a[..]), Some(&b[..])],
            &start,
        )
        .unwrap();
        let v = parse(&page.result);
        let uris: Vec<&str> = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uri"].as_str().unwrap())
            .collect();
        assert_eq!(
            uris,
            [
                "fed+fed.my.fs://shared/readme",
                "fed://my_fs/readme",
                "fed+fed.beta://shared/readme"
            ]
        );
        let t =
            br#"{"resourceTemplates":[{"uriTemplate":"fed://beta/items/{id}","name":"items"}]}"#;
        let page = merge_list(
            ListKind::ResourceTemplates,
            &mut names,
            &[None, Some(&t[..])],
            &{
                let mut c = start.clone();
                c.set(0, Position::Done);
                c
            },
        )
        .unwrap();
        let v = parse(&page.result);
        assert_eq!(
            v["resourceTemplates"][0]["uriTemplate"],
            "fed://beta/items/{id}"
        );
    }

    #[test]
    fn list_kinds_follow_the_methods() {
        assert_eq!(
            ListKind::of_method("resources/templates/list"),
            Some(ListKind::ResourceTemplates)
        );
        assert_eq!(ListKind::of_method("tools/call"), None);
        assert_eq!(ListKind::Resources.key(), "uri");
        assert_eq!(ListKind::ResourceTemplates.field(), "resourceTemplates");
    }
}
