//! Configuration in two layers; command-line flags override the file.
//! - `file` (`config/file.rs`): the TOML file schema as an operator writes it — `FileConfig`, one
//!   `*Section` per table with the `Default` a missing key takes, and the `DEFAULT_*` constants
//!   those defaults come from.
//! - `runtime` (`config/runtime.rs`): the validated `Config` (each stage reads only its slice)
//!   and the validation that builds it from a `FileConfig` and the command line's `Overrides`.
//!
//! `tapes` holds the `[tapes]` bounds and the validated recording config; `auth` the validated
//! `[auth]` slice; `upstream` the validated upstream types (HTTP targets, stdio programs);
//! `federation` the named servers, routes and `[federation]`; `cluster` the node's name and
//! the session keys of `[cluster]` (read from their files at load).
//!
//! Invariant: every bound the gateway enforces is a named `DEFAULT_*` constant (in `file`, or in
//! `tapes` for recording) with a key in the file schema; nothing else in the crate invents a
//! limit. Relations between limits (`pool_max_idle <= pool_max_connections`, rising degradation
//! thresholds, ...) are checked at load time, so a running gateway never holds an inconsistent
//! config.
//!
//! `file` depends only on constants (`tapes`, `codec::http`); `runtime` reads `file`. Neither
//! imports a serving module; `cluster` uses the pure token codec (`crate::cluster`). Both layers are re-exported here: every item is `config::X`.

mod auth;
mod cluster;
mod federation;
mod file;
mod runtime;
pub mod tapes;
mod upstream;

pub use auth::*;
pub use cluster::*;
pub use federation::*;
pub use file::*;
pub use runtime::*;
pub use upstream::*;
