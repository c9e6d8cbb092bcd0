//! Test support: an identity provider of our own. Signing keys generated per test (RSA,
//! P-256, Ed25519), tokens minted with any claims and header, and a JWKS served over plain
//! HTTP by a std thread that counts its hits and can be rotated or taken down.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "https://gw.test/mcp";

/// A signing key with its `kid`.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    /// The public JWK, when `jsonwebtoken` cannot derive it from the private key.
    public: Option<serde_json::Value>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("random bytes");
    b
}

impl SigningKey {
    pub fn rsa(kid: &str) -> SigningKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::Generate;
        let key = rsa::PrivateKey::generate();
        let der = key.to_pkcs1_der().expect("pkcs1 der");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            enc: EncodingKey::from_rsa_der(der.as_bytes()),
            public: None,
        }
    }

    pub fn p256(kid: &str) -> SigningKey {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::from_slice(&random::<32>()).expect("p256 key");
        let der = key.to_pkcs8_der().expect("pkcs8 der");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            enc: EncodingKey::from_ec_der(der.as_bytes()),
            public: None,
        }
    }

    pub fn ed25519(kid: &str) -> SigningKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_bytes(&random::<32>());
        let der = key.to_pkcs8_der().expect("pkcs8 der");
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            enc: EncodingKey::from_ed_der(der.as_bytes()),
            public: Some(serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "x": b64url(key.verifying_key().as_bytes()),
            })),
        }
    }

    /// The public JWK, with `kid` and `alg`.
    pub fn jwk(&self) -> Jwk {
        let mut jwk = match &self.public {
            Some(v) => serde_json::from_value(v.clone()).expect("jwk"),
            None => Jwk::from_encoding_key(&self.enc, self.alg).expect("jwk"),
        };
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// A token with these claims, signed, with this key's `kid` (or `kid`).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    pub fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Claims that pass every check for subject `sub` with `scope`.
pub fn claims(sub: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": now(),
        "exp": now() + 600,
    })
}

/// The JWKS document of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    };
    serde_json::to_string(&set).expect("jwks json")
}

/// A base64url segment (no padding) of `bytes`, for hand-made tokens.
pub fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWKS over HTTP: `body` is served (None: 503, the IdP is down), every request counted.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<Option<String>>>,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl JwksServer {
    pub fn start(body: String) -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind jwks");
        let addr = l.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(Some(body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, h, s) = (body.clone(), hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(c) = conn {
                    h.fetch_add(1, Ordering::AcqRel);
                    let doc = b.lock().expect("jwks body").clone();
                    answer(c, doc);
                }
            }
        });
        JwksServer {
            addr,
            body,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set(&self, body: Option<String>) {
        *self.body.lock().expect("jwks body") = body;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Acquire)
    }
}

fn answer(mut c: TcpStream, doc: Option<String>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let out = match doc {
        Some(d) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{d}",
            d.len()
        ),
        None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            .to_string(),
    };
    let _ = c.write_all(out.as_bytes());
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `[auth]` table of a gateway taking tokens from our IdP (and API keys, `extra`).
pub fn auth_toml(jwks_url: &str, mode: &str, extra: &str) -> String {
    format!(
        "[auth]\nmode = \"{mode}\"\nissuer = \"{ISSUER}\"\naudience = [\"{AUDIENCE}\", \"https://other.test/mcp\"]\n\
         jwks_url = \"{jwks_url}\"\nresource = \"{AUDIENCE}\"\nauthorization_servers = [\"{ISSUER}\"]\n\
         scopes_supported = [\"mcp\", \"admin\"]\nrequired_scopes = [\"mcp\"]\n{extra}"
    )
}
