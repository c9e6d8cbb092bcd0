//! Federation: the third kind of upstream, a fan-out over named servers (`[[server]]`), each
//! an `Upstreams` of its own (HTTP with its replicas, or stdio). A route (`[[route]]`) puts
//! several servers behind one path as one MCP server; a client session on it holds one
//! upstream session per server (`FedSession`), all owned by the client session's shard.
//!
//! - initialize opens a session on every server of the route at once, with the client's own
//!   params, and merges their results (`merge`); `failure_mode` decides what a server that
//!   fails does to the whole.
//! - lists (`tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`) ask
//!   every server and merge the pages after filters and prefixes (`names`), with one cursor
//!   that holds where each server stands (`cursor`).
//! - a request that names something (`tools/call`, `prompts/get`, `resources/read`,
//!   `resources/subscribe`, `completion/complete`) goes to the server owning the name, renamed
//!   to the server's own name (`rewrite`); its answer is relayed as that server sent it.
//! - `ping` is answered here; notifications and `logging/setLevel` go to every server; the
//!   client's answers to a server's requests go back to that server (`rewrite::untag_id`).
//! - DELETE, expiry and shutdown end every server's session.
//! - the one server a request went to (a named request, an answer to a server, anything on a
//!   route of one server) is told back in `Call::routed_to`, for the pipeline's tapes; a merged
//!   GET stream tells each event's server (`Merged::last_member`).
//!
//! The pure logic, no I/O:
//! - `names`   — a route's name table: the client-visible name of each tool, prompt and
//!   resource, and the way back (which server, under which of its own names).
//! - `uri`     — the reversible mark a resource URI (or URI template) of one server carries when
//!   it must be told apart, and RFC 6570 template matching.
//! - `merge`   — one answer from the servers' answers: `initialize`, `server/discover`, and the
//!   four list methods (`tools/list`, `prompts/list`, `resources/list`,
//!   `resources/templates/list`).
//! - `cursor`  — the opaque pagination cursor of a merged list: where each server stands.
//! - `rewrite` — byte-exact edits of messages crossing the gateway: a request renamed to the
//!   server's own name, server-to-client request ids tagged with their server, URIs in results
//!   and notifications marked for the client.
//! - `json`    — raw-JSON helpers the others share (spans of borrowed values, splicing).
//!
//!
//! The runtime beside it: `collect` reads a server's answer whole where the gateway merges
//! it; `stream` merges the servers' GET streams.
//!
//! Invariants: like every kind, nothing here writes to the client, records a frame or touches
//! the session table; a name no server of the route offers, or one a filter hides, is refused
//! before any server sees it; the name tables are bounded (`federation.max_names`).

pub mod collect;
pub mod cursor;
pub mod json;
pub mod merge;
pub mod names;
pub mod rewrite;
pub mod stream;
pub mod uri;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::future::join_all;

use crate::config::{Config, FailureMode, ServerConfig};
use crate::error::{Error, Kind, Result};
use crate::mcp;

use super::{Call, Source, UpSession, Upstreams};
use collect::{collect, Answer};
pub use stream::Merged;

/// One shard's federation: the servers' upstreams and the routes over them.
pub struct Federation {
    /// Per `[[server]]`, in config order.
    pub servers: Vec<Rc<Upstreams>>,
    configs: Vec<ServerConfig>,
    routes: Vec<Route>,
    failure_mode: FailureMode,
    max_list_pages: usize,
}

/// One path and its servers, with the names they offer as this shard has seen them.
struct Route {
    path: String,
    /// Server indexes, in route order ("members").
    members: Vec<usize>,
    /// The members' names, in route order, as a JSON array (for tapes).
    servers_json: String,
    table: RefCell<names::Names>,
    /// What the route's cursors are bound to.
    binding: cursor::Binding,
    /// Per list kind: every member's list was read to its end once on this shard, so the
    /// table knows where names collide.
    learned: [std::cell::Cell<bool>; 4],
}

/// A client session's upstream half on a federated route: per member, its session on that
/// server (`None`: left out at initialize).
#[derive(Debug)]
pub struct FedSession {
    route: usize,
    members: Vec<Option<UpSession>>,
    /// Member indexes (route order) mapped to server indexes.
    servers: Vec<usize>,
}

impl FedSession {
    /// The session's upstream halves, with the server each is on.
    pub fn members(&self) -> impl Iterator<Item = (usize, &UpSession)> {
        self.servers
            .iter()
            .zip(&self.members)
            .filter_map(|(&s, m)| m.as_ref().map(|m| (s, m)))
    }
}

impl Federation {
    /// The federation of `config`'s servers (`servers`: their upstreams on this shard, in
    /// config order). The config was validated: every route's table builds.
    pub fn new(config: &Config, servers: Vec<Rc<Upstreams>>) -> Federation {
        let f = &config.federation;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let members: Vec<&ServerConfig> =
                    r.servers.iter().map(|&i| &config.servers[i]).collect();
                let table =
                    names::Names::new(&members, &f.separator, f.max_names).unwrap_or_else(|e| {
                        panic!("route {}: {e} (config validation missed it)", r.path)
                    });
                let names: Vec<&str> = members.iter().map(|s| s.name.as_str()).collect();
                Route {
                    servers_json: serde_json::Value::from(names).to_string(),
                    binding: cursor::Binding::new(&r.path, &members),
                    learned: Default::default(),
                    path: r.path.clone(),
                    members: r.servers.clone(),
                    table: RefCell::new(table),
                }
            })
            .collect();
        Federation {
            servers,
            configs: config.servers.clone(),
            routes,
            failure_mode: f.failure_mode,
            max_list_pages: f.max_list_pages,
        }
    }

    /// The route a request's path names.
    fn route_of(&self, call: &Call<'_>) -> Result<usize> {
        let path = call.head.path.split('?').next().unwrap_or("");
        self.routes
            .iter()
            .position(|r| r.path == path)
            .ok_or_else(|| Error::new(Kind::NotFound, format!("no route at {path}")))
    }

    /// The server names of the route at `path` (route order) as a JSON array.
    pub fn servers_json(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or("");
        let r = self.routes.iter().find(|r| r.path == path)?;
        Some(&r.servers_json)
    }

    fn server_name(&self, server: usize) -> &str {
        &self.configs[server].name
    }
}

/// initialize on every server of the route, at once; the merged answer, and the session
/// when at least one server is in it (and, with `failure_mode = "closed"`, all are).
pub async fn open_session(
    fed: &Rc<Federation>,
    call: &Call<'_>,
) -> Result<(Source, Option<UpSession>)> {
    let r = fed.route_of(call)?;
    let route = &fed.routes[r];
    let opened = join_all(route.members.iter().map(|&s| open_one(fed, s, call))).await;
    let mut members = Vec::with_capacity(opened.len());
    let mut answers = Vec::with_capacity(opened.len());
    for o in opened {
        match o {
            Ok((up, result)) => {
                members.push(up);
                answers.push(Ok(result));
            }
            Err(e) => {
                members.push(None);
                answers.push(Err(e.to_string()));
            }
        }
    }
    let session = FedSession {
        route: r,
        servers: route.members.clone(),
        members,
    };
    let requested = mcp_requested_version(call.body);
    let merged = merge_initialize(fed, route, &answers, &requested);
    let (result, left_out) = match merged {
        Ok(m) => m,
        Err(why) => {
            end_members(fed, &session, call);
            return Err(Error::new(Kind::UpstreamConnect, why));
        }
    };
    let session = leave_out(fed, session, &left_out, call)?;
    let id = call.msg.and_then(|m| m.id).unwrap_or("null");
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    let up = UpSession::Federated(Rc::new(session));
    Ok((Source::Message(Bytes::from(body)), Some(up)))
}

/// Drops the left-out members from a new session (ending the sessions they made), or, with
/// `failure_mode = "closed"`, fails the whole initialize naming them.
fn leave_out(
    fed: &Rc<Federation>,
    mut session: FedSession,
    left_out: &[(usize, String)],
    call: &Call<'_>,
) -> Result<FedSession> {
    if left_out.is_empty() {
        return Ok(session);
    }
    let named: Vec<String> = left_out
        .iter()
        .map(|(m, why)| format!("{}: {why}", fed.server_name(session.servers[*m])))
        .collect();
    if fed.failure_mode == FailureMode::Closed || left_out.len() == session.members.len() {
        end_members(fed, &session, call);
        let what = format!(
            "servers of this route failed to initialize: {}",
            named.join("; ")
        );
        return Err(Error::new(Kind::UpstreamConnect, what));
    }
    for (m, why) in left_out {
        let server = session.servers[*m];
        log::warn!(
            "shard {}: server {} left out of a session: {why}",
            fed.servers[server].shard,
            fed.server_name(server)
        );
        if let Some(up) = session.members[*m].take() {
            up.end_local();
            drop(super::end_quietly(
                &fed.servers[server],
                &up,
                fed.servers[server].timeouts.upstream_request,
            ));
        }
    }
    Ok(session)
}

/// Ends what `session`'s members opened, in the background.
fn end_members(fed: &Rc<Federation>, session: &FedSession, _call: &Call<'_>) {
    for (server, up) in session.members() {
        up.end_local();
        let up_s = &fed.servers[server];
        drop(super::end_quietly(up_s, up, up_s.timeouts.upstream_request));
    }
}

/// initialize on one server: its session and its result object.
async fn open_one(
    fed: &Federation,
    server: usize,
    call: &Call<'_>,
) -> Result<(Option<UpSession>, serde_json::Value)> {
    let up = &fed.servers[server];
    let opened = up.open_session(call).await;
    up.stats.count_server(server, opened.is_err());
    let (src, session) = opened?;
    let answer = collect(up, src).await;
    let result = answer.and_then(|a| result_of(a, "initialize"));
    if result.is_err() {
        up.stats.count_server_error(server);
    }
    match result {
        Ok(r) => Ok((session, r)),
        Err(e) => {
            if let Some(s) = &session {
                s.end_local();
                drop(super::end_quietly(up, s, up.timeouts.upstream_request));
            }
            Err(e)
        }
    }
}

/// The `result` of a server's JSON-RPC response; its `error` as an `Error`.
fn result_of(answer: Answer, what: &str) -> Result<serde_json::Value> {
    let Answer::Response(raw) = answer else {
        return Err(Error::new(
            Kind::UpstreamProtocol,
            format!("{what}: no response"),
        ));
    };
    let mut v: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| Error::new(Kind::UpstreamProtocol, format!("{what}: {e}")))?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("error");
        return Err(Error::new(
            Kind::UpstreamProtocol,
            format!("{what} failed: {msg}"),
        ));
    }
    Ok(v.get_mut("result")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

/// The protocol version an initialize asks for.
fn mcp_requested_version(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(rename = "protocolVersion")]
        v: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct M {
        params: Option<P>,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .and_then(|m| m.params?.v)
        .unwrap_or_else(|| mcp::DEFAULT_ASSUMED_VERSION.into())
}

/// A POST in a federated session.
pub async fn send(fed: &Rc<Federation>, s: &FedSession, call: &Call<'_>) -> Result<Source> {
    if fed.route_of(call)? != s.route {
        // A session belongs to its route: elsewhere it does not exist.
        return Err(Error::new(
            Kind::UnknownSession,
            "a session of another route",
        ));
    }
    let msg = call
        .msg
        .ok_or_else(|| Error::new(Kind::InvalidRequest, "one message per POST"))?;
    match (msg.kind, msg.method) {
        (mcp::Kind::Response, _) => answer_to_server(fed, s, msg, call).await,
        (mcp::Kind::Notification, _) => {
            to_every_member(fed, s, call).await;
            Ok(Source::Status(202))
        }
        (_, Some("ping")) => Ok(result_message(msg, "{}")),
        (_, Some("logging/setLevel")) => {
            to_every_member(fed, s, call).await;
            Ok(result_message(msg, "{}"))
        }
        (_, Some(method)) if list_kind(method).is_some() => list(fed, s, msg, call).await,
        _ if msg.named.is_some() => named(fed, s, msg, call).await,
        _ => match only_member(s) {
            // One server: what the gateway does not know goes to it as it is.
            Some((server, up)) => {
                call.routed_to.set(Some(0));
                send_to(fed, server, up, call).await
            }
            None => Err(Error::new(
                Kind::MethodNotFound,
                format!(
                    "{} is not served on a route of several servers",
                    msg.method.unwrap_or("")
                ),
            )),
        },
    }
}

/// The session's one member, on a route of one server.
fn only_member(s: &FedSession) -> Option<(usize, &UpSession)> {
    let mut m = s.members();
    let first = m.next()?;
    (s.servers.len() == 1).then_some(first)
}

/// A JSON-RPC result for `msg`, from the gateway.
fn result_message(msg: &mcp::Message<'_>, result: &str) -> Source {
    let id = msg.id.unwrap_or("null");
    Source::Message(Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    )))
}

/// Sends `call` to every member at once and reads each answer; failures are logged, not
/// returned (a notification has no answer to fail).
async fn to_every_member(fed: &Rc<Federation>, s: &FedSession, call: &Call<'_>) {
    let sent = s.members().map(|(server, up)| async move {
        let ups = &fed.servers[server];
        let r = match send_to(fed, server, up, call).await {
            Ok(src) => collect(ups, src).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            log::info!(
                "shard {}: server {}: {} not delivered: {e}",
                ups.shard,
                fed.server_name(server),
                call.msg.and_then(|m| m.method).unwrap_or("message")
            );
        }
    });
    join_all(sent).await;
}

/// A request that names a tool, prompt or resource: to the member owning the name, renamed
/// to the member's own name; its answer as the member sent it.
async fn named(
    fed: &Rc<Federation>,
    s: &FedSession,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let route = &fed.routes[s.route];
    let kind = names::Kind::from(msg.named.unwrap_or(mcp::Named::Tool));
    let client_name = msg.name.as_deref().unwrap_or("");
    let mut resolved = resolve(route, kind, client_name);
    if matches!(resolved, Err(names::Resolution::Unknown)) {
        for &list in lists_of(kind) {
            learn(fed, s, list, call).await;
        }
        resolved = resolve(route, kind, client_name);
    }
    let (member, own) = resolved.map_err(|other| {
        let why = other.message(kind, client_name).unwrap_or_default();
        Error::new(Kind::InvalidParams, why)
    })?;
    let server = route.members[member];
    let up = s.members[member].as_ref().ok_or_else(|| {
        Error::new(
            Kind::InvalidParams,
            format!("server {} is not in this session", fed.server_name(server)),
        )
    })?;
    call.routed_to.set(Some(member));
    let method = msg.method.unwrap_or("");
    let named = msg.named.unwrap_or(mcp::Named::Tool);
    let body = rewrite::rename_request(call.body, named, method, &own)
        .ok_or_else(|| Error::new(Kind::InvalidParams, "the name is not a string"))?;
    let src = forward(fed, server, up, call, &body).await?;
    Ok(tagged(src, member, s.servers.len() > 1))
}

/// What `client_name` resolves to in the route's table: the member and its own name.
fn resolve(
    route: &Route,
    kind: names::Kind,
    client_name: &str,
) -> std::result::Result<(usize, String), names::Resolution<'static>> {
    match route.table.borrow().resolve(kind, client_name) {
        names::Resolution::Found { member, name } => Ok((member, name.into_owned())),
        names::Resolution::Hidden { member } => Err(names::Resolution::Hidden { member }),
        names::Resolution::Ambiguous(c) => Err(names::Resolution::Ambiguous(c)),
        names::Resolution::Unknown => Err(names::Resolution::Unknown),
    }
}

/// Sends `body` (the client's request rewritten for `server`) in the member session `up`.
async fn forward(
    fed: &Rc<Federation>,
    server: usize,
    up: &UpSession,
    call: &Call<'_>,
    body: &[u8],
) -> Result<Source> {
    let parsed = mcp::classify(body).map_err(|_| Error::new(Kind::Internal, "rewritten body"))?;
    let mcp::Body::Single(m) = &parsed else {
        return Err(Error::new(Kind::Internal, "rewritten body"));
    };
    let member_call = Call {
        head: call.head,
        body,
        msg: Some(m),
        client: call.client,
        client_cell: call.client_cell,
        subject: call.subject,
        routed_to: std::cell::Cell::new(None),
    };
    send_to(fed, server, up, &member_call).await
}

/// Sends `call` to `server` in its session `up`, counted (`shardcat_server_requests_total`,
/// and `..._errors_total` when it fails or the server answers with an HTTP error).
async fn send_to(
    fed: &Federation,
    server: usize,
    up: &UpSession,
    call: &Call<'_>,
) -> Result<Source> {
    let ups = &fed.servers[server];
    let sent = ups.send(up, call).await;
    let failed = match &sent {
        Ok(Source::Http(ans)) => ans.head.status >= 400,
        Ok(_) => false,
        Err(_) => true,
    };
    ups.stats.count_server(server, failed);
    Ok(from_member(sent?, server, up))
}

/// `src`, an answer from `server` in its session `up`, marked with where it came from, so its
/// stream can be reopened there.
fn from_member(mut src: Source, server: usize, up: &UpSession) -> Source {
    if let (Source::Http(ans), Some(sid)) = (&mut src, up.sid()) {
        ans.member = Some((server, sid.clone()));
    }
    src
}

/// The client's answer to a request a server sent: back to that server, with the server's
/// own id.
async fn answer_to_server(
    fed: &Rc<Federation>,
    s: &FedSession,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let _ = msg;
    let (member, body) = match rewrite::untag_message(call.body) {
        Some((member, body)) => (member, Some(body)),
        // Ids of a route of one server are not tagged.
        None if s.servers.len() == 1 => (0, None),
        None => {
            log::info!(
                "shard {}: a response to no server's request, dropped",
                fed.servers[s.servers[0]].shard
            );
            return Ok(Source::Status(202));
        }
    };
    let up = s
        .members
        .get(member)
        .and_then(Option::as_ref)
        .ok_or_else(|| {
            Error::new(
                Kind::InvalidParams,
                "an answer to a server not in this session",
            )
        })?;
    let server = s.servers[member];
    call.routed_to.set(Some(member));
    match body {
        Some(body) => forward(fed, server, up, call, &body).await,
        None => send_to(fed, server, up, call).await,
    }
}

/// GET: the session's server stream. On a route of one server, that server's stream.
pub async fn open_stream(fed: &Rc<Federation>, s: &FedSession, call: &Call<'_>) -> Result<Source> {
    if fed.route_of(call)? != s.route {
        return Err(Error::new(
            Kind::UnknownSession,
            "a session of another route",
        ));
    }
    if let Some((server, up)) = only_member(s) {
        call.routed_to.set(Some(0));
        let src = fed.servers[server].open_stream(up, call).await?;
        return Ok(from_member(src, server, up));
    }
    let opened = join_all(s.servers.iter().zip(&s.members).enumerate().map(
        |(member, (&server, up))| async move {
            let up = up.as_ref()?;
            match fed.servers[server].open_stream(up, call).await {
                Ok(src) => Some((src, Tag { member })),
                Err(e) => {
                    log::info!(
                        "shard {}: server {}: no server stream: {e}",
                        fed.servers[server].shard,
                        fed.server_name(server)
                    );
                    None
                }
            }
        },
    ))
    .await;
    let streams: Vec<_> = opened.into_iter().flatten().collect();
    let any = fed
        .servers
        .first()
        .ok_or_else(|| Error::new(Kind::Internal, "no servers"))?;
    let merged = stream::Merged::start(
        streams,
        any.limits.max_event_bytes,
        any.timeouts.session_max_age,
    );
    Ok(Source::Events(super::Events::Merged(merged)))
}

/// DELETE: every member's session ends; 200 once all answered (or failed).
pub async fn end_session(fed: &Rc<Federation>, s: &FedSession, call: &Call<'_>) -> Result<Source> {
    if fed.route_of(call)? != s.route {
        return Err(Error::new(
            Kind::UnknownSession,
            "a session of another route",
        ));
    }
    let ended = s.members().map(|(server, up)| async move {
        let ups = &fed.servers[server];
        match ups.end_session(up, call).await {
            Ok(src) => {
                let _ = collect(ups, src).await;
            }
            Err(e) => log::info!(
                "shard {}: server {}: session end not delivered: {e}",
                ups.shard,
                fed.server_name(server)
            ),
        }
    });
    join_all(ended).await;
    Ok(Source::Status(200))
}

/// 2026-07-28 on a federated route: not yet.
pub async fn stateless(fed: &Rc<Federation>, call: &Call<'_>) -> Result<Source> {
    fed.route_of(call)?;
    Err(Error::new(
        Kind::UnsupportedVersion,
        "federated routes serve the session protocol versions (2025-11-25 and before) for now",
    ))
}

/// The list a method asks for.
fn list_kind(method: &str) -> Option<merge::ListKind> {
    match method {
        "tools/list" => Some(merge::ListKind::Tools),
        "prompts/list" => Some(merge::ListKind::Prompts),
        "resources/list" => Some(merge::ListKind::Resources),
        "resources/templates/list" => Some(merge::ListKind::ResourceTemplates),
        _ => None,
    }
}

/// A list: one page from every member that has more, merged; the cursor says where each
/// member stands.
async fn list(
    fed: &Rc<Federation>,
    s: &FedSession,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let method = msg.method.unwrap_or("");
    let kind = list_kind(method).ok_or_else(|| Error::new(Kind::Internal, "not a list"))?;
    let route = &fed.routes[s.route];
    let n = route.members.len();
    let cursor = match cursor_of(call.body) {
        Some(c) => cursor::Cursor::decode(&c, route.binding)
            .map_err(|e| Error::new(Kind::InvalidParams, format!("cursor: {e}")))?,
        None => cursor::Cursor::start(route.binding),
    };
    let _ = n;
    if !route.learned[kind as usize].get() && route.members.len() > 1 {
        learn(fed, s, kind, call).await;
    }
    let merged = merged_page(fed, s, call, call.body, kind, &cursor).await?;
    let result =
        String::from_utf8(merged.result).map_err(|_| Error::new(Kind::Internal, "merged list"))?;
    Ok(result_message(msg, &result))
}

/// A list request's `params.cursor`.
fn cursor_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct P {
        cursor: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct M {
        params: Option<P>,
    }
    serde_json::from_slice::<M>(body).ok()?.params?.cursor
}

/// Lists `kind` of every member to its end (at most `federation.max_list_pages` pages each),
/// so the route's table knows all their names before it shows one: a name shown bare must not
/// meet a second owner on a later page. Also when a client names something this shard has not
/// seen listed (listed on another shard, or remembered).
async fn learn(fed: &Rc<Federation>, s: &FedSession, list: merge::ListKind, call: &Call<'_>) {
    let method = match list {
        merge::ListKind::Tools => "tools/list",
        merge::ListKind::Prompts => "prompts/list",
        merge::ListKind::Resources => "resources/list",
        merge::ListKind::ResourceTemplates => "resources/templates/list",
    };
    // A cursor to replace (or take out, for a first page): `rewrite::with_cursor` adds none.
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"shardcat-names","method":"{method}","params":{{"cursor":""}}}}"#
    );
    let route = &fed.routes[s.route];
    let mut cursor = cursor::Cursor::start(route.binding);
    for _ in 0..fed.max_list_pages {
        match merged_page(fed, s, call, body.as_bytes(), list, &cursor).await {
            Ok(merge::MergedList { next: Some(c), .. }) => cursor = c,
            _ => break,
        }
    }
    route.learned[list as usize].set(true);
}

/// The lists that hold names of `kind`.
fn lists_of(kind: names::Kind) -> &'static [merge::ListKind] {
    match kind {
        names::Kind::Tool => &[merge::ListKind::Tools],
        names::Kind::Prompt => &[merge::ListKind::Prompts],
        names::Kind::Resource | names::Kind::Template => &[
            merge::ListKind::Resources,
            merge::ListKind::ResourceTemplates,
        ],
    }
}

/// One merged page of `kind`: `body` (a list request) to every member that has more after
/// `cursor`, the answers merged (and their names learnt).
async fn merged_page(
    fed: &Rc<Federation>,
    s: &FedSession,
    call: &Call<'_>,
    body: &[u8],
    kind: merge::ListKind,
    cursor: &cursor::Cursor,
) -> Result<merge::MergedList> {
    let route = &fed.routes[s.route];
    let n = route.members.len();
    let pages = join_all((0..n).map(|m| {
        let pos = cursor.position(m);
        async move {
            let up = s.members[m].as_ref()?;
            let at = match pos {
                cursor::Position::Done => return None,
                cursor::Position::Start => None,
                cursor::Position::At(c) => Some(c.as_str()),
            };
            page(fed, route.members[m], up, (call, body), at).await
        }
    }))
    .await;
    let pages: Vec<Option<&[u8]>> = pages.iter().map(|p| p.as_deref()).collect();
    let mut table = route.table.borrow_mut();
    let merged = merge::merge_list(kind, &mut table, &pages, cursor)
        .map_err(|e| Error::new(Kind::UpstreamProtocol, format!("merged cursor: {e}")))?;
    for (m, why) in &merged.left_out {
        log::info!(
            "shard {}: server {} left out of a list page: {why}",
            fed.servers[route.members[*m]].shard,
            fed.server_name(route.members[*m])
        );
    }
    Ok(merged)
}

/// One page of a member's list, from `cursor` (`None`: the first); `None` when the member
/// failed (logged: its items are missing from this page).
async fn page(
    fed: &Rc<Federation>,
    server: usize,
    up: &UpSession,
    (call, body): (&Call<'_>, &[u8]),
    cursor: Option<&str>,
) -> Option<Vec<u8>> {
    let ups = &fed.servers[server];
    let body = rewrite::with_cursor(body, cursor)?;
    let got = match forward(fed, server, up, call, &body).await {
        Ok(src) => collect(ups, src).await.and_then(|a| result_of(a, "list")),
        Err(e) => Err(e),
    }
    .and_then(|v| serde_json::to_vec(&v).map_err(|e| Error::new(Kind::Internal, e.to_string())));
    got.inspect_err(|e| {
        log::info!(
            "shard {}: server {}: list failed: {e}",
            ups.shard,
            fed.server_name(server)
        )
    })
    .ok()
}

/// initialize's merged result (as JSON text) and the members left out; `Err` when none is
/// left.
fn merge_initialize(
    fed: &Federation,
    route: &Route,
    answers: &[std::result::Result<serde_json::Value, String>],
    requested: &str,
) -> std::result::Result<(String, Vec<(usize, String)>), String> {
    let members: Vec<&ServerConfig> = route.members.iter().map(|&i| &fed.configs[i]).collect();
    match merge::merge_initialize(&route.path, &members, answers, requested) {
        Ok(m) => Ok((m.result.to_string(), m.left_out)),
        Err(left_out) => {
            let why: Vec<String> = left_out
                .iter()
                .map(|(i, w)| format!("{}: {w}", members[*i].name))
                .collect();
            Err(format!(
                "no server of this route could initialize: {}",
                why.join("; ")
            ))
        }
    }
}

/// Gives the requests a member server sends (sampling, elicitation, roots) ids that name the
/// member, so two servers' ids never meet at the client, and its answer finds its way back
/// (`answer_to_server`). Everything else passes as it came.
pub struct Tag {
    pub member: usize,
}

impl Tag {
    pub fn event(&self, raw: Bytes) -> Bytes {
        let ev = crate::codec::sse::parse_sse_event(&raw);
        let Ok(mcp::Body::Single(m)) = mcp::classify(&ev.data) else {
            return raw;
        };
        if m.kind == mcp::Kind::Response {
            return raw;
        }
        match rewrite::tag_message(self.member, &ev.data) {
            Some(data) => Bytes::from(sse_message(ev.id.as_deref(), &data)),
            None => raw,
        }
    }
}

/// One `message` event carrying `data`, with its id when it had one.
fn sse_message(id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"event: message\n");
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// `src` from member `member` of a route of several servers, with its server requests tagged.
fn tagged(src: Source, member: usize, several: bool) -> Source {
    if !several {
        return src;
    }
    match src {
        Source::Http(mut ans) => {
            ans.shape = Some(Box::new(super::Shape::Tag(Tag { member })));
            Source::Http(ans)
        }
        Source::Events(ev) => Source::Events(super::Events::Tagged(Box::new(ev), Tag { member })),
        other => other,
    }
}
