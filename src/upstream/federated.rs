//! Federation's pure logic: what a route that puts several MCP servers behind one path needs
//! to present them as one virtual server, with no I/O. The runtime (fan-out to each server's
//! upstream, sessions, relaying) calls it; it imports only `config` and `mcp`.
//!
//! - `names`   — a route's name table: the client-visible name of each tool, prompt and
//!   resource, and the way back (which server, under which of its own names).
//! - `uri`     — the reversible mark a resource URI (or URI template) of one server carries when
//!   it must be told apart, and RFC 6570 template matching.
//! - `merge`   — one answer from the servers' answers: `initialize`, `server/discover`, and the
//!   four list methods (`tools/list`, `prompts/list`, `resources/list`,
//!   `resources/templates/list`).
//! - `cursor`  — the opaque pagination cursor of a merged list: where each server stands.
//! - `rewrite` — byte-exact edits of messages crossing the gateway: a request renamed to the
//!   server's own name, server-to-client request ids tagged with their server, URIs in results
//!   and notifications marked for the client.
//! - `json`    — raw-JSON helpers the others share (spans of borrowed values, splicing).
//!
//! Invariants: nothing here panics on what a peer sends (servers' answers, clients' cursors and
//! names): malformed input is refused or left out with a reason. Every name a merged list
//! shows resolves back to the server and name it labels (`names`), and every edit keeps the
//! bytes it does not mean to change (`rewrite`, `json`).

pub mod cursor;
pub mod json;
pub mod merge;
pub mod names;
pub mod rewrite;
pub mod uri;
