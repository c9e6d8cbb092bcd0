//! Micro-benchmarks of authentication: a request whose token is in the shard's cache (the
//! common case: a client sends the same token on every request) against one whose token must
//! be verified (RS256 signature and claims), and an API key lookup.
//!
//! Run with `cargo bench --bench auth`. The keys come from a JWKS file the bench writes, read
//! by the real JWKS thread.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use shardcat::auth::{unix_now, Auth, ShardAuth};
use shardcat::config::FileConfig;

/// Distinct tokens cycled through a two-entry cache: every verification misses.
const FRESH_TOKENS: usize = 64;

fn setup() -> (
    ShardAuth,
    shardcat::auth::jwks::JwksThread,
    Vec<String>,
    String,
) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::Generate;
    let key = rsa::PrivateKey::generate();
    let enc = EncodingKey::from_rsa_der(key.to_pkcs1_der().expect("der").as_bytes());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("b".into());
    let dir = std::env::temp_dir().join(format!("shardcat-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks = dir.join("jwks.json");
    let set = JwkSet { keys: vec![jwk] };
    std::fs::write(&jwks, serde_json::to_string(&set).expect("json")).expect("write");
    let key_hex = shardcat::auth::api_key::hex(&shardcat::auth::api_key::digest(b"bench-key"));
    let toml = format!(
        "[auth]\nmode = \"oauth_or_api_key\"\nissuer = \"i\"\naudience = \"a\"\nresource = \"https://g/mcp\"\n\
         jwks_file = \"{}\"\ntoken_cache_entries = 2\n[[auth.api_keys]]\nname = \"k\"\nsha256 = \"{key_hex}\"\n",
        jwks.display()
    );
    let cfg = FileConfig::from_toml(&toml)
        .expect("toml")
        .auth
        .validate()
        .expect("auth");
    let (shared, thread) = Auth::start(cfg).expect("start");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("b".into());
    let now = unix_now();
    let tokens = (0..=FRESH_TOKENS)
        .map(|i| {
            let c = serde_json::json!({"iss":"i","aud":"a","sub":format!("u{i}"),"scope":"mcp","iat":now,"exp":now+3600});
            format!("Bearer {}", jsonwebtoken::encode(&header, &c, &enc).expect("sign"))
        })
        .collect();
    (
        ShardAuth::new(shared),
        thread.expect("jwks thread"),
        tokens,
        "bench-key".into(),
    )
}

fn auth(c: &mut Criterion) {
    let (auth, thread, tokens, api_key) = setup();
    let now = unix_now();
    let mut g = c.benchmark_group("auth");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    let cached = tokens[FRESH_TOKENS].as_bytes();
    assert!(auth.authenticate(Some(cached), None, now).is_ok());
    g.bench_function("token_cached", |b| {
        b.iter(|| {
            auth.authenticate(black_box(Some(cached)), None, now)
                .is_ok()
        })
    });
    let mut i = 0;
    g.bench_function("token_rs256_verify", |b| {
        b.iter(|| {
            i = (i + 1) % FRESH_TOKENS;
            let t = tokens[i].as_bytes();
            auth.authenticate(black_box(Some(t)), None, now).is_ok()
        })
    });
    g.bench_function("api_key", |b| {
        b.iter(|| {
            auth.authenticate(None, black_box(Some(api_key.as_bytes())), now)
                .is_ok()
        })
    });
    g.finish();
    thread.stop();
}

criterion_group!(benches, auth);
criterion_main!(benches);
