//! The endpoint under test: `http://host:port/path`, resolved once at start so no virtual user
//! pays for name resolution.

use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written, sent as the `Host` header (gateways check it).
    pub authority: String,
    pub path: String,
    pub addr: SocketAddr,
    /// Extra header lines sent with every request (`--header`, `--header-file`), each ending
    /// in CRLF.
    pub headers: String,
}

/// Parses and resolves `url`. Only plain `http://` is supported: loadgen measures the gateway,
/// and TLS would measure the TLS library instead.
pub fn parse(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--target must start with http:// (got {url})"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--target has no host: {url}"));
    }
    let with_port = if has_port(authority) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolves to no address"))?;
    Ok(Target {
        authority: authority.to_string(),
        path: path.to_string(),
        addr,
        headers: String::new(),
    })
}

/// Whether `authority` ends in `:port` (IPv6 literals are bracketed, so a bare `::` is no port).
fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']') && authority[i + 1..].parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path() {
        let t = parse("http://127.0.0.1:8080/mcp").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/mcp");
        assert_eq!(t.addr.port(), 8080);
    }

    #[test]
    fn defaults_port_and_path() {
        let t = parse("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        assert!(parse("https://127.0.0.1/mcp").is_err());
        assert!(parse("http:///mcp").is_err());
    }
}
