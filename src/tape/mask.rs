//! Masking: replaces the values at configured JSON pointers with `"***"` before a message is
//! written. Runs on the persistence thread, never on a shard.
//!
//! Invariant: a payload that holds none of the pointers (or is not JSON) is written unchanged
//! and is not re-serialized.

use serde_json::Value;

/// The replacement written in place of a masked value.
pub const MASKED: &str = "***";

#[derive(Debug, Clone, Default)]
pub struct Masker {
    pointers: Vec<String>,
    /// Last key of each pointer, unescaped: a payload whose text holds none of them cannot
    /// match, and is passed through without being parsed.
    keys: Vec<String>,
}

impl Masker {
    pub fn new(pointers: &[String]) -> Masker {
        let keys = pointers
            .iter()
            .filter_map(|p| p.rsplit('/').next())
            .map(|k| k.replace("~1", "/").replace("~0", "~"))
            .collect();
        Masker {
            pointers: pointers.to_vec(),
            keys,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pointers.is_empty()
    }

    /// The masked payload, or `None` when nothing in it had to change.
    pub fn apply(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if self.pointers.is_empty() || !self.may_match(payload) {
            return None;
        }
        let mut v: Value = serde_json::from_slice(payload).ok()?;
        let mut changed = false;
        for p in &self.pointers {
            if let Some(slot) = v.pointer_mut(p) {
                *slot = Value::String(MASKED.into());
                changed = true;
            }
        }
        if !changed {
            return None;
        }
        serde_json::to_vec(&v).ok()
    }

    /// A cheap pre-check: does any pointer's last key appear in the text at all? Keys written
    /// with JSON escapes are missed here, so this only skips when no key can be present even
    /// after unescaping (a payload holding a backslash is always parsed).
    fn may_match(&self, payload: &[u8]) -> bool {
        if payload.contains(&b'\\') {
            return true;
        }
        self.keys.iter().any(|k| {
            k.is_empty()
                || k.bytes().all(|b| b.is_ascii_digit())
                || payload.windows(k.len()).any(|w| w == k.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_each_pointer_and_leaves_the_rest() {
        let m = Masker::new(&[
            "/params/arguments/password".into(),
            "/result/token".into(),
            "/params/missing".into(),
        ]);
        let msg = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"user":"ann","password":"hunter2"}}}"#;
        let out = m.apply(msg).expect("masked");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["arguments"]["password"], MASKED);
        assert_eq!(v["params"]["arguments"]["user"], "ann");
        assert!(!String::from_utf8_lossy(&out).contains("hunter2"));
        let resp = br#"{"jsonrpc":"2.0","id":1,"result":{"token":{"nested":"secret"}}}"#;
        let out = m.apply(resp).expect("masked");
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
        assert_eq!(m.apply(br#"{"jsonrpc":"2.0","method":"ping"}"#), None);
        assert_eq!(m.apply(b"not json, has password"), None);
        // Escaped keys are still found.
        let esc = br#"{"params":{"arguments":{"pass\u0077ord":"x"}}}"#;
        assert!(m.apply(esc).is_some());
    }
}
