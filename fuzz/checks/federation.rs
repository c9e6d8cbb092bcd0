//! federation: the pure logic of a federated route (`upstream::federated`) on what peers send.
//!
//! Invariants, by mode (the input's first byte, modulo 6):
//! 0. cursor text: `Cursor::decode` never panics, and what decodes re-encodes to the same text
//!    (one canonical form); a cursor built of arbitrary positions decodes back to itself
//!    whenever `encode` accepts it. The data is tried as text, and as the raw body of a cursor
//!    (after a valid header) so that positions are reached.
//! 1. URI marks: `unmark(mark(u, s)) == (s, u)` for any `u` and server name `s`; a marked value
//!    starts with a valid scheme and `:`; `looks_marked` is exactly `unmark` reading it, and
//!    what it reads names a valid server. Template matching never panics, and a template
//!    without expressions matches its own text.
//! 2. ids: `untag_id(tag_id(m, raw)) == (m, raw)` for a raw id that is a JSON number or
//!    string; a tagged id is a JSON string; whatever `untag_id` reads re-tags to the same string.
//! 3. message rewrites on an arbitrary body: `rename_request`, `with_cursor`, `tag_message` and
//!    `untag_message` give JSON whenever the body was JSON; a renamed request names the new
//!    name (as `mcp::classify` reads it); a tagged request's id untags to the original.
//! 4. the name table: for names drawn from an alphabet of separators, marks and template
//!    braces, over three members of mixed prefix modes (one with a filter) and a small bound,
//!    every name `display` shows resolves to the member and name it labels, and every URI a
//!    bare template shown can match resolves to that template's member.
//! 5. `merge_list` on two arbitrary pages never panics; its result is JSON, and its next
//!    cursor (if any) decodes to itself.

use arbitrary::Unstructured;
use serde::de::IgnoredAny;
use shardcat::authz::glob::Glob;
use shardcat::config::{HttpUpstreams, NameFilter, Prefix, ServerConfig, Strategy, Upstream};
use shardcat::mcp;
use shardcat::upstream::federated::cursor::{Binding, Cursor, Position, DEFAULT_MAX_CURSOR_BYTES};
use shardcat::upstream::federated::merge::{merge_list, ListKind};
use shardcat::upstream::federated::names::{Kind, Names, Resolution};
use shardcat::upstream::federated::{rewrite, uri};

#[path = "common.rs"]
mod common;

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => cursors(rest),
        1 => marks(rest),
        2 => ids(rest),
        3 => messages(rest),
        4 => names(rest),
        _ => lists(rest),
    }
}

fn server(name: &str, prefix: Prefix) -> ServerConfig {
    ServerConfig {
        name: name.into(),
        upstream: Upstream::Http(HttpUpstreams {
            targets: Vec::new(),
            strategy: Strategy::RoundRobin,
        }),
        tools: NameFilter::default(),
        prompts: NameFilter::default(),
        resources: NameFilter::default(),
        prefix,
    }
}

fn binding() -> Binding {
    Binding::of_names("/fed", &["a", "b", "c"])
}

/// Plain base64url without padding (the reference for the cursor's own).
fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for b in bytes {
        bits = bits << 8 | u32::from(*b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(A[(bits >> n & 0x3f) as usize] as char);
        }
    }
    if n > 0 {
        out.push(A[(bits << (6 - n) & 0x3f) as usize] as char);
    }
    out
}

fn cursors(data: &[u8]) {
    let b = binding();
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Cursor::decode(&text, b) {
        assert_eq!(c.encode().as_deref(), Ok(&*text), "not canonical");
    }
    let mut raw = vec![1u8];
    raw.extend_from_slice(&b.tag().to_le_bytes());
    raw.push(3);
    raw.extend_from_slice(data);
    let text = base64url(&raw);
    if let Ok(c) = Cursor::decode(&text, b) {
        assert_eq!(c.encode().as_deref(), Ok(text.as_str()), "not canonical");
    }
    let mut u = Unstructured::new(data);
    let positions: Vec<Position> = (0..3)
        .map(|_| match common::take::<u8>(&mut u) % 3 {
            0 => Position::Start,
            1 => Position::Done,
            _ => Position::At(common::take(&mut u)),
        })
        .collect();
    let c = Cursor::from_positions(b, positions).expect("three positions");
    match c.encode() {
        Ok(text) => {
            assert!(text.len() <= DEFAULT_MAX_CURSOR_BYTES);
            assert_eq!(Cursor::decode(&text, b).as_ref(), Ok(&c));
        }
        Err(_) => assert!(c
            .positions()
            .iter()
            .any(|p| matches!(p, Position::At(s) if s.len() > 1000))),
    }
}

/// Bytes as a server name: `[a-z0-9_-]+`.
fn server_name(bytes: &[u8]) -> String {
    const ALPHA: &[u8] = b"abz09_-";
    let name: String = bytes
        .iter()
        .take(16)
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect();
    if name.is_empty() {
        "a".into()
    } else {
        name
    }
}

fn marks(data: &[u8]) {
    let (u, s) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let value = String::from_utf8_lossy(u);
    let server = server_name(s);
    let marked = uri::mark(&value, &server);
    assert_eq!(
        uri::unmark(&marked),
        Some((server.clone(), value.to_string())),
        "{value:?} {server}"
    );
    let colon = marked.find(':').expect("a scheme");
    let scheme = &marked[..colon];
    assert!(
        scheme.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_uppercase()),
        "{marked}"
    );
    assert!(
        scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)),
        "{marked}"
    );
    let read = uri::unmark(&value);
    assert_eq!(uri::looks_marked(&value), read.is_some());
    if let Some((s, _)) = read {
        assert!(uri::is_server_name(&s), "{s:?}");
    }
    let other = String::from_utf8_lossy(s);
    let _ = uri::template_matches(&value, &other);
    let _ = uri::may_overlap(&value, &other);
    if !value.contains('{') && value.len() < 512 {
        assert!(uri::template_matches(&value, &value), "{value:?}");
    }
}

fn ids(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let member = usize::from(pick % 64);
    let text = String::from_utf8_lossy(rest);
    let raw = if pick & 0x80 == 0 {
        serde_json::to_string(&*text).expect("a string")
    } else {
        let digits: String = rest
            .iter()
            .take(30)
            .map(|b| (b'0' + b % 10) as char)
            .collect();
        format!("-1{digits}")
    };
    let tagged = rewrite::tag_id(member, &raw);
    assert!(serde_json::from_str::<String>(&tagged).is_ok(), "{tagged}");
    assert_eq!(rewrite::untag_id(&tagged), Some((member, raw)));
    if let Some((m, r)) = rewrite::untag_id(&text) {
        let back: String = serde_json::from_str(&rewrite::tag_id(m, &r)).expect("tagged");
        assert_eq!(Some(back), serde_json::from_str::<String>(&text).ok());
    }
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

fn messages(body: &[u8]) {
    let json = is_json(body);
    let check = |out: &Option<Vec<u8>>| {
        if let Some(out) = out {
            assert!(
                !json || is_json(out),
                "{:?} -> {:?}",
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(out)
            );
        }
    };
    for (named, method) in [
        (mcp::Named::Tool, "tools/call"),
        (mcp::Named::Resource, "resources/read"),
        (mcp::Named::Prompt, "completion/complete"),
        (mcp::Named::Resource, "completion/complete"),
    ] {
        let out = rewrite::rename_request(body, named, method, "re\"named");
        check(&out);
        let (Some(out), Ok(mcp::Body::Single(m))) = (&out, mcp::classify(body)) else {
            continue;
        };
        if m.named == Some(named) && m.method == Some(method) {
            let b = mcp::classify(out).expect("still JSON-RPC");
            assert_eq!(b.messages()[0].name.as_deref(), Some("re\"named"));
        }
    }
    check(&rewrite::with_cursor(body, Some("c")));
    check(&rewrite::with_cursor(body, None));
    check(&rewrite::with_subscriptions(body, &["x:/1".into()]));
    check(&rewrite::untag_message(body).map(|(_, b)| b));
    let tagged = rewrite::tag_message(5, body);
    check(&tagged);
    if let (Some(out), Ok(mcp::Body::Single(before))) = (&tagged, mcp::classify(body)) {
        if let (Some(id), Ok(after)) = (before.id, mcp::classify(out)) {
            let after_id = after.messages()[0].id.expect("an id");
            assert_eq!(rewrite::untag_id(after_id), Some((5, id.to_string())));
        }
    }
}

/// A name from the table's alphabet: pieces that make collisions, prefixes, marks, schemes
/// and template expressions likely.
fn piece_name(u: &mut Unstructured<'_>) -> String {
    const PIECES: [&str; 12] = [
        "a", "b", "__", "x", "fed.", "+", ":", "/", "{p}", "{+q}", "c", "_",
    ];
    let n = 1 + usize::from(common::take::<u8>(u) % 4);
    (0..n)
        .map(|_| PIECES[usize::from(common::take::<u8>(u)) % PIECES.len()])
        .collect()
}

fn names(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let modes = [Prefix::Conditional, Prefix::Never, Prefix::Always];
    let mut servers: Vec<ServerConfig> = ["a", "b", "c_d"]
        .iter()
        .map(|n| server(n, modes[usize::from(common::take::<u8>(&mut u)) % 3]))
        .collect();
    let deny = Glob::new("*x*").expect("a glob");
    servers[1].tools.exclude.push(deny.clone());
    servers[1].resources.exclude.push(deny);
    let refs: Vec<&ServerConfig> = servers.iter().collect();
    let max = usize::from(common::take::<u8>(&mut u) % 24);
    let mut table = Names::new(&refs, "__", max).expect("valid members");
    let kinds = [Kind::Tool, Kind::Resource, Kind::Template];
    let mut offered: Vec<(Kind, usize, String)> = Vec::new();
    for _ in 0..common::take::<u8>(&mut u) % 40 {
        let kind = kinds[usize::from(common::take::<u8>(&mut u)) % 3];
        let member = usize::from(common::take::<u8>(&mut u)) % 3;
        let name = piece_name(&mut u);
        table.observe(kind, member, [name.as_str()]);
        offered.push((kind, member, name));
    }
    for (kind, member, name) in &offered {
        let Some(shown) = table.display(*kind, *member, name) else {
            continue;
        };
        let want = Resolution::Found {
            member: *member,
            name: name.as_str().into(),
        };
        assert_eq!(
            table.resolve(*kind, &shown),
            want,
            "{kind:?} {member} {name:?} shown {shown:?}"
        );
        if *kind == Kind::Template && shown == name.as_str() {
            templates_route_back(&table, *member, name, &offered);
        }
    }
}

/// Every offered string a bare template matches (as a URI) resolves to the template's member,
/// unless that member's filter hides it or it reads as marked.
fn templates_route_back(
    table: &Names,
    member: usize,
    template: &str,
    offered: &[(Kind, usize, String)],
) {
    for (_, _, candidate) in offered {
        let hidden = member == 1 && candidate.contains('x');
        if hidden || !uri::template_matches(template, candidate) || uri::looks_marked(candidate) {
            continue;
        }
        let want = Resolution::Found {
            member,
            name: candidate.as_str().into(),
        };
        assert_eq!(
            table.resolve(Kind::Resource, candidate),
            want,
            "{template:?} shown bare"
        );
    }
}

fn lists(data: &[u8]) {
    let servers = [
        server("a", Prefix::Conditional),
        server("b", Prefix::Conditional),
    ];
    let refs: Vec<&ServerConfig> = servers.iter().collect();
    let mut table = Names::new(&refs, "__", 64).expect("valid members");
    let (a, b) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let binding = Binding::new("/fed", &refs);
    for kind in [
        ListKind::Tools,
        ListKind::Resources,
        ListKind::ResourceTemplates,
    ] {
        let page = merge_list(
            kind,
            &mut table,
            &[Some(a), Some(b)],
            &Cursor::start(binding),
        );
        let Ok(page) = page else {
            continue;
        };
        assert!(
            is_json(&page.result),
            "{:?}",
            String::from_utf8_lossy(&page.result)
        );
        if let Some(next) = page.next {
            let text = next.encode().expect("encoded once already");
            assert_eq!(Cursor::decode(&text, binding), Ok(next));
        }
    }
}
