//! Federation's validated configuration: named MCP servers (`[[server]]`), routes that put
//! several of them behind one path (`[[route]]`), and how they combine (`[federation]`).
//!
//! Without `[[server]]`, today's `[upstream]` / `[[upstream]]` is one unnamed server on one
//! route at `/mcp`, and requests take the single-server path unchanged.

use crate::authz::glob::Glob;

use super::file::DEFAULT_FEDERATION_SEPARATOR;
use super::upstream::Upstream;

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
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            separator: DEFAULT_FEDERATION_SEPARATOR.into(),
            failure_mode: FailureMode::Open,
        }
    }
}
