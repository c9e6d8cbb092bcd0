//! Authentication: who sent a request. shardcat is an OAuth 2.1 resource server (bearer JWTs
//! from one issuer, checked against its JWKS) and takes API keys (`X-API-Key`, or as a
//! bearer). The answer is a `Subject` (a name and its scopes) or a `Denial` (why not).
//!
//! - `credential`: the request's credential from its `Authorization` / `X-API-Key` headers.
//! - `api_key`: API keys by SHA-256 digest, compared in constant time.
//! - `jwt`: a token's header, signature and claims (`iss`, `aud`, `exp`, `nbf`, `iat`).
//! - `jwks`: the issuer's keys, fetched off the shards by a thread of their own (`fetch`:
//!   a small blocking HTTP/1.1 GET) and published to the shards through a lock-free pointer.
//! - `cache`: each shard's bounded cache of validated tokens, so a signature is checked once
//!   per token (and per key set), not once per request.
//!
//! Invariants: no lock and no blocking call on the request path (a shard reads the keys with
//! one atomic load, and asks for an early JWKS fetch with a `try_send` that drops when the
//! queue is full); a token or key is never logged or kept (an API key is known by its SHA-256,
//! a cached token by a keyed fingerprint); an expired token
//! or key is never honoured, cached or not. The pipeline stage that uses this module is
//! `gateway::authn`.

pub mod api_key;
pub mod cache;
pub mod fetch;
pub mod jwks;
pub mod jwt;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;

use crate::config::{AuthConfig, AuthMode};
use crate::metrics::{header, Format, Kind};

/// Signature algorithms accepted for tokens: asymmetric ones only.
pub const ALGORITHMS: [jsonwebtoken::Algorithm; 7] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::RS384,
    jsonwebtoken::Algorithm::RS512,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Who a request comes from: an API key's `name` or a token's `sub`, and the scopes granted.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: Box<str>,
    pub scopes: Box<[Box<str>]>,
    /// What it may use (`[[auth.rules]]`), computed once per subject: with the API key at
    /// start, with the token when it is validated (and cached with it). `None`: no rules.
    pub grant: Option<Rc<crate::authz::Grant>>,
}

/// The same name and scopes make the same subject (its grant follows from them).
impl PartialEq for Subject {
    fn eq(&self, other: &Subject) -> bool {
        (&self.name, &self.scopes) == (&other.name, &other.scopes)
    }
}

impl Eq for Subject {}

impl Subject {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// Why a request was not authenticated. `label` is its `shardcat_auth_total` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credential at all.
    Missing,
    /// A credential that is malformed, unknown, or fails a check; the reason is safe to log
    /// and to send (it never holds the credential).
    Invalid(&'static str),
    /// A token naming a key the JWKS does not hold (an early fetch is asked for).
    UnknownKey,
    Expired,
    /// A token for another resource (its `aud` names none of ours).
    WrongAudience,
    /// Authenticated, without every required scope.
    InsufficientScope,
}

impl Denial {
    pub fn label(&self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Invalid(_) | Denial::UnknownKey => "invalid",
            Denial::Expired => "expired",
            Denial::WrongAudience => "wrong_audience",
            Denial::InsufficientScope => "insufficient_scope",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Missing => "no credentials",
            Denial::Invalid(why) => why,
            Denial::UnknownKey => "the token's signing key is unknown",
            Denial::Expired => "the credential has expired",
            Denial::WrongAudience => "the token is not for this resource",
            Denial::InsufficientScope => "a required scope is missing",
        }
    }
}

/// The JWKS fetcher's counters (written by its thread, read by the admin thread).
#[derive(Debug, Default)]
pub struct JwksStats {
    pub refreshes: AtomicU64,
    pub failures: AtomicU64,
    /// Early fetches asked for by shards and dropped because the queue was full.
    pub requests_dropped: AtomicU64,
    pub keys: AtomicI64,
}

/// What every shard shares: the `[auth]` slice, the issuer's keys as last fetched, the way to
/// ask for an early fetch, and the fetcher's counters.
pub struct Auth {
    pub config: AuthConfig,
    keys: ArcSwap<jwks::KeySet>,
    refresh: Option<Sender<()>>,
    verifier: Option<jwt::Verifier>,
    /// `required_scopes`, space-separated (the challenges' `scope`).
    pub scope_param: String,
    pub stats: JwksStats,
}

impl Auth {
    /// The shared state, and the JWKS thread (OAuth modes) that keeps its keys fresh: it
    /// fetched them once before this returns, so the first requests find them.
    pub fn start(config: AuthConfig) -> std::io::Result<(Arc<Auth>, Option<jwks::JwksThread>)> {
        let oauth = config.oauth.clone();
        let (tx, rx) = match &oauth {
            Some(o) => {
                let (tx, rx) = crossbeam_channel::bounded(o.refresh_queue_depth);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let auth = Arc::new(Auth {
            verifier: oauth.as_ref().map(jwt::Verifier::new),
            scope_param: config.required_scopes.join(" "),
            config,
            keys: ArcSwap::from_pointee(jwks::KeySet::empty()),
            refresh: tx,
            stats: JwksStats::default(),
        });
        let thread = match (oauth, rx) {
            (Some(o), Some(rx)) => Some(jwks::JwksThread::start(auth.clone(), o, rx)?),
            _ => None,
        };
        Ok((auth, thread))
    }

    /// No authentication (tests and benches).
    pub fn off() -> Arc<Auth> {
        Arc::new(Auth {
            config: AuthConfig::off(),
            keys: ArcSwap::from_pointee(jwks::KeySet::empty()),
            refresh: None,
            verifier: None,
            scope_param: String::new(),
            stats: JwksStats::default(),
        })
    }

    pub fn is_on(&self) -> bool {
        self.config.mode != AuthMode::Off
    }

    /// Publishes a new key set (the JWKS thread).
    pub fn publish(&self, keys: jwks::KeySet) {
        self.stats.keys.store(keys.len() as i64, Relaxed);
        self.keys.store(Arc::new(keys));
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<jwks::KeySet>> {
        self.keys.load()
    }

    /// Asks the JWKS thread for an early fetch; never waits (a full queue already holds one).
    fn request_refresh(&self) {
        if let Some(tx) = &self.refresh {
            if tx.try_send(()).is_err() {
                self.stats.requests_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The fetcher's families for `/metrics`.
    pub fn render(&self, format: Format, out: &mut String) {
        let families: [(&str, Kind, &str, i64); 4] = [
            (
                "shardcat_jwks_refreshes_total",
                Kind::Counter,
                "JWKS fetches that succeeded.",
                self.stats.refreshes.load(Relaxed) as i64,
            ),
            (
                "shardcat_jwks_refresh_failures_total",
                Kind::Counter,
                "JWKS fetches that failed (the last good keys stay in use).",
                self.stats.failures.load(Relaxed) as i64,
            ),
            (
                "shardcat_jwks_refresh_requests_dropped_total",
                Kind::Counter,
                "Early JWKS fetches asked for by shards and dropped (one was already pending).",
                self.stats.requests_dropped.load(Relaxed) as i64,
            ),
            (
                "shardcat_jwks_keys",
                Kind::Gauge,
                "Signing keys in the JWKS in use.",
                self.stats.keys.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in families {
            header(out, format, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// One shard's authenticator: the shared state, the shard's token cache and its API keys'
/// subjects.
pub struct ShardAuth {
    pub shared: Arc<Auth>,
    cache: RefCell<cache::TokenCache>,
    key_subjects: Vec<Rc<Subject>>,
    /// The token cache's fingerprint key (random per shard; see `cache`).
    fingerprint: [u8; 16],
}

impl ShardAuth {
    pub fn new(shared: Arc<Auth>) -> ShardAuth {
        let key_subjects = shared
            .config
            .api_keys
            .iter()
            .map(|k| subject(&k.name, k.scopes.iter().map(String::as_str)))
            .map(|s| Rc::new(granted(s, shared.config.rules.as_deref())))
            .collect();
        ShardAuth {
            cache: RefCell::new(cache::TokenCache::new(shared.config.token_cache_entries)),
            shared,
            key_subjects,
            fingerprint: random_key(),
        }
    }

    /// The token's keyed 128-bit fingerprint: SipHash-1-3 with a 128-bit output, one pass.
    /// SHA-256 cost microseconds per request on a long token (`cargo bench --bench auth`).
    fn fingerprint(&self, token: &[u8]) -> u128 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip128::SipHasher13::new_with_key(&self.fingerprint);
        h.write(token);
        siphasher::sip128::Hasher128::finish128(&h).as_u128()
    }

    /// Authenticates a request from its `Authorization` and `X-API-Key` headers at `now`
    /// (Unix seconds), then checks the required scopes.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        x_api_key: Option<&[u8]>,
        now: u64,
    ) -> Result<Rc<Subject>, Denial> {
        let cfg = &self.shared.config;
        let x_api_key = x_api_key.filter(|_| cfg.mode.takes_api_keys());
        // The common case first: the token this client sent before, found by its bytes. It
        // passed every check below when it was cached, and only verified tokens are.
        if let (Some(a), None, Some(_)) = (authorization, x_api_key, &self.shared.verifier) {
            if let Some(hit) = self.cached(a, now)? {
                return Ok(hit);
            }
        }
        let cred = credential(authorization, x_api_key, cfg.max_credential_bytes)
            .map_err(Denial::Invalid)?;
        let subject = match cred {
            Credential::None => return Err(Denial::Missing),
            Credential::ApiKey(k) => self.api_key(k, now)?,
            Credential::Bearer(t) => match cfg.mode {
                AuthMode::OAuth => self.token(t, now)?,
                AuthMode::OAuthOrApiKey if looks_like_jwt(t) => self.token(t, now)?,
                _ => self.api_key(t, now)?,
            },
        };
        if cfg.required_scopes.iter().all(|s| subject.has_scope(s)) {
            Ok(subject)
        } else {
            Err(Denial::InsufficientScope)
        }
    }

    fn api_key(&self, key: &str, now: u64) -> Result<Rc<Subject>, Denial> {
        let keys = &self.shared.config.api_keys;
        let i = api_key::find(keys, key.as_bytes()).ok_or(Denial::Invalid("unknown API key"))?;
        if keys[i].expires.is_some_and(|e| (now as i64) > e) {
            return Err(Denial::Expired);
        }
        Ok(self.key_subjects[i].clone())
    }

    /// The subject of a cached token, from the raw `Authorization` value: `Ok(None)` when
    /// it is not cached (or was cached under other keys), then the full checks decide.
    fn cached(&self, authorization: &[u8], now: u64) -> Result<Option<Rc<Subject>>, Denial> {
        let Some(token) = bearer_token(authorization) else {
            return Ok(None);
        };
        let generation = self.shared.keys().generation();
        let hit = match self
            .cache
            .borrow_mut()
            .get(self.fingerprint(token), now, generation)
        {
            cache::Lookup::Hit(s) => s,
            cache::Lookup::Expired => return Err(Denial::Expired),
            cache::Lookup::Miss => return Ok(None),
        };
        let scopes = &self.shared.config.required_scopes;
        if scopes.iter().all(|s| hit.has_scope(s)) {
            Ok(Some(hit))
        } else {
            Err(Denial::InsufficientScope)
        }
    }

    fn token(&self, token: &str, now: u64) -> Result<Rc<Subject>, Denial> {
        let Some(verifier) = &self.shared.verifier else {
            return Err(Denial::Invalid("tokens are not accepted"));
        };
        let digest = self.fingerprint(token.as_bytes());
        let keys = self.shared.keys();
        let generation = keys.generation();
        match self.cache.borrow_mut().get(digest, now, generation) {
            cache::Lookup::Hit(s) => return Ok(s),
            cache::Lookup::Expired => return Err(Denial::Expired),
            cache::Lookup::Miss => {}
        }
        let verified = match verifier.verify(&keys, token, now) {
            Ok(v) => v,
            Err(Denial::UnknownKey) => {
                self.shared.request_refresh();
                return Err(Denial::UnknownKey);
            }
            Err(d) => return Err(d),
        };
        let subject = Rc::new(granted(
            verified.subject,
            self.shared.config.rules.as_deref(),
        ));
        let until = verified.exp.saturating_add(verifier.leeway_s());
        self.cache
            .borrow_mut()
            .insert(digest, subject.clone(), until, generation);
        Ok(subject)
    }
}

/// A subject from a name and scopes.
pub fn subject<'a>(name: &str, scopes: impl Iterator<Item = &'a str>) -> Subject {
    Subject {
        name: name.into(),
        scopes: scopes.map(Box::from).collect(),
        grant: None,
    }
}

/// `subject` with its grant under `rules`.
fn granted(mut subject: Subject, rules: Option<&crate::authz::Rules>) -> Subject {
    subject.grant = rules.map(|r| Rc::new(r.grant(&subject.name, &subject.scopes)));
    subject
}

/// The credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    /// `Authorization: Bearer <token68>`.
    Bearer(&'a str),
    /// `X-API-Key: <key>`.
    ApiKey(&'a str),
}

/// Reads the credential from the `Authorization` and `X-API-Key` header values. Both at once
/// is refused (which one would count?), as is another scheme than Bearer, a token with
/// characters RFC 6750's b64token does not have, and one longer than `max` bytes.
pub fn credential<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
    max: usize,
) -> Result<Credential<'a>, &'static str> {
    match (authorization, x_api_key) {
        (None, None) => Ok(Credential::None),
        (Some(_), Some(_)) => Err("both Authorization and X-API-Key were sent"),
        (Some(a), None) => bearer(a, max).map(Credential::Bearer),
        (None, Some(k)) => {
            let k = std::str::from_utf8(k)
                .map_err(|_| "malformed X-API-Key")?
                .trim_matches([' ', '\t']);
            if k.is_empty() || k.len() > max || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                return Err("malformed X-API-Key");
            }
            Ok(Credential::ApiKey(k))
        }
    }
}

/// The token of `Bearer <token>` as `bearer` would read it (the same trimming), unchecked: the
/// key for a cache lookup. `bearer` checks it when it is not cached.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ws(b))?;
    let end = value.iter().rposition(|b| !ws(b))? + 1;
    let v = &value[start..end];
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let skip = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[skip..])
}

/// A random key for the token cache's fingerprints.
fn random_key() -> [u8; 16] {
    let mut k = [0u8; 16];
    getrandom::getrandom(&mut k).expect("OS random source unavailable");
    k
}

fn bearer(value: &[u8], max: usize) -> Result<&str, &'static str> {
    let v = std::str::from_utf8(value)
        .map_err(|_| "malformed Authorization header")?
        .trim_matches([' ', '\t']);
    let (scheme, rest) = v.split_once(' ').ok_or("malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization scheme is not Bearer");
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    if body.is_empty() || token.len() > max || !all_in(body, B64TOKEN) {
        return Err("malformed bearer token");
    }
    Ok(token)
}

/// Byte classes, one bit each, looked up in `CLASS`: a token is checked on every request,
/// and a table lookup per byte costs a tenth of the comparisons it replaces (`cargo bench
/// --bench auth`).
const B64TOKEN: u8 = 1;
/// base64url's alphabet (a JWS segment).
const URL: u8 = 2;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = B64TOKEN | URL;
        } else if c == b'.' || c == b'~' || c == b'+' || c == b'/' {
            t[b] = B64TOKEN;
        }
        b += 1;
    }
    t
};

/// Whether every byte of `s` is in `class`. The bits are OR-ed over the whole string with
/// no early exit, which the compiler unrolls: strings here are rarely refused.
fn all_in(s: &str, class: u8) -> bool {
    s.bytes().fold(class, |acc, b| acc & CLASS[usize::from(b)]) == class
}

/// Three non-empty base64url segments: a JWS compact serialization, as opposed to an opaque
/// API key.
pub fn looks_like_jwt(t: &str) -> bool {
    let mut n = 0;
    for seg in t.splitn(4, '.') {
        n += 1;
        if n > 3 || seg.is_empty() || !all_in(seg, URL) {
            return false;
        }
    }
    n == 3
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers() {
        let max = 64;
        assert_eq!(credential(None, None, max), Ok(Credential::None));
        assert_eq!(
            credential(Some(b"Bearer abc.def-_~+/=="), None, max),
            Ok(Credential::Bearer("abc.def-_~+/=="))
        );
        assert_eq!(
            credential(Some(b"bearer   t "), None, max),
            Ok(Credential::Bearer("t"))
        );
        assert!(credential(Some(b"Basic dTpw"), None, max).is_err());
        assert!(credential(Some(b"Bearer"), None, max).is_err());
        assert!(credential(Some(b"Bearer a b"), None, max).is_err());
        assert!(credential(Some(b"Bearer ="), None, max).is_err());
        assert!(credential(Some(b"Bearer a=b"), None, max).is_err());
        assert!(credential(Some(b"Bearer t"), Some(b"k"), max).is_err());
        assert_eq!(
            credential(None, Some(b" k-1 "), max),
            Ok(Credential::ApiKey("k-1"))
        );
        assert!(credential(None, Some(b"a b"), max).is_err());
        let long = format!("Bearer {}", "a".repeat(65));
        assert!(credential(Some(long.as_bytes()), None, max).is_err());
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("sk_live_abc"));
        assert!(!looks_like_jwt("a.b+.c"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c."));
    }

    #[test]
    fn the_cache_key_is_the_token_bearer_reads() {
        for v in [
            "Bearer abc",
            " \tbearer   abc.def==  ",
            "BEARER a/b+c",
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearer a b",
            "",
        ] {
            let checked = bearer(v.as_bytes(), 64).ok().map(str::as_bytes);
            let cut = bearer_token(v.as_bytes());
            if checked.is_some() {
                assert_eq!(cut, checked, "{v:?}");
            }
        }
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), Some(&b"a b"[..]), "unchecked");
    }

    #[test]
    fn byte_classes_are_rfc_6750_and_base64url() {
        for b in 0..=255u8 {
            let token68 = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            let url = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            let s = [b];
            let s = std::str::from_utf8(&s).unwrap_or("\u{0}");
            assert_eq!(all_in(s, B64TOKEN), token68 && b < 0x80, "byte {b}");
            assert_eq!(all_in(s, URL), url && b < 0x80, "byte {b}");
        }
        assert!(all_in("", URL));
        assert!(!all_in("abc\u{e9}", B64TOKEN));
    }
}
