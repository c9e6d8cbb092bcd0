//! API keys: known by the SHA-256 digest of their text (the configuration never holds a key),
//! looked up by comparing the presented key's digest with every configured digest in
//! constant time, so the time an answer takes says nothing about how close a guess was.
//! Also the TOML an operator pastes for a new key (`shardcat hash-key`).

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ApiKey;

/// SHA-256 of `bytes` (API keys, and tokens as the token cache's key).
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The index of the configured key whose digest is the digest of `key`. Every entry is
/// compared, whatever matched before.
pub fn find(keys: &[ApiKey], key: &[u8]) -> Option<usize> {
    let d = digest(key);
    let mut found = u32::MAX;
    for (i, k) in keys.iter().enumerate() {
        found.conditional_assign(&(i as u32), k.sha256.ct_eq(&d));
    }
    (found != u32::MAX).then_some(found as usize)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The `[[auth.api_keys]]` entry for `key`, named `name`.
pub fn toml_entry(name: &str, key: &[u8]) -> String {
    let name = toml::Value::String(name.to_string());
    format!(
        "[[auth.api_keys]]\nname = {name}\nsha256 = \"{}\"\n# scopes = [\"mcp\"]\n# expires = \"2030-01-01T00:00:00Z\"\n",
        hex(&digest(key))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, text: &str) -> ApiKey {
        ApiKey {
            name: name.into(),
            sha256: digest(text.as_bytes()),
            scopes: Vec::new(),
            expires: None,
        }
    }

    #[test]
    fn finds_by_digest() {
        let keys = [key("a", "alpha"), key("b", "beta")];
        assert_eq!(find(&keys, b"beta"), Some(1));
        assert_eq!(find(&keys, b"alpha"), Some(0));
        assert_eq!(find(&keys, b"gamma"), None);
        assert_eq!(
            hex(&digest(b"test")),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        let entry = toml_entry("ci \"bot\"", b"test");
        let parsed: toml::Value = toml::from_str(&entry).unwrap();
        assert_eq!(
            parsed["auth"]["api_keys"][0]["name"].as_str(),
            Some("ci \"bot\"")
        );
    }
}
