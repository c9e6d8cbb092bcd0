//! shardcat: a thread-per-core gateway for Model Context Protocol (MCP) traffic on io_uring.
//!
//! Crate map, in layers that only look down (`tests/house.rs` checks it):
//! - faces: `main` (the command line), `forward` (`shardcat forward`: stdio to stdio or to
//!   Streamable HTTP; with `tape::cli`, only under the default `cli` feature), `demo` (the built-in demo MCP server), `admin` (`/health`,
//!   `/metrics`), `tape` (the persistence core's writer, the tape tools and replay).
//! - `runtime`   — one pinned thread and monoio runtime per core: accept loop, mailboxes,
//!   timers, drain; builds each shard's context and starts the pipeline on every connection.
//!   `degrade` (the monitor thread's degradation level) and `admission` (global bounds, the
//!   cross-core mailboxes) sit beside it.
//! - `gateway/`  — the pipeline; it alone reads requests, writes to clients and records frames.
//!   `gateway::exchange` wires one request top to bottom: `client` (read head and body) →
//!   `validate` (path, Host, Origin, version, degradation, rates; JSON-RPC classification) →
//!   `route` (the MCP rules of each method and version) with `session` (the lifecycle;
//!   `session::cluster`: sealed and pinned ids, adoption) →
//!   `respond` (write what the upstream answered) with `relay` (HTTP bodies) and `stream`
//!   (SSE: reader and writer halves, resumption, upstream reconnects); `record` offers frames
//!   to the persistence core.
//! - `shard/`    — one shard's context (`Shard`: config, the session table `shard::session`,
//!   SSE stream buffers `shard::sse`, read buffers, stats, its upstreams) and what all shards
//!   share (`Shared`). It imports no pipeline code.
//! - `upstream/` — the upstreams of a shard behind one interface (`Upstreams`: open a
//!   session, send in it, open its stream, end it, a stateless request), each answering with
//!   a `Source` (a status, one message, an HTTP response, events). Kinds: `http` (with
//!   `pool`, `balance`, `health`; `era` for 2026-07-28 requests to handshake-era servers),
//!   `stdio` (child processes, and through `stdio::sse` legacy HTTP+SSE servers, spoken to the same way) and `federated` (a route over several named servers, each an
//!   `Upstreams` of its own: fan-out, merged answers, name routing). A kind never writes to a
//!   client.
//! - `auth`      — who sent a request: credentials from the headers, API keys by digest, JWTs
//!   checked against the issuer's JWKS (fetched by a thread of its own, published lock-free),
//!   each shard's token cache. The pipeline's `gateway::authn` stage asks it.
//! - the ground: `codec/` (`http`: HTTP/1.1 heads, framing, chunked coding; `sse`: event
//!   splitting and fields; `proxy`: the PROXY protocol header of a balancer in front), `mcp` (JSON-RPC classification, versions, session ids), `config/`
//!   (`file`: the TOML schema with every bound; `runtime`: the validated config), `authz`
//!   (authorization rules: globs, per-subject grants, request checks, list filtering), `cluster`
//!   (scale-out: the sealed session token any node of a cluster opens, pinned ids), `limits`
//!   (per-client limits), `metrics` (per-shard counters and histograms), `error` (the one
//!   error type and its mapping to HTTP status and JSON-RPC error), `sync` (shard-local queue,
//!   event, buffer cache), `timer` (each shard's deadlines: one heap, one monoio sleep).
//!
//! A request: `runtime::accept_loop` → `gateway::serve` → `gateway::exchange` (`client`
//! reads the head; a request for another shard's session hands the connection over through
//! `admission`) → `validate` → `authn` → `route::post` → `session::lookup` → `Upstreams::send` →
//! `upstream::http::send` (pick, send, read the head) or `upstream::stdio::send` (the
//! session's child) → `respond::source` → `relay` or `stream` → back to `gateway::serve` for
//! the next request on the connection.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod authz;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod degrade;
pub mod demo;
pub mod error;
#[cfg(feature = "cli")]
pub mod forward;
pub mod gateway;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod runtime;
pub mod shard;
pub mod sync;
pub mod tape;
pub mod timer;
pub mod upstream;
