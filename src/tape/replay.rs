//! Replay: serves one recorded session as an MCP Streamable HTTP server on `/mcp`, so a client
//! can run against it with no real server (in CI, say). One thread, monoio legacy driver.
//!
//! - `initialize` gets the recorded initialize result and a fresh session id.
//! - A request is matched on method and params (params' `_meta` and the id ignored). Several
//!   recorded exchanges with the same key are served in recorded order, then the last repeats.
//!   The answer carries the new request's id. A recorded SSE response is sent as SSE again, one
//!   event per recorded event, with the recorded delays under `--timing`.
//! - No match: a JSON-RPC error (-32601 unknown method, -32602 known method with other
//!   params) whose `data.candidates` names the closest recorded requests.
//! - Notifications and responses get 202, DELETE 200, GET 405 (nothing is pushed unasked).
//!   Stateless (2026-07-28) requests, with no session, are answered the same way.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use serde_json::{json, Value};

use super::{Dir, Frame, FrameKind};
use crate::codec::http::{self, HeadBody, Method, ReadBuf};
use crate::mcp;

/// Candidates named in an unmatched request's error.
const MAX_CANDIDATES: usize = 3;

/// One recorded message of a response, with its delay after the request.
#[derive(Debug, Clone)]
pub struct Event {
    pub after_us: u64,
    pub event_id: Option<String>,
    pub message: Value,
}

/// A recorded request and what answered it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// Params without `_meta`.
    pub params: Value,
    pub status: u16,
    pub sse: bool,
    /// SSE events in order; the last one is the response (a JSON response is one event).
    pub events: Vec<Event>,
    answered: bool,
}

/// A session prepared for replay.
#[derive(Debug, Default)]
pub struct Script {
    pub exchanges: Vec<Exchange>,
    /// method + canonical params → indices into `exchanges`, in recorded order.
    by_key: HashMap<String, Vec<usize>>,
}

/// A request still waiting for its response while the script is built.
struct Pending {
    id: String,
    stream: u32,
    at_us: u64,
    exchange: usize,
}

impl Script {
    /// Pairs each recorded request with the messages that answered it.
    pub fn from_frames(frames: &[Frame]) -> Script {
        let mut s = Script::default();
        let mut open: Vec<Pending> = Vec::new();
        for f in frames {
            let FrameKind::Message {
                status,
                sse,
                stream,
                event_id,
            } = &f.kind
            else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&f.payload) else {
                continue;
            };
            let msgs = match v {
                Value::Array(items) => items,
                one => vec![one],
            };
            for m in msgs {
                match f.dir {
                    Dir::ClientToServer => s.add_request(m, *stream, f.ts_us, &mut open),
                    Dir::ServerToClient => {
                        let event_id = event_id
                            .as_ref()
                            .map(|e| String::from_utf8_lossy(e).into_owned());
                        let at = (f.ts_us, *status, *sse, *stream);
                        s.add_answer(m, at, event_id, &mut open);
                    }
                    Dir::Gateway => {}
                }
            }
        }
        s.exchanges.retain(|e| e.answered);
        for (i, e) in s.exchanges.iter().enumerate() {
            s.by_key
                .entry(key(&e.method, &e.params))
                .or_default()
                .push(i);
        }
        s
    }

    fn add_request(&mut self, m: Value, stream: u32, ts: u64, open: &mut Vec<Pending>) {
        let (Some(method), Some(id)) = (m.get("method").and_then(Value::as_str), m.get("id"))
        else {
            return;
        };
        open.push(Pending {
            id: id.to_string(),
            stream,
            at_us: ts,
            exchange: self.exchanges.len(),
        });
        self.exchanges.push(Exchange {
            method: method.to_string(),
            params: strip_meta(m.get("params")),
            status: 200,
            sse: false,
            events: Vec::new(),
            answered: false,
        });
    }

    /// `at` = (timestamp, status, sse, stream) of the frame that carried `m`.
    fn add_answer(
        &mut self,
        m: Value,
        at: (u64, u16, bool, u32),
        event_id: Option<String>,
        open: &mut Vec<Pending>,
    ) {
        let (ts, status, sse, stream) = at;
        let same_stream = |p: &Pending| stream == 0 || p.stream == 0 || p.stream == stream;
        let is_response = m.get("method").is_none() && m.get("id").is_some();
        let pos = if is_response {
            let id = m.get("id").map(Value::to_string).unwrap_or_default();
            open.iter().rposition(|p| p.id == id && same_stream(p))
        } else if sse {
            // A notification or server request inside a response stream.
            open.iter().rposition(same_stream)
        } else {
            None
        };
        let Some(pos) = pos else { return };
        let p = &open[pos];
        let e = &mut self.exchanges[p.exchange];
        e.events.push(Event {
            after_us: ts.saturating_sub(p.at_us),
            event_id,
            message: m,
        });
        e.sse |= sse;
        if is_response {
            e.status = if status == 0 { 200 } else { status };
            e.answered = true;
            open.remove(pos);
        }
    }

    /// Recorded exchanges for this method and params.
    fn matches(&self, method: &str, params: &Value) -> Option<&Vec<usize>> {
        self.by_key.get(&key(method, params))
    }

    /// The closest recorded requests: same method ranked by params similarity, or, for an
    /// unknown method, the methods with the nearest names.
    pub fn candidates(&self, method: &str, params: &Value) -> (bool, Vec<Value>) {
        let known = self.exchanges.iter().any(|e| e.method == method);
        if known {
            let mut scored: Vec<(f64, &Exchange)> = self
                .exchanges
                .iter()
                .filter(|e| e.method == method)
                .map(|e| (similarity(params, &e.params), e))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut seen = HashSet::new();
            let list = scored
                .into_iter()
                .filter(|(_, e)| seen.insert(canonical(&e.params)))
                .take(MAX_CANDIDATES)
                .map(|(score, e)| json!({"method": e.method, "params": e.params, "similarity": (score * 100.0).round() / 100.0}))
                .collect();
            return (true, list);
        }
        let mut methods: Vec<&str> = self.exchanges.iter().map(|e| e.method.as_str()).collect();
        methods.sort_unstable();
        methods.dedup();
        methods.sort_by_key(|m| edit_distance(m, method));
        let list = methods
            .into_iter()
            .take(MAX_CANDIDATES)
            .map(|m| json!({"method": m}))
            .collect();
        (false, list)
    }
}

fn strip_meta(params: Option<&Value>) -> Value {
    match params {
        Some(Value::Object(map)) => {
            let mut map = map.clone();
            map.remove("_meta");
            Value::Object(map)
        }
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// JSON text with object keys sorted, so key order never decides a match.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

fn key(method: &str, params: &Value) -> String {
    let params = match params {
        Value::Object(m) if m.is_empty() => &Value::Null,
        p => p,
    };
    format!("{method}\n{}", canonical(params))
}

/// Leaves of a JSON value as "path=value" strings.
fn leaves(v: &Value, path: &str, out: &mut HashSet<String>) {
    match v {
        Value::Object(map) => map
            .iter()
            .for_each(|(k, x)| leaves(x, &format!("{path}/{k}"), out)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, x)| leaves(x, &format!("{path}/{i}"), out)),
        other => {
            out.insert(format!("{path}={other}"));
        }
    }
}

/// Jaccard similarity of the two values' leaves, in [0, 1].
pub fn similarity(a: &Value, b: &Value) -> f64 {
    let (mut la, mut lb) = (HashSet::new(), HashSet::new());
    leaves(a, "", &mut la);
    leaves(b, "", &mut lb);
    let union = la.union(&lb).count();
    if union == 0 {
        return 1.0;
    }
    la.intersection(&lb).count() as f64 / union as f64
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The replay server's state.
struct Replay {
    script: Script,
    timing: bool,
    /// Next exchange to serve per match key (then the last repeats).
    cursors: RefCell<HashMap<String, usize>>,
    sessions: RefCell<HashSet<String>>,
}

/// Serves `script` on `listener` until the process exits.
pub fn run(listener: std::net::TcpListener, script: Script, timing: bool) -> std::io::Result<()> {
    let replay = Replay {
        script,
        timing,
        cursors: RefCell::default(),
        sessions: RefCell::default(),
    };
    crate::demo::serve_forever(listener, "replay", replay, serve)
}

async fn serve(replay: Rc<Replay>, mut s: TcpStream) {
    let mut rb = ReadBuf::default();
    loop {
        let (head, body) = match crate::demo::next_request(&mut s, &mut rb).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = reply(&mut s, 400, &[], e.to_string().as_bytes()).await;
                return;
            }
        };
        let ok = if head.path.split('?').next() != Some("/mcp") {
            reply(&mut s, 404, &[], b"not found").await
        } else {
            let sid = head.headers.get_str("mcp-session-id").map(str::to_string);
            match head.method {
                Method::Post => post(&replay, &mut s, sid, &body).await,
                Method::Delete => delete(&replay, &mut s, sid).await,
                _ => reply(&mut s, 405, b"allow: POST, DELETE\r\n", b"").await,
            }
        };
        if !ok || !head.keep_alive {
            return;
        }
    }
}

async fn delete(replay: &Replay, s: &mut TcpStream, sid: Option<String>) -> bool {
    let Some(sid) = sid else {
        return reply(s, 405, b"allow: POST\r\n", b"").await;
    };
    let removed = replay.sessions.borrow_mut().remove(&sid);
    reply(s, if removed { 200 } else { 404 }, &[], b"").await
}

async fn post(replay: &Replay, s: &mut TcpStream, sid: Option<String>, body: &[u8]) -> bool {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(Value::Array(_)) => {
            let e = rpc_error(
                &Value::Null,
                mcp::code::INVALID_REQUEST,
                "replay does not take batches",
                None,
            );
            return reply_json(s, 400, &[], &e).await;
        }
        Ok(v) => v,
        Err(e) => {
            let e = rpc_error(&Value::Null, mcp::code::PARSE_ERROR, &e.to_string(), None);
            return reply_json(s, 400, &[], &e).await;
        }
    };
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let (Some(id), false) = (msg.get("id"), method.is_empty()) else {
        // A notification or a response.
        return reply(s, 202, &[], b"").await;
    };
    if let Some(sid) = &sid {
        if method != "initialize" && !replay.sessions.borrow().contains(sid) {
            let e = rpc_error(id, mcp::code::SERVER_ERROR, "session not found", None);
            return reply_json(s, 404, &[], &e).await;
        }
    }
    let params = strip_meta(msg.get("params"));
    let Some(found) = replay.next_exchange(method, &params) else {
        let e = unmatched(&replay.script, id, method, &params);
        return reply_json(s, 200, &[], &e).await;
    };
    let mut headers = String::new();
    if method == "initialize" {
        let sid = format!("replay-{:032x}", mcp::random_secret());
        headers = format!("mcp-session-id: {sid}\r\n");
        replay.sessions.borrow_mut().insert(sid);
    }
    let token = msg.pointer("/params/_meta/progressToken");
    let events = rewrite(&found.events, id, token);
    if found.sse {
        send_sse(s, found.status, headers.as_bytes(), &events, replay.timing).await
    } else {
        let last = events.last().map_or(Value::Null, |e| e.message.clone());
        reply_json(s, found.status, headers.as_bytes(), &last).await
    }
}

impl Replay {
    /// The recorded exchange to serve for this request, advancing its cursor.
    fn next_exchange(&self, method: &str, params: &Value) -> Option<Exchange> {
        // initialize is answered whatever the client's params (its name and capabilities).
        let list = if method == "initialize" {
            let first = self
                .script
                .exchanges
                .iter()
                .position(|e| e.method == method)?;
            return Some(self.script.exchanges[first].clone());
        } else {
            self.script.matches(method, params)?
        };
        let k = key(method, params);
        let mut cursors = self.cursors.borrow_mut();
        let at = cursors.entry(k).or_insert(0);
        let i = list[(*at).min(list.len() - 1)];
        *at += 1;
        Some(self.script.exchanges[i].clone())
    }
}

/// The recorded answer with the final response's id set to the new request's, and progress
/// notifications pointed at the new request's progress token.
fn rewrite(events: &[Event], id: &Value, token: Option<&Value>) -> Vec<Event> {
    let n = events.len();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            if i + 1 == n {
                e.message["id"] = id.clone();
            } else if let (Some(t), Some("notifications/progress")) =
                (token, e.message.get("method").and_then(Value::as_str))
            {
                e.message["params"]["progressToken"] = t.clone();
            }
            e
        })
        .collect()
}

fn unmatched(script: &Script, id: &Value, method: &str, params: &Value) -> Value {
    let (known, candidates) = script.candidates(method, params);
    let (code, message) = if known {
        (
            -32602,
            format!("no recorded response for {method} with these params"),
        )
    } else {
        (-32601, format!("method not in the tape: {method}"))
    };
    rpc_error(id, code, &message, Some(json!({"candidates": candidates})))
}

fn rpc_error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

async fn send_sse(
    s: &mut TcpStream,
    status: u16,
    extra: &[u8],
    events: &[Event],
    timing: bool,
) -> bool {
    let start = Instant::now();
    let mut out = Vec::with_capacity(512);
    let mut head =
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n"
            .to_vec();
    head.extend_from_slice(extra);
    http::write_response_head(&mut out, status, &head, HeadBody::Chunked);
    for e in events {
        if timing {
            let due = start + Duration::from_micros(e.after_us);
            monoio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        }
        let mut ev = Vec::new();
        if let Some(id) = &e.event_id {
            ev.extend_from_slice(format!("id: {id}\n").as_bytes());
        }
        ev.extend_from_slice(b"event: message\ndata: ");
        ev.extend_from_slice(e.message.to_string().as_bytes());
        ev.extend_from_slice(b"\n\n");
        http::encode_chunk(&mut out, &ev);
        // One write per event, so each reaches the client when it is due.
        let (res, back) = s.write_all(out).await;
        if res.is_err() {
            return false;
        }
        out = back;
        out.clear();
    }
    s.write_all(http::LAST_CHUNK.to_vec()).await.0.is_ok()
}

async fn reply_json(s: &mut TcpStream, status: u16, extra: &[u8], v: &Value) -> bool {
    let mut head = b"content-type: application/json\r\n".to_vec();
    head.extend_from_slice(extra);
    reply(s, status, &head, v.to_string().as_bytes()).await
}

async fn reply(s: &mut TcpStream, status: u16, extra: &[u8], body: &[u8]) -> bool {
    let mut out = Vec::with_capacity(160 + body.len());
    http::write_response_head(&mut out, status, extra, HeadBody::Length(body.len()));
    out.extend_from_slice(body);
    s.write_all(out).await.0.is_ok()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(dir: Dir, stream: u32, sse: bool, ts: u64, v: Value) -> Frame {
        Frame {
            server: None,
            session: 1,
            ts_us: ts,
            dir,
            kind: FrameKind::Message {
                status: if dir == Dir::ClientToServer { 0 } else { 200 },
                sse,
                stream,
                event_id: None,
            },
            payload: Bytes::from(v.to_string()),
        }
    }

    #[test]
    fn interleaved_sse_streams_pair_by_stream_and_id() {
        let c2s = Dir::ClientToServer;
        let s2c = Dir::ServerToClient;
        let note = |n: u64| json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}});
        let frames = vec![
            msg(
                c2s,
                1,
                false,
                0,
                json!({"jsonrpc": "2.0", "id": 1, "method": "a", "params": {"x": 1}}),
            ),
            msg(
                c2s,
                2,
                false,
                10,
                json!({"jsonrpc": "2.0", "id": 2, "method": "b", "params": {"_meta": {"t": 1}}}),
            ),
            msg(s2c, 1, true, 20, note(1)),
            msg(s2c, 2, true, 30, note(2)),
            msg(
                s2c,
                1,
                true,
                40,
                json!({"jsonrpc": "2.0", "id": 1, "result": "A"}),
            ),
            msg(
                s2c,
                2,
                true,
                50,
                json!({"jsonrpc": "2.0", "id": 2, "result": "B"}),
            ),
            // Never answered: not servable.
            msg(
                c2s,
                3,
                false,
                60,
                json!({"jsonrpc": "2.0", "id": 3, "method": "c"}),
            ),
        ];
        let s = Script::from_frames(&frames);
        assert_eq!(s.exchanges.len(), 2);
        let a = &s.exchanges[0];
        assert_eq!((a.method.as_str(), a.sse, a.events.len()), ("a", true, 2));
        assert_eq!(a.events[0].message["params"]["n"], 1);
        assert_eq!((a.events[0].after_us, a.events[1].after_us), (20, 40));
        let b = &s.exchanges[1];
        assert_eq!(b.events[0].message["params"]["n"], 2);
        assert_eq!(b.params, json!({}), "_meta is not part of the match");
        assert!(
            s.matches("b", &Value::Null).is_some(),
            "{{}} and no params match alike"
        );
        assert!(s.matches("a", &json!({"x": 1})).is_some());
        let (known, c) = s.candidates("a", &json!({"x": 2}));
        assert!(known);
        assert_eq!(c[0]["params"], json!({"x": 1}));
        let (known, c) = s.candidates("bb", &Value::Null);
        assert!(!known);
        assert_eq!(c[0]["method"], "b");
        // The final response gets the new id; progress tokens follow the new request.
        let out = rewrite(&a.events, &json!("new"), None);
        assert_eq!(out[1].message["id"], "new");
        assert_eq!(
            canonical(&json!({"b": 1, "a": [2, {"d": 1, "c": 0}]})),
            r#"{"a":[2,{"c":0,"d":1}],"b":1}"#
        );
    }

    #[test]
    fn recorder_moves_to_a_shard_thread() {
        fn is_send<T: Send>() {}
        is_send::<crate::tape::Recorder>();
        is_send::<Frame>();
    }
}
