#!/usr/bin/env bash
# How fast can the load generators go? loadgen against wrk, both against a target that is faster
# than either: nginx answering a static JSON body itself (no upstream), so the ceiling measured is
# the generator's, not the target's.
#
#   target     nginx, worker_processes 1 pinned to core 0,
#              location /mcp { return 200 '{"jsonrpc":"2.0","id":1,"result":{}}'; }
#   wrk        wrk -t1 -c$CONNS -d$DURATION --latency, POSTing the same request loadgen sends
#              (2026-07-28 stateless tools/call echo, same headers and body)
#   loadgen    loadgen --workload stateless --connections $CONNS --threads 1 (closed loop)
# Both generators run on core 1 (taskset), one thread each, keep-alive connections.
#
# Per row: req/s and p99 (the generator's own figures), the generator's CPU-us per request
# (utime+stime of the generator process, from wait4's rusage when it exits: the same counters
# /proc/PID/stat shows, at microsecond resolution and covering its whole life, divided by the
# requests it reports), nginx's CPU-us per request (/proc/PID/stat of the worker around the run)
# and the busy share of core 0 (nginx) and core 1 (generator) from /proc/stat. If core 1 is at
# ~100% while core 0 is not, the generator is the bottleneck and req/s is its ceiling. other%:
# busy time of both cores outside nginx and the generator, in % of one core (other tenants of a
# shared machine; a warning is logged above OTHER_WARN, default 10).
# loadgen's requests are those of its measured window; its process CPU also covers its
# connection setup and stop (a slight overstatement of its cost per request).
#
# Env: DURATION (10, seconds), WARMUP (2, seconds, one unreported run of each generator per
# round), CONNS (128), ROUNDS (2: wrk, loadgen, wrk, loadgen, ...), KEEP_TMP=1 keeps the temp dir.
# Exits non-zero if any request failed.
set -euo pipefail

secs() { local v="${1%s}"; [[ "$v" =~ ^[0-9]+$ ]] || { echo "bad duration (whole seconds): $1" >&2; exit 2; }; echo "$v"; }
DURATION="$(secs "${DURATION:-10}")"
WARMUP="$(secs "${WARMUP:-2}")"
CONNS="${CONNS:-128}"
ROUNDS="${ROUNDS:-2}"
OTHER_WARN="${OTHER_WARN:-10}"
TARGET_CPU=0
GEN_CPU=1

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "[ceiling] $*" >&2; }
die() { log "error: $*"; exit 1; }

# Process handling, cleanup and /proc readings shared by the benchmark scripts (TMP and PIDS
# are set before any of them runs).
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

# --- tools -----------------------------------------------------------------------------------
need_tools wrk
[ "$(nproc)" -ge 2 ] || die "needs at least 2 cores (core $TARGET_CPU for nginx, core $GEN_CPU for the generator)"

log "building (cargo build --release -p loadgen)"
cargo build --release -p loadgen >&2

# --- process bookkeeping and cleanup ---------------------------------------------------------
TMP="$(mktemp -d /tmp/generator-ceiling.XXXXXX)"
PIDS=()

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

cp "$REPO/target/release/loadgen" "$TMP/loadgen"
LOADGEN="$TMP/loadgen"

# Writes $TMP/rusage.py and sets RUSAGE (see lib.sh); other_pct comes from lib.sh too.
write_rusage_helper

# --- the target: nginx answering by itself ---------------------------------------------------
NPORT="$(free_port)"
NGX="$TMP/nginx"
write_nginx_conf "$NGX" "$TARGET_CPU" <<EOF
    server {
        listen 127.0.0.1:$NPORT;
        location /mcp {
            default_type application/json;
            return 200 '{"jsonrpc":"2.0","id":1,"result":{}}';
        }
    }
EOF
launch_nginx "$NGX" "$TARGET_CPU"
URL="http://127.0.0.1:$NPORT/mcp"
NGINX_WORKER=""
for _ in $(seq 1 100); do
    alive "$NGINX_PID" || { cat "$NGX/logs/stderr" "$NGX/logs/error.log" >&2 2>/dev/null; die "nginx exited"; }
    NGINX_WORKER="$(pgrep -P "$NGINX_PID" | head -1 || true)"
    if [ -n "$NGINX_WORKER" ] && curl -sf -o /dev/null --max-time 1 -X POST -d '{}' "$URL"; then break; fi
    sleep 0.1
done
[ -n "$NGINX_WORKER" ] || die "nginx worker did not start"
echo "$NGINX_WORKER" >"$TMP/nginx-workers"
log "nginx: master $NGINX_PID, worker $NGINX_WORKER (affinity $(taskset -cp "$NGINX_WORKER" | awk '{print $NF}')) on :$NPORT"
answer="$(curl -sS --max-time 2 -X POST -H 'Content-Type: application/json' -d '{}' "$URL")"
[ "$answer" = '{"jsonrpc":"2.0","id":1,"result":{}}' ] || die "unexpected answer from nginx: $answer"

# --- the generators --------------------------------------------------------------------------
# The request loadgen's stateless workload sends (loadgen/src/proto.rs), as a wrk script. wrk
# adds Host and Content-Length itself.
LUA="$TMP/stateless.lua"
cat >"$LUA" <<'EOF'
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":"r000000000001","method":"tools/call","params":{"name":"echo","arguments":{"text":"xxxxxxxxxxxxxxxx"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
wrk.headers["accept"] = "application/json, text/event-stream"
wrk.headers["mcp-protocol-version"] = "2026-07-28"
wrk.headers["mcp-method"] = "tools/call"
wrk.headers["mcp-name"] = "echo"
wrk.headers["content-type"] = "application/json"
EOF

# wrk latency like "812.00us", "1.23ms", "2.01s" -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000;
        else if (v ~ /s$/) n *= 1000;
        printf "%.3f", n }'
}

# gen_cmd GEN SECONDS JSON: sets GEN_ARGV to the generator's command line.
gen_cmd() {
    case "$1" in
        wrk) GEN_ARGV=(wrk -t1 -c"$CONNS" -d"$2"s --latency -s "$LUA" "$URL") ;;
        loadgen) GEN_ARGV=("$LOADGEN" --target "$URL" --workload stateless --connections "$CONNS"
            --threads 1 --pin "$GEN_CPU" --duration-s "$2" --json "$3") ;;
    esac
}

# run_gen GEN SECONDS OUTPREFIX: pinned to the generator core, in the background, under the
# rusage wrapper. Sets GEN_RC.
run_gen() {
    local gen="$1" dur="$2" out="$3" pid
    GEN_RC=0
    gen_cmd "$gen" "$dur" "$out.json"
    taskset -c "$GEN_CPU" python3 "$RUSAGE" "$out.rusage.json" "${GEN_ARGV[@]}" >"$out.txt" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || GEN_RC=$?
    forget "$pid"
    # loadgen: 1 means it ran but saw errors (reported below); anything else non-zero: no run.
    if [ "$GEN_RC" -ne 0 ] && ! { [ "$gen" = loadgen ] && [ "$GEN_RC" -eq 1 ]; }; then
        cat "$out.txt" >&2
        die "$gen exited with $GEN_RC"
    fi
}

ROWS=()
FAILED=0
measure() {
    local gen="$1" round="$2" out="$TMP/$1-$2" n0 n1 m0 m1 c0a c0b c1a c1b reqs rps p99 errs gcpu other
    log "round $round, $gen: warmup ${WARMUP}s"
    run_gen "$gen" "$WARMUP" "$out-warmup"
    log "round $round, $gen: measuring ${DURATION}s with $CONNS connections"
    gen_cmd "$gen" "$DURATION" "$out.json"
    log "  ${GEN_ARGV[*]}"
    n0="$(cpu_ticks "$NGINX_WORKER")"
    m0="$(cpu_ticks "$NGINX_PID")"
    c0a="$(core_jiffies "$TARGET_CPU")"
    c1a="$(core_jiffies "$GEN_CPU")"
    run_gen "$gen" "$DURATION" "$out"
    c0b="$(core_jiffies "$TARGET_CPU")"
    c1b="$(core_jiffies "$GEN_CPU")"
    n1="$(cpu_ticks "$NGINX_WORKER")"
    m1="$(cpu_ticks "$NGINX_PID")"
    sed 's/^/    /' "$out.txt" >&2
    case "$gen" in
        wrk)
            reqs="$(awk '/requests in/ {print $1; exit}' "$out.txt")"
            rps="$(awk '/^Requests\/sec:/ {printf "%.0f", $2; exit}' "$out.txt")"
            p99="$(to_ms "$(awk '$1 == "99%" {print $2; exit}' "$out.txt")")"
            errs="$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
                /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out.txt")"
            ;;
        loadgen)
            read -r reqs rps p99 errs < <(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print(r["requests"], "%.0f" % r["rps"], "%.3f" % r["latency"]["p99_ms"], r["errors"] + r["rejected"])' "$out.json")
            ;;
    esac
    [ -n "$reqs" ] && [ -n "$rps" ] && [ -n "$p99" ] || die "$gen: cannot parse its output ($out.txt)"
    gcpu="$(python3 -c 'import json, sys
ru = json.load(open(sys.argv[1])); n = int(sys.argv[2])
print("%.2f" % (ru["cpu_s"] * 1e6 / n) if n else "n/a")' "$out.rusage.json" "$reqs")"
    other="$(other_pct "$c0a" "$c0b" "$c1a" "$c1b" $((n1 - n0 + m1 - m0)) "$out.rusage.json")"
    if [ "$other" -gt "$OTHER_WARN" ]; then
        log "round $round, $gen: WARNING: other processes used $other% of a core during the run; now:"
        ps -eo pid,pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-150 >&2
    fi
    ROWS+=("$(printf '%-8s %5s %10s %8s %11s %13s %7s %8s %7s' "$gen" "$round" "$rps" "$p99" "$gcpu" \
        "$(awk -v d=$((n1 - n0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')" \
        "$errs" "$(busy_pct "$c0a" "$c0b")/$(busy_pct "$c1a" "$c1b")" "$other")")
    if [ "$errs" -ne 0 ]; then
        log "FAIL $gen round $round: $errs errors"
        FAILED=1
    fi
}

NGINX_VERSION="$(nginx -v 2>&1)"
WRK_VERSION="$( (wrk -v 2>&1 || true) | head -1 | awk '{print $1, $2}')"
log "$NGINX_VERSION; $WRK_VERSION; $("$LOADGEN" -V); temp dir $TMP; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
    measure wrk "$round"
    measure loadgen "$round"
done

echo
echo "$NGINX_VERSION (1 worker on core $TARGET_CPU, static 'return 200' JSON); $WRK_VERSION; $("$LOADGEN" -V); $(nproc) cores; load now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "closed loop, $CONNS keep-alive connections, 1 generator thread on core $GEN_CPU, ${DURATION}s after a ${WARMUP}s warmup;"
echo "same POST (2026-07-28 stateless tools/call) from both. gen-us/req: the generator's own CPU per request;"
echo "nginx-us/req: the nginx worker's; c$TARGET_CPU/c$GEN_CPU%: busy share of core $TARGET_CPU (nginx) and core $GEN_CPU (generator);"
echo "other%: busy time of both cores spent outside nginx and the generator, in % of one core (other tenants)."
printf '%-8s %5s %10s %8s %11s %13s %7s %8s %7s\n' generator round req/s p99_ms gen-us/req nginx-us/req errors "c$TARGET_CPU/c$GEN_CPU%" other%
printf '%s\n' "${ROWS[@]}"
if [ "$FAILED" -ne 0 ]; then
    KEEP_TMP=1
    exit 1
fi
