//! Authentication through the real gateway: tokens from a JWKS served by the test (RSA, P-256
//! and Ed25519 keys generated here), checked claim by claim; key rotation, an identity
//! provider that goes down, a flood of unknown key ids; API keys by both headers, expired and
//! wrong ones, and `shardcat hash-key`; the 401 / 403 challenges and JSON-RPC bodies; the
//! protected resource metadata; the client's credentials kept from the upstream; sessions
//! bound to their subject, which is also the client for per-client limits; tapes naming the
//! subject, never the credential; many sessions with tokens over two shards; and the official
//! Python and TypeScript SDK clients with a bearer token (and the Python one without).

#[path = "support/idp.rs"]
mod idp;
#[path = "support/interop.rs"]
mod peers;
#[path = "support/process.rs"]
mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idp::{claims, JwksServer, SigningKey};
use serde_json::json;
use support::*;

const PRM: &str = "/.well-known/oauth-protected-resource";

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// initialize with these headers, on a fresh connection.
fn init_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Response {
    post(addr, headers, INIT)
}

fn init_as(addr: SocketAddr, token: &str) -> Response {
    init_with(addr, &[("authorization", &bearer(token))])
}

/// The SHA-256 of `key` as `shardcat hash-key` prints it, and the entry.
fn hash_key(name: &str, key: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["hash-key", "--name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hash-key");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("hash-key output");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8")
}

fn assert_challenge(r: &Response, status: u16, error: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    let h = r.header("www-authenticate").expect("www-authenticate");
    assert!(
        h.starts_with(&format!(
            "Bearer resource_metadata=\"https://gw.test{PRM}/mcp\""
        )),
        "{h}"
    );
    assert!(h.contains("scope=\"mcp\""), "{h}");
    match error {
        Some(e) => {
            assert!(h.contains(&format!("error=\"{e}\"")), "{h}");
            assert!(h.contains("error_description=\""), "{h}");
        }
        None => assert!(!h.contains("error="), "{h}"),
    }
    let body = r.json();
    assert_eq!(body["id"], 1, "the error answers the request's id: {body}");
    assert!(body["error"]["code"].is_i64());
}

#[test]
fn tokens_are_checked_claim_by_claim() {
    let (rsa, ec, ed) = (
        SigningKey::rsa("rsa-1"),
        SigningKey::p256("ec-1"),
        SigningKey::ed25519("ed-1"),
    );
    let jwks = JwksServer::start(idp::jwks(&[&rsa, &ec, &ed]));
    let demo = demo();
    let toml = idp::auth_toml(&jwks.url(), "oauth", "jwks_min_refresh_ms = 60000\n");
    let gw = gateway(&demo_url(&demo), 1, Some(&toml));
    let addr = gw.addr("listen");
    for key in [&rsa, &ec, &ed] {
        let r = init_as(addr, &key.sign(&claims("alice", "mcp")));
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text());
    }
    // The same token again: served from the cache.
    let t = rsa.sign(&claims("alice", "mcp admin"));
    for _ in 0..3 {
        assert_eq!(init_as(addr, &t).status, 200);
    }
    let mut c = claims("alice", "mcp");
    let refused = |c: serde_json::Value| init_as(addr, &rsa.sign(&c));
    c["exp"] = json!(idp::now() - 3600);
    assert_challenge(&refused(c.clone()), 401, Some("invalid_token"));
    let mut c = claims("alice", "mcp");
    c["nbf"] = json!(idp::now() + 3600);
    assert_challenge(&refused(c), 401, Some("invalid_token"));
    let mut c = claims("alice", "mcp");
    c["iat"] = json!(idp::now() + 3600);
    assert_challenge(&refused(c), 401, Some("invalid_token"));
    let mut c = claims("alice", "mcp");
    c["iss"] = json!("https://evil.test");
    assert_challenge(&refused(c), 401, Some("invalid_token"));
    let mut c = claims("alice", "mcp");
    c["aud"] = json!("https://elsewhere.test/mcp");
    let r = refused(c);
    assert_challenge(&r, 401, Some("invalid_token"));
    // A list audience naming one of ours passes (RFC 8707).
    let mut c = claims("alice", "mcp");
    c["aud"] = json!(["https://x.test", "https://other.test/mcp"]);
    assert_eq!(refused(c).status, 200);
    // Signed by another key under a known kid: the signature does not verify.
    let forger = SigningKey::rsa("rsa-1");
    assert_challenge(
        &init_as(addr, &forger.sign(&claims("alice", "mcp"))),
        401,
        Some("invalid_token"),
    );
    // Unknown kid.
    assert_challenge(
        &init_as(addr, &rsa.sign_as("nope", &claims("alice", "mcp"))),
        401,
        Some("invalid_token"),
    );
    // alg none, and HS256 keyed with anything while a JWKS is configured.
    let payload = idp::b64url(claims("alice", "mcp").to_string().as_bytes());
    let none = format!(
        "{}.{payload}.",
        idp::b64url(br#"{"alg":"none","kid":"rsa-1"}"#)
    );
    assert_challenge(&init_as(addr, &none), 401, Some("invalid_token"));
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &h,
        &claims("alice", "mcp"),
        &jsonwebtoken::EncodingKey::from_secret(idp::jwks(&[&rsa]).as_bytes()).expect("hmac key"),
    )
    .expect("hs256");
    assert_challenge(&init_as(addr, &hs), 401, Some("invalid_token"));
    // A token without the required scope: 403.
    let r = init_as(addr, &rsa.sign(&claims("alice", "admin")));
    assert_challenge(&r, 403, Some("insufficient_scope"));
    // No credentials: 401 with no error, for POST, GET and DELETE alike.
    assert_challenge(&init_with(addr, &[]), 401, None);
    let r = raw(
        addr,
        format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(delete(addr, "x").status, 401);
    // Garbage in the header.
    let r = init_with(addr, &[("authorization", "Basic YTpi")]);
    assert_eq!(r.status, 401);
    // The metrics count each result.
    let admin = gw.addr("admin");
    let m = |result: &str| {
        metric(
            admin,
            &format!("shardcat_auth_total{{result=\"{result}\"}}"),
        )
    };
    assert!(m("ok") >= 7.0, "{}", m("ok"));
    assert!(m("expired") >= 1.0);
    assert!(m("wrong_audience") >= 1.0);
    assert!(m("insufficient_scope") >= 1.0);
    assert!(m("missing") >= 3.0);
    assert!(m("invalid") >= 7.0, "{}", m("invalid"));
    assert_eq!(m("denied_tool"), 0.0);
    assert_eq!(metric(admin, "shardcat_jwks_keys"), 3.0);
    assert!(metric(admin, "shardcat_jwks_refreshes_total") >= 1.0);
    // Denials are logged with their reason, never with the token.
    let log = gw.stderr();
    assert!(log.contains("auth: refused"), "{log}");
    assert!(!log.contains(&t), "a token reached the log");
}

#[test]
fn protected_resource_metadata_is_served_without_auth() {
    let key = SigningKey::ed25519("k");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some(&idp::auth_toml(&jwks.url(), "oauth", "")),
    );
    let addr = gw.addr("listen");
    for path in [PRM.to_string(), format!("{PRM}/mcp")] {
        let r = get(addr, &path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let doc = r.json();
        assert_eq!(doc["resource"], idp::AUDIENCE);
        assert_eq!(doc["authorization_servers"], json!([idp::ISSUER]));
        assert_eq!(doc["scopes_supported"], json!(["mcp", "admin"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    assert_eq!(get(addr, &format!("{PRM}/other")).status, 404);
    // Without auth there is no metadata.
    let plain = gateway(&demo_url(&demo), 1, None);
    assert_eq!(get(plain.addr("listen"), PRM).status, 404);
}

#[test]
fn rotation_and_an_identity_provider_that_is_down() {
    let (old, new) = (SigningKey::rsa("old"), SigningKey::p256("new"));
    let jwks = JwksServer::start(idp::jwks(&[&old]));
    let demo = demo();
    let extra = "jwks_refresh_ms = 300\njwks_min_refresh_ms = 100\n";
    let gw = gateway(
        &demo_url(&demo),
        1,
        Some(&idp::auth_toml(&jwks.url(), "oauth", extra)),
    );
    let (addr, admin) = (gw.addr("listen"), gw.addr("admin"));
    let old_token = old.sign(&claims("alice", "mcp"));
    assert_eq!(init_as(addr, &old_token).status, 200);
    // The IdP publishes the new key and drops the old one.
    jwks.set(Some(idp::jwks(&[&new])));
    let new_token = new.sign(&claims("alice", "mcp"));
    assert!(
        eventually(Duration::from_secs(20), || init_as(addr, &new_token).status
            == 200),
        "the new key was never picked up"
    );
    // The old token was cached, but its key is gone: refused.
    assert_eq!(init_as(addr, &old_token).status, 401);
    // The IdP goes down: the failure is counted, the last good keys stay.
    jwks.set(None);
    let failures = || metric(admin, "shardcat_jwks_refresh_failures_total");
    assert!(eventually(Duration::from_secs(20), || failures() >= 2.0));
    let fresh = new.sign(&claims("bob", "mcp"));
    assert_eq!(init_as(addr, &fresh).status, 200);
    assert_eq!(metric(admin, "shardcat_jwks_keys"), 1.0);
    assert!(gw.stderr().contains("JWKS fetch failed"));
}

#[test]
fn a_flood_of_unknown_key_ids_costs_at_most_one_fetch_per_interval() {
    let key = SigningKey::ed25519("real");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let demo = demo();
    let extra = "jwks_min_refresh_ms = 60000\n";
    let gw = gateway(
        &demo_url(&demo),
        2,
        Some(&idp::auth_toml(&jwks.url(), "oauth", extra)),
    );
    let addr = gw.addr("listen");
    assert_eq!(jwks.hits(), 1, "one fetch at start");
    for i in 0..200 {
        let forged = key.sign_as(&format!("forged-{i}"), &claims("mallory", "mcp"));
        assert_eq!(init_as(addr, &forged).status, 401);
    }
    // Give the fetcher every chance to misbehave before counting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(jwks.hits() <= 2, "{} JWKS fetches", jwks.hits());
    assert_eq!(
        init_as(addr, &key.sign(&claims("alice", "mcp"))).status,
        200
    );
}

#[test]
fn api_keys_by_either_header_and_the_hash_key_command() {
    let entry = hash_key("ci", "s3cret-key_1");
    let parsed: toml::Value = toml::from_str(&entry).expect("hash-key prints TOML");
    let digest = parsed["auth"]["api_keys"][0]["sha256"]
        .as_str()
        .expect("sha256");
    assert_eq!(
        digest,
        shardcat::auth::api_key::hex(&shardcat::auth::api_key::digest(b"s3cret-key_1"))
    );
    let key = SigningKey::ed25519("k");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let demo = demo();
    let extra = format!(
        "{}\n[[auth.api_keys]]\nname = \"old\"\nsha256 = \"{}\"\nscopes = [\"mcp\"]\nexpires = \"2001-01-01T00:00:00Z\"\n",
        entry.replace("# scopes", "scopes"),
        shardcat::auth::api_key::hex(&shardcat::auth::api_key::digest(b"expired-key"))
    );
    let toml = idp::auth_toml(&jwks.url(), "oauth_or_api_key", &extra);
    let gw = gateway(&demo_url(&demo), 1, Some(&toml));
    let addr = gw.addr("listen");
    assert_eq!(
        init_with(addr, &[("x-api-key", "s3cret-key_1")]).status,
        200
    );
    assert_eq!(init_as(addr, "s3cret-key_1").status, 200);
    // A JWT-shaped bearer is a token, not a key.
    assert_eq!(
        init_as(addr, &key.sign(&claims("alice", "mcp"))).status,
        200
    );
    let r = init_with(addr, &[("x-api-key", "expired-key")]);
    assert_challenge(&r, 401, Some("invalid_token"));
    let r = init_with(addr, &[("x-api-key", "wrong")]);
    assert_challenge(&r, 401, Some("invalid_token"));
    let r = init_as(addr, "wrong");
    assert_challenge(&r, 401, Some("invalid_token"));
    let admin = gw.addr("admin");
    assert!(metric(admin, "shardcat_auth_total{result=\"expired\"}") >= 1.0);
    assert!(!gw.stderr().contains("s3cret-key_1"));
}

/// An upstream that answers every MCP request and keeps every request head it was sent.
fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut s, &mut buf) {
                    seen.lock().expect("heads").push(head.clone());
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let out = match v.get("id") {
                        Some(id) => {
                            let b = json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"rec","version":"1"}}}).to_string();
                            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: up-1\r\ncontent-length: {}\r\n\r\n{b}", b.len())
                        }
                        None => "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".into(),
                    };
                    if s.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[test]
fn the_clients_credentials_never_reach_the_upstream() {
    let (up, heads) = recording_upstream();
    let toml = format!(
        "[[upstream]]\nurl = \"http://{up}/mcp\"\nauthorization = \"Bearer upstream-secret\"\n\
         [auth]\nmode = \"api_key\"\nresource = \"https://gw.test/mcp\"\nforward_subject_header = \"X-MCP-Subject\"\n\
         [[auth.api_keys]]\nname = \"alice\"\nsha256 = \"{}\"\n",
        shardcat::auth::api_key::hex(&shardcat::auth::api_key::digest(b"client-key-123"))
    );
    let gw = gateway_config(1, &toml);
    let addr = gw.addr("listen");
    let r = init_with(
        addr,
        &[
            ("authorization", "Bearer client-key-123"),
            ("cookie", "session=client-cookie"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").expect("sid").to_string();
    let r = post(
        addr,
        &[
            ("x-api-key", "client-key-123"),
            ("cookie", "session=client-cookie"),
            ("mcp-session-id", &sid),
        ],
        &echo_call(2, "hi"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let heads = heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(
            !h.contains("client-key-123"),
            "client key went upstream: {h}"
        );
        assert!(
            !lower.contains("client-cookie"),
            "cookie went upstream: {h}"
        );
        assert!(!lower.contains("x-api-key"), "{h}");
        assert!(
            lower.contains("authorization: bearer upstream-secret"),
            "{h}"
        );
        assert!(lower.contains("x-mcp-subject: alice"), "{h}");
    }
}

#[test]
fn sessions_belong_to_their_subject_which_is_the_client() {
    let keys = [("alice", "alice-key"), ("bob", "bob-key")];
    let mut toml = String::from(
        "[limits]\nmax_sessions_per_client = 1\n[auth]\nmode = \"api_key\"\nresource = \"https://gw.test/mcp\"\n",
    );
    for (name, key) in keys {
        toml.push_str(&hash_key(name, key));
    }
    let tapes = std::env::temp_dir().join(format!("shardcat-auth-tapes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tapes);
    let demo = demo();
    let tapes_arg = tapes.to_str().expect("utf-8");
    let toml = format!("[tapes]\ndir = \"{tapes_arg}\"\n{toml}");
    let mut gw = gateway(&demo_url(&demo), 2, Some(&toml));
    let addr = gw.addr("listen");
    let alice = [("x-api-key", "alice-key")];
    let r = init_with(addr, &alice);
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").expect("sid").to_string();
    // Bob presents Alice's session: it does not exist for him.
    let as_bob =
        |extra: (&str, &str)| post(addr, &[("x-api-key", "bob-key"), extra], &echo_call(2, "x"));
    assert_eq!(as_bob(("mcp-session-id", &sid)).status, 404);
    let r = raw(
        addr,
        format!("DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\nx-api-key: bob-key\r\nmcp-session-id: {sid}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 404);
    let r = post(
        addr,
        &[("x-api-key", "alice-key"), ("mcp-session-id", &sid)],
        &echo_call(3, "mine"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // One session per client: Alice's second is refused, Bob (same address) gets his.
    assert_eq!(init_with(addr, &alice).status, 429);
    assert_eq!(init_with(addr, &[("x-api-key", "bob-key")]).status, 200);
    assert_eq!(gw.terminate(Duration::from_secs(15)), Some(0));
    // The tapes name the subjects, never their keys.
    let mut all = Vec::new();
    let mut dirs = vec![tapes.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("tapes dir").flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                all.extend(std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("\"subject\":\"alice\""), "no subject on tape");
    assert!(text.contains("\"subject\":\"bob\""));
    assert!(!text.contains("alice-key") && !text.contains("bob-key"));
    let _ = std::fs::remove_dir_all(&tapes);
}

#[test]
fn many_sessions_with_tokens_over_two_shards() {
    let key = SigningKey::rsa("k");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        2,
        Some(&idp::auth_toml(&jwks.url(), "oauth", "")),
    );
    let addr = gw.addr("listen");
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let token = key.sign(&claims(&format!("user-{i}"), "mcp"));
            std::thread::spawn(move || {
                let auth = bearer(&token);
                let r = init_with(addr, &[("authorization", &auth)]);
                assert_eq!(r.status, 200, "{}", r.text());
                let sid = r.header("mcp-session-id").expect("sid").to_string();
                let mut c = Client::connect(addr);
                for n in 0..5 {
                    let h = [("authorization", auth.as_str()), ("mcp-session-id", &sid)];
                    let r = c.post(addr, &h, &echo_call(10 + n, "hi")).expect("call");
                    assert_eq!(r.status, 200, "{}", r.text());
                }
                let r = raw(
                    addr,
                    format!("DELETE /mcp HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\nmcp-session-id: {sid}\r\ncontent-length: 0\r\n\r\n").as_bytes(),
                );
                assert_eq!(r.status, 200);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("session thread");
    }
    let admin = gw.addr("admin");
    assert!(metric(admin, "shardcat_auth_total{result=\"ok\"}") >= 24.0 * 7.0);
    assert_eq!(metric(admin, "shardcat_sessions"), 0.0);
}

/// Runs an SDK auth client (`tests/interop/*/auth_client.*`); its one JSON summary line.
fn sdk_client(cmd: &[String]) -> serde_json::Value {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no summary from {cmd:?}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn official_sdk_clients_with_and_without_a_bearer_token() {
    let p = peers::peers();
    let key = SigningKey::rsa("sdk");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let demo = demo();
    let gw = gateway(
        &demo_url(&demo),
        2,
        Some(&idp::auth_toml(&jwks.url(), "oauth", "")),
    );
    let url = format!("http://{}/mcp", gw.addr("listen"));
    let token = key.sign(&claims("sdk-user", "mcp"));
    let python = |extra: &[&str]| {
        let mut cmd = vec![
            p.python.display().to_string(),
            p.py("auth_client.py"),
            "--url".into(),
            url.clone(),
        ];
        cmd.extend(extra.iter().map(|s| s.to_string()));
        sdk_client(&cmd)
    };
    let with = python(&["--token", &token]);
    assert_eq!(with["ok"], true, "Python SDK with a token: {with}");
    assert_eq!(with["echo"], "hello-auth");
    let without = python(&[]);
    assert_eq!(without["ok"], true, "Python SDK without a token: {without}");
    assert_eq!(without["status"], 401);
    let challenge = without["www_authenticate"].as_str().unwrap_or("");
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    assert_eq!(without["metadata"]["resource"], idp::AUDIENCE);
    let ts = sdk_client(&[
        p.node.display().to_string(),
        p.ts("auth_client.mjs"),
        "--url".into(),
        url.clone(),
        "--token".into(),
        token.clone(),
    ]);
    assert_eq!(ts["ok"], true, "TypeScript SDK with a token: {ts}");
    assert_eq!(ts["echo"], "hello-auth");
    let admin = gw.addr("admin");
    assert!(metric(admin, "shardcat_auth_total{result=\"missing\"}") >= 1.0);
}

#[test]
fn the_readme_example_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = &readme[readme.find("## Auth").expect("an Auth section")..];
    let start = section.find("```toml\n").expect("an example") + 8;
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    let key = SigningKey::ed25519("readme");
    let jwks = JwksServer::start(idp::jwks(&[&key]));
    let toml = example.replace("http://127.0.0.1:8181/jwks", &jwks.url());
    assert_ne!(toml, example, "the example names its JWKS URL");
    let demo = demo();
    let gw = gateway(&demo_url(&demo), 1, Some(&toml));
    let addr = gw.addr("listen");
    assert_eq!(init_with(addr, &[("x-api-key", "change-me")]).status, 200);
    let mut c = claims("reader", "mcp");
    c["iss"] = json!("https://idp.example.com");
    c["aud"] = json!("https://mcp.example.com/mcp");
    assert_eq!(init_as(addr, &key.sign(&c)).status, 200);
    let r = init_with(addr, &[]);
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(
        challenge.contains("https://mcp.example.com/.well-known/oauth-protected-resource/mcp"),
        "{challenge}"
    );
    let doc = get(addr, "/.well-known/oauth-protected-resource/mcp").json();
    assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
}
