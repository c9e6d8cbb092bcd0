#!/usr/bin/env bash
# CPU-µs per request of shardcat with auth off, with a cached token, and with a token verified
# on every request, side by side in one run (loadgen, closed loop, `call` workload: tools/call
# echo in a session set up once per user).
#   off      auth off (the tokens are sent anyway: same bytes on the wire)
#   cached   mode = "oauth": each user's token is verified once, then found in the cache
#   fresh    the same, with token_cache_entries = 1: the users' tokens evict each other, so
#            every request is an RS256 verification (a fresh token per request)
# Each user (connection) has its own token (examples/auth_tokens.rs mints them and the JWKS).
# Pinning: gateway (1 shard) on core 0; demo upstream and loadgen on core 1. ROUNDS rounds of
# off, cached, fresh, each a fresh gateway, WARMUP then DURATION seconds.
#
# Env: DURATION (10), WARMUP (3), CONNS (64), ROUNDS (2). Needs release builds:
#   cargo build --release --bin shardcat -p loadgen --example auth_tokens
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-10}"; WARMUP="${WARMUP:-3}"; CONNS="${CONNS:-64}"; ROUNDS="${ROUNDS:-2}"
BIN=target/release/shardcat; LG=target/release/loadgen; MINT="${MINT:-target/release/examples/auth_tokens}"
TMP="$(mktemp -d)"; PIDS=()
log() { echo "auth-bench: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib.sh
. scripts/lib.sh
trap cleanup EXIT INT TERM
for b in "$BIN" "$LG" "$MINT"; do [ -x "$b" ] || die "$b missing (see the header)"; done

"$MINT" "$TMP" "$CONNS"
taskset -c 1 "$BIN" demo-upstream --listen 127.0.0.1:0 >"$TMP/demo.out" 2>"$TMP/demo.err" &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q READY "$TMP/demo.out" && break; sleep 0.05; done
DEMO="$(sed -n 's/^READY demo=//p' "$TMP/demo.out")"
[ -n "$DEMO" ] || die "demo upstream did not start"

config() { # $1: off|cached|fresh
    printf '[server]\nadmin = "off"\n[[upstream]]\nurl = "%s"\n' "$DEMO"
    [ "$1" = off ] && return
    printf '[auth]\nmode = "oauth"\nissuer = "https://idp.test"\naudience = "https://gw.test/mcp"\n'
    printf 'resource = "https://gw.test/mcp"\njwks_file = "%s/jwks.json"\nrequired_scopes = ["mcp"]\n' "$TMP"
    [ "$1" = fresh ] && printf 'token_cache_entries = 1\n'
    return 0
}

run() { # $1: variant; prints "variant req/s cpu-us/req"
    config "$1" >"$TMP/$1.toml"
    taskset -c 0 "$BIN" serve --shards 1 --listen 127.0.0.1:0 --config "$TMP/$1.toml" \
        >"$TMP/gw.out" 2>"$TMP/gw-$1.err" &
    local gw=$!; PIDS+=($gw)
    for _ in $(seq 1 100); do grep -q READY "$TMP/gw.out" && break; sleep 0.05; done
    local listen; listen="$(sed -n 's/^READY listen=\([^ ]*\).*/\1/p' "$TMP/gw.out")"
    [ -n "$listen" ] || die "gateway ($1) did not start: $(tail -3 "$TMP/gw-$1.err")"
    local lg=(taskset -c 1 "$LG" --target "http://$listen/mcp" --workload call
        --connections "$CONNS" --header-file "$TMP/tokens.txt")
    "${lg[@]}" --duration-s "$WARMUP" >/dev/null 2>&1 || true
    "${lg[@]}" --duration-s "$DURATION" --watch-pid "$gw" --json "$TMP/$1.json" >"$TMP/$1.log" 2>&1 \
        || die "loadgen failed for $1: $(tail -5 "$TMP/$1.log")"
    python3 - "$1" "$TMP/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
w = r["windows"][-1] if "windows" in r else r
rps = w.get("rps") or w.get("req_per_s")
cpu = w.get("cpu_us_per_req") or (r.get("watch") or {}).get("cpu_us_per_req") or 0.0
errs = w.get("errors", 0)
print(f"{sys.argv[1]:<7} {rps:>10.0f} req/s {cpu:>7.2f} cpu-us/req errors {errs}")
PY
    stop_pid "$gw"
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r"
    for v in off cached fresh; do run "$v"; done
done
