//! The legacy HTTP+SSE transport (protocol 2024-11-05) toward a server, as a message peer: the
//! gateway opens the server's event stream (`GET url`), reads the `endpoint` event naming
//! the URI to POST messages to, and from then on POSTs each message there and routes each
//! `message` event the server sends, exactly as a stdio child's stdin and stdout (`child`):
//! ids rewritten, responses matched to the requests waiting for them, the rest on the
//! session's stream.
//!
//! Invariants:
//! - an endpoint on another origin than the stream's (or one that is not a plain URI) is
//!   refused and counted: messages never go to a host the configuration did not name;
//! - the peer lives exactly as long as its event stream: when the stream ends, unasked or
//!   not, every waiter fails and the session ends (`Child::transport_ended`); an unasked end
//!   is logged and counted (`legacy_sse_dropped`);
//! - one supervisor task owns the stream and awaits its POST writer before it releases the
//!   peer's permit; every queue is the child's own bounded one.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use super::child::{Child, Role, Spawn};
use crate::codec::http::{self, BodyDecoder, ReadBuf, ResponseHead};
use crate::codec::sse::{parse_sse_event, sse_fields, SseSplitter};
use crate::config::UpstreamConfig;
use crate::metrics::{gauge_add, inc, ShardStats};
use crate::upstream::pool::{Pool, UpConn};

/// A legacy SSE server as a shard reaches it.
pub struct Server {
    /// Connections to the server's origin: its event streams (held for a peer's life) and
    /// the POSTs of messages (kept alive and reused).
    pool: Rc<Pool>,
    /// For the stream's head and `endpoint` event, and for each POST.
    timeout: Duration,
    /// The largest event taken from the stream.
    max_event_bytes: usize,
}

impl Server {
    pub fn new(pool: Rc<Pool>, timeout: Duration, max_event_bytes: usize) -> Server {
        Server {
            pool,
            timeout,
            max_event_bytes,
        }
    }

    fn cfg(&self) -> &UpstreamConfig {
        self.pool.config()
    }
}

/// A new peer on `server`: its conversation state at once, its stream opened by its
/// supervisor. Messages queued before the endpoint is known wait in the child's queue.
pub(super) fn connect(
    s: &Spawn,
    server: &Rc<Server>,
    role: Role,
    on_reaped: Box<dyn FnOnce()>,
) -> Rc<Child> {
    let child = Child::new(s, role, 0);
    monoio::spawn(supervise(
        server.clone(),
        child.clone(),
        s.stats.clone(),
        on_reaped,
    ));
    child
}

/// Why a peer's stream ended.
enum End {
    /// The gateway ended it (the session ended, shutdown).
    Asked,
    /// The server refused to be a legacy SSE server (status, content type, endpoint).
    Refused(String),
    /// The stream broke or the server ended it.
    Dropped(String),
}

/// Owns the peer from its connect to its end: runs the stream, then the POST writer's end.
async fn supervise(
    server: Rc<Server>,
    child: Rc<Child>,
    stats: Arc<ShardStats>,
    on_reaped: Box<dyn FnOnce()>,
) {
    gauge_add(&stats.legacy_sse_streams, 1);
    let mut writer = None;
    let end = run(&server, &child, &stats, &mut writer).await;
    let url = &server.cfg().authority;
    let why = match &end {
        End::Asked => "the gateway ended the stream".to_string(),
        End::Refused(why) => {
            inc(&stats.legacy_sse_refused);
            log::warn!("legacy SSE server {url}: refused: {why}");
            format!("legacy SSE server refused: {why}")
        }
        End::Dropped(why) => {
            inc(&stats.legacy_sse_dropped);
            log::warn!("legacy SSE server {url}: event stream ended ({why}): its session ends");
            format!("legacy SSE server stream ended: {why}")
        }
    };
    child.transport_ended(&why);
    if let Some(w) = writer {
        w.await;
    }
    child.set_reaped();
    gauge_add(&stats.legacy_sse_streams, -1);
    on_reaped();
}

/// Opens the stream, learns the endpoint, starts the writer (into `writer`) and routes events
/// until the stream ends or the peer is stopped.
async fn run(
    server: &Rc<Server>,
    child: &Rc<Child>,
    stats: &Arc<ShardStats>,
    writer: &mut Option<monoio::task::JoinHandle<()>>,
) -> End {
    let opened = monoio::select! {
        biased;
        _ = child.stop.wait() => return End::Asked,
        o = monoio::time::timeout(server.timeout, open(server)) => o,
    };
    let (mut conn, mut events, endpoint) = match opened {
        Ok(Ok(open)) => open,
        Ok(Err(end)) => return end,
        Err(_) => return End::Refused("no endpoint event in time".into()),
    };
    inc(&stats.legacy_sse_opened);
    log::debug!(
        "legacy SSE server {}: messages go to {endpoint}",
        server.cfg().authority
    );
    *writer = Some(monoio::spawn(post_loop(
        server.clone(),
        child.clone(),
        endpoint,
        stats.clone(),
    )));
    loop {
        // Dropping the read in flight is safe: the stream is closed with it.
        let ev = monoio::select! {
            biased;
            _ = child.stop.wait() => return End::Asked,
            ev = events.next(&mut conn) => ev,
        };
        match ev {
            Ok(ev) => route(child, &ev),
            Err(why) => return End::Dropped(why),
        }
    }
}

/// One event from the server: a `message` (or unnamed) event's data is one JSON-RPC message.
fn route(child: &Child, ev: &[u8]) {
    let name = event_name(ev);
    if name.is_some_and(|n| n != b"message") {
        return;
    }
    let data = parse_sse_event(ev).data;
    if !data.iter().all(u8::is_ascii_whitespace) {
        child.routes(&data);
    }
}

fn event_name(ev: &[u8]) -> Option<&[u8]> {
    sse_fields(ev).find(|(n, _)| *n == b"event").map(|(_, v)| v)
}

/// The server's event stream, read event by event.
struct Events {
    rb: ReadBuf,
    body: BodyDecoder,
    split: SseSplitter,
}

impl Events {
    /// The next whole event; `Err` once the stream ended or broke.
    async fn next(&mut self, conn: &mut UpConn) -> Result<Bytes, String> {
        loop {
            if let Some(ev) = self.split.next_event().map_err(|e| e.to_string())? {
                return Ok(ev);
            }
            let split = &mut self.split;
            let done = self
                .body
                .decode(&mut self.rb, &mut |d| split.push(d))
                .map_err(|e| e.to_string())?;
            if let Some(ev) = self.split.next_event().map_err(|e| e.to_string())? {
                return Ok(ev);
            }
            if done {
                return Err("the server ended the stream".into());
            }
            match self.rb.fill(conn.stream()).await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// GET the stream and read up to its `endpoint` event: the connection, the stream, and the
/// path to POST to.
async fn open(server: &Server) -> Result<(UpConn, Events, String), End> {
    let cfg = server.cfg();
    let mut conn = server
        .pool
        .checkout()
        .await
        .map_err(|e| End::Dropped(format!("cannot connect: {e}")))?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        cfg.path, cfg.authority
    );
    push_authorization(&mut req, cfg);
    req.push_str("\r\n");
    let (res, _) = conn.stream().write_all(req.into_bytes()).await;
    res.map_err(|e| End::Dropped(format!("cannot send the GET: {e}")))?;
    let mut rb = ReadBuf::with_capacity(8 * 1024);
    let head = read_head(&mut conn, &mut rb).await.map_err(End::Dropped)?;
    if head.status != 200 || !http::is_event_stream(head.headers.get("content-type")) {
        return Err(End::Refused(format!(
            "GET {} answered {} {}, not an event stream",
            cfg.path,
            head.status,
            head.headers.get_str("content-type").unwrap_or("")
        )));
    }
    let mut events = Events {
        rb,
        body: BodyDecoder::new(head.body),
        split: SseSplitter::new(server.max_event_bytes),
    };
    loop {
        let ev = events.next(&mut conn).await.map_err(End::Dropped)?;
        if event_name(&ev) == Some(b"endpoint") {
            let data = parse_sse_event(&ev).data;
            let path = resolve(cfg, &data).map_err(End::Refused)?;
            return Ok((conn, events, path));
        }
    }
}

fn push_authorization(req: &mut String, cfg: &UpstreamConfig) {
    if let Some(a) = &cfg.authorization {
        req.push_str("Authorization: ");
        req.push_str(a);
        req.push_str("\r\n");
    }
}

/// Reads a final response head (1xx skipped).
async fn read_head(conn: &mut UpConn, rb: &mut ReadBuf) -> Result<ResponseHead, String> {
    loop {
        match http::parse_response(rb.data(), http::HeadLimits::default(), false) {
            Ok(Some(h)) if h.status < 200 => rb.consume(h.head_len),
            Ok(Some(h)) => {
                rb.consume(h.head_len);
                return Ok(h);
            }
            Ok(None) => match rb.fill(conn.stream()).await {
                Ok(0) => return Err("closed before its response".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The path to POST to, from the `endpoint` event's data, resolved against the stream's URL
/// (`cfg`). An absolute URI must name the stream's own origin (`http://` and its authority);
/// anything else, or bytes that cannot go in a request line, is refused.
pub fn resolve(cfg: &UpstreamConfig, data: &[u8]) -> Result<String, String> {
    let uri = std::str::from_utf8(http::trim(data)).map_err(|_| "endpoint is not UTF-8")?;
    if uri.is_empty() || !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("endpoint {uri:?} is not a plain URI"));
    }
    let lower = uri.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("http://") {
        Some(r)
    } else if lower.starts_with("https://") {
        return Err(format!("endpoint {uri:?} is on another origin (https)"));
    } else if lower.contains("://") {
        return Err(format!("endpoint {uri:?} is not an http URI"));
    } else {
        lower.strip_prefix("//")
    };
    if let Some(r) = rest {
        let split = r.find(['/', '?', '#']).unwrap_or(r.len());
        if r[..split] != cfg.authority.to_ascii_lowercase() {
            return Err(format!(
                "endpoint {uri:?} is on another origin than {}",
                cfg.authority
            ));
        }
        // The same offsets in the original spelling (lowercasing keeps ASCII lengths).
        let at = uri.len() - r.len() + split;
        return Ok(with_root(&uri[at..]));
    }
    if uri.starts_with('/') {
        return Ok(uri.to_string());
    }
    // Relative to the stream's path: its directory.
    let base = cfg.path.split(['?', '#']).next().unwrap_or("/");
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    Ok(with_root(&format!("{dir}{uri}")))
}

fn with_root(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// POSTs each queued message to the endpoint, in order, until the queue closes.
async fn post_loop(server: Rc<Server>, child: Rc<Child>, path: String, stats: Arc<ShardStats>) {
    while let Some(line) = child.next_out().await {
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let sent = monoio::time::timeout(server.timeout, post(&server, &path, body)).await;
        let failed = match sent {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(_) => "no answer in time".into(),
        };
        inc(&stats.legacy_sse_post_failures);
        log::warn!(
            "legacy SSE server {}: a message was not accepted: {failed}",
            server.cfg().authority
        );
    }
}

/// One POST of one message; a kept-alive connection the server closed meanwhile is retried
/// once on a fresh one (nothing reached the server on it).
async fn post(server: &Server, path: &str, body: &[u8]) -> Result<(), String> {
    let cfg = server.cfg();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        cfg.authority,
        body.len()
    );
    push_authorization(&mut head, cfg);
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    for _ in 0..2 {
        let mut conn = server.pool.checkout().await.map_err(|e| e.to_string())?;
        let (res, back) = conn.stream().write_all(req).await;
        req = back;
        let mut rb = ReadBuf::with_capacity(1024);
        let head = match res {
            Ok(_) => read_head(&mut conn, &mut rb).await,
            Err(e) => Err(e.to_string()),
        };
        let head = match head {
            Ok(h) => h,
            Err(_) if conn.reused && rb.data().is_empty() => continue,
            Err(why) => return Err(why),
        };
        let clean = drain(&mut conn, &mut rb, head.body).await;
        if clean && head.keep_alive {
            conn.checkin();
        }
        return match head.status {
            200..=299 => Ok(()),
            s => Err(format!("POST {path} answered {s}")),
        };
    }
    Err("the server closed the connection twice".into())
}

/// Reads a POST's answer body to its end (what servers say there is not used). True when it
/// ended cleanly, so the connection can be reused.
async fn drain(conn: &mut UpConn, rb: &mut ReadBuf, kind: http::BodyKind) -> bool {
    let mut dec = BodyDecoder::new(kind);
    loop {
        match dec.decode(rb, &mut |_| {}) {
            Ok(true) => return rb.data().is_empty(),
            Ok(false) => {}
            Err(_) => return false,
        }
        match rb.fill(conn.stream()).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &str) -> UpstreamConfig {
        let text = format!(
            "[upstream]\nkind = \"sse\"\nurl = \"http://127.0.0.1:9/{}\"\n",
            path.trim_start_matches('/')
        );
        let o = crate::config::Overrides::default();
        let c = crate::config::FileConfig::from_toml(&text)
            .unwrap()
            .resolve(&o, None)
            .unwrap();
        let crate::config::Upstream::Stdio(s) = c.upstream else {
            panic!("expected a message peer upstream")
        };
        *s.sse.unwrap()
    }

    #[test]
    fn endpoints_resolve_on_the_streams_origin_only() {
        let c = cfg("/mcp/sse");
        let ok = |d: &str| resolve(&c, d.as_bytes());
        assert_eq!(
            ok("/messages/?session_id=ab").unwrap(),
            "/messages/?session_id=ab"
        );
        assert_eq!(
            ok("messages?sessionId=1").unwrap(),
            "/mcp/messages?sessionId=1"
        );
        assert_eq!(ok(" http://127.0.0.1:9/m?x=1 ").unwrap(), "/m?x=1");
        assert_eq!(ok("HTTP://127.0.0.1:9?x").unwrap(), "/?x");
        assert_eq!(ok("//127.0.0.1:9/m").unwrap(), "/m");
        for bad in [
            "http://127.0.0.2:9/m",
            "http://127.0.0.1:99/m",
            "https://127.0.0.1:9/m",
            "//evil.example/m",
            "ftp://127.0.0.1:9/m",
            "/m\r\nX: y",
            "/m x",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad:?} was taken");
        }
    }
}
