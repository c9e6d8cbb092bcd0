//! shardcat: a thread-per-core gateway for Model Context Protocol (MCP) traffic on io_uring.
//!
//! Crate map, in the order a request meets the modules:
//! - `runtime`   — one pinned thread and monoio runtime per core; accept loop, drain, mailbox,
//!   timers; builds each shard's context and starts the pipeline on every connection.
//! - `shard`     — a shard's context (`Shard`: config slice, sessions, pools, stats, buffers)
//!   and the state all shards share (`Shared`); it imports no pipeline code.
//! - `admission` — global bounds (connections, sessions) and the cross-core mailboxes.
//! - `codec`     — the stateless wire codecs: `codec::http` (HTTP/1.1 heads, body framing,
//!   chunked coding) and `codec::sse` (SSE event splitting and fields).
//! - `proxy`     — the request pipeline, wired in `proxy::exchange`.
//! - `mcp`       — JSON-RPC classification, protocol versions, session ids.
//! - `degrade`   — degradation levels from measured occupancy (monitor thread, read by shards).
//! - `limits`    — per-client limits: sessions per client, request rates per client and session.
//! - `session`   — the shard's session table (gateway id → upstream session).
//! - `upstream`  — the shard's bounded keep-alive pool of upstream connections, and balancing;
//!   `upstream::http` is the HTTP upstream client (encode, pick, send, read the head).
//! - `health`    — per-shard circuit breakers and active probes of HTTP upstreams.
//! - `stdio`     — stdio upstreams: one child process per session, correlation by id, reaping.
//! - `bridge`    — answers HTTP requests from a stdio child (JSON or SSE, GET stream).
//! - `era`       — 2026-07-28 requests to handshake-era HTTP upstreams: era probe, the
//!   gateway's shared session, translation.
//! - `forward`   — `shardcat forward`: stdio to stdio, and stdio to Streamable HTTP.
//! - `relay`     — upstream body → client: coalesced, re-chunked, or SSE event by event.
//! - `stream`    — SSE streams: gateway event ids, replay buffers, resumption, upstream reconnect.
//! - `sync`      — shard-local bounded queue and event.
//! - `error`     — the one error type and its mapping to HTTP status and JSON-RPC error.
//! - `record`    — the shard side of recording: frames offered to the persistence core (`tape`).
//! - `metrics`   — per-shard counters and latency histograms; `admin` serves them.
//! - `config`    — the TOML schema with every bound, and the validated runtime config.
//! - `demo`      — the built-in demo MCP server (default upstream and benchmark upstream).
//! - `tape`      — recording on the persistence core (`Recorder` per shard, one writer thread),
//!   the tape tools (list, show, export, verify) and replay.
//!
//! A request: `runtime::accept_loop` → `proxy::serve` → `proxy::exchange` (head, affinity hop
//! through `admission`, validation, `mcp::classify`, `session`) → `upstream::http` (pick, send,
//! read the head) → `relay::relay` (or, for a stdio upstream, `bridge` → `stdio::Child`) →
//! back to `proxy::serve` for the next request on the connection.

pub mod admin;
pub mod admission;
pub mod bridge;
pub mod codec;
pub mod config;
pub mod degrade;
pub mod demo;
pub mod era;
pub mod error;
pub mod forward;
pub mod health;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod proxy;
pub mod record;
pub mod relay;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod stdio;
pub mod stream;
pub mod sync;
pub mod tape;
pub mod upstream;
