//! The validated `[auth]` slice (`AuthConfig`) and the checks that build it from the file's
//! `AuthSection`: which keys each mode needs, the bounds of the JWKS fetcher and the token
//! cache, the API keys' digests and expiry dates, and the protected resource metadata
//! (RFC 9728) document, built once here so the shards only copy it out.
//!
//! Invariant: a mode other than `off` always has a `resource` (the metadata names it), an
//! OAuth mode always has an issuer, an audience and one JWKS source, and an API key mode at
//! least one key.

use std::path::PathBuf;
use std::time::Duration;

use super::file::{ApiKeySection, AuthSection};

/// A configuration error naming the key at fault (`runtime` makes it a `ConfigError`).
type ConfigError = String;

/// Who may use the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Off,
    OAuth,
    ApiKey,
    OAuthOrApiKey,
}

impl AuthMode {
    pub fn takes_tokens(self) -> bool {
        matches!(self, AuthMode::OAuth | AuthMode::OAuthOrApiKey)
    }

    pub fn takes_api_keys(self) -> bool {
        matches!(self, AuthMode::ApiKey | AuthMode::OAuthOrApiKey)
    }
}

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Token validation and the JWKS fetcher (OAuth modes).
    pub oauth: Option<OAuthConfig>,
    pub api_keys: Vec<ApiKey>,
    /// The canonical URI of this endpoint.
    pub resource: String,
    /// Where the protected resource metadata is (`resource_metadata` of a challenge).
    pub metadata_url: String,
    /// Paths the metadata is served at, without authentication.
    pub metadata_paths: Vec<String>,
    /// The metadata document (JSON).
    pub metadata_json: String,
    pub required_scopes: Vec<String>,
    pub token_cache_entries: usize,
    pub max_credential_bytes: usize,
    /// Lowercased header name carrying the subject's name upstream.
    pub forward_subject_header: Option<String>,
    /// `[[auth.rules]]`, compiled; `None`: no rules, every subject may use everything.
    pub rules: Option<std::sync::Arc<crate::authz::Rules>>,
}

impl AuthConfig {
    /// No authentication.
    pub fn off() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Off,
            oauth: None,
            api_keys: Vec::new(),
            resource: String::new(),
            metadata_url: String::new(),
            metadata_paths: Vec::new(),
            metadata_json: String::new(),
            required_scopes: Vec::new(),
            token_cache_entries: 0,
            max_credential_bytes: 0,
            forward_subject_header: None,
            rules: None,
        }
    }
}

/// Bearer JWTs: whom they must come from and be for, and where the keys are.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub issuer: String,
    pub audience: Vec<String>,
    pub jwks: JwksSource,
    pub leeway_s: u64,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub fetch_timeout: Duration,
    pub max_jwks_bytes: usize,
    pub max_jwks_keys: usize,
    pub refresh_queue_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `http://host[:port]/path`: `host:port` and the path.
    Url {
        authority: String,
        path: String,
    },
    File(PathBuf),
}

/// One API key: its subject, the SHA-256 of its text, its scopes, its end.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<String>,
    /// Unix seconds after which the key is refused; `None`: never.
    pub expires: Option<i64>,
}

/// The gateway's MCP endpoint (`gateway::MCP_PATH`; configuration imports no serving module,
/// and a test in `gateway` checks the two agree).
pub const ENDPOINT_PATH: &str = "/mcp";

fn err<T>(key: &str, why: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(format!("invalid config: auth.{key}: {why}"))
}

impl AuthSection {
    /// Checks the section and builds the validated slice.
    pub fn validate(&self) -> Result<AuthConfig, ConfigError> {
        let mode = match self.mode.as_str() {
            "off" => AuthMode::Off,
            "oauth" => AuthMode::OAuth,
            "api_key" => AuthMode::ApiKey,
            "oauth_or_api_key" => AuthMode::OAuthOrApiKey,
            other => {
                return err(
                    "mode",
                    format!("'{other}' is not one of off, oauth, api_key, oauth_or_api_key"),
                )
            }
        };
        if mode == AuthMode::Off && !self.rules.is_empty() {
            return err(
                "rules",
                "need a mode other than \"off\" (rules are about subjects)",
            );
        }
        if !mode.takes_api_keys() && !self.api_keys.is_empty() {
            return err(
                "api_keys",
                "need mode = \"api_key\" or \"oauth_or_api_key\"",
            );
        }
        if mode == AuthMode::Off {
            return Ok(AuthConfig::off());
        }
        let resource = self.resource.clone().unwrap_or_default();
        let (origin, path) = split_resource(&resource)?;
        let oauth = mode.takes_tokens().then(|| self.oauth()).transpose()?;
        let api_keys = self.keys(mode)?;
        self.check_scopes()?;
        let header = self.subject_header()?;
        let rules = crate::authz::Rules::with_default(&self.rules, self.rules_default)
            .map_err(|e| format!("invalid config: {e}"))?;
        let rules = (!rules.is_off()).then(|| std::sync::Arc::new(rules));
        if self.token_cache_entries == 0 {
            return err("token_cache_entries", "must be at least 1");
        }
        if self.max_credential_bytes < 256 {
            return err("max_credential_bytes", "must be at least 256");
        }
        let well_known = "/.well-known/oauth-protected-resource";
        let inserted = format!("{well_known}{}", path.trim_end_matches('/'));
        let mut metadata_paths = vec![well_known.to_string(), inserted.clone()];
        let mcp = format!("{well_known}{ENDPOINT_PATH}");
        if !metadata_paths.contains(&mcp) {
            metadata_paths.push(mcp);
        }
        metadata_paths.dedup();
        Ok(AuthConfig {
            mode,
            oauth,
            api_keys,
            metadata_url: format!("{origin}{inserted}"),
            metadata_paths,
            metadata_json: self.metadata_json(&resource),
            resource,
            required_scopes: self.required_scopes.clone(),
            token_cache_entries: self.token_cache_entries,
            max_credential_bytes: self.max_credential_bytes,
            forward_subject_header: header,
            rules,
        })
    }

    fn oauth(&self) -> Result<OAuthConfig, ConfigError> {
        let issuer = match self.issuer.as_deref() {
            Some(i) if !i.trim().is_empty() => i.to_string(),
            _ => return err("issuer", "is required for the oauth modes"),
        };
        if self.audience.is_empty() || self.audience.iter().any(|a| a.trim().is_empty()) {
            return err(
                "audience",
                "is required for the oauth modes (a string or a list)",
            );
        }
        let jwks = match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) => jwks_url(url)?,
            (None, Some(file)) => JwksSource::File(PathBuf::from(file)),
            (Some(_), Some(_)) => return err("jwks_url", "set jwks_url or jwks_file, not both"),
            (None, None) => return err("jwks_url", "jwks_url or jwks_file is required"),
        };
        if self.leeway_s > 3600 {
            return err("leeway_s", "must be at most 3600");
        }
        let ms = |key: &str, v: u64| {
            if v == 0 {
                err(key, "must be at least 1 ms")
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let refresh = ms("jwks_refresh_ms", self.jwks_refresh_ms)?;
        let min_refresh = ms("jwks_min_refresh_ms", self.jwks_min_refresh_ms)?;
        if min_refresh > refresh {
            return err(
                "jwks_min_refresh_ms",
                "must not exceed auth.jwks_refresh_ms",
            );
        }
        if self.max_jwks_bytes < 1024 {
            return err("max_jwks_bytes", "must be at least 1024");
        }
        if self.max_jwks_keys == 0 || self.jwks_refresh_queue_depth == 0 {
            return err(
                "max_jwks_keys",
                "max_jwks_keys and jwks_refresh_queue_depth must be at least 1",
            );
        }
        Ok(OAuthConfig {
            issuer,
            audience: self.audience.clone(),
            jwks,
            leeway_s: self.leeway_s,
            refresh,
            min_refresh,
            fetch_timeout: ms("jwks_fetch_timeout_ms", self.jwks_fetch_timeout_ms)?,
            max_jwks_bytes: self.max_jwks_bytes,
            max_jwks_keys: self.max_jwks_keys,
            refresh_queue_depth: self.jwks_refresh_queue_depth,
        })
    }

    fn keys(&self, mode: AuthMode) -> Result<Vec<ApiKey>, ConfigError> {
        if mode.takes_api_keys() && self.api_keys.is_empty() {
            return err(
                "api_keys",
                "at least one [[auth.api_keys]] is required in this mode",
            );
        }
        let mut out: Vec<ApiKey> = Vec::with_capacity(self.api_keys.len());
        for k in &self.api_keys {
            let key = api_key(k)?;
            if out.iter().any(|o| o.name == key.name) {
                return err("api_keys", format!("the name '{}' is used twice", key.name));
            }
            if out.iter().any(|o| o.sha256 == key.sha256) {
                return err(
                    "api_keys",
                    format!("'{}' has the digest of another key", key.name),
                );
            }
            out.push(key);
        }
        Ok(out)
    }

    fn check_scopes(&self) -> Result<(), ConfigError> {
        let lists = [
            ("required_scopes", &self.required_scopes),
            ("scopes_supported", &self.scopes_supported),
        ];
        for (key, list) in lists {
            if let Some(bad) = list.iter().find(|s| !is_scope(s)) {
                return err(
                    key,
                    format!("'{bad}' is not a scope (visible ASCII, no quote or backslash)"),
                );
            }
        }
        let unknown = self
            .required_scopes
            .iter()
            .find(|s| !self.scopes_supported.is_empty() && !self.scopes_supported.contains(s));
        if let Some(s) = unknown {
            return err(
                "required_scopes",
                format!("'{s}' is not in auth.scopes_supported"),
            );
        }
        Ok(())
    }

    fn subject_header(&self) -> Result<Option<String>, ConfigError> {
        let Some(h) = &self.forward_subject_header else {
            return Ok(None);
        };
        let h = h.to_ascii_lowercase();
        const RESERVED: [&str; 9] = [
            "host",
            "authorization",
            "cookie",
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "mcp-session-id",
            "mcp-protocol-version",
        ];
        let token = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token || RESERVED.contains(&h.as_str()) {
            return err(
                "forward_subject_header",
                format!("'{h}' cannot be used as a header name"),
            );
        }
        Ok(Some(h))
    }

    /// The RFC 9728 document.
    fn metadata_json(&self, resource: &str) -> String {
        let mut doc = serde_json::json!({
            "resource": resource,
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
        });
        if !self.scopes_supported.is_empty() {
            doc["scopes_supported"] = serde_json::json!(self.scopes_supported);
        }
        doc.to_string()
    }
}

/// A scope as it may appear in a `scope="..."` challenge parameter.
fn is_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// A resource URI's origin (`https://host[:port]`) and path.
fn split_resource(r: &str) -> Result<(&str, &str), ConfigError> {
    let rest = r
        .strip_prefix("https://")
        .or_else(|| r.strip_prefix("http://"));
    let Some(rest) = rest else {
        return err(
            "resource",
            "is required when auth is on: the absolute http(s) URI of this endpoint",
        );
    };
    if r.contains('#') || r.bytes().any(|b| b <= b' ' || b == b'"' || b >= 0x7f) {
        return err(
            "resource",
            format!("'{r}' is not a valid URI (no fragment, no spaces)"),
        );
    }
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    if host_end == 0 {
        return err("resource", format!("'{r}' names no host"));
    }
    let origin_len = r.len() - rest.len() + host_end;
    let path = r[origin_len..].split('?').next().unwrap_or("");
    Ok((&r[..origin_len], path))
}

fn jwks_url(url: &str) -> Result<JwksSource, ConfigError> {
    if url.starts_with("https://") {
        return err(
            "jwks_url",
            "https is not supported by the built-in fetcher: use an http:// URL (a local \
             proxy or sidecar) or auth.jwks_file",
        );
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return err("jwks_url", format!("'{url}' must start with http://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || url.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return err("jwks_url", format!("'{url}' is not a valid http URL"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(JwksSource::Url {
        authority,
        path: path.to_string(),
    })
}

fn api_key(k: &ApiKeySection) -> Result<ApiKey, ConfigError> {
    if k.name.trim().is_empty() {
        return err("api_keys.name", "must not be empty");
    }
    let sha256 = parse_hex32(&k.sha256).ok_or_else(|| {
        format!(
            "invalid config: auth.api_keys.sha256: '{}' ({}) is not 64 hex digits (see `shardcat hash-key`)",
            k.sha256, k.name
        )
    })?;
    let expires = match &k.expires {
        None => None,
        Some(t) => Some(parse_rfc3339(t).ok_or_else(|| {
            format!(
                "invalid config: auth.api_keys.expires: '{t}' ({}) is not an RFC 3339 date-time",
                k.name
            )
        })?),
    };
    if let Some(bad) = k.scopes.iter().find(|s| !is_scope(s)) {
        return err("api_keys.scopes", format!("'{bad}' is not a scope"));
    }
    Ok(ApiKey {
        name: k.name.clone(),
        sha256,
        scopes: k.scopes.clone(),
        expires,
    })
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` as Unix seconds (fractions dropped).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return None;
            }
            let (oh, om) = (num_at(rest, 1)?, num_at(rest, 4)?);
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

fn num_at(s: &str, at: usize) -> Option<i64> {
    let t = s.get(at..at + 2)?;
    t.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| t.parse().ok())?
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn auth(toml: &str) -> Result<AuthConfig, String> {
        FileConfig::from_toml(toml)
            .map_err(|e| e.0)?
            .auth
            .validate()
    }

    const KEY: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2000-03-01T02:00:00.5+02:00"),
            Some(951_868_800)
        );
        assert_eq!(parse_rfc3339("2000-03-01"), None);
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00"), None);
    }

    #[test]
    fn modes_need_their_keys() {
        let e = auth("[auth]\nmode = \"oauth\"\nresource = \"https://g/mcp\"\n").unwrap_err();
        assert!(e.contains("auth.issuer"), "{e}");
        let e = auth("[auth]\nmode = \"api_key\"\n").unwrap_err();
        assert!(e.contains("auth.resource"), "{e}");
        let e = auth("[auth]\nmode = \"oauth\"\nresource = \"https://g/mcp\"\nissuer = \"i\"\naudience = \"a\"\n")
            .unwrap_err();
        assert!(e.contains("jwks"), "{e}");
        let e = auth("[auth]\nmode = \"oauth\"\nresource = \"https://g/mcp\"\nissuer = \"i\"\naudience = [\"a\"]\njwks_url = \"https://idp/jwks\"\n")
            .unwrap_err();
        assert!(e.contains("https"), "{e}");
        let e = auth("[auth]\nmode = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("auth.mode"), "{e}");
        let e = auth(&format!(
            "[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{KEY}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("auth.api_keys"), "{e}");
    }

    #[test]
    fn api_key_mode_and_metadata() {
        let c = auth(&format!(
            "[auth]\nmode = \"api_key\"\nresource = \"https://gw.example/mcp\"\nrequired_scopes = [\"mcp\"]\n\
             [[auth.api_keys]]\nname = \"ci\"\nsha256 = \"{KEY}\"\nexpires = \"2030-01-01T00:00:00Z\"\n"
        ))
        .unwrap();
        assert_eq!(c.mode, AuthMode::ApiKey);
        assert_eq!(
            c.metadata_url,
            "https://gw.example/.well-known/oauth-protected-resource/mcp"
        );
        assert!(c
            .metadata_paths
            .contains(&"/.well-known/oauth-protected-resource".to_string()));
        assert_eq!(c.api_keys[0].sha256[0], 0x9f);
        let doc: serde_json::Value = serde_json::from_str(&c.metadata_json).unwrap();
        assert_eq!(doc["resource"], "https://gw.example/mcp");
        assert_eq!(doc["bearer_methods_supported"][0], "header");
        let e = auth(&format!(
            "[auth]\nmode = \"api_key\"\nresource = \"https://g/mcp\"\n[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{KEY}\"\n[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ))
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let e = auth(&format!(
            "[auth]\nmode = \"api_key\"\nresource = \"https://g/mcp\"\nforward_subject_header = \"Authorization\"\n[[auth.api_keys]]\nname = \"a\"\nsha256 = \"{KEY}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("forward_subject_header"), "{e}");
    }
}
