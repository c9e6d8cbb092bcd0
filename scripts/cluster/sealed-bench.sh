#!/usr/bin/env bash
# What sealed session ids cost, side by side in one run: one node with [cluster] (sealed
# Mcp-Session-Id tokens: sealed at initialize, opened on every request) against the same node
# without it (plain ids), both in front of one demo upstream.
#   - loadgen --workload call (a session per user set up once, then tools/call: the open on
#     every request) and --workload session (initialize, initialized, K calls, DELETE: also
#     the seal on every initialize), closed loop, CONNS connections; ROUNDS rounds alternating
#     sealed and plain, WARMUP then DURATION seconds each. req/s, p50/p99 and CPU-µs per
#     request of the node (loadgen --watch-pid: /proc/PID/stat utime+stime over the window,
#     divided by the requests).
#   - Adoption-heavy: two nodes with the same key behind HAProxy, session workload, with
#     `balance roundrobin` (HAProxy balances every request on its own, so a session's
#     requests alternate between the nodes and each session is adopted by the node that did
#     not create it) against the shipped `balance hdr(mcp-session-id)` (a session stays on
#     its hash owner: adopted at most once). loadgen itself cannot spread one session over two
#     targets (each user sends to one target). CPU-µs per request: both nodes' utime+stime
#     over the whole loadgen run (setup and drain included, both short), divided by the
#     requests; adoptions from the nodes' metrics.
# Pinning: the node(s) (1 shard each) on core 0; demo, loadgen and HAProxy on core 1.
#
# Env: DURATION (8), WARMUP (2), CONNS (64), ROUNDS (3), K (5: calls per session),
# SINGLE (1: run the one-node part), ADOPT (1: run the adoption-heavy part). Needs release builds:
#   cargo build --release -p shardcat -p loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${DURATION:-8}"; WARMUP="${WARMUP:-2}"; CONNS="${CONNS:-64}"; ROUNDS="${ROUNDS:-3}"
K="${K:-5}"; SINGLE="${SINGLE:-1}"; ADOPT="${ADOPT:-1}"
BIN=target/release/shardcat; LG=target/release/loadgen
TMP="$(mktemp -d /tmp/shardcat-sealed.XXXXXX)"; PIDS=()
log() { echo "sealed-bench: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=../lib.sh
. scripts/lib.sh
# The nodes are loaded directly (n1, n3) and behind HAProxy (n1, n2): no PROXY protocol.
SHARDS=1 NODE_CPUS=0 DEMO_CPUS=1 HAPROXY_CPUS=1 PROXY=0
# shellcheck source=lib.sh
. scripts/cluster/lib.sh
trap cleanup EXIT INT TERM
for b in "$BIN" "$LG"; do [ -x "$b" ] || die "$b missing (see the header)"; done

cluster_key
cluster_demo
# n1: sealed ids; n3: plain ids (no [cluster]); n1 and n2 (same key): the adoption pair, n2
# idle until then.
cluster_node_config 1
CLUSTER=0 cluster_node_config 3
for i in 1 3; do cluster_start_node "$i"; done
declare -A URL=([sealed]="http://$(node_addr 1):$PORT/mcp" [plain]="http://$(node_addr 3):$PORT/mcp")
declare -A PID=([sealed]="${NODE_PID[1]}" [plain]="${NODE_PID[3]}")

# The token a real initialize gets from the sealed node, with one upstream (the demo).
sid="$(curl -s -D - -o /dev/null -X POST "${URL[sealed]}" -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"sealed-bench","version":"1"}}}' |
    tr -d '\r' | sed -n 's/^mcp-session-id: //Ip')"
plain_sid="$(curl -s -D - -o /dev/null -X POST "${URL[plain]}" -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"sealed-bench","version":"1"}}}' |
    tr -d '\r' | sed -n 's/^mcp-session-id: //Ip')"
echo "session id length: sealed ${#sid} chars ($sid), plain ${#plain_sid} chars"

lg() { taskset -c 1 "$LG" --connections "$CONNS" --calls-per-session "$K" "$@"; }

# $1: sealed|plain, $2: workload; appends "kind workload rps cpu p50 p99 init_p50 init_p99"
# to $TMP/results and prints it.
bench() {
    local name="$1-$2-$3"
    lg --target "${URL[$1]}" --workload "$2" --duration-s "$WARMUP" >/dev/null 2>&1 || true
    lg --target "${URL[$1]}" --workload "$2" --duration-s "$DURATION" --watch-pid "${PID[$1]}" \
        --json "$TMP/$name.json" >"$TMP/$name.log" 2>&1 ||
        die "loadgen failed on $1 $2: $(tail -5 "$TMP/$name.log")"
    python3 - "$1" "$2" "$TMP/$name.json" <<'PY' | tee -a "$TMP/results"
import json, sys
r = json.load(open(sys.argv[3]))
init = [m["latency"] for m in r["by_method"] if m["method"] == "initialize"]
i50, i99 = (init[0]["p50_ms"], init[0]["p99_ms"]) if init else (0, 0)
print(sys.argv[1], sys.argv[2], f"{r['rps']:.0f}", f"{r['watch']['cpu_us_per_req']:.2f}",
      f"{r['latency']['p50_ms']:.3f}", f"{r['latency']['p99_ms']:.3f}", f"{i50:.3f}", f"{i99:.3f}",
      r["errors"])
PY
}

for r in $(seq 1 "$ROUNDS"); do
    [ "$SINGLE" = 1 ] || break
    log "round $r of $ROUNDS"
    for w in call session; do
        if [ $((r % 2)) = 1 ]; then bench sealed "$w" "$r"; bench plain "$w" "$r"
        else bench plain "$w" "$r"; bench sealed "$w" "$r"; fi
    done
done

# Adoption-heavy: n1 and n2 behind HAProxy, same key; BALANCE=roundrobin against the hash.
adopt() { # $1: balance (roundrobin|hash), $2: round
    local name="adopt-$1-$2" before after a0 a1 ticks
    a0="$(($(node_metric 1 shardcat_cluster_sessions_adopted_total) + $(node_metric 2 shardcat_cluster_sessions_adopted_total)))"
    before="$(cpu_ticks "${NODE_PID[1]}" "${NODE_PID[2]}")"
    lg --target "http://127.0.0.1:$HPORT/mcp" --workload session --duration-s "$DURATION" \
        --json "$TMP/$name.json" >"$TMP/$name.log" 2>&1 ||
        die "loadgen failed on adopt $1: $(tail -5 "$TMP/$name.log")"
    after="$(cpu_ticks "${NODE_PID[1]}" "${NODE_PID[2]}")"
    a1="$(($(node_metric 1 shardcat_cluster_sessions_adopted_total) + $(node_metric 2 shardcat_cluster_sessions_adopted_total)))"
    ticks=$((after - before))
    # Sessions still held by the pair once loadgen has DELETEd all of its own: with
    # roundrobin the DELETE reaches one node, the other keeps its adopted copy until idle.
    sleep 1
    log "adopt $1 round $2: sessions held after the run: n1 $(node_metric 1 shardcat_sessions), n2 $(node_metric 2 shardcat_sessions); evicted so far: n1 $(node_metric 1 shardcat_sessions_evicted_total), n2 $(node_metric 2 shardcat_sessions_evicted_total)"
    python3 - "$1" "$TMP/$name.json" "$ticks" "$CLK_TCK" "$((a1 - a0))" <<'PY' | tee -a "$TMP/adopt-results"
import json, sys
r = json.load(open(sys.argv[2]))
ticks, hz, adopted = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
init = [m["latency"] for m in r["by_method"] if m["method"] == "initialize"][0]
cpu = ticks / hz * 1e6 / max(r["requests"], 1)
print(f"adopt-{sys.argv[1]}", f"{r['rps']:.0f}", f"{cpu:.2f}", f"{r['latency']['p50_ms']:.3f}",
      f"{r['latency']['p99_ms']:.3f}", f"{init['p50_ms']:.3f}", f"{init['p99_ms']:.3f}",
      adopted, r["iterations"], r["errors"])
PY
}

if [ "$ADOPT" = 1 ]; then
    cluster_haproxy
    cluster_start_node 2
    for bal in roundrobin hash; do
        HPORT="$(free_port)"
        if [ "$bal" = roundrobin ]; then b=roundrobin; else b=; fi
        FRONTEND="127.0.0.1:$HPORT" BALANCE="$b" cluster_start_haproxy 2
        cluster_wait_up 2
        lg --target "http://127.0.0.1:$HPORT/mcp" --workload session --duration-s "$WARMUP" >/dev/null 2>&1 || true
        for r in $(seq 1 "$ROUNDS"); do adopt "$bal" "$r"; done
        stop_pid "$HAPROXY_PID"; forget "$HAPROXY_PID"
    done
fi

touch "$TMP/results"
python3 - "$TMP/results" "$TMP/adopt-results" "$ROUNDS" "$CONNS" "$K" <<'PY'
import statistics as st, sys, os
rows = [l.split() for l in open(sys.argv[1])]
print(f"\nmedians of {sys.argv[3]} rounds, closed loop, {sys.argv[4]} connections, session: initialize + initialized + {sys.argv[5]} calls + DELETE")
print(f"{'':<16}{'req/s':>9}{'cpu-us/req':>12}{'p50 ms':>9}{'p99 ms':>9}{'init p50':>10}{'init p99':>10}")
med = {}
for w in ("call", "session") if rows else ():
    for kind in ("plain", "sealed"):
        rs = [r for r in rows if r[0] == kind and r[1] == w]
        m = [st.median(float(r[i]) for r in rs) for i in range(2, 8)]
        med[(kind, w)] = m
        init = f"{m[4]:>10.3f}{m[5]:>10.3f}" if w == "session" else ""
        print(f"{kind + ' ' + w:<16}{m[0]:>9.0f}{m[1]:>12.2f}{m[2]:>9.3f}{m[3]:>9.3f}{init}")
    p, s = med[("plain", w)], med[("sealed", w)]
    print(f"{'sealed/plain':<16}{s[0] / p[0]:>9.3f}{s[1] / p[1]:>12.3f}   (+{s[1] - p[1]:.2f} cpu-us/req)")
if os.path.exists(sys.argv[2]):
    rows = [l.split() for l in open(sys.argv[2])]
    print(f"\nadoption-heavy (2 nodes behind HAProxy, session workload), medians of {sys.argv[3]} rounds")
    print(f"{'':<18}{'req/s':>9}{'node cpu-us/req':>17}{'p50 ms':>9}{'p99 ms':>9}{'init p50':>10}{'adopted/session':>17}")
    for kind in ("adopt-hash", "adopt-roundrobin"):
        rs = [r for r in rows if r[0] == kind]
        m = [st.median(float(r[i]) for r in rs) for i in range(1, 7)]
        per = st.median(int(r[7]) / max(int(r[8]), 1) for r in rs)
        print(f"{kind:<18}{m[0]:>9.0f}{m[1]:>17.2f}{m[2]:>9.3f}{m[3]:>9.3f}{m[4]:>10.3f}{per:>17.2f}")
PY
echo "all rounds (kind workload req/s cpu-us/req p50 p99 init-p50 init-p99 errors):"
cat "$TMP/results"
[ -f "$TMP/adopt-results" ] && {
    echo "adoption rounds (kind req/s cpu-us/req p50 p99 init-p50 init-p99 adopted iterations errors):"
    cat "$TMP/adopt-results"
}
exit 0
