#!/usr/bin/env bash
# Open-loop latency tails at many connections, side by side in one run (tuning.md, "Open loop
# at 5000 connections"):
#   direct    loadgen -> static upstream
#   nginx     loadgen -> nginx (1 worker, upstream keepalive) -> static upstream
#   shardcat  loadgen -> shardcat serve --shards 1 (io_uring) -> static upstream
#   epoll     loadgen -> shardcat serve --shards 1 --driver legacy -> static upstream
#
# The static upstream is an nginx worker answering the echo call with static JSON (as
# compare-wrk.sh's UPSTREAM=static). The proxy under test runs on core 0; the upstream and
# loadgen on core 1. loadgen holds CONNS connections and sends RATE stateless tools/call per
# second in an open loop (latency counted from each request's scheduled send, so a stall is
# not hidden by coordinated omission).
#
# Reported per target: p50, p90, p99, p99.9 and max latency; loadgen's own send lag (p99, max:
# a late send is loadgen's stall, not the proxy's); errors; each core's busy share over the
# window; the shard's event-loop lag (shardcat: share of 10 ms probes that woke over 5 ms
# late, and the worst bucket); and the seconds of the window in which requests took over
# 10 ms (second:count:max_ms), so a tail can be placed in time.
#
# Env: CONNS (5000), RATE (10000), DURATION (8, seconds), ROUNDS (1: each round runs every
# target once, in order), TARGETS ("direct nginx shardcat epoll"), SHARDCAT_BIN (default: build
# this tree), KEEP_TMP=1 (keep loadgen's JSON reports and the logs).
set -euo pipefail

CONNS="${CONNS:-5000}"
RATE="${RATE:-10000}"
DURATION="${DURATION:-8}"
ROUNDS="${ROUNDS:-1}"
TARGETS="${TARGETS:-direct nginx shardcat epoll}"
PROXY_CPU=0
CLIENT_CPU=1
# nginx in front of CONNS clients holds CONNS client and upstream connections.
NGINX_CONNS=$((2 * CONNS + 256))

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "[tails] $*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
need_tools
[ "$(nproc)" -ge 2 ] || die "needs at least 2 cores"

if [ -z "${SHARDCAT_BIN:-}" ]; then
    log "building (cargo build --release -p shardcat -p loadgen)"
    cargo build --release -p shardcat -p loadgen >&2
fi
TMP="$(mktemp -d /tmp/tails.XXXXXX)"
PIDS=()
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Private copies: the shared target dir may be rebuilt mid-run.
cp "${SHARDCAT_BIN:-$REPO/target/release/shardcat}" "$TMP/shardcat"
cp "$REPO/target/release/loadgen" "$TMP/loadgen"
BIN="$TMP/shardcat"
# loadgen and the gateway raise their own soft limit; nginx has worker_rlimit_nofile.
ulimit -n "$(ulimit -Hn)"

stop() { stop_pid "$1"; forget "$1"; }

# run_loadgen NAME URL: one open-loop window, its JSON report in $TMP/NAME.json and each core's
# busy share over the window (from loadgen writing its timeline header at the window's start
# to its exit) in $TMP/NAME.busy.
run_loadgen() {
    local name="$1" url="$2" pid rc=0 c0a="" c1a="" c0b c1b
    taskset -c "$CLIENT_CPU" "$TMP/loadgen" --target "$url" --workload stateless --connections "$CONNS" \
        --rate "$RATE" --duration-s "$DURATION" --threads 1 --json "$TMP/$name.json" \
        --timeline-csv "$TMP/$name.csv" ${LOADGEN_ARGS:-} >"$TMP/$name.loadgen.txt" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    while running "$pid" && [ ! -e "$TMP/$name.csv" ]; do sleep 0.05; done
    c0a="$(core_jiffies "$PROXY_CPU")"
    c1a="$(core_jiffies "$CLIENT_CPU")"
    wait "$pid" || rc=$?
    c0b="$(core_jiffies "$PROXY_CPU")"
    c1b="$(core_jiffies "$CLIENT_CPU")"
    forget "$pid"
    [ "$rc" -eq 0 ] || { tail -20 "$TMP/$name.loadgen.txt" >&2; die "$name: loadgen exited with $rc"; }
    echo "$(busy_pct "$c0a" "$c0b")/$(busy_pct "$c1a" "$c1b")" >"$TMP/$name.busy"
}

# start_gateway DRIVER: shardcat on the proxy core in front of DEMO_URL; sets GW_PID, GW_URL.
start_gateway() {
    taskset -c "$PROXY_CPU" "$BIN" serve --listen 127.0.0.1:0 --upstream "$DEMO_URL" --shards 1 \
        --driver "$1" --admin 127.0.0.1:0 \
        >"$TMP/gateway-$1.out" 2>"$TMP/gateway-$1.err" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    local ready
    ready="$(wait_ready "$TMP/gateway-$1.out" "READY listen=" "$GW_PID" "shardcat ($1)")"
    GW_URL="http://$(echo "$ready" | sed -n 's/^READY listen=\([^ ]*\).*/\1/p')/mcp"
    GW_ADMIN="$(echo "$ready" | sed -n 's/.* admin=\(.*\)$/\1/p')"
}

# measure NAME ROUND: starts the upstream (and the proxy NAME names), runs the window, stops both.
measure() {
    local name="$1" tag="$1-$2" url
    start_static "$tag"
    case "$name" in
        direct) url="$DEMO_URL" ;;
        nginx)
            UPORT="${DEMO_URL#http://127.0.0.1:}"
            UPORT="${UPORT%%/*}"
            start_nginx "$tag"
            url="$TARGET_URL"
            ;;
        shardcat) start_gateway auto; url="$GW_URL" ;;
        epoll) start_gateway legacy; url="$GW_URL" ;;
        *) die "unknown target $name" ;;
    esac
    log "$name (round $2): $CONNS connections, $RATE req/s, ${DURATION} s -> $url"
    run_loadgen "$tag" "$url"
    case "$name" in
        shardcat | epoll)
            curl -s --max-time 2 "http://$GW_ADMIN/metrics" >"$TMP/$tag.metrics" || log "$name: no metrics"
            ;;
    esac
    case "$name" in
        nginx) stop "$NGINX_PID"; rm -f "$TMP/nginx-workers" ;;
        shardcat | epoll) stop "$GW_PID" ;;
    esac
    stop "$DEMO_PID"
}

log "$(nginx -v 2>&1); shardcat $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty'); load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do measure "$t" "$round"; done
done

echo
echo "loadgen --workload stateless --connections $CONNS --rate $RATE --duration-s $DURATION (open loop);"
echo "proxy on core $PROXY_CPU, static nginx upstream and loadgen on core $CLIENT_CPU; latency in ms"
python3 - "$TMP" "$ROUNDS" $TARGETS <<'EOF'
import json, sys
tmp, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import os, re
def loop_lag(path):
    # (share of probes over 5 ms late, upper bound of the worst bucket) from the shard's histogram
    if not os.path.exists(path):
        return "-"
    b = [(m.group(1), int(m.group(2))) for m in
         re.finditer(r'^shardcat_shard_loop_lag_seconds_bucket\{shard="0",le="([^"]+)"\} (\d+)$', open(path).read(), re.M)]
    if not b or b[-1][1] == 0:
        return "-"
    total = b[-1][1]
    at5 = dict(b).get("0.005", 0)
    worst = next(le for le, c in b if c == total)
    return f"{100 * (total - at5) / total:.1f}%<={worst}s"
print(f"{'target':<9} {'round':>5} {'req/s':>8} {'p50':>6} {'p90':>6} {'p99':>7} {'p99.9':>7} {'max':>7} "
      f"{'lag99':>6} {'lagmax':>7} {'errors':>6} {'c0/c1%':>7} {'loop>5ms':>14}  seconds with requests over 10 ms (s:count:max)")
bad = 0
for r in range(1, rounds + 1):
    for t in targets:
        j = json.load(open(f"{tmp}/{t}-{r}.json"))
        l = j["latency"]
        lag = j.get("send_lag_ms") or [0, 0, 0]
        slow = " ".join(f"{i}:{s['slow']}:{s['max_us'] / 1000:.0f}"
                        for i, s in enumerate(j["timeline"]) if s.get("slow", 0) > 0) or "-"
        errors = j["errors"] + j["rejected"]
        bad += errors
        print(f"{t:<9} {r:>5} {j['rps']:>8.0f} {l['p50_ms']:>6.2f} {l['p90_ms']:>6.2f} {l['p99_ms']:>7.2f} "
              f"{l['p999_ms']:>7.2f} {l['max_ms']:>7.2f} {lag[1]:>6.2f} {lag[2]:>7.2f} {errors:>6} "
              f"{open(f'{tmp}/{t}-{r}.busy').read().strip():>7} {loop_lag(f'{tmp}/{t}-{r}.metrics'):>14}  {slow}")
sys.exit(1 if bad else 0)
EOF
