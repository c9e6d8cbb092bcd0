//! config: the TOML loader `config::FileConfig::from_toml` and the validation that turns a
//! file into the runtime `Config` (`FileConfig::resolve`).
//!
//! Invariants: neither panics on any text; a config that resolves satisfies every bound and
//! relation the validation promises (limits at their minimums, head limits within what the
//! codec's u16 offsets hold, rising degradation thresholds, `pool_max_idle <=
//! pool_max_connections`, `prewarm + stateless_children <= max_processes`, the tape bounds,
//! ...); what the gateway writes into an upstream request head from the config (authority,
//! path, health path, credentials) is header-safe, and what it hands to `Command` for a
//! stdio child holds no NUL (nor `=` in an environment name), so it cannot fail at every spawn.
//! Each server of a federation holds the same; its name splits unambiguously from the
//! separator, route paths are unique and usable, and every route names known servers, each
//! server on some route.
//!
//! Addresses are resolved only when they are literal: a fuzz run must not ask DNS.
//!
//! Input: the TOML text.

use std::net::SocketAddr;
use std::time::Duration;

use shardcat::config::{Config, FileConfig, Overrides, Upstream, MAX_SHARDS};

#[path = "common.rs"]
mod common;

pub fn run(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(file) = FileConfig::from_toml(text) else {
        return;
    };
    if !literal(&file) {
        return;
    }
    let demo: SocketAddr = "127.0.0.1:1".parse().expect("literal");
    if let Ok(c) = file.resolve(&Overrides::default(), Some(demo)) {
        check(&c);
    }
}

/// Whether every address `resolve` looks up is a literal socket address (no name lookup).
fn literal(f: &FileConfig) -> bool {
    let addr = |s: &str| s.parse::<SocketAddr>().is_ok();
    let url = |u: &str| {
        let Some(rest) = u.strip_prefix("http://") else {
            return true;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let with_port = match authority.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() => authority.to_string(),
            _ => format!("{authority}:80"),
        };
        addr(&with_port)
    };
    let admin = matches!(f.server.admin.as_str(), "" | "off") || addr(&f.server.admin);
    let servers = f.servers.iter().flat_map(|s| {
        std::iter::once(s.upstream.url.as_str()).chain(s.replica.iter().map(|r| r.url.as_str()))
    });
    let mut urls = f.upstream.iter().map(|u| u.url.as_str()).chain(servers);
    addr(&f.server.listen) && admin && urls.all(|u| u.is_empty() || url(u))
}

fn at_least_1ms(what: &str, d: Duration) {
    assert!(d >= Duration::from_millis(1), "{what}: {d:?}");
}

/// Bytes allowed in a header value (RFC 9110 §5.5: no control characters but HTAB).
fn header_safe(s: &str) -> bool {
    !s.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f)
}

fn check(c: &Config) {
    assert!((1..=MAX_SHARDS).contains(&c.shards));
    assert!(c.listen_backlog >= 1);
    let l = &c.limits;
    assert!(l.max_connections >= 1 && l.max_sessions >= 1 && l.handoff_queue_depth >= 1);
    assert!(
        (512..=65_535).contains(&l.max_head_bytes),
        "{}",
        l.max_head_bytes
    );
    assert!((8..=128).contains(&l.max_headers));
    assert!(l.max_body_bytes >= 1024 && l.max_event_bytes >= 1024);
    assert!(l.max_pending_events >= 1 && l.max_pending_bytes >= 1024);
    let t = &c.timeouts;
    for (what, d) in [
        ("client_head", t.client_head),
        ("keepalive_idle", t.keepalive_idle),
        ("upstream_connect", t.upstream_connect),
        ("upstream_request", t.upstream_request),
        ("sse_keepalive", t.sse_keepalive),
        ("sse_idle", t.sse_idle),
        ("era_probe", t.era_probe),
        ("session_idle", t.session_idle),
        ("session_max_age", t.session_max_age),
        ("drain", t.drain),
    ] {
        at_least_1ms(what, d);
    }
    let s = &c.sse;
    assert!(s.max_streams_per_session >= 1);
    at_least_1ms("reconnect_base", s.reconnect_base);
    at_least_1ms("resume_window", s.resume_window);
    assert!(s.reconnect_base <= s.reconnect_max);
    let d = &c.degradation;
    assert!(0.0 < d.recording_shed_at && d.recording_shed_at <= d.sessions_rejected_at);
    assert!(d.sessions_rejected_at <= d.protective_at && d.protective_at <= 1.0);
    assert!((0.0..0.5).contains(&d.hysteresis));
    at_least_1ms("check_interval", d.check_interval);
    assert!(d.max_pending_events >= 1);
    check_upstream(&c.upstream);
    check_federation(c);
    if let Some(tc) = &c.tapes {
        assert_eq!(tc.validate(), Ok(()));
        assert!(tc.batch_max_frames >= 1 && tc.batch_max_frames <= tc.channel_depth);
    }
    for o in &c.origins.origins {
        assert_eq!(o, &o.to_ascii_lowercase());
    }
}

fn check_upstream(u: &Upstream) {
    match u {
        Upstream::Http(h) => check_http(h),
        Upstream::Stdio(s) => {
            assert!(!s.command.trim().is_empty());
            assert!(s.max_processes >= 1 && s.stdin_queue_depth >= 1);
            assert!(s.prewarm + s.stateless_children <= s.max_processes);
            at_least_1ms("kill_grace", s.kill_grace);
            let no_nul = |v: &str| !v.contains('\0');
            assert!(no_nul(&s.command) && s.args.iter().all(|a| no_nul(a)));
            assert!(s.cwd.as_deref().is_none_or(no_nul));
            for (k, v) in &s.env {
                assert!(
                    !k.is_empty() && !k.contains('=') && no_nul(k) && no_nul(v),
                    "env {k:?}"
                );
            }
        }
    }
}

/// Servers, routes and the separator; without `[[server]]`, one unnamed server on `/mcp`.
fn check_federation(c: &Config) {
    let f = &c.federation;
    let sep = f.separator.as_str();
    assert!((1..=8).contains(&sep.len()), "{sep:?}");
    let refused =
        |b: u8| !b.is_ascii_graphic() || b.is_ascii_alphanumeric() || b"/*?\"\\".contains(&b);
    assert!(!sep.bytes().any(refused), "{sep:?}");
    assert!(f.max_names >= 1 && f.max_list_pages >= 1);
    assert!(!c.servers.is_empty() && !c.routes.is_empty());
    if c.servers[0].name.is_empty() {
        assert_eq!(c.servers.len(), 1);
        assert_eq!((c.routes.len(), c.routes[0].path.as_str()), (1, "/mcp"));
    }
    for (i, s) in c.servers.iter().enumerate() {
        check_upstream(&s.upstream);
        if s.name.is_empty() {
            continue;
        }
        let name_byte =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        assert!(s.name.bytes().all(name_byte), "{:?}", s.name);
        // `<name><sep><x>` splits at the separator's first occurrence into the name and `x`.
        assert_eq!(
            format!("{}{sep}", s.name).find(sep),
            Some(s.name.len()),
            "{:?}",
            s.name
        );
        assert!(c.servers[..i].iter().all(|o| o.name != s.name));
    }
    for (i, r) in c.routes.iter().enumerate() {
        let p = r.path.as_str();
        assert!(
            p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
            "{p:?}"
        );
        assert!(
            p != "/.well-known" && !p.starts_with("/.well-known/"),
            "{p:?}"
        );
        assert!(c.routes[..i].iter().all(|o| o.path != r.path), "{p:?}");
        assert!(!r.servers.is_empty() && r.servers.iter().all(|&k| k < c.servers.len()));
        for (j, k) in r.servers.iter().enumerate() {
            assert!(!r.servers[..j].contains(k), "{p:?} names a server twice");
        }
    }
    for k in 0..c.servers.len() {
        assert!(
            c.routes.iter().any(|r| r.servers.contains(&k)),
            "server {k} on no route"
        );
    }
}

fn check_http(h: &shardcat::config::HttpUpstreams) {
    assert!(!h.targets.is_empty());
    for u in &h.targets {
        assert!(!u.authority.is_empty() && header_safe(&u.authority) && !u.authority.contains(' '));
        assert!(u.path.starts_with('/') && header_safe(&u.path) && !u.path.contains(' '));
        assert!(
            u.authorization.as_deref().is_none_or(header_safe),
            "authorization"
        );
        assert!(u.pool_max_connections >= 1 && u.pool_max_idle <= u.pool_max_connections);
        at_least_1ms("pool_idle_timeout", u.pool_idle_timeout);
        assert!((1..=1000).contains(&u.weight));
        let hc = &u.health;
        assert!(hc.path.starts_with('/') && header_safe(&hc.path) && !hc.path.contains(' '));
        at_least_1ms("health interval", hc.interval);
        at_least_1ms("health timeout", hc.timeout);
        at_least_1ms("breaker_open", hc.breaker_open);
        assert!(hc.healthy_threshold >= 1 && hc.unhealthy_threshold >= 1);
        assert!(hc.breaker_failures >= 1 && hc.breaker_half_open_requests >= 1);
    }
}
