//! The issuer's signing keys: parsing a JWKS (`KeySet`), and the thread that keeps them fresh
//! (`JwksThread`). The thread fetches the JWKS (from `jwks_url` with `fetch`, or
//! `jwks_file`) every `jwks_refresh_ms`, and early when a shard met a token naming an unknown
//! key, but never twice within `jwks_min_refresh_ms`: a flood of forged tokens costs the
//! identity provider one fetch per interval. Requests from shards come over a bounded channel
//! (the shards `try_send`; a full queue already holds a request).
//!
//! Invariants: a failed fetch (unreachable, timeout, too large, not a JWKS, no usable key)
//! keeps the last good keys in use, and is logged and counted; a new `KeySet` gets a new
//! generation only when its keys differ from the last one's (the token caches then check
//! their tokens again); the thread ends when its `JwksThread` is stopped.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::Auth;
use crate::config::{JwksSource, OAuthConfig};

/// One usable key of a JWKS.
pub struct Key {
    kid: Option<String>,
    /// The algorithm the JWK names for itself, when it does.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    decoding: DecodingKey,
}

impl Key {
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// The keys in use, with the generation that tells caches whether they changed.
pub struct KeySet {
    generation: u64,
    keys: Vec<Key>,
    /// SHA-256 of the usable keys as fetched: equal digests, same keys.
    digest: [u8; 32],
}

impl KeySet {
    pub fn empty() -> KeySet {
        KeySet {
            generation: 0,
            keys: Vec::new(),
            digest: [0; 32],
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's `kid` and `alg`: of the algorithm's family, of that algorithm if
    /// the JWK names one. A token without `kid` may use the only key of a one-key set.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        let fits = |k: &&Key| k.family == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.iter().find(fits),
            None => None,
        }
    }
}

/// Parses a JWKS document into its usable signing keys (at most `max_keys`): RSA, EC and OKP
/// keys for signatures. Symmetric keys, encryption keys and keys of unknown types are skipped
/// one by one; a document with no usable key is an error.
pub fn parse(body: &[u8], max_keys: usize) -> Result<(Vec<Key>, [u8; 32]), String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut canonical = Vec::new();
    for value in doc.keys.into_iter() {
        if keys.len() == max_keys {
            log::warn!("auth: the JWKS holds more than {max_keys} keys; the rest are ignored");
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if let Some(key) = usable(&jwk) {
            canonical.extend_from_slice(serde_json::to_string(&jwk).unwrap_or_default().as_bytes());
            canonical.push(b'\n');
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signing key".into());
    }
    Ok((keys, super::api_key::digest(&canonical)))
}

fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
        // HS* with a JWKS is refused: a shared secret has no place in a public key set.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let a: Algorithm = a.to_string().parse().ok()?;
            if a.family() != family || !super::ALGORITHMS.contains(&a) {
                return None;
            }
            Some(a)
        }
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        decoding,
    })
}

/// Fetches the JWKS once: its body, bounded by `max_jwks_bytes`.
fn fetch(cfg: &OAuthConfig) -> Result<Vec<u8>, String> {
    match &cfg.jwks {
        JwksSource::Url { authority, path } => {
            super::fetch::get(authority, path, cfg.fetch_timeout, cfg.max_jwks_bytes)
        }
        JwksSource::File(path) => {
            use std::io::Read as _;
            let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut body = Vec::new();
            f.take(cfg.max_jwks_bytes as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if body.len() > cfg.max_jwks_bytes {
                return Err(format!("{} exceeds max_jwks_bytes", path.display()));
            }
            Ok(body)
        }
    }
}

/// One fetch, published when it succeeds. Returns whether it did.
fn refresh(auth: &Auth, cfg: &OAuthConfig) -> bool {
    let parsed = fetch(cfg).and_then(|body| parse(&body, cfg.max_jwks_keys));
    match parsed {
        Ok((keys, digest)) => {
            auth.stats.refreshes.fetch_add(1, Relaxed);
            let current = auth.keys();
            if current.digest == digest && !current.is_empty() {
                return true;
            }
            let n = keys.len();
            auth.publish(KeySet {
                generation: current.generation + 1,
                keys,
                digest,
            });
            log::info!("auth: JWKS loaded: {n} signing keys");
            true
        }
        Err(e) => {
            auth.stats.failures.fetch_add(1, Relaxed);
            let kept = auth.keys().len();
            log::warn!("auth: JWKS fetch failed: {e}; keeping the {kept} keys in use");
            false
        }
    }
}

/// The JWKS thread, owned by whoever started it; `stop` ends it.
pub struct JwksThread {
    stop: Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl JwksThread {
    /// Fetches the keys once, here, then starts the thread that keeps them fresh.
    pub fn start(
        auth: Arc<Auth>,
        cfg: OAuthConfig,
        requests: Receiver<()>,
    ) -> std::io::Result<JwksThread> {
        refresh(&auth, &cfg);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || run(&auth, &cfg, &requests, &stopped))?;
        Ok(JwksThread { stop, handle })
    }

    /// Ends the thread (within one fetch timeout) and waits for it.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.handle.join();
    }
}

fn run(auth: &Auth, cfg: &OAuthConfig, requests: &Receiver<()>, stopped: &Receiver<()>) {
    let mut last = Instant::now();
    let mut pending = false;
    loop {
        // Without keys, or with a shard waiting for a key, fetch as soon as allowed.
        let soon = pending || auth.keys().is_empty();
        let next = last + if soon { cfg.min_refresh } else { cfg.refresh };
        let wait = next.saturating_duration_since(Instant::now());
        select! {
            recv(stopped) -> _ => return,
            recv(requests) -> _ => {
                pending = true;
                continue;
            }
            default(wait) => {}
        }
        refresh(auth, cfg);
        last = Instant::now();
        pending = false;
        // Requests that came during the fetch are answered by it.
        while requests.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_usable_keys_only() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e","alg":"EdDSA"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"x","use":"enc"},
            {"kty":"weird"}
        ]}"#;
        let (keys, _) = parse(doc, 8).unwrap();
        assert_eq!(keys.len(), 1);
        let set = KeySet {
            generation: 1,
            keys,
            digest: [0; 32],
        };
        assert!(set.find(Some("e"), Algorithm::EdDSA).is_some());
        assert!(set.find(None, Algorithm::EdDSA).is_some(), "the only key");
        assert!(set.find(Some("e"), Algorithm::RS256).is_none());
        assert!(set.find(Some("h"), Algorithm::HS256).is_none());
        assert!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#, 8).is_err());
        assert!(parse(b"[]", 8).is_err());
    }
}
