//! Federation's validated configuration: named MCP servers (`[[server]]`), routes that put
//! several of them behind one path (`[[route]]`), and how they combine (`[federation]`), with
//! the checks that build them from the file's sections. A server's upstream keys are checked
//! by `runtime`, as `[upstream]`'s are.
//!
//! Without `[[server]]`, today's `[upstream]` / `[[upstream]]` is one unnamed server on one
//! route at `/mcp`, and requests take the single-server path unchanged.
//!
//! Invariants: server names are `[a-z0-9_-]+` and unique, and `<name><separator>` holds the
//! separator only at its end, so a prefixed name splits at the separator's first occurrence
//! into a server's name and the name it offers; there is at least one route; route paths are
//! unique; each route names at least one server, none twice, and each server is on a route.

use crate::authz::glob::Glob;
use crate::authz::DEFAULT_MAX_PATTERNS_PER_LIST;

use super::file::{
    is_server_name, FederationSection, FilterSection, RouteSection, ServerFileSection,
    DEFAULT_FEDERATION_MAX_LIST_PAGES, DEFAULT_FEDERATION_MAX_NAMES, DEFAULT_FEDERATION_SEPARATOR,
    DEFAULT_ROUTE_PATH, MAX_SEPARATOR_BYTES,
};
use super::upstream::Upstream;

/// Servers on one route at most (the federation's name tables hold member sets as 64-bit
/// masks).
pub const MAX_ROUTE_SERVERS: usize = 64;

/// A configuration error naming the key at fault (`runtime` makes it a `ConfigError`).
type ConfigError = String;

/// One named MCP server: an HTTP server (with its replicas) or a stdio program.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `[a-z0-9_-]+`; empty for the unnamed server of an `[upstream]` config.
    pub name: String,
    pub upstream: Upstream,
    pub tools: NameFilter,
    pub prompts: NameFilter,
    pub resources: NameFilter,
    pub prefix: Prefix,
}

/// Which of a server's names a route offers: those matching an `include` pattern (all, when
/// `include` is empty) and no `exclude` pattern.
#[derive(Debug, Clone, Default)]
pub struct NameFilter {
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
}

impl NameFilter {
    pub fn allows(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }

    /// Whether the filter lets every name through.
    pub fn is_open(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// When a server's names are shown with its prefix (`<server><separator><name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    Always,
    Never,
    /// Only where two servers of the route offer the same name.
    #[default]
    Conditional,
}

/// One virtual MCP server: a path and the servers behind it (indexes into `servers`).
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub path: String,
    pub servers: Vec<usize>,
}

/// What a route does with a server that is down or fails its initialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Left out (its names vanish), logged and counted.
    #[default]
    Open,
    /// The client's initialize fails, naming the server.
    Closed,
}

#[derive(Debug, Clone)]
pub struct FederationConfig {
    pub separator: String,
    pub failure_mode: FailureMode,
    /// The most names a route's name table keeps per shard.
    pub max_names: usize,
    /// Pages read from one server to resolve a name the gateway has not seen.
    pub max_list_pages: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            separator: DEFAULT_FEDERATION_SEPARATOR.into(),
            failure_mode: FailureMode::Open,
            max_names: DEFAULT_FEDERATION_MAX_NAMES,
            max_list_pages: DEFAULT_FEDERATION_MAX_LIST_PAGES,
        }
    }
}

fn err<T>(key: &str, why: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(format!("invalid config: {key}: {why}"))
}

impl FederationSection {
    pub(super) fn validate(&self) -> Result<FederationConfig, ConfigError> {
        check_separator(&self.separator)?;
        let failure_mode = match self.failure_mode.as_str() {
            "open" => FailureMode::Open,
            "closed" => FailureMode::Closed,
            other => {
                return err(
                    "federation.failure_mode",
                    format!("'{other}' is not one of open, closed"),
                )
            }
        };
        if self.max_names == 0 {
            return err("federation.max_names", "must be at least 1");
        }
        if self.max_list_pages == 0 {
            return err("federation.max_list_pages", "must be at least 1");
        }
        Ok(FederationConfig {
            separator: self.separator.clone(),
            failure_mode,
            max_names: self.max_names,
            max_list_pages: self.max_list_pages,
        })
    }
}

/// 1 to `MAX_SEPARATOR_BYTES` of visible ASCII, and none of: a letter or digit (names are made
/// of them), `/` (paths, URIs), `*` or `?` (globs of filters and `[[auth.rules]]` match
/// prefixed names and cannot escape them), `"` or `\` (escaped in JSON and TOML).
fn check_separator(sep: &str) -> Result<(), ConfigError> {
    let key = "federation.separator";
    if sep.is_empty() || sep.len() > MAX_SEPARATOR_BYTES {
        return err(key, format!("must be 1 to {MAX_SEPARATOR_BYTES} bytes"));
    }
    let refused = |c: char| {
        !c.is_ascii_graphic()
            || c.is_ascii_alphanumeric()
            || matches!(c, '/' | '*' | '?' | '"' | '\\')
    };
    if let Some(c) = sep.chars().find(|&c| refused(c)) {
        return err(
            key,
            format!(
                "{sep:?} holds {c:?}: use ASCII punctuation other than / * ? \" \\ (as \"__\", \".\", \":\")"
            ),
        );
    }
    Ok(())
}

/// The `i`th server's name: `[a-z0-9_-]+`, not the name of one before it, and such that
/// `<name><separator>` holds the separator only at its end (with `__`, `git_` would make
/// `git___x` read as `git` + `_x`).
pub(super) fn check_name(
    servers: &[ServerFileSection],
    i: usize,
    sep: &str,
) -> Result<(), ConfigError> {
    let name = &servers[i].name;
    let key = format!("server[{i}].name");
    if !is_server_name(name) {
        return err(
            &key,
            format!("{name:?} is not lowercase letters, digits, '_' and '-'"),
        );
    }
    if let Some(j) = servers[..i].iter().position(|s| s.name == *name) {
        return err(&key, format!("'{name}' is server[{j}]'s name too"));
    }
    if format!("{name}{sep}").find(sep) != Some(name.len()) {
        return err(
            &key,
            format!(
                "'{name}{sep}' holds the separator '{sep}' before its end: \
                 prefixed names would not split one way ([federation] separator)"
            ),
        );
    }
    Ok(())
}

impl ServerFileSection {
    /// The server's federation keys (its name already checked, by `check_name`), around its
    /// validated upstream.
    pub(super) fn validate(&self, upstream: Upstream) -> Result<ServerConfig, ConfigError> {
        let at = format!("server.{}", self.name);
        let prefix = match self.prefix.as_str() {
            "always" => Prefix::Always,
            "never" => Prefix::Never,
            "conditional" => Prefix::Conditional,
            other => {
                return err(
                    &format!("{at}.prefix"),
                    format!("'{other}' is not one of always, never, conditional"),
                )
            }
        };
        Ok(ServerConfig {
            name: self.name.clone(),
            upstream,
            tools: filter(&self.tools, &format!("{at}.tools"))?,
            prompts: filter(&self.prompts, &format!("{at}.prompts"))?,
            resources: filter(&self.resources, &format!("{at}.resources"))?,
            prefix,
        })
    }
}

fn filter(f: &FilterSection, at: &str) -> Result<NameFilter, ConfigError> {
    Ok(NameFilter {
        include: globs(&f.include, &format!("{at}.include"))?,
        exclude: globs(&f.exclude, &format!("{at}.exclude"))?,
    })
}

/// Compiled as `[[auth.rules]]`' lists are, with their bound on patterns per list.
fn globs(patterns: &[String], key: &str) -> Result<Vec<Glob>, ConfigError> {
    if patterns.len() > DEFAULT_MAX_PATTERNS_PER_LIST {
        return err(
            key,
            format!(
                "{} patterns, at most {DEFAULT_MAX_PATTERNS_PER_LIST}",
                patterns.len()
            ),
        );
    }
    patterns
        .iter()
        .map(|p| Glob::new(p).or_else(|why| err(key, why)))
        .collect()
}

/// `[[route]]`, checked against the servers; none: every server on `DEFAULT_ROUTE_PATH`, in
/// the order they are written.
pub(super) fn routes(
    routes: &[RouteSection],
    servers: &[ServerConfig],
) -> Result<Vec<RouteConfig>, ConfigError> {
    if routes.is_empty() {
        return Ok(vec![RouteConfig {
            path: DEFAULT_ROUTE_PATH.into(),
            servers: (0..servers.len()).collect(),
        }]);
    }
    let mut out: Vec<RouteConfig> = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let key = format!("route[{i}].path");
        check_path(&key, &r.path)?;
        if let Some(j) = out.iter().position(|o| o.path == r.path) {
            return err(&key, format!("'{}' is route[{j}]'s path too", r.path));
        }
        out.push(RouteConfig {
            path: r.path.clone(),
            servers: route_servers(r, &format!("route[{i}].servers"), servers)?,
        });
    }
    let on_a_route = |k: usize| out.iter().any(|r| r.servers.contains(&k));
    if let Some(k) = (0..servers.len()).find(|&k| !on_a_route(k)) {
        return err(
            &format!("server.{}", servers[k].name),
            "is on no route (name it in a [[route]]'s servers)",
        );
    }
    Ok(out)
}

/// The servers a route names, as indexes into `servers`.
fn route_servers(
    r: &RouteSection,
    key: &str,
    servers: &[ServerConfig],
) -> Result<Vec<usize>, ConfigError> {
    if r.servers.is_empty() {
        return err(key, format!("route '{}' names no server", r.path));
    }
    if r.servers.len() > MAX_ROUTE_SERVERS {
        return err(
            key,
            format!(
                "route '{}' names more than {MAX_ROUTE_SERVERS} servers",
                r.path
            ),
        );
    }
    let mut out = Vec::with_capacity(r.servers.len());
    for name in &r.servers {
        let Some(k) = servers.iter().position(|s| s.name == *name) else {
            return err(key, format!("'{name}' is no [[server]]'s name"));
        };
        if out.contains(&k) {
            return err(key, format!("'{name}' is named twice"));
        }
        out.push(k);
    }
    Ok(out)
}

/// A path a request's path is compared with whole (its query aside): `/` and visible ASCII
/// (percent-encode the rest) without `?` or `#`, and not under `/.well-known/`, which the
/// gateway serves itself (the OAuth protected resource metadata).
fn check_path(key: &str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return err(key, format!("'{path}' must start with /"));
    }
    if let Some(c) = path
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return err(
            key,
            format!("{path:?} holds {c:?}: a path is visible ASCII without ? or #"),
        );
    }
    if path == "/.well-known" || path.starts_with("/.well-known/") {
        return err(
            key,
            format!("'{path}' is under /.well-known/, which the gateway serves itself"),
        );
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Config, FileConfig, Overrides, ProbeKind, Strategy};

    fn resolve(toml: &str) -> Result<Config, String> {
        FileConfig::from_toml(toml)
            .and_then(|f| f.resolve(&Overrides::default(), None))
            .map_err(|e| e.0)
    }

    /// Three servers (HTTP, replicas, stdio) on two routes, every federation key set; the
    /// file-schema tests (`config::file`) read it too.
    pub(crate) const THREE: &str = r#"
[gateway]
listen = "127.0.0.1:7000"

[[server]]
name = "github"
url = "http://127.0.0.1:9001/mcp"
authorization = "Bearer t"
prefix = "always"
tools = { include = ["search_*", "get_*"], exclude = ["get_secret"] }

[[server]]
name = "search"
strategy = "least_connections"
pool_max_idle = 16
[[server.replica]]
url = "http://127.0.0.1:9002/mcp"
weight = 3
[[server.replica]]
url = "http://127.0.0.1:9003/other"

[[server]]
name = "files"
command = "mcp-files"
args = ["--root", "/srv"]
prefix = "never"
prompts = { exclude = ["*"] }
[server.env]
K = "v"

[[route]]
path = "/mcp"
servers = ["github", "search"]

[[route]]
path = "/mcp/dev"
servers = ["files", "github"]

[federation]
separator = "."
failure_mode = "closed"
max_names = 1000
max_list_pages = 4
"#;

    #[test]
    fn three_servers_on_two_routes() {
        let c = resolve(THREE).unwrap();
        assert_eq!(c.listen.port(), 7000);
        let [github, search, files] = &c.servers[..] else {
            panic!("three servers: {:?}", c.servers)
        };
        let Upstream::Http(h) = &github.upstream else {
            panic!("github is http")
        };
        assert_eq!(h.targets.len(), 1);
        assert_eq!(h.targets[0].authority, "127.0.0.1:9001");
        assert_eq!(h.targets[0].authorization.as_deref(), Some("Bearer t"));
        assert_eq!(h.targets[0].health.kind, ProbeKind::Off);
        assert_eq!(github.prefix, Prefix::Always);
        assert!(github.tools.allows("search_code") && github.tools.allows("get_issue"));
        assert!(!github.tools.allows("get_secret") && !github.tools.allows("delete_repo"));
        assert!(github.prompts.is_open() && github.resources.is_open());
        // Replicas: one target each, with the server's other keys, balanced and probed.
        let Upstream::Http(h) = &search.upstream else {
            panic!("search is http")
        };
        assert_eq!(h.strategy, Strategy::LeastConnections);
        let targets: Vec<_> = h
            .targets
            .iter()
            .map(|t| {
                (
                    t.authority.as_str(),
                    t.path.as_str(),
                    t.weight,
                    t.pool_max_idle,
                )
            })
            .collect();
        assert_eq!(
            targets,
            [
                ("127.0.0.1:9002", "/mcp", 3, 16),
                ("127.0.0.1:9003", "/other", 1, 16)
            ]
        );
        assert!(h.targets.iter().all(|t| t.health.kind == ProbeKind::Mcp));
        assert_eq!(search.prefix, Prefix::Conditional);
        let Upstream::Stdio(s) = &files.upstream else {
            panic!("files is stdio (command without kind)")
        };
        assert_eq!((s.command.as_str(), s.args.len()), ("mcp-files", 2));
        assert_eq!(s.env, [("K".to_string(), "v".to_string())]);
        assert_eq!(files.prefix, Prefix::Never);
        assert!(!files.prompts.allows("anything") && files.tools.is_open());
        let routes: Vec<_> = c
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r.servers.clone()))
            .collect();
        assert_eq!(routes, [("/mcp", vec![0, 1]), ("/mcp/dev", vec![2, 0])]);
        // The single-server path reads the first server's upstream.
        assert!(
            matches!(&c.upstream, Upstream::Http(h) if h.targets[0].authority == "127.0.0.1:9001")
        );
        let f = &c.federation;
        assert_eq!(
            (f.separator.as_str(), f.failure_mode),
            (".", FailureMode::Closed)
        );
        assert_eq!((f.max_names, f.max_list_pages), (1000, 4));
    }

    #[test]
    fn defaults_put_every_server_on_one_route() {
        let toml = "[[server]]\nname = \"b\"\ncommand = \"srv\"\n\
                    [[server]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001/mcp\"\n";
        let f = FileConfig::from_toml(toml).unwrap();
        assert!(!f.needs_demo(&Overrides::default()));
        let c = f.resolve(&Overrides::default(), None).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].path, DEFAULT_ROUTE_PATH);
        assert_eq!(c.routes[0].servers, [0, 1]);
        assert!(matches!(c.upstream, Upstream::Stdio(_)));
        assert!(c.servers.iter().all(|s| s.prefix == Prefix::Conditional));
        assert!(c
            .servers
            .iter()
            .all(|s| s.tools.is_open() && s.prompts.is_open()));
        let f = &c.federation;
        assert_eq!(f.separator, DEFAULT_FEDERATION_SEPARATOR);
        assert_eq!(f.failure_mode, FailureMode::Open);
        assert_eq!(f.max_names, DEFAULT_FEDERATION_MAX_NAMES);
        assert_eq!(f.max_list_pages, DEFAULT_FEDERATION_MAX_LIST_PAGES);
        // One replica serves as one [[upstream]] does: not probed by default.
        let c = resolve(
            "[[server]]\nname = \"a\"\n[[server.replica]]\nurl = \"http://127.0.0.1:1/\"\n",
        )
        .unwrap();
        let Upstream::Http(h) = &c.upstream else {
            panic!("http")
        };
        assert_eq!(h.targets.len(), 1);
        assert_eq!(h.targets[0].health.kind, ProbeKind::Off);
        // Without [[server]]: one unnamed server on /mcp, as before.
        let c = FileConfig::default()
            .resolve(&Overrides::default(), Some("127.0.0.1:1".parse().unwrap()))
            .unwrap();
        assert_eq!((c.servers.len(), c.servers[0].name.as_str()), (1, ""));
        assert_eq!(
            (c.routes[0].path.as_str(), &c.routes[0].servers[..]),
            ("/mcp", &[0][..])
        );
    }

    const A: &str = "[[server]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001/mcp\"\n";
    const B: &str = "[[server]]\nname = \"b\"\nurl = \"http://127.0.0.1:9002/mcp\"\n";

    /// Each file must fail with an error holding the text.
    fn refused(cases: &[(String, &str)]) {
        for (toml, named) in cases {
            let e = resolve(toml).unwrap_err();
            assert!(e.contains(named), "{toml}\nwanted {named:?}, got: {e}");
        }
    }

    #[test]
    fn server_names_and_separators() {
        let named = |name: &str, sep: &str| {
            format!("[[server]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:1/\"\n[federation]\nseparator = \"{sep}\"\n")
        };
        refused(&[
            (named("", "__"), "server[0].name: \"\" is not"),
            (named("GitHub", "__"), "server[0].name: \"GitHub\" is not"),
            (named("a.b", "__"), "server[0].name"),
            (
                format!("{A}{A}"),
                "server[1].name: 'a' is server[0]'s name too",
            ),
            (
                named("a__b", "__"),
                "server[0].name: 'a__b__' holds the separator",
            ),
            (
                named("git_", "__"),
                "server[0].name: 'git___' holds the separator",
            ),
            (named("my-srv", "-"), "server[0].name"),
            (named("a", ""), "federation.separator: must be 1 to 8 bytes"),
            (
                named("a", "::::::::::"),
                "federation.separator: must be 1 to 8",
            ),
            (named("a", "ab"), "federation.separator: \"ab\" holds 'a'"),
            (named("a", "_1"), "federation.separator"),
            (named("a", "/"), "federation.separator"),
            (named("a", "*"), "federation.separator"),
            (named("a", "?"), "federation.separator"),
            (named("a", "\\\\"), "federation.separator"),
            (named("a", " "), "federation.separator"),
            (named("a", "\u{e9}"), "federation.separator"),
        ]);
        for (name, sep) in [
            ("git_", "."),
            ("a_b", ":"),
            ("my-srv", "__"),
            ("_a", "__"),
            ("a", "~>"),
        ] {
            resolve(&named(name, sep)).unwrap_or_else(|e| panic!("{name} {sep}: {e}"));
        }
        let fed = |extra: &str| format!("{A}[federation]\n{extra}\n");
        refused(&[
            (
                fed("failure_mode = \"half\""),
                "federation.failure_mode: 'half'",
            ),
            (fed("max_names = 0"), "federation.max_names"),
            (fed("max_list_pages = 0"), "federation.max_list_pages"),
        ]);
    }

    #[test]
    fn server_keys() {
        let a = |extra: &str| format!("{A}{extra}\n");
        let many = format!("[{}]", vec!["\"x\""; 1025].join(","));
        refused(&[
            (a("prefix = \"sometimes\""), "server.a.prefix: 'sometimes'"),
            (
                a("tools = { include = [\"\"] }"),
                "server.a.tools.include: empty pattern",
            ),
            (
                a("prompts = { exclude = [\"a\\u0007\"] }"),
                "server.a.prompts.exclude",
            ),
            (
                a(&format!("resources = {{ include = {many} }}")),
                "server.a.resources.include: 1025 patterns",
            ),
            (
                a("[[server.replica]]\nurl = \"http://127.0.0.1:2/\""),
                "server.a.url: and [[server.replica]]",
            ),
            (
                a("kind = \"stdio\"\ncommand = \"x\""),
                "server.a.url: a stdio server",
            ),
            (a("kind = \"http\"\ncommand = \"x\""), "server.a.command"),
            (a("kind = \"ftp\""), "server.a.kind: 'ftp'"),
            (
                "[[server]]\nname = \"a\"\n".into(),
                "server.a.url: is required",
            ),
            (
                "[[server]]\nname = \"a\"\nkind = \"stdio\"\n".into(),
                "server.a.command: is required",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = \"x\"\nmax_processes = 0\n".into(),
                "server.a.max_processes",
            ),
            (
                "[[server]]\nname = \"a\"\ncommand = \"x\"\n[server.env]\n\"K=V\" = \"v\"\n".into(),
                "server.a.env",
            ),
            (
                a("pool_max_idle = 10\npool_max_connections = 5"),
                "server.a.pool_max_idle: must not exceed server.a.pool_max_connections",
            ),
            (a("health_check = \"ping\""), "server.a.health_check"),
            (a("strategy = \"random\""), "server.a.strategy"),
            (
                "[[server]]\nname = \"a\"\nurl = \"https://h/mcp\"\n".into(),
                "server.a.url: 'https://h/mcp' must start with http://",
            ),
        ]);
        let replicas = |first: &str, second: &str| {
            format!("[[server]]\nname = \"a\"\n[[server.replica]]\n{first}\n[[server.replica]]\n{second}\n")
        };
        let ok = "url = \"http://127.0.0.1:1/\"";
        refused(&[
            (
                replicas(ok, "url = \"ftp://x/\""),
                "server.a.replica[1].url: 'ftp://x/'",
            ),
            (
                replicas(ok, "url = \"\""),
                "server.a.replica[1].url: is required",
            ),
            (
                replicas(&format!("{ok}\nweight = 0"), ok),
                "server.a.replica[0].weight",
            ),
            (
                replicas(&format!("{ok}\nweight = 1001"), ok),
                "server.a.replica[0].weight",
            ),
        ]);
    }

    #[test]
    fn routes() {
        let route = |path: &str, servers: &str| {
            format!("{A}{B}[[route]]\npath = \"{path}\"\nservers = [{servers}]\n")
        };
        let both = "\"a\", \"b\"";
        refused(&[
            (route("mcp", both), "route[0].path: 'mcp' must start with /"),
            (route("", both), "route[0].path"),
            (route("/a b", both), "route[0].path"),
            (route("/a\\tb", both), "route[0].path"),
            (route("/a?x=1", both), "route[0].path"),
            (route("/a#x", both), "route[0].path"),
            (route("/caf\u{e9}", both), "route[0].path"),
            (route("/.well-known", both), "route[0].path"),
            (
                route("/.well-known/oauth-protected-resource", both),
                "route[0].path: '/.well-known/oauth-protected-resource' is under /.well-known/",
            ),
            (
                route("/mcp", ""),
                "route[0].servers: route '/mcp' names no server",
            ),
            (
                route("/mcp", "\"a\", \"c\""),
                "route[0].servers: 'c' is no [[server]]'s name",
            ),
            (
                route("/mcp", "\"a\", \"b\", \"a\""),
                "route[0].servers: 'a' is named twice",
            ),
            (route("/mcp", "\"a\""), "server.b: is on no route"),
            (
                format!(
                    "{}[[route]]\npath = \"/mcp\"\nservers = [\"b\"]\n",
                    route("/mcp", "\"a\"")
                ),
                "route[1].path: '/mcp' is route[0]'s path too",
            ),
            (
                "[[route]]\npath = \"/mcp\"\nservers = [\"a\"]\n".into(),
                "route: names [[server]]s",
            ),
        ]);
        // A route holds at most MAX_ROUTE_SERVERS servers (the name tables' masks).
        let many = |n: usize| {
            let servers: String = (0..n)
                .map(|i| {
                    format!(
                        "[[server]]\nname = \"s{i}\"\nurl = \"http://127.0.0.1:{}/mcp\"\n",
                        1000 + i
                    )
                })
                .collect();
            let names: Vec<String> = (0..n).map(|i| format!("\"s{i}\"")).collect();
            format!(
                "{servers}[[route]]\npath = \"/mcp\"\nservers = [{}]\n",
                names.join(", ")
            )
        };
        assert!(resolve(&many(MAX_ROUTE_SERVERS)).is_ok());
        refused(&[(
            many(MAX_ROUTE_SERVERS + 1),
            "route[0].servers: route '/mcp' names more than 64 servers",
        )]);
        for path in ["/", "/mcp/dev", "/.well-knownx", "/a%20b", "/mcp/"] {
            let c = resolve(&route(path, both)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(c.routes[0].path, path);
        }
    }

    /// The README's federation example (its Federation section) loads.
    #[test]
    fn readme_example_loads() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let block = readme
            .split("## Federation\n")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the README's federation example");
        let c = FileConfig::from_toml(block)
            .and_then(|f| f.resolve(&Overrides::default(), None))
            .unwrap_or_else(|e| panic!("the README's federation example: {e}"));
        let names: Vec<&str> = c.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta", "files"]);
        assert_eq!(c.routes.len(), 2);
        assert!(c.servers[0].tools.allows("echo") && !c.servers[0].tools.allows("secret_x"));
    }

    /// The README's federation keys load, and say the defaults.
    #[test]
    fn readme_keys_hold_the_defaults() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let block = readme
            .split("Federation (see [Federation](#federation))")
            .nth(1)
            .and_then(|s| s.split("```toml\n").nth(1))
            .and_then(|s| s.split("```").next())
            .expect("the README's federation block");
        let f = FileConfig::from_toml(block).unwrap();
        let (d, r) = (FederationSection::default(), &f.federation);
        assert_eq!(
            (&r.separator, &r.failure_mode, r.max_names, r.max_list_pages),
            (&d.separator, &d.failure_mode, d.max_names, d.max_list_pages)
        );
        let c = f.resolve(&Overrides::default(), None).unwrap();
        assert_eq!(c.servers[0].prefix, Prefix::default());
        assert_eq!(c.routes[0].path, DEFAULT_ROUTE_PATH);
    }

    #[test]
    fn servers_exclude_upstream_and_its_flags() {
        refused(&[
            (
                format!("{A}[upstream]\nurl = \"http://127.0.0.1:1/\"\n"),
                "upstream: [upstream] and [[server]] exclude each other",
            ),
            (
                format!("[[upstream]]\nurl = \"http://127.0.0.1:1/\"\n{A}"),
                "upstream: [upstream] and [[server]]",
            ),
            (
                format!("{A}[gateway]\ndriver = \"fast\"\n"),
                "gateway.driver",
            ),
            (
                format!("{A}[gateway]\nlisten_backlog = 0\n"),
                "gateway.listen_backlog",
            ),
        ]);
        for (o, flag) in [
            (
                Overrides {
                    upstream: Some("http://127.0.0.1:1/".into()),
                    ..Overrides::default()
                },
                "invalid --upstream:",
            ),
            (
                Overrides {
                    upstream_cmd: Some("srv".into()),
                    ..Overrides::default()
                },
                "invalid --upstream-cmd:",
            ),
        ] {
            let f = FileConfig::from_toml(A).unwrap();
            assert!(!f.needs_demo(&o));
            let e = f.resolve(&o, None).unwrap_err();
            assert!(e.0.contains(flag), "{e}");
        }
        // Flags that do not name an upstream still apply.
        let o = Overrides {
            listen: Some("127.0.0.1:7001".into()),
            shards: Some(1),
            ..Overrides::default()
        };
        let c = FileConfig::from_toml(A).unwrap().resolve(&o, None).unwrap();
        assert_eq!((c.listen.port(), c.shards), (7001, 1));
    }
}
