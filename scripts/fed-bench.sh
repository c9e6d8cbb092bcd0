#!/usr/bin/env bash
# What a federated route costs, side by side in one run, on one gateway: tools/call through a
# route of three servers (/mcp) against a route of one (/one), and the time of an initialize
# over three servers against one.
#   - Three built-in demo servers (a, b, c: each offers `echo`); `a` has prefix = "never", so a
#     bare `echo` on /mcp goes to `a`, as it does on /one. Same upstream, same tool, same bytes.
#   - loadgen --workload call (tools/call echo in a session set up once per user) and
#     --workload stateless (2026-07-28 tools/call echo, no session: each request reaches the
#     server with no session of its own), closed loop, CONNS connections; ROUNDS rounds of
#     /mcp then /one for each, WARMUP then DURATION seconds each.
#   - initialize: INITS sequential initialize + DELETE on one connection per route, timed by
#     the client (python3), median and p90.
# Pinning: gateway (1 shard) on core 0; demo servers and loadgen on core 1.
#
# Env: DURATION (8), WARMUP (2), CONNS (64), ROUNDS (2), INITS (200). Needs release builds:
#   cargo build --release -p shardcat -p loadgen
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8}"; WARMUP="${WARMUP:-2}"; CONNS="${CONNS:-64}"; ROUNDS="${ROUNDS:-2}"
INITS="${INITS:-200}"
BIN=target/release/shardcat; LG=target/release/loadgen
TMP="$(mktemp -d)"; PIDS=()
log() { echo "fed-bench: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=lib.sh
. scripts/lib.sh
trap cleanup EXIT INT TERM
for b in "$BIN" "$LG"; do [ -x "$b" ] || die "$b missing (see the header)"; done

demo() { # $1: name; prints the demo's URL
    taskset -c 1 "$BIN" demo-upstream --listen 127.0.0.1:0 >"$TMP/$1.out" 2>"$TMP/$1.err" &
    PIDS+=($!)
    for _ in $(seq 1 100); do grep -q READY "$TMP/$1.out" && break; sleep 0.05; done
    local url; url="$(sed -n 's/^READY demo=//p' "$TMP/$1.out")"
    [ -n "$url" ] || die "demo $1 did not start"
    echo "$url"
}
A="$(demo a)"; B="$(demo b)"; C="$(demo c)"
cat >"$TMP/gw.toml" <<EOF
[gateway]
admin = "off"
[[server]]
name = "a"
url = "$A"
prefix = "never"
[[server]]
name = "b"
url = "$B"
[[server]]
name = "c"
url = "$C"
[[route]]
path = "/mcp"
servers = ["a", "b", "c"]
[[route]]
path = "/one"
servers = ["a"]
EOF
taskset -c 0 "$BIN" serve --shards 1 --listen 127.0.0.1:0 --config "$TMP/gw.toml" \
    >"$TMP/gw.out" 2>"$TMP/gw.err" &
GW=$!; PIDS+=($GW)
for _ in $(seq 1 100); do grep -q READY "$TMP/gw.out" && break; sleep 0.05; done
LISTEN="$(sed -n 's/^READY listen=\([^ ]*\).*/\1/p' "$TMP/gw.out")"
[ -n "$LISTEN" ] || die "gateway did not start: $(tail -3 "$TMP/gw.err")"

calls() { # $1: route path, $2: loadgen workload; prints "path workload req/s cpu-us/req p50 p99"
    local name; name="$(echo "$1" | tr -d /)-$2"
    local lg=(taskset -c 1 "$LG" --target "http://$LISTEN$1" --workload "$2" --connections "$CONNS")
    "${lg[@]}" --duration-s "$WARMUP" >/dev/null 2>&1 || true
    "${lg[@]}" --duration-s "$DURATION" --watch-pid "$GW" --json "$TMP/$name.json" \
        >"$TMP/$name.log" 2>&1 || die "loadgen failed on $1: $(tail -5 "$TMP/$name.log")"
    python3 - "$1 $2" "$TMP/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
w = r["windows"][-1] if "windows" in r else r
rps = w.get("rps") or w.get("req_per_s")
cpu = w.get("cpu_us_per_req") or (r.get("watch") or {}).get("cpu_us_per_req") or 0.0
lat = r.get("latency") or {}
print(f"{sys.argv[1]:<15} {rps:>9.0f} req/s {cpu:>7.2f} cpu-us/req "
      f"p50 {lat.get('p50_ms', 0):.2f} ms p99 {lat.get('p99_ms', 0):.2f} ms errors {r.get('errors', 0)}")
PY
}

inits() { # $1: route path
    python3 - "$LISTEN" "$1" "$INITS" <<'PY'
import http.client, json, sys, time
host, port = sys.argv[1].split(":")
path, n = sys.argv[2], int(sys.argv[3])
init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "fed-bench", "version": "1"}}})
c = http.client.HTTPConnection(host, int(port))
hdr = {"content-type": "application/json", "accept": "application/json, text/event-stream",
       "mcp-protocol-version": "2025-11-25"}
took = []
for _ in range(n):
    t = time.perf_counter()
    c.request("POST", path, init, hdr)
    r = c.getresponse(); body = r.read()
    took.append((time.perf_counter() - t) * 1000)
    sid = r.getheader("mcp-session-id")
    if r.status != 200 or not sid or b'"result"' not in body:
        sys.exit(f"initialize on {path}: {r.status} {body[:200]!r}")
    c.request("DELETE", path, headers={**hdr, "mcp-session-id": sid}); c.getresponse().read()
took.sort()
print(f"{path:<5} initialize median {took[len(took)//2]:.2f} ms p90 {took[len(took)*9//10]:.2f} ms ({n} sequential)")
PY
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r"
    for w in call stateless; do
        calls /mcp "$w"
        calls /one "$w"
    done
done
inits /mcp
inits /one
