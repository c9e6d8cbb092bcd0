//! Byte-exact edits of the messages crossing a federated route:
//! - a client's request renamed to the server's own name (`rename_request`), and a list
//!   request given one server's cursor (`with_cursor`) or a subscription its URIs
//!   (`with_subscriptions`);
//! - the JSON-RPC id of a server-to-client request tagged with its server, so two servers'
//!   ids never collide on the client's stream, and the client's response untagged back
//!   (`tag_id`, `untag_id`, `tag_message`, `untag_message`);
//! - URIs a server puts in results and notifications marked for the client where they must be
//!   (`result_for_client`, `notification_for_client`).
//!
//! A tagged id is the JSON string `"fed.<member>.<the server's raw id>"` (`fed.0.7`,
//! `fed.1."abc"`): the raw id is kept as text, so a number stays a number (however large) and a
//! string keeps its escapes.
//!
//! Invariants: each edit replaces exactly the values it names and keeps every other byte
//! (the values are located as `RawValue`s borrowed from the message, `json::span`). Whatever
//! it cannot read (not an object, a duplicate field, a value of the wrong type) is `None`:
//! nothing is edited, and the caller decides. A message that was JSON stays JSON: only JSON
//! values replace JSON values.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::json;
use super::names::{Names, MAX_ROUTE_SERVERS};
use crate::mcp;

/// What a tagged id starts with.
pub const ID_TAG: &str = "fed.";

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "ref")]
    reference: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "requestId")]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    notifications: Option<&'a RawValue>,
}

/// The request `body` with the name it gives (`params.name` of `tools/call` and `prompts/get`,
/// `params.uri` of `resources/*`, `params.ref.name` or `.uri` of `completion/complete`)
/// replaced by `upstream_name`, the server's own. `named` is what `mcp::classify` said the
/// request names. `None` when the body does not hold that name as a string.
pub fn rename_request(
    body: &[u8],
    named: mcp::Named,
    method: &str,
    upstream_name: &str,
) -> Option<Vec<u8>> {
    let msg: Msg<'_> = json::object_of(body)?;
    let params: Named<'_> = json::object(msg.params?)?;
    let target = if method == "completion/complete" {
        let reference: Named<'_> = json::object(params.reference?)?;
        match named {
            mcp::Named::Prompt => reference.name,
            mcp::Named::Resource => reference.uri,
            mcp::Named::Tool => None,
        }
    } else {
        match named {
            mcp::Named::Tool | mcp::Named::Prompt => params.name,
            mcp::Named::Resource => params.uri,
        }
    }?;
    json::str_of(target)?;
    replace(body, target, json::string(upstream_name))
}

/// `text` with the value `at` (borrowed from it) replaced by `new`.
fn replace(text: &[u8], at: &RawValue, new: String) -> Option<Vec<u8>> {
    json::splice(text, &[(json::span(text, at)?, new)])
}

/// A list request for one server: `params.cursor` set to that server's cursor, or removed for
/// its first page (`None`). `None` when it cannot be done: the body is not a request object,
/// or it has no `params.cursor` to set (a client's first page asks every server's first page,
/// so the runtime never needs to add one).
pub fn with_cursor(body: &[u8], cursor: Option<&str>) -> Option<Vec<u8>> {
    let msg: Msg<'_> = json::object_of(body)?;
    let Some(params) = msg.params else {
        return cursor.is_none().then(|| body.to_vec());
    };
    let named: Named<'_> = json::object(params)?;
    match (named.cursor, cursor) {
        (Some(at), Some(c)) => replace(body, at, json::string(c)),
        (Some(at), None) => json::splice(
            body,
            &[(member_span(body, json::span(body, at)?)?, String::new())],
        ),
        (None, None) => Some(body.to_vec()),
        (None, Some(_)) => None,
    }
}

/// The bytes to remove to take out the object member whose value spans `value`: its key,
/// the colon, the value, and one comma (the one before it, or after it when it comes first).
fn member_span(text: &[u8], value: Range<usize>) -> Option<Range<usize>> {
    let ws = |b: &u8| b.is_ascii_whitespace();
    let before = |mut i: usize| {
        while i > 0 && ws(&text[i - 1]) {
            i -= 1;
        }
        i
    };
    let colon = before(value.start).checked_sub(1)?;
    let key_end = before(colon).checked_sub(1)?;
    if text[colon] != b':' || text[key_end] != b'"' {
        return None;
    }
    // The key's opening quote: the first quote before its closing one that no odd run of
    // backslashes escapes (an unescaped quote cannot occur inside a JSON string).
    let mut q = key_end;
    loop {
        q = text[..q].iter().rposition(|b| *b == b'"')?;
        let slashes = text[..q].iter().rev().take_while(|b| **b == b'\\').count();
        if slashes % 2 == 0 {
            break;
        }
    }
    let lead = before(q).checked_sub(1)?;
    match text[lead] {
        b',' => Some(lead..value.end),
        b'{' => {
            let mut end = value.end;
            while end < text.len() && ws(&text[end]) {
                end += 1;
            }
            Some(q..end + usize::from(text.get(end) == Some(&b',')))
        }
        _ => None,
    }
}

/// A `subscriptions/listen` request (2026-07-28) for one server:
/// `params.notifications.resourceSubscriptions` replaced by `uris` (that server's own URIs of
/// those the client asked for). `None` when the request has no such list.
pub fn with_subscriptions(body: &[u8], uris: &[String]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Filter<'a> {
        #[serde(borrow, default, rename = "resourceSubscriptions")]
        subscriptions: Option<&'a RawValue>,
    }
    let msg: Msg<'_> = json::object_of(body)?;
    let params: Named<'_> = json::object(msg.params?)?;
    let filter: Filter<'_> = json::object(params.notifications?)?;
    let list = serde_json::to_string(uris).ok()?;
    replace(body, filter.subscriptions?, list)
}

/// A server's raw JSON-RPC id (a number or a string, as text) tagged with its member index:
/// the JSON text of a string.
pub fn tag_id(member: usize, raw_id: &str) -> String {
    json::string(&format!("{ID_TAG}{member}.{raw_id}"))
}

/// The member and raw id a client's raw id (JSON text) was tagged with; `None` for an id the
/// gateway did not tag.
pub fn untag_id(raw: &str) -> Option<(usize, String)> {
    let text: String = serde_json::from_str(raw).ok()?;
    let rest = text.strip_prefix(ID_TAG)?;
    let (digits, id) = rest.split_once('.')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let member: usize = digits
        .parse()
        .ok()
        .filter(|m| canonical && *m < MAX_ROUTE_SERVERS)?;
    is_raw_id(id).then(|| (member, id.to_string()))
}

/// Whether `text` is a JSON string or number, alone: what `mcp::classify` accepts as an id.
fn is_raw_id(text: &str) -> bool {
    matches!(text.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
        && serde_json::from_str::<&RawValue>(text).is_ok()
}

/// A server-to-client message of member `member` with its id tagged: a request's `id`, or a
/// `notifications/cancelled`'s `params.requestId` (the server cancels a request it sent).
/// `None` when there is no such id (other notifications pass as they are).
pub fn tag_message(member: usize, message: &[u8]) -> Option<Vec<u8>> {
    let msg: Msg<'_> = json::object_of(message)?;
    let id = match (msg.id, msg.method.as_deref()) {
        (Some(id), Some(_)) => id,
        (None, Some("notifications/cancelled")) => {
            json::object::<Named<'_>>(msg.params?)?.request_id?
        }
        _ => return None,
    };
    is_raw_id(id.get()).then_some(())?;
    replace(message, id, tag_id(member, id.get()))
}

/// A client's message to a server-to-client request (its response, or a
/// `notifications/cancelled` naming it) with the id untagged: the member it goes to, and the
/// message for that member. `None` when the id was not tagged by the gateway.
pub fn untag_message(message: &[u8]) -> Option<(usize, Vec<u8>)> {
    let msg: Msg<'_> = json::object_of(message)?;
    let id = match (msg.id, msg.method.as_deref()) {
        (Some(id), None) => id,
        (None, Some("notifications/cancelled")) => {
            json::object::<Named<'_>>(msg.params?)?.request_id?
        }
        _ => return None,
    };
    let (member, raw) = untag_id(id.get())?;
    Some((member, replace(message, id, raw)?))
}

#[derive(Deserialize)]
struct Uri<'a> {
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
}

/// A content block (`ContentBlock`): a resource link carries `uri`, an embedded resource
/// `resource.uri`.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Lists<'a> {
    #[serde(borrow, default)]
    contents: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    content: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct PromptMessage<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// Member `member`'s response to `method`, with the resource URIs it holds as the client must
/// see them (`Names::for_client`): `resources/read` contents, and the resource links and
/// embedded resources of `tools/call` and `prompts/get` results (so that reading one later
/// routes back to `member`). `marked`: the client named the resource in its marked form
/// (`resources/read`), so the contents answer in that form. `None` when nothing changes.
pub fn result_for_client(
    method: &str,
    message: &[u8],
    names: &Names,
    member: usize,
    marked: bool,
) -> Option<Vec<u8>> {
    let msg: Msg<'_> = json::object_of(message)?;
    let lists: Lists<'_> = json::object(msg.result?)?;
    let mut uris = Vec::new();
    match method {
        "resources/read" => {
            for c in lists.contents.unwrap_or_default() {
                uris.extend(json::object::<Uri<'_>>(c).and_then(|u| u.uri));
            }
        }
        "tools/call" => {
            for b in lists.content.unwrap_or_default() {
                uris.extend(block_uri(b));
            }
        }
        "prompts/get" => {
            for m in lists.messages.unwrap_or_default() {
                let content = json::object::<PromptMessage<'_>>(m).and_then(|m| m.content);
                uris.extend(content.and_then(block_uri));
            }
        }
        _ => return None,
    }
    mark_uris(message, &uris, names, member, marked)
}

fn block_uri(block: &RawValue) -> Option<&RawValue> {
    let b: Block<'_> = json::object(block)?;
    match b.kind.as_deref()? {
        "resource_link" => b.uri,
        "resource" => json::object::<Uri<'_>>(b.resource?)?.uri,
        _ => None,
    }
}

/// `message` with each of `uris` (values borrowed from it, in order) as the client must see
/// it; `None` when none changes.
fn mark_uris(
    message: &[u8],
    uris: &[&RawValue],
    names: &Names,
    member: usize,
    marked: bool,
) -> Option<Vec<u8>> {
    let mut edits = Vec::new();
    for raw in uris {
        let Some(own) = json::str_of(raw) else {
            continue;
        };
        let shown = names.for_client(member, &own, marked);
        if shown != own {
            edits.push((json::span(message, raw)?, json::string(&shown)));
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(r, _)| r.start);
    json::splice(message, &edits)
}

/// Member `member`'s notification with the URI it names as the client must see it:
/// `notifications/resources/updated`'s `params.uri`. `marked`: the client subscribed in the
/// marked form. `None` for other notifications, or when nothing changes.
pub fn notification_for_client(
    message: &[u8],
    names: &Names,
    member: usize,
    marked: bool,
) -> Option<Vec<u8>> {
    let msg: Msg<'_> = json::object_of(message)?;
    if msg.method.as_deref() != Some("notifications/resources/updated") {
        return None;
    }
    let params: Named<'_> = json::object(msg.params?)?;
    mark_uris(message, &[params.uri?], names, member, marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpUpstreams, Prefix, ServerConfig, Strategy, Upstream};
    use crate::upstream::federated::names::{Kind, DEFAULT_MAX_NAMES};

    fn names(prefixes: &[(&str, Prefix)]) -> Names {
        let servers: Vec<ServerConfig> = prefixes
            .iter()
            .map(|(name, prefix)| ServerConfig {
                name: name.to_string(),
                upstream: Upstream::Http(HttpUpstreams {
                    targets: Vec::new(),
                    strategy: Strategy::RoundRobin,
                }),
                tools: Default::default(),
                prompts: Default::default(),
                resources: Default::default(),
                prefix: *prefix,
            })
            .collect();
        let refs: Vec<&ServerConfig> = servers.iter().collect();
        Names::new(&refs, "__", DEFAULT_MAX_NAMES).unwrap()
    }

    fn text(bytes: Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.expect("an edit")).unwrap()
    }

    #[test]
    fn renames_only_the_name() {
        let body = br#"{"jsonrpc":"2.0","id":123456789012345678901234,"method":"tools/call","params":{"_meta":{"progressToken":"p","name":"keep"},"name":"a__echo","arguments":{"name":"x"}}}"#;
        let out = rename_request(body, mcp::Named::Tool, "tools/call", "echo");
        assert_eq!(
            text(out),
            r#"{"jsonrpc":"2.0","id":123456789012345678901234,"method":"tools/call","params":{"_meta":{"progressToken":"p","name":"keep"},"name":"echo","arguments":{"name":"x"}}}"#
        );
        let read = br#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file+fed.my.fs:///a"}}"#;
        let out = text(rename_request(
            read,
            mcp::Named::Resource,
            "resources/read",
            "file:///a",
        ));
        assert!(out.ends_with(r#""params":{"uri":"file:///a"}}"#), "{out}");
        let prompt = br#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"b__greet"},"argument":{"name":"who","value":""}}}"#;
        let out = text(rename_request(
            prompt,
            mcp::Named::Prompt,
            "completion/complete",
            "greet",
        ));
        assert!(
            out.contains(r#""ref":{"type":"ref/prompt","name":"greet"},"argument":{"name":"who""#),
            "{out}"
        );
        let res = br#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"x+fed.a:/{p}"}}}"#;
        let out = text(rename_request(
            res,
            mcp::Named::Resource,
            "completion/complete",
            "x:/{p}",
        ));
        assert!(out.contains(r#""uri":"x:/{p}""#), "{out}");
        let escaped = text(rename_request(
            br#"{"params":{"name":"a"}}"#,
            mcp::Named::Tool,
            "tools/call",
            "q\"\n",
        ));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap()["params"]["name"],
            "q\"\n"
        );
    }

    #[test]
    fn refuses_what_holds_no_such_name() {
        let cases: [&[u8]; 5] = [
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#,
            b"not json",
        ];
        for body in cases {
            assert_eq!(
                rename_request(body, mcp::Named::Tool, "tools/call", "x"),
                None
            );
        }
    }

    #[test]
    fn tags_and_untags_ids() {
        for (member, raw) in [
            (0, "7"),
            (3, r#""abc""#),
            (63, r#""a.\"b\u00e9""#),
            (1, "-1.5e3"),
        ] {
            let tagged = tag_id(member, raw);
            assert!(tagged.starts_with('"'), "{tagged}");
            assert_eq!(untag_id(&tagged), Some((member, raw.to_string())));
        }
        assert_eq!(tag_id(2, "7"), r#""fed.2.7""#);
        for other in [
            "7",
            r#""7""#,
            r#""fed.x.7""#,
            r#""fed.01.7""#,
            r#""fed.64.7""#,
            r#""fed.0.abc""#,
            r#""fed.0.""#,
            r#""fed.0.1 2""#,
            "{",
        ] {
            assert_eq!(untag_id(other), None, "{other}");
        }
    }

    #[test]
    fn tags_a_server_request_and_untags_the_client_answer() {
        let req = br#"{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{"messages":[]}}"#;
        let out = text(tag_message(1, req));
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":"fed.1.5","method":"sampling/createMessage","params":{"messages":[]}}"#
        );
        let answer = br#"{"jsonrpc":"2.0","id":"fed.1.5","result":{"model":"m"}}"#;
        let (member, back) = untag_message(answer).unwrap();
        assert_eq!(
            (member, String::from_utf8(back).unwrap()),
            (
                1,
                r#"{"jsonrpc":"2.0","id":5,"result":{"model":"m"}}"#.to_string()
            )
        );
        let cancel = br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"s-9","reason":"gone"}}"#;
        let out = text(tag_message(0, cancel));
        assert!(out.contains(r#""requestId":"fed.0.\"s-9\"""#), "{out}");
        let (m, back) = untag_message(out.as_bytes()).unwrap();
        assert_eq!((m, back), (0, cancel.to_vec()));
        assert_eq!(
            tag_message(
                0,
                br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#
            ),
            None
        );
        assert_eq!(
            tag_message(0, br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            None,
            "a response is not tagged"
        );
        assert_eq!(
            untag_message(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            None
        );
    }

    #[test]
    fn sets_or_removes_a_list_cursor() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"ours","_meta":{}}}"#;
        assert_eq!(
            text(with_cursor(body, Some("theirs"))),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"theirs","_meta":{}}}"#
        );
        assert_eq!(
            text(with_cursor(body, None)),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{}}}"#
        );
        let last = br#"{"id":1,"params":{"_meta":{} , "cursor" : "ours" }}"#;
        assert_eq!(
            text(with_cursor(last, None)),
            r#"{"id":1,"params":{"_meta":{}  }}"#
        );
        let only = br#"{"id":1,"params":{ "cur\u0073or":"o\"k" }}"#;
        assert_eq!(text(with_cursor(only, None)), r#"{"id":1,"params":{ }}"#);
        let none = br#"{"id":1,"method":"tools/list"}"#;
        assert_eq!(with_cursor(none, None).as_deref(), Some(&none[..]));
        assert_eq!(with_cursor(none, Some("c")), None);
    }

    #[test]
    fn replaces_subscriptions() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["a+fed.x:/1","b:/2"]}}}"#;
        let out = text(with_subscriptions(body, &["a:/1".into()]));
        assert!(
            out.contains(r#"{"toolsListChanged":true,"resourceSubscriptions":["a:/1"]}"#),
            "{out}"
        );
        assert_eq!(
            with_subscriptions(br#"{"params":{"notifications":{}}}"#, &[]),
            None
        );
    }

    #[test]
    fn marks_uris_in_results_and_notifications() {
        let mut n = names(&[("a", Prefix::Conditional), ("b", Prefix::Conditional)]);
        n.observe(Kind::Resource, 0, ["fed://a/readme"]);
        let read = br#"{"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"fed://a/readme","text":"x"}]}}"#;
        assert_eq!(
            result_for_client("resources/read", read, &n, 0, false),
            None,
            "bare resolves back"
        );
        let out = text(result_for_client("resources/read", read, &n, 0, true));
        assert_eq!(
            out,
            r#"{"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"fed+fed.a://a/readme","text":"x"}]}}"#
        );
        let call = br#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"t"},{"type":"resource_link","uri":"fed://a/other","name":"o"},{"type":"resource","resource":{"uri":"fed://a/readme","text":"r"}}]}}"#;
        let out = text(result_for_client("tools/call", call, &n, 0, false));
        assert!(
            out.contains(r#""uri":"fed+fed.a://a/other""#),
            "an unknown URI is marked: {out}"
        );
        assert!(
            out.contains(r#"{"uri":"fed://a/readme","text":"r"}"#),
            "{out}"
        );
        let prompt = br#"{"jsonrpc":"2.0","id":3,"result":{"messages":[{"role":"user","content":{"type":"resource","resource":{"uri":"fed://b/x","text":""}}}]}}"#;
        let out = text(result_for_client("prompts/get", prompt, &n, 1, false));
        assert!(out.contains(r#""uri":"fed+fed.b://b/x""#), "{out}");
        assert_eq!(result_for_client("tools/list", call, &n, 0, false), None);
        let updated = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"fed://a/readme"}}"#;
        assert_eq!(notification_for_client(updated, &n, 0, false), None);
        let out = text(notification_for_client(updated, &n, 0, true));
        assert!(out.contains(r#""uri":"fed+fed.a://a/readme""#), "{out}");
        assert_eq!(
            notification_for_client(
                br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"uri":"x:/"}}"#,
                &n,
                0,
                true
            ),
            None
        );
    }
}
