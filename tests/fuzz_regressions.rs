//! Every input the fuzz targets (`fuzz/`) ever failed on, run again through the same checks.
//! The inputs live in `tests/fixtures/fuzz/<target>/`, one file each, as libFuzzer wrote them;
//! the checks are the targets' own (`fuzz/checks/<target>.rs`), so a fixed bug stays fixed
//! under `cargo test` without cargo-fuzz.

// Each check is also compiled alone as its fuzz target, so each brings its own `common` and
// `heads` helpers; here they are loaded once per check.
#![allow(clippy::duplicate_mod)]

use std::path::Path;

#[path = "../fuzz/checks/auth.rs"]
mod auth;
#[path = "../fuzz/checks/authz_filter.rs"]
mod authz_filter;
#[path = "../fuzz/checks/authz_glob.rs"]
mod authz_glob;
#[path = "../fuzz/checks/body.rs"]
mod body;
#[path = "../fuzz/checks/chunked.rs"]
mod chunked;
#[path = "../fuzz/checks/cluster_seal.rs"]
mod cluster_seal;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/federation.rs"]
mod federation;
#[path = "../fuzz/checks/jsonrpc.rs"]
mod jsonrpc;
#[path = "../fuzz/checks/last_event_id.rs"]
mod last_event_id;
#[path = "../fuzz/checks/proxy_header.rs"]
mod proxy_header;
#[path = "../fuzz/checks/request_head.rs"]
mod request_head;
#[path = "../fuzz/checks/response_head.rs"]
mod response_head;
#[path = "../fuzz/checks/session_id.rs"]
mod session_id;
#[path = "../fuzz/checks/sse.rs"]
mod sse;
#[path = "../fuzz/checks/stdio_lines.rs"]
mod stdio_lines;
#[path = "../fuzz/checks/tape_segment.rs"]
mod tape_segment;

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name), $name::run);
            }
        )*
    };
}

replays!(
    request_head,
    response_head,
    chunked,
    body,
    sse,
    jsonrpc,
    stdio_lines,
    session_id,
    last_event_id,
    tape_segment,
    config,
    authz_glob,
    authz_filter,
    auth,
    federation,
    cluster_seal,
    proxy_header,
);

/// Runs `check` on every input saved for `target`; each failure names its file.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let input = std::fs::read(&path).expect("fixture");
        let run = std::panic::catch_unwind(|| check(&input));
        assert!(run.is_ok(), "{target}: {} fails again", path.display());
    }
}
