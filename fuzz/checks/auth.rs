//! auth: what a client's credentials reach before any signature is checked:
//! `auth::credential` on the `Authorization` / `X-API-Key` values, `auth::looks_like_jwt`,
//! the JWT header and claims decoding (`auth::jwt::header`, `peek`, `subject_of`), a JWKS
//! document (`auth::jwks::parse`), and an API-key authenticator end to end.
//!
//! Invariants: a bearer token is a non-empty b64token (RFC 6750) within the size bound, cut
//! from the header after a `Bearer` scheme; an API key is visible ASCII within the bound;
//! both headers at once are refused; a JWT-looking token has exactly three base64url
//! segments; an accepted header names an accepted (asymmetric) algorithm; scopes are non-empty
//! words; a subject's name is trimmed and non-empty; a parsed JWKS holds 1 to `max` keys; the
//! authenticator accepts exactly the one configured key.
//!
//! Input: one selector byte (bit 0: an X-API-Key header, bit 1: an Authorization header), then
//! the Authorization value, a zero byte, the X-API-Key value, a zero byte, a token, a zero
//! byte, a JWKS document.

use shardcat::auth::{self, jwks, jwt, Credential};

/// The credential size bound the checks use.
const MAX: usize = 512;
/// The one API key the authenticator knows (`name = "fuzz"`).
const KEY: &str = "fuzz-key-0123";

fn authenticator() -> auth::ShardAuth {
    let toml = format!(
        "[auth]\nmode = \"api_key\"\nresource = \"https://gw.test/mcp\"\nmax_credential_bytes = {MAX}\n\
         [[auth.api_keys]]\nname = \"fuzz\"\nsha256 = \"{}\"\n",
        auth::api_key::hex(&auth::api_key::digest(KEY.as_bytes()))
    );
    let cfg = shardcat::config::FileConfig::from_toml(&toml)
        .expect("fuzz config")
        .auth
        .validate()
        .expect("fuzz auth config");
    let (shared, _) = auth::Auth::start(cfg).expect("no thread in api_key mode");
    auth::ShardAuth::new(shared)
}

thread_local! {
    static AUTH: auth::ShardAuth = authenticator();
}

pub fn run(input: &[u8]) {
    let Some((&sel, rest)) = input.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |b| *b == 0);
    let authorization = parts.next().filter(|_| sel & 2 != 0);
    let api_key = parts.next().filter(|_| sel & 1 != 0);
    let token = parts.next().unwrap_or_default();
    let doc = parts.next().unwrap_or_default();
    credentials(authorization, api_key);
    if let Ok(token) = std::str::from_utf8(token) {
        decoding(token);
    }
    if let Ok((keys, _)) = jwks::parse(doc, 4) {
        assert!(!keys.is_empty() && keys.len() <= 4);
    }
    AUTH.with(|a| {
        let got = a.authenticate(authorization, api_key, 0);
        if let Ok(s) = &got {
            assert_eq!(&*s.name, "fuzz");
            let presented = match auth::credential(authorization, api_key, MAX) {
                Ok(Credential::Bearer(k) | Credential::ApiKey(k)) => k,
                other => panic!("authenticated with {other:?}"),
            };
            assert_eq!(presented, KEY);
        }
    });
}

fn credentials(authorization: Option<&[u8]>, api_key: Option<&[u8]>) {
    let got = auth::credential(authorization, api_key, MAX);
    if authorization.is_some() && api_key.is_some() {
        assert!(got.is_err());
    }
    match got {
        Ok(Credential::None) => assert!(authorization.is_none() && api_key.is_none()),
        Ok(Credential::Bearer(t)) => {
            let raw = authorization.expect("a bearer comes from Authorization");
            assert!(!t.is_empty() && t.len() <= MAX);
            let b64 = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert!(t.bytes().all(b64), "{t:?}");
            assert!(!t.starts_with('='));
            // The token ends the header (its trailing blanks aside) and a Bearer scheme is all
            // that stands before it.
            let raw = std::str::from_utf8(raw).expect("a bearer comes from UTF-8");
            let raw = raw.trim_matches([' ', '\t']);
            let before = raw.strip_suffix(t).expect("the token ends the header");
            assert!(before.trim().eq_ignore_ascii_case("bearer"), "{before:?}");
            // The token cache is looked up with the token cut without checks: the same bytes.
            assert_eq!(auth::bearer_token(raw.as_bytes()), Some(t.as_bytes()));
            if auth::looks_like_jwt(t) {
                assert_eq!(t.matches('.').count(), 2);
                assert!(t.split('.').all(|s| !s.is_empty()));
            }
        }
        Ok(Credential::ApiKey(k)) => {
            assert!(api_key.is_some() && !k.is_empty() && k.len() <= MAX);
            assert!(k.bytes().all(|b| (0x21..0x7f).contains(&b)));
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

fn decoding(token: &str) {
    if let Ok(h) = jwt::header(token) {
        assert!(auth::ALGORITHMS.contains(&h.alg));
    }
    let Ok((_, claims)) = jwt::peek(token) else {
        return;
    };
    for s in claims.scopes() {
        assert!(!s.is_empty() && !s.contains(char::is_whitespace), "{s:?}");
    }
    if let Ok(subject) = jwt::subject_of(&claims) {
        assert!(!subject.name.is_empty());
        assert_eq!(subject.name.trim(), &*subject.name);
    }
}
