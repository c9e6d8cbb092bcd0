//! Scale-out without a shared store: what one gateway node hands a client so that any other
//! node of the cluster can continue the client's session (issue 16).
//!
//! Two forms of gateway session id leave a clustered node:
//! - a **sealed token** (`seal`): the session's `Claims` (owning node and shard, protocol
//!   version, subject, the upstream sessions behind it) in an AEAD box under a key every node
//!   holds. Any node opens it and adopts the session; a client can neither read nor forge one.
//!   Its alphabet is base64url (`A-Z a-z 0-9 - _`), which never holds `.`.
//! - a **pinned id** (`pinned_id`), `"{node}.{local}"`, for sessions that cannot move (a stdio
//!   child lives on one machine): the owning node's name, a `.`, then the node's local id.
//!
//! A `.` in an `Mcp-Session-Id` therefore tells a load balancer (HAProxy: `req.hdr(...)`
//! with a `field(1,.)` converter) and a node which form it holds: with one, route by the node
//! name before it; without, any node will do.
//!
//! Invariants: this module does no I/O and keeps no state (the key files are read by
//! `config`); nothing here panics on what a client sends.

mod seal;

pub use seal::*;

/// The longest node name the token format carries (one length byte; config allows fewer,
/// `config::MAX_NODE_ID_BYTES`, leaving room to grow without a new format).
pub const MAX_NODE_BYTES: usize = 32;

/// Whether `name` is a node name: 1 to `max` of `a-z`, `0-9`, `-`. No `.`, so a pinned id
/// splits at its first `.`, and no byte a header or an HAProxy map would need to escape.
pub fn is_node_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The session id of a session pinned to `node`: `"{node}.{local}"`.
pub fn pinned_id(node: &str, local: &str) -> String {
    debug_assert!(is_node_name(node, MAX_NODE_BYTES), "node name {node:?}");
    format!("{node}.{local}")
}

/// The node a pinned id names (the part before its first `.`); `None` for anything else,
/// sealed tokens included.
pub fn pinned_node(id: &str) -> Option<&str> {
    let (node, _) = id.split_once('.')?;
    is_node_name(node, MAX_NODE_BYTES).then_some(node)
}

/// A key as 64 lowercase hex characters (`shardcat gen-key`, the key files).
pub fn key_hex(key: &[u8; KEY_BYTES]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a key file's text: 64 hex characters (either case), surrounding whitespace allowed.
pub fn parse_key(text: &str) -> Result<[u8; KEY_BYTES], String> {
    let hex = text.trim().as_bytes();
    if hex.len() != 2 * KEY_BYTES {
        return Err(format!(
            "holds {} characters, a key is {} hex characters (shardcat gen-key makes one)",
            hex.len(),
            2 * KEY_BYTES
        ));
    }
    let mut key = [0u8; KEY_BYTES];
    for (byte, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *byte = (h * 16 + l) as u8,
            _ => return Err("is not hex (a key is 64 hex characters)".into()),
        }
    }
    Ok(key)
}

/// A new key from the OS CSPRNG.
pub fn generate_key() -> Result<[u8; KEY_BYTES], getrandom::Error> {
    let mut key = [0u8; KEY_BYTES];
    getrandom::getrandom(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_ids_split_at_the_node() {
        let id = pinned_id("gw-2", "0100000000f6d87be531cf2719d9b3b12d919201e4");
        assert_eq!(id, "gw-2.0100000000f6d87be531cf2719d9b3b12d919201e4");
        assert_eq!(pinned_node(&id), Some("gw-2"));
        assert_eq!(pinned_node("a.b.c"), Some("a"));
        for not in [
            "",
            "abc",
            ".x",
            "Gw.x",
            "g_w.x",
            "0100000000f6d87be531cf2719d9b3b12d9",
        ] {
            assert_eq!(pinned_node(not), None, "{not:?}");
        }
        assert_eq!(pinned_node(&format!("{}.x", "a".repeat(33))), None);
    }

    #[test]
    fn node_names() {
        assert!(is_node_name("gw-1", 16) && is_node_name("0", 16));
        assert!(!is_node_name("", 16) && !is_node_name("gw.1", 16) && !is_node_name("GW", 16));
        assert!(is_node_name(&"a".repeat(16), 16) && !is_node_name(&"a".repeat(17), 16));
    }

    #[test]
    fn keys_parse_from_their_hex() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8);
        let hex = key_hex(&key);
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(parse_key(&format!("  {hex}\n")), Ok(key));
        assert_eq!(parse_key(&hex.to_uppercase()), Ok(key));
        assert!(parse_key(&hex[..62]).unwrap_err().contains("62 characters"));
        let bad = format!("{}zz", &hex[..62]);
        assert!(parse_key(&bad).unwrap_err().contains("not hex"));
        assert!(parse_key("é".repeat(32).as_str()).is_err());
        assert_ne!(generate_key().unwrap(), generate_key().unwrap());
    }
}
