//! Mints what an auth benchmark needs: an RSA key's JWKS (for `auth.jwks_file`) and N bearer
//! tokens, each for a subject of its own, as `loadgen --header-file` lines.
//!
//!   cargo run --release --example auth_tokens -- DIR N [ISSUER AUDIENCE]
//!
//! Writes DIR/jwks.json and DIR/tokens.txt ("Authorization: Bearer ..." per line).

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(n)) = (
        args.first(),
        args.get(1).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: auth_tokens DIR N [ISSUER AUDIENCE]");
        std::process::exit(2);
    };
    let issuer = args.get(2).map_or("https://idp.test", String::as_str);
    let audience = args.get(3).map_or("https://gw.test/mcp", String::as_str);
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::Generate;
    let key = rsa::PrivateKey::generate();
    let enc = EncodingKey::from_rsa_der(key.to_pkcs1_der().expect("der").as_bytes());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some("bench".into());
    let set = JwkSet { keys: vec![jwk] };
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(
        format!("{dir}/jwks.json"),
        serde_json::to_string(&set).expect("json"),
    )
    .expect("write jwks");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench".into());
    let mut lines = String::new();
    for i in 0..n {
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": format!("user-{i}"), "scope": "mcp",
            "iat": now, "exp": now + 24 * 3600,
        });
        let t = jsonwebtoken::encode(&header, &claims, &enc).expect("sign");
        lines.push_str(&format!("Authorization: Bearer {t}\n"));
    }
    std::fs::write(format!("{dir}/tokens.txt"), lines).expect("write tokens");
}
