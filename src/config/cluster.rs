//! The validated `[cluster]` slice (`ClusterConfig`): this node's name and the cluster's
//! session keys, read from their files at load time so that a node never starts with a key it
//! cannot use.
//!
//! Invariant: a `ClusterConfig` holds a node name the token format and the pinned-id form
//! carry (`cluster::is_node_name`), and two distinct keys when it holds two (a previous key
//! equal to the current one is a rotation half done, refused).

use crate::cluster::{self, SessionKeys, KEY_BYTES};

use super::file::ClusterSection;

/// The longest `node_id`: short, as every session id carries it.
pub const MAX_NODE_ID_BYTES: usize = 16;
const _: () = assert!(MAX_NODE_ID_BYTES <= cluster::MAX_NODE_BYTES);

/// Validated `[cluster]`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: String,
    pub keys: SessionKeys,
    /// Ended sessions' ids each shard refuses (`cluster.max_ended_ids`).
    pub max_ended_ids: usize,
    /// Sealed sessions unused this long are forgotten (`cluster.forget_idle_ms`).
    pub forget_idle: std::time::Duration,
    /// This run of the node, random at start: SSE event ids carry it, so that a stream
    /// number this run gave is never mistaken for another node's or an earlier run's.
    pub incarnation: u32,
}

impl ClusterSection {
    /// Checks the node name and reads the key files; an error names the key and the file.
    pub fn validate(&self) -> Result<ClusterConfig, String> {
        if !cluster::is_node_name(&self.node_id, MAX_NODE_ID_BYTES) {
            return Err(format!(
                "invalid config: cluster.node_id: {:?}: 1 to {MAX_NODE_ID_BYTES} of a-z, 0-9, -",
                self.node_id
            ));
        }
        let current = read_key("session_key_file", &self.session_key_file)?;
        let previous = match &self.previous_session_key_file {
            Some(path) => Some(read_key("previous_session_key_file", path)?),
            None => None,
        };
        if self.forget_idle_ms == 0 {
            return Err("invalid config: cluster.forget_idle_ms: must be at least 1".into());
        }
        if previous == Some(current) {
            return Err(format!(
                "invalid config: cluster.previous_session_key_file: {} holds the same key as \
                 session_key_file: drop it once every node has the new key",
                self.previous_session_key_file
                    .as_deref()
                    .unwrap_or_default()
            ));
        }
        Ok(ClusterConfig {
            node_id: self.node_id.clone(),
            keys: SessionKeys::new(current, previous),
            max_ended_ids: self.max_ended_ids,
            forget_idle: std::time::Duration::from_millis(self.forget_idle_ms),
            incarnation: incarnation(),
        })
    }
}

/// A random number for this run (`ClusterConfig::incarnation`); the clock's nanoseconds
/// where the OS gives no random bytes (it only has to differ from the run before).
fn incarnation() -> u32 {
    let mut b = [0u8; 4];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u32::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    }
}

fn read_key(key: &str, path: &str) -> Result<[u8; KEY_BYTES], String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("invalid config: cluster.{key}: cannot read {path}: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("invalid config: cluster.{key}: {path} is not hex text"))?;
    cluster::parse_key(&text).map_err(|why| format!("invalid config: cluster.{key}: {path} {why}"))
}

#[cfg(test)]
mod tests {
    use crate::config::{FileConfig, Overrides};

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A key file under the system's temp dir, removed on drop.
    struct KeyFile(std::path::PathBuf);

    impl KeyFile {
        fn new(name: &str, text: &str) -> KeyFile {
            let dir = std::env::temp_dir().join(format!("shardcat-cluster-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            KeyFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn resolve(toml: &str) -> Result<crate::config::Config, String> {
        FileConfig::from_toml(toml)
            .and_then(|f| f.resolve(&Overrides::default(), None))
            .map_err(|e| e.0)
    }

    fn cluster(node: &str, key: &str, previous: Option<&str>) -> String {
        let prev = previous.map_or(String::new(), |p| {
            format!("previous_session_key_file = {p:?}\n")
        });
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n[cluster]\nnode_id = {node:?}\n\
             session_key_file = {key:?}\n{prev}"
        )
    }

    #[test]
    fn no_cluster_table_is_none() {
        let c = resolve("[upstream]\nurl = \"http://127.0.0.1:1/mcp\"\n").unwrap();
        assert!(c.cluster.is_none());
    }

    #[test]
    fn keys_are_read_at_load() {
        let cur = KeyFile::new("cur", &format!("\n  {KEY}\n"));
        let prev = KeyFile::new("prev", &KEY.replace('0', "f"));
        let c = resolve(&cluster("gw-1", cur.path(), Some(prev.path()))).unwrap();
        let cl = c.cluster.expect("[cluster]");
        assert_eq!(cl.node_id, "gw-1");
        let dbg = format!("{:?}", cl.keys);
        assert!(!dbg.contains("00112233"), "keys are not shown: {dbg}");
        let claims = crate::cluster::Claims {
            node: "gw-1".into(),
            shard: 0,
            version: 0,
            issued_s: 0,
            subject: None,
            members: Vec::new(),
        };
        let t = cl.keys.seal_random(&claims).unwrap();
        assert_eq!(cl.keys.open(&t), Ok(claims));
        assert!(resolve(&cluster("gw-1", cur.path(), None)).is_ok());
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let good = KeyFile::new("good", KEY);
        let short = KeyFile::new("short", &KEY[..40]);
        let not_hex = KeyFile::new("nothex", &KEY.replace('a', "x"));
        let missing = format!("{}-missing", good.path());
        let cases = [
            (cluster("gw.1", good.path(), None), "cluster.node_id"),
            (cluster("", good.path(), None), "cluster.node_id"),
            (
                cluster(&"n".repeat(17), good.path(), None),
                "cluster.node_id",
            ),
            (
                cluster("gw-1", &missing, None),
                "cluster.session_key_file: cannot read",
            ),
            (cluster("gw-1", short.path(), None), "holds 40 characters"),
            (cluster("gw-1", not_hex.path(), None), "is not hex"),
            (
                cluster("gw-1", good.path(), Some(&missing)),
                "previous_session_key_file",
            ),
            (
                cluster("gw-1", good.path(), Some(good.path())),
                "the same key",
            ),
        ];
        for (toml, want) in cases {
            let e = resolve(&toml).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = resolve(&cluster("gw-1", short.path(), None)).unwrap_err();
        assert!(e.contains(short.path()), "{e}");
        let e = resolve("[cluster]\nnode_id = \"a\"\nsession_key_file = \"k\"\nkey = 1\n");
        assert!(e.unwrap_err().contains("unknown field `key`"));
        let e = resolve("[cluster]\nnode_id = \"a\"\n").unwrap_err();
        assert!(e.contains("session_key_file"), "{e}");
    }

    /// The README's configuration block parses, and its `[cluster]` keys, uncommented, too.
    #[test]
    fn readme_cluster_keys_parse() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let block = readme
            .split("## Configuration\n")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the README's keys block");
        FileConfig::from_toml(block).unwrap();
        let table: String = block
            .lines()
            .skip_while(|l| !l.starts_with("# [cluster]"))
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let f = FileConfig::from_toml(&table).unwrap_or_else(|e| panic!("{table}: {e}"));
        let c = f.cluster.expect("the README names [cluster]");
        assert!(c.previous_session_key_file.is_some());
    }
}
