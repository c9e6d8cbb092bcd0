#!/usr/bin/env bash
# Side-by-side wrk comparison of stateless MCP tools/call traffic to the built-in demo upstream:
#   direct    wrk -> demo upstream
#   nginx     wrk -> nginx (1 worker, upstream keepalive) -> demo upstream
#   shardcat  wrk -> shardcat serve --shards 1 -> demo upstream
#
# Pinning (meant for a 2-core machine): the proxy under test on core 0; the demo upstream and wrk
# on core 1. In the direct run, the demo upstream and wrk therefore share core 1.
#
# For each target: a warmup run, then `wrk -t1 -c$CONNS -d$DURATION --latency`. Reported per row:
# req/s, p50, p99 (wrk's), errors (non-2xx/3xx responses + socket errors), CPU-µs per request of the
# proxy process (utime+stime from /proc/PID/stat across the measured run / requests completed)
# and the proxy's RSS after the run (nginx: master + worker).
#
# Env: DURATION (15s), WARMUP (5s), CONNS (256), UPSTREAM (demo; static: an nginx worker serving
# the echo answer as static JSON, cheap enough that the proxy's core is the bottleneck),
# PERF=FILE (`perf record -g` of the measured shardcat run into FILE, of nginx's into
# FILE.nginx), SHARDCAT_BIN (a shardcat binary to compare instead of building this tree's),
# KEEP_TMP=1 keeps the temp dir (configs, logs, wrk
# output). Exits non-zero if any request failed.
set -euo pipefail

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-5s}"
CONNS="${CONNS:-256}"
UPSTREAM="${UPSTREAM:-demo}"
case "$UPSTREAM" in demo | static) ;; *) echo "UPSTREAM is demo or static" >&2; exit 2 ;; esac
PROXY_CPU=0
CLIENT_CPU=1

cd "$(dirname "$0")/.."
REPO="$(pwd)"
BIN="$REPO/target/release/shardcat"

log() { echo "[compare-wrk] $*" >&2; }
die() { log "error: $*"; exit 1; }

# Process handling, cleanup and /proc readings shared by the benchmark scripts (TMP and PIDS
# are set before any of them runs).
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

# --- tools -----------------------------------------------------------------------------------
need_tools wrk
if [ "$(nproc)" -lt 2 ]; then
    die "needs at least 2 cores (core $PROXY_CPU for the proxy, core $CLIENT_CPU for wrk + upstream)"
fi

if [ -n "${SHARDCAT_BIN:-}" ]; then
    BIN="$SHARDCAT_BIN"
else
    log "building (cargo build --release)"
    cargo build --release >&2
fi

# --- process bookkeeping and cleanup ---------------------------------------------------------
TMP="$(mktemp -d /tmp/compare-wrk.XXXXXX)"
PIDS=()

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Run a private copy: the shared target dir may be rebuilt by someone else mid-run.
cp "$BIN" "$TMP/shardcat"
BIN="$TMP/shardcat"

# --- /proc readings --------------------------------------------------------------------------

# --- workload --------------------------------------------------------------------------------
BODY='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
LUA="$TMP/tools-call.lua"
cat >"$LUA" <<EOF
-- Stateless MCP 2026-07-28 tools/call (echo). wrk sets Host to the URL's host:port; no Origin.
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"
EOF

# One request with curl; the answer must be the echo result, not a JSON-RPC or HTTP error.
preflight() {
    local name="$1" url="$2" out
    out="$(curl -sS --max-time 5 -o - -w '\n%{http_code}' "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -H 'MCP-Protocol-Version: 2026-07-28' \
        -H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo' \
        -d "$BODY")" || die "$name: preflight request failed"
    case "$out" in
        *'"text":"hello"'*'"isError":false'*$'\n'200) ;;
        *) die "$name: unexpected preflight answer: $out" ;;
    esac
}

# Runs wrk in the background (so a signal interrupts the wait) pinned to the client core.
run_wrk() {
    local out="$1" dur="$2" url="$3" pid rc=0
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"$dur" --latency -s "$LUA" "$url" >"$out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    [ "$rc" -eq 0 ] || { cat "$out" >&2; die "wrk exited with $rc"; }
}

# wrk latency like "812.00us", "1.23ms", "2.01s" -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000;
        else if (v ~ /s$/) n *= 1000;
        printf "%.3f", n }'
}

# Results, keyed by target name.
declare -A R_RPS R_P50 R_P99 R_ERR R_CPU R_RSS R_REQS R_NON2XX R_SOCK R_PCT R_BUSY

# measure NAME URL PROXY_PIDS... : warmup, measured run, parse, /proc readings.
measure() {
    local name="$1" url="$2"
    shift 2
    local pids=("$@") out="$TMP/wrk-$name.txt" t0 t1 reqs rps p50 p99 non2xx sock cpu_us
    local c0a c1a c0b c1b w0 w1

    preflight "$name" "$url"
    log "$name: warmup $WARMUP"
    run_wrk "$TMP/wrk-$name-warmup.txt" "$WARMUP" "$url"
    t0=0
    [ "${#pids[@]}" -gt 0 ] && t0="$(cpu_ticks "${pids[@]}")"
    log "$name: measuring $DURATION with $CONNS connections"
    local perf_pid=""
    if [ -n "${PERF:-}" ] && [ "${#pids[@]}" -gt 0 ]; then
        local perf_out="$PERF"
        [ "$name" = shardcat ] || perf_out="$PERF.$name"
        perf record -F 2000 -g -p "${pids[-1]}" -o "$perf_out" -- sleep "${DURATION%s}" \
            >"$TMP/perf-$name.log" 2>&1 &
        perf_pid=$!
    fi
    c0a="$(core_jiffies "$PROXY_CPU")"
    c1a="$(core_jiffies "$CLIENT_CPU")"
    w0="$(date +%s%N)"
    run_wrk "$out" "$DURATION" "$url"
    w1="$(date +%s%N)"
    c0b="$(core_jiffies "$PROXY_CPU")"
    c1b="$(core_jiffies "$CLIENT_CPU")"
    t1=0
    [ "${#pids[@]}" -gt 0 ] && t1="$(cpu_ticks "${pids[@]}")"
    [ -z "$perf_pid" ] || wait "$perf_pid" || log "$name: perf record failed ($TMP/perf-$name.log)"
    sed 's/^/    /' "$out" >&2

    reqs="$(awk '/requests in/ {print $1; exit}' "$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2; exit}' "$out")"
    p50="$(awk '$1 == "50%" {print $2; exit}' "$out")"
    p99="$(awk '$1 == "99%" {print $2; exit}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF; exit}' "$out")"
    sock="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10; exit}' "$out")"
    [ -n "$reqs" ] && [ -n "$rps" ] && [ -n "$p50" ] && [ -n "$p99" ] || die "$name: cannot parse wrk output ($out)"

    R_REQS[$name]="$reqs"
    R_RPS[$name]="$rps"
    R_P50[$name]="$(to_ms "$p50")"
    R_P99[$name]="$(to_ms "$p99")"
    R_NON2XX[$name]="${non2xx:-0}"
    R_SOCK[$name]="${sock:-0}"
    R_ERR[$name]=$((${non2xx:-0} + ${sock:-0}))
    R_BUSY[$name]="$(busy_pct "$c0a" "$c0b")/$(busy_pct "$c1a" "$c1b")"
    if [ "${#pids[@]}" -gt 0 ]; then
        cpu_us="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" \
            'BEGIN { if (n > 0) printf "%.2f", d * 1e6 / hz / n; else print "n/a" }')"
        R_CPU[$name]="$cpu_us"
        R_PCT[$name]="$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((w1 - w0)) \
            'BEGIN { printf "%.0f", 100 * d / hz / (ns / 1e9) }')"
        R_RSS[$name]="$(awk -v k="$(rss_kb "${pids[@]}")" 'BEGIN { printf "%.1fMB", k / 1024 }')"
    else
        R_CPU[$name]="-"
        R_PCT[$name]="-"
        R_RSS[$name]="-"
    fi
}

# Starts the upstream UPSTREAM names (demo, or static) on the client core; sets DEMO_PID and
# DEMO_URL.
start_demo() {
    if [ "$UPSTREAM" = static ]; then
        start_static "$1"
        return
    fi
    local tag="$1"
    taskset -c "$CLIENT_CPU" "$BIN" demo-upstream --listen 127.0.0.1:0 \
        >"$TMP/demo-$tag.out" 2>"$TMP/demo-$tag.err" &
    DEMO_PID=$!
    PIDS+=("$DEMO_PID")
    DEMO_URL="$(wait_ready "$TMP/demo-$tag.out" "READY demo=" "$DEMO_PID" "demo upstream ($tag)")"
    DEMO_URL="${DEMO_URL#READY demo=}"
}

stop() { stop_pid "$1"; forget "$1"; }

NGINX_VERSION="$(nginx -v 2>&1)"
log "$NGINX_VERSION; wrk: $(wrk -v 2>&1 | head -1); shardcat $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '+dirty')"
log "temp dir $TMP; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- (a) direct ------------------------------------------------------------------------------
start_demo direct
log "direct: demo at $DEMO_URL (demo and wrk share core $CLIENT_CPU)"
measure direct "$DEMO_URL"
stop "$DEMO_PID"

# --- (b) nginx -------------------------------------------------------------------------------
start_demo nginx
UPORT="${DEMO_URL#http://127.0.0.1:}"
UPORT="${UPORT%%/*}"
start_nginx wrk
measure nginx "$TARGET_URL" "$NGINX_PID" "$NGINX_WORKER"
stop "$NGINX_PID"
rm -f "$TMP/nginx-workers"
stop "$DEMO_PID"

# --- (c) shardcat ----------------------------------------------------------------------------
start_demo shardcat
taskset -c "$PROXY_CPU" "$BIN" serve --listen 127.0.0.1:0 --upstream "$DEMO_URL" --shards 1 \
    --admin 127.0.0.1:0 >"$TMP/gateway.out" 2>"$TMP/gateway.err" &
GW_PID=$!
PIDS+=("$GW_PID")
GW_READY="$(wait_ready "$TMP/gateway.out" "READY listen=" "$GW_PID" "shardcat")"
GW_LISTEN="$(echo "$GW_READY" | sed -n 's/^READY listen=\([^ ]*\) admin=.*/\1/p')"
GW_ADMIN="$(echo "$GW_READY" | sed -n 's/.* admin=\(.*\)$/\1/p')"
log "shardcat: pid $GW_PID on $GW_LISTEN (admin $GW_ADMIN) -> $DEMO_URL"
measure shardcat "http://$GW_LISTEN/mcp" "$GW_PID"
curl -s --max-time 2 "http://$GW_ADMIN/metrics" >"$TMP/gateway-metrics.txt" 2>/dev/null || true
if grep -qE '^\[[^]]* (WARN|ERROR) ' "$TMP/gateway.err"; then
    log "shardcat logged warnings/errors:"
    grep -E '^\[[^]]* (WARN|ERROR) ' "$TMP/gateway.err" | tail -20 >&2
fi
stop "$GW_PID"
stop "$DEMO_PID"

# --- report ----------------------------------------------------------------------------------
echo
echo "$NGINX_VERSION; $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); $(nproc) cores; load now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t1 -c$CONNS -d$DURATION --latency (after ${WARMUP} warmup); proxy on core $PROXY_CPU, demo upstream + wrk on core $CLIENT_CPU"
echo "(direct: demo upstream and wrk share core $CLIENT_CPU. CPU-us/req, RSS and proxy% are the proxy's;"
echo " proxy% = its CPU time / wall time; c$PROXY_CPU/c$CLIENT_CPU% = busy share of each core from /proc/stat, all processes)"
printf '%-9s %10s %8s %8s %7s %11s %8s %7s %9s\n' target req/s p50_ms p99_ms errors CPU-us/req RSS proxy% "c$PROXY_CPU/c$CLIENT_CPU%"
for t in direct nginx shardcat; do
    printf '%-9s %10s %8s %8s %7s %11s %8s %7s %9s\n' "$t" "${R_RPS[$t]}" "${R_P50[$t]}" "${R_P99[$t]}" \
        "${R_ERR[$t]}" "${R_CPU[$t]}" "${R_RSS[$t]}" "${R_PCT[$t]}" "${R_BUSY[$t]}"
done
awk -v s="${R_RPS[shardcat]}" -v n="${R_RPS[nginx]}" -v d="${R_RPS[direct]}" 'BEGIN {
    printf "req/s ratio shardcat/nginx:  %.3f\n", s / n
    printf "req/s ratio shardcat/direct: %.3f\n", s / d }'

FAILED=0
for t in direct nginx shardcat; do
    if [ "${R_ERR[$t]}" -gt 0 ]; then
        echo "FAIL $t: ${R_NON2XX[$t]} non-2xx/3xx responses, ${R_SOCK[$t]} socket errors of ${R_REQS[$t]} requests" >&2
        FAILED=1
    fi
done
if [ "$FAILED" -ne 0 ]; then
    KEEP_TMP=1
    exit 1
fi
