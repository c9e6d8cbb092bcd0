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
//! - 2026-07-28 (no session): `server/discover` asks every server and merges their results;
//!   lists and named requests go as in a session, each server reached with no session of its
//!   own, the `Mcp-Method`/`Mcp-Name` headers following the rewritten body.
//! - the resource URIs in a named request's response are marked as the route shows them
//!   (`Tag`); a server's `list_changed` makes the route learn that kind's lists again.
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

use crate::codec::http::RequestHead;
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
    table: Rc<RefCell<names::Names>>,
    /// What the route's cursors are bound to.
    binding: cursor::Binding,
    /// Per list kind: every member's list was read to its end once on this shard, so the
    /// table knows where names collide. A member's `list_changed` clears its kind (`Tag`).
    learned: Rc<Learned>,
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
                    table: Rc::new(RefCell::new(table)),
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

/// The session another node began on the route at `path` (`Upstreams::adopt`): each part's
/// server must be one of the route's, once, with an upstream it has.
pub fn adopt(fed: &Federation, path: &str, parts: Vec<super::Part>) -> Option<UpSession> {
    let path = path.split('?').next().unwrap_or("");
    let r = fed.routes.iter().position(|r| r.path == path)?;
    let route = &fed.routes[r];
    let mut members: Vec<Option<UpSession>> = route.members.iter().map(|_| None).collect();
    for (server, upstream, sid) in parts {
        let m = route.members.iter().position(|&s| s == server)?;
        let up = &fed.servers[server];
        if members[m].is_some() || up.is_stdio() || upstream >= up.pools.len() {
            return None;
        }
        members[m] = Some(UpSession::Http { upstream, sid });
    }
    members.iter().any(Option::is_some).then(|| {
        UpSession::Federated(Rc::new(FedSession {
            route: r,
            servers: route.members.clone(),
            members,
        }))
    })
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

/// The `result` of a server's JSON-RPC response as its raw JSON text (a list page, which the
/// merge reads borrowed: no tree built and written out again); its `error` as an `Error`.
fn raw_result_of(answer: Answer, what: &str) -> Result<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Response<'a> {
        #[serde(borrow)]
        result: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        error: Option<&'a serde_json::value::RawValue>,
    }
    let Answer::Response(raw) = &answer else {
        return Err(Error::new(
            Kind::UpstreamProtocol,
            format!("{what}: no response"),
        ));
    };
    let r: Response<'_> = serde_json::from_slice(raw)
        .map_err(|e| Error::new(Kind::UpstreamProtocol, format!("{what}: {e}")))?;
    match (r.result, r.error) {
        (Some(result), None) => Ok(result.get().as_bytes().to_vec()),
        // An error, or neither: as `result_of` says it.
        _ => result_of(answer, what).map(|v| v.to_string().into_bytes()),
    }
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

/// How the gateway reaches a route's servers for one request: through a client session's
/// member sessions, or (2026-07-28) with no session at all.
#[derive(Clone, Copy)]
enum Reach<'a> {
    Session(&'a FedSession),
    Stateless { route: usize },
}

/// How one member server is reached.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// In the client session's own session on that server.
    Session(&'a UpSession),
    /// As a 2026-07-28 request of no session.
    Stateless,
}

impl<'a> Reach<'a> {
    fn route(self) -> usize {
        match self {
            Reach::Session(s) => s.route,
            Reach::Stateless { route } => route,
        }
    }

    /// Member `member`'s way in; `None`: it was left out of the session.
    fn via(self, member: usize) -> Option<Via<'a>> {
        match self {
            Reach::Session(s) => s.members.get(member)?.as_ref().map(Via::Session),
            Reach::Stateless { .. } => Some(Via::Stateless),
        }
    }
}

/// The empty result of `ping` and `logging/setLevel`, in the shape of the request's version.
fn empty_result(reach: Reach<'_>) -> &'static str {
    match reach {
        Reach::Session(_) => "{}",
        Reach::Stateless { .. } => r#"{"resultType":"complete"}"#,
    }
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
    match msg.kind {
        mcp::Kind::Response => answer_to_server(fed, s, call).await,
        _ => request(fed, Reach::Session(s), msg, call).await,
    }
}

/// A 2026-07-28 request on a federated route: `server/discover` asks every server and merges
/// their answers; everything else goes as it would in a session, each member reached with no
/// session of its own.
pub async fn stateless(fed: &Rc<Federation>, call: &Call<'_>) -> Result<Source> {
    let route = fed.route_of(call)?;
    let msg = call
        .msg
        .ok_or_else(|| Error::new(Kind::InvalidRequest, "one message per POST"))?;
    if msg.kind == mcp::Kind::Request && msg.method == Some("server/discover") {
        return discover(fed, route, msg, call).await;
    }
    request(fed, Reach::Stateless { route }, msg, call).await
}

/// A client's request or notification, on either reach.
async fn request(
    fed: &Rc<Federation>,
    reach: Reach<'_>,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    match (msg.kind, msg.method) {
        (mcp::Kind::Notification, _) => {
            to_every_member(fed, reach, call).await;
            Ok(Source::Status(202))
        }
        (_, Some("ping")) => Ok(result_message(msg, empty_result(reach))),
        (_, Some("logging/setLevel")) => {
            to_every_member(fed, reach, call).await;
            Ok(result_message(msg, empty_result(reach)))
        }
        (_, Some(method)) if merge::ListKind::of_method(method).is_some() => {
            list(fed, reach, msg, call).await
        }
        _ if msg.named.is_some() => named(fed, reach, msg, call).await,
        _ => match only_member(fed, reach) {
            // One server: what the gateway does not know goes to it as it is.
            Some((server, via)) => {
                call.routed_to.set(Some(0));
                send_to(fed, server, via, call).await
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

/// The route's one member, on a route of one server.
fn only_member<'a>(fed: &Federation, reach: Reach<'a>) -> Option<(usize, Via<'a>)> {
    let route = &fed.routes[reach.route()];
    (route.members.len() == 1).then_some(())?;
    Some((route.members[0], reach.via(0)?))
}

/// A JSON-RPC result for `msg`, from the gateway.
fn result_message(msg: &mcp::Message<'_>, result: &str) -> Source {
    let id = msg.id.unwrap_or("null");
    Source::Message(Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    )))
}

/// `server/discover` (2026-07-28) on every server of the route at once, the results merged;
/// `failure_mode` decides what a server that fails (or speaks another version) does to the
/// whole, as for initialize.
async fn discover(
    fed: &Rc<Federation>,
    route: usize,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let r = &fed.routes[route];
    let answers = join_all(r.members.iter().map(|&server| async move {
        let ups = &fed.servers[server];
        let got = match ups.stateless(call).await {
            Ok(src) => collect(ups, src)
                .await
                .and_then(|a| result_of(a, "server/discover")),
            Err(e) => Err(e),
        };
        ups.stats.count_server(server, got.is_err());
        got.map_err(|e| e.to_string())
    }))
    .await;
    let members: Vec<&ServerConfig> = r.members.iter().map(|&i| &fed.configs[i]).collect();
    let named = |left_out: &[(usize, String)]| -> String {
        let why: Vec<String> = left_out
            .iter()
            .map(|(m, w)| format!("{}: {w}", members[*m].name))
            .collect();
        why.join("; ")
    };
    let merged = merge::merge_discover(&r.path, &members, &answers, mcp::STATELESS_VERSION)
        .map_err(|left_out| {
            let what = format!("no server of this route answered: {}", named(&left_out));
            Error::new(Kind::UpstreamConnect, what)
        })?;
    if !merged.left_out.is_empty() {
        if fed.failure_mode == FailureMode::Closed {
            let what = format!("servers of this route failed: {}", named(&merged.left_out));
            return Err(Error::new(Kind::UpstreamConnect, what));
        }
        log::warn!(
            "shard {}: route {}: server/discover left out {}",
            fed.servers[r.members[0]].shard,
            r.path,
            named(&merged.left_out)
        );
    }
    Ok(result_message(msg, &merged.result.to_string()))
}

/// Sends `call` to every member at once and reads each answer; failures are logged, not
/// returned (a notification has no answer to fail).
async fn to_every_member(fed: &Rc<Federation>, reach: Reach<'_>, call: &Call<'_>) {
    let route = &fed.routes[reach.route()];
    let sent = (0..route.members.len())
        .filter_map(|m| Some((route.members[m], reach.via(m)?)))
        .map(|(server, via)| async move {
            let ups = &fed.servers[server];
            let r = match send_to(fed, server, via, call).await {
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
    reach: Reach<'_>,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let route = &fed.routes[reach.route()];
    let kind = names::Kind::from(msg.named.unwrap_or(mcp::Named::Tool));
    let client_name = msg.name.as_deref().unwrap_or("");
    let mut resolved = resolve(route, kind, client_name);
    // A name this shard has not seen: learn the lists that hold it, once (later lists the
    // clients ask for keep the table current, and a list_changed forgets what was learnt).
    // Once learnt, an unknown name is refused with no server round trip.
    if matches!(resolved, Err(names::Resolution::Unknown)) {
        let unlearnt = lists_of(kind)
            .iter()
            .filter(|&&l| !route.learned[l as usize].get());
        for &list in unlearnt {
            learn(fed, reach, list, call).await;
        }
        resolved = resolve(route, kind, client_name);
    }
    let (member, own) = resolved.map_err(|other| {
        let why = other.message(kind, client_name).unwrap_or_default();
        Error::new(Kind::InvalidParams, why)
    })?;
    let server = route.members[member];
    let via = reach.via(member).ok_or_else(|| {
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
    let src = forward(fed, server, via, call, &body).await?;
    let mut tag = match reach {
        Reach::Session(s) => route.tag(member, s),
        // No session: a server has no way to ask the client anything but in its answer.
        Reach::Stateless { .. } => route.tag_of(member, false),
    };
    tag.mark = Mark::of(method, named, client_name, &route.table);
    Ok(tagged(src, tag))
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

/// Sends `body` (the client's request rewritten for `server`) to the member; the routing
/// headers of a 2026-07-28 request follow the body (`member_head`).
async fn forward(
    fed: &Rc<Federation>,
    server: usize,
    via: Via<'_>,
    call: &Call<'_>,
    body: &[u8],
) -> Result<Source> {
    let parsed = mcp::classify(body).map_err(|_| Error::new(Kind::Internal, "rewritten body"))?;
    let mcp::Body::Single(m) = &parsed else {
        return Err(Error::new(Kind::Internal, "rewritten body"));
    };
    let head = member_head(call.head, m)?;
    let member_call = Call {
        head: head.as_ref().unwrap_or(call.head),
        body,
        msg: Some(m),
        client: call.client,
        client_cell: call.client_cell,
        subject: call.subject,
        routed_to: std::cell::Cell::new(None),
    };
    send_to(fed, server, via, &member_call).await
}

/// The client's head for a member that gets the rewritten message `m`: the `Mcp-Method` and
/// `Mcp-Name` the client sent (2026-07-28 routing headers, which a server checks against the
/// body) name what `m` names now; a name `m` lacks is taken out. `None`: unchanged.
fn member_head(head: &RequestHead, m: &mcp::Message<'_>) -> Result<Option<RequestHead>> {
    let mut out: Option<RequestHead> = None;
    let method = m.method.unwrap_or("");
    if head
        .headers
        .get_str("mcp-method")
        .is_some_and(|h| h != method)
    {
        edit_header(&mut out, head, "mcp-method", Some(method))?;
    }
    if let Some(h) = head.headers.get_str("mcp-name") {
        let sent = mcp::decode_header_value(h);
        match m.name.as_deref() {
            Some(want) if sent.as_deref() == Some(want) => {}
            Some(want) => {
                let value = mcp::encode_header_value(want);
                edit_header(&mut out, head, "mcp-name", Some(&value))?;
            }
            None => edit_header(&mut out, head, "mcp-name", None)?,
        }
    }
    Ok(out)
}

fn edit_header(
    out: &mut Option<RequestHead>,
    head: &RequestHead,
    name: &str,
    value: Option<&str>,
) -> Result<()> {
    let base = out.as_ref().unwrap_or(head);
    let headers = base
        .headers
        .with(name, value.map(str::as_bytes))
        .ok_or_else(|| Error::new(Kind::InvalidRequest, "request head too large to rewrite"))?;
    let mut edited = base.clone();
    edited.headers = headers;
    *out = Some(edited);
    Ok(())
}

/// Sends `call` to `server`, counted (`shardcat_server_requests_total`, and
/// `..._errors_total` when it fails or the server answers with an HTTP error).
async fn send_to(fed: &Federation, server: usize, via: Via<'_>, call: &Call<'_>) -> Result<Source> {
    let ups = &fed.servers[server];
    let sent = match via {
        Via::Session(up) => ups.send(up, call).await,
        Via::Stateless => ups.stateless(call).await,
    };
    let failed = match &sent {
        Ok(Source::Http(ans)) => ans.head.status >= 400,
        Ok(_) => false,
        Err(_) => true,
    };
    ups.stats.count_server(server, failed);
    Ok(match via {
        Via::Session(up) => from_member(sent?, server, up),
        Via::Stateless => sent?,
    })
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
async fn answer_to_server(fed: &Rc<Federation>, s: &FedSession, call: &Call<'_>) -> Result<Source> {
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
        Some(body) => forward(fed, server, Via::Session(up), call, &body).await,
        None => send_to(fed, server, Via::Session(up), call).await,
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
    let route = &fed.routes[s.route];
    if let Some((server, Via::Session(up))) = only_member(fed, Reach::Session(s)) {
        call.routed_to.set(Some(0));
        let src = fed.servers[server].open_stream(up, call).await?;
        return Ok(tagged(from_member(src, server, up), route.tag(0, s)));
    }
    let opened = join_all(s.servers.iter().zip(&s.members).enumerate().map(
        |(member, (&server, up))| async move {
            let up = up.as_ref()?;
            match fed.servers[server].open_stream(up, call).await {
                Ok(src) => Some((src, route.tag(member, s))),
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

/// A list: one page from every member that has more, merged; the cursor says where each
/// member stands.
async fn list(
    fed: &Rc<Federation>,
    reach: Reach<'_>,
    msg: &mcp::Message<'_>,
    call: &Call<'_>,
) -> Result<Source> {
    let method = msg.method.unwrap_or("");
    let kind = merge::ListKind::of_method(method)
        .ok_or_else(|| Error::new(Kind::Internal, "not a list"))?;
    let route = &fed.routes[reach.route()];
    let cursor = match cursor_of(call.body) {
        Some(c) => cursor::Cursor::decode(&c, route.binding)
            .map_err(|e| Error::new(Kind::InvalidParams, format!("cursor: {e}")))?,
        None => cursor::Cursor::start(route.binding),
    };
    if !route.learned[kind as usize].get() && route.members.len() > 1 {
        learn(fed, reach, kind, call).await;
    }
    let merged = merged_page(fed, reach, call, call.body, kind, &cursor).await?;
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
/// seen listed (listed on another shard, or remembered). A 2026-07-28 client's envelope goes
/// with these requests: a server of no session learns who asks from it.
async fn learn(fed: &Rc<Federation>, reach: Reach<'_>, list: merge::ListKind, call: &Call<'_>) {
    let method = list.method();
    let meta = match reach {
        Reach::Stateless { .. } => mcp::envelope_meta(call.body),
        Reach::Session(_) => None,
    };
    let meta = meta.map_or(String::new(), |m| format!(r#""_meta":{m},"#));
    // A cursor to replace (or take out, for a first page): `rewrite::with_cursor` adds none.
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"shardcat-names","method":"{method}","params":{{{meta}"cursor":""}}}}"#
    );
    let route = &fed.routes[reach.route()];
    let mut cursor = cursor::Cursor::start(route.binding);
    for _ in 0..fed.max_list_pages {
        match merged_page(fed, reach, call, body.as_bytes(), list, &cursor).await {
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
    reach: Reach<'_>,
    call: &Call<'_>,
    body: &[u8],
    kind: merge::ListKind,
    cursor: &cursor::Cursor,
) -> Result<merge::MergedList> {
    let route = &fed.routes[reach.route()];
    let n = route.members.len();
    let pages = join_all((0..n).map(|m| {
        let pos = cursor.position(m);
        async move {
            let via = reach.via(m)?;
            let at = match pos {
                cursor::Position::Done => return None,
                cursor::Position::Start => None,
                cursor::Position::At(c) => Some(c.as_str()),
            };
            page(fed, route.members[m], via, (call, body), at).await
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
    via: Via<'_>,
    (call, body): (&Call<'_>, &[u8]),
    cursor: Option<&str>,
) -> Option<Vec<u8>> {
    let ups = &fed.servers[server];
    let body = rewrite::with_cursor(body, cursor)?;
    let got = match forward(fed, server, via, call, &body).await {
        Ok(src) => collect(ups, src)
            .await
            .and_then(|a| raw_result_of(a, "list")),
        Err(e) => Err(e),
    };
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

/// A route's "every member's list of this kind was read to its end" flags, per
/// `merge::ListKind`, shared with the tags of its sessions' streams.
type Learned = [std::cell::Cell<bool>; 4];

/// What a member server's messages to the client go through on a session's streams:
/// - on a route of several servers, the requests it sends (sampling, elicitation, roots) get
///   ids that name the member, so two servers' ids never meet at the client, and its answer
///   finds its way back (`answer_to_server`);
/// - a `notifications/*/list_changed` makes the route learn that kind's lists again (the new
///   names, and where they collide) before it resolves a name it does not know. The
///   notification itself reaches the client as it came: the merged list changed.
///
/// Everything else passes as it came.
pub struct Tag {
    pub member: usize,
    several: bool,
    learned: Rc<Learned>,
    /// The resource URIs of the response, marked as the client must see them.
    mark: Option<Mark>,
    /// What the member's own kind made of the answer first (a handshake-era server's answer
    /// to a 2026-07-28 client gets that version's shape).
    inner: Option<Box<super::Shape>>,
}

/// A named request's response, whose resource URIs (`resources/read` contents, a tool's
/// resource links) the client must see as the route shows them (`rewrite::result_for_client`),
/// so that reading one later routes back to the member that sent it.
struct Mark {
    method: &'static str,
    /// The client named the resource in its marked form: the contents answer in that form.
    marked: bool,
    table: Rc<RefCell<names::Names>>,
}

impl Mark {
    fn of(
        method: &str,
        named: mcp::Named,
        client_name: &str,
        table: &Rc<RefCell<names::Names>>,
    ) -> Option<Mark> {
        let method = match method {
            "tools/call" => "tools/call",
            "prompts/get" => "prompts/get",
            "resources/read" => "resources/read",
            _ => return None,
        };
        Some(Mark {
            method,
            marked: named == mcp::Named::Resource && uri::looks_marked(client_name),
            table: table.clone(),
        })
    }
}

impl Route {
    fn tag(&self, member: usize, s: &FedSession) -> Tag {
        self.tag_of(member, s.servers.len() > 1)
    }

    fn tag_of(&self, member: usize, several: bool) -> Tag {
        Tag {
            member,
            several,
            learned: self.learned.clone(),
            mark: None,
            inner: None,
        }
    }
}

impl Tag {
    /// One SSE event as the client gets it; `None` drops it (the member's kind dropped it).
    pub fn event(&self, raw: Bytes) -> Option<Bytes> {
        let raw = match &self.inner {
            Some(inner) => inner.event(raw)?,
            None => raw,
        };
        let ev = crate::codec::sse::parse_sse_event(&raw);
        let Ok(mcp::Body::Single(m)) = mcp::classify(&ev.data) else {
            return Some(raw);
        };
        let edited = match (m.kind, m.method) {
            (mcp::Kind::Response, _) => self.marked(&ev.data),
            (mcp::Kind::Notification, Some(method)) => {
                self.changed(method);
                let table = self.mark.as_ref().map(|m| m.table.borrow());
                table.and_then(|t| {
                    rewrite::notification_for_client(&ev.data, &t, self.member, false)
                })
            }
            _ if !self.several => None,
            _ => rewrite::tag_message(self.member, &ev.data),
        };
        Some(match edited {
            Some(data) => Bytes::from(sse_message(ev.id.as_deref(), &data)),
            None => raw,
        })
    }

    /// A whole JSON answer as the client gets it; `None`: unchanged.
    pub fn body(&self, body: &[u8]) -> Option<Vec<u8>> {
        let inner = self.inner.as_ref().and_then(|s| s.body(body));
        let marked = self.marked(inner.as_deref().unwrap_or(body));
        marked.or(inner)
    }

    /// The response with its resource URIs as the client must see them; `None`: unchanged.
    fn marked(&self, response: &[u8]) -> Option<Vec<u8>> {
        let m = self.mark.as_ref()?;
        let table = m.table.borrow();
        rewrite::result_for_client(m.method, response, &table, self.member, m.marked)
    }
}

impl Tag {
    /// A member's list of some kind changed: the route learns that kind again.
    fn changed(&self, method: &str) {
        let kinds: &[merge::ListKind] = match method {
            "notifications/tools/list_changed" => &[merge::ListKind::Tools],
            "notifications/prompts/list_changed" => &[merge::ListKind::Prompts],
            "notifications/resources/list_changed" => &[
                merge::ListKind::Resources,
                merge::ListKind::ResourceTemplates,
            ],
            _ => return,
        };
        for &k in kinds {
            self.learned[k as usize].set(false);
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

/// `src` from a member, its events through `tag`.
fn tagged(src: Source, mut tag: Tag) -> Source {
    match src {
        Source::Message(line) => match tag.body(&line) {
            Some(edited) => Source::Message(Bytes::from(edited)),
            None => Source::Message(line),
        },
        Source::Http(mut ans) => {
            tag.inner = ans.shape.take();
            ans.shape = Some(Box::new(super::Shape::Tag(tag)));
            Source::Http(ans)
        }
        Source::Events(ev) => Source::Events(super::Events::Tagged(Box::new(ev), tag)),
        other => other,
    }
}
