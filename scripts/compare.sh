#!/usr/bin/env bash
# Side-by-side comparison with loadgen (the MCP load generator in loadgen/) of three targets, all
# in front of the built-in demo upstream, for session-based MCP traffic:
#   direct    loadgen -> demo upstream
#   nginx     loadgen -> nginx (1 worker, upstream keepalive) -> demo upstream
#   shardcat  loadgen -> shardcat serve --shards 1 -> demo upstream
#
# Workloads (loadgen --workload, closed loop, one connection per virtual user):
#   call      initialize once per user, then tools/call echo on that session (measured: the calls)
#   session   initialize, notifications/initialized, 5 x tools/call, DELETE, repeated (measured:
#             every request)
# Both carry Mcp-Session-Id, which nginx passes through unchanged in both directions.
#
# Pinning (meant for a 2-core machine): the proxy under test on core 0; the demo upstream and
# loadgen on core 1. In the direct run the demo upstream and loadgen therefore share core 1.
#
# For each workload and target, fresh processes (demo upstream, proxy) are started, then a
# loadgen warmup run (WARMUP seconds, not reported), then the measured loadgen run (DURATION
# seconds) with --watch-pid on the proxy (nginx: its worker; direct: the demo upstream itself)
# and --json, from which the figures are read. One table per workload:
#   req/s, p50, p99       loadgen's (measured window)
#   CPU-us/req            loadgen --watch-pid: utime+stime of the watched process over the
#                         measured window / requests in it
#   RSS                   loadgen --watch-pid: peak VmRSS of the watched process during the run
#                         (nginx: the worker only; the master's RSS is logged)
#   errors                loadgen errors + 503 rejections, warmup and measured run, plus
#                         sessions left on the demo upstream (or shardcat) after the run
#   up-us/req             demo upstream's CPU (/proc, across the whole measured loadgen process)
#                         / measured requests; for direct it is the watched process again
#   gen-us/req            loadgen's own CPU (rusage of the whole measured process) / requests
#   c0/c1%                busy share of core 0 and core 1 (/proc/stat, all processes) during the
#                         measured loadgen process
# then the ratios shardcat/nginx and shardcat/direct of req/s and of CPU-us/req (for direct,
# CPU-us/req is the upstream's own cost per request: the ratio says what the gateway spends per
# request relative to the server behind it).
#
#   other%                busy time of both cores (/proc/stat) not accounted for by the proxy,
#                         the upstream and loadgen, in % of one core: other tenants of a shared
#                         machine. Rows above OTHER_WARN (10) get a warning and a note.
#
# Env: DURATION (15, seconds), WARMUP (5), CONNS (256), WORKLOADS ("call session"),
# CALLS_PER_SESSION (5), OTHER_WARN (10), KEEP_TMP=1 keeps the temp dir (configs, logs, loadgen
# output and JSON).
# Exits non-zero if any target had errors, rejections or left sessions behind.
set -euo pipefail

secs() { local v="${1%s}"; [[ "$v" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "bad duration: $1" >&2; exit 2; }; echo "$v"; }
DURATION="$(secs "${DURATION:-15}")"
WARMUP="$(secs "${WARMUP:-5}")"
CONNS="${CONNS:-256}"
WORKLOADS="${WORKLOADS:-call session}"
CALLS_PER_SESSION="${CALLS_PER_SESSION:-5}"
OTHER_WARN="${OTHER_WARN:-10}"
PROXY_CPU=0
CLIENT_CPU=1
TARGETS=(direct nginx shardcat)

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "[compare] $*" >&2; }
die() { log "error: $*"; exit 1; }

# Process handling, cleanup and /proc readings shared by the benchmark scripts (TMP and PIDS
# are set before any of them runs).
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

# --- tools -----------------------------------------------------------------------------------
need_tools
if [ "$(nproc)" -lt 2 ]; then
    die "needs at least 2 cores (core $PROXY_CPU for the proxy, core $CLIENT_CPU for loadgen + upstream)"
fi
for w in $WORKLOADS; do
    case "$w" in call | session) ;; *) die "WORKLOADS: $w is not call or session" ;; esac
done

log "building (cargo build --release -p loadgen -p shardcat)"
cargo build --release -p loadgen -p shardcat >&2

# --- process bookkeeping and cleanup ---------------------------------------------------------
TMP="$(mktemp -d /tmp/compare.XXXXXX)"
PIDS=()

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Run private copies: the shared target dir may be rebuilt by someone else mid-run.
cp "$REPO/target/release/shardcat" "$TMP/shardcat"
cp "$REPO/target/release/loadgen" "$TMP/loadgen"
BIN="$TMP/shardcat"
LOADGEN="$TMP/loadgen"

# Writes $TMP/rusage.py and sets RUSAGE (see lib.sh); other_pct comes from lib.sh too.
write_rusage_helper

# --- targets ---------------------------------------------------------------------------------
# Starts a demo upstream on the client core; sets DEMO_PID, DEMO_URL, UPORT.
start_demo() {
    local tag="$1"
    taskset -c "$CLIENT_CPU" "$BIN" demo-upstream --listen 127.0.0.1:0 \
        >"$TMP/demo-$tag.out" 2>"$TMP/demo-$tag.err" &
    DEMO_PID=$!
    PIDS+=("$DEMO_PID")
    DEMO_URL="$(wait_ready "$TMP/demo-$tag.out" "READY demo=" "$DEMO_PID" "demo upstream ($tag)")"
    DEMO_URL="${DEMO_URL#READY demo=}"
    UPORT="${DEMO_URL#http://127.0.0.1:}"
    UPORT="${UPORT%%/*}"
}

stop() { stop_pid "$1"; forget "$1"; }

# Sessions the demo upstream holds (its GET /stats).
demo_sessions() {
    curl -sf --max-time 2 "http://127.0.0.1:$UPORT/stats" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"])' 2>/dev/null || echo "?"
}
# Sessions the gateway holds (admin /health).
gateway_sessions() {
    curl -sf --max-time 2 "http://$GW_ADMIN/health" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["sessions"])' 2>/dev/null || echo "?"
}
# Polls FN until it prints 0 or 5 s pass; prints the last count.
wait_zero() {
    local fn="$1" n i
    for i in $(seq 1 25); do
        n="$($fn)"
        [ "$n" = 0 ] && break
        sleep 0.2
    done
    echo "$n"
}

start_shardcat() {
    local tag="$1" ready listen
    taskset -c "$PROXY_CPU" "$BIN" serve --listen 127.0.0.1:0 --upstream "$DEMO_URL" --shards 1 \
        --admin 127.0.0.1:0 >"$TMP/gateway-$tag.out" 2>"$TMP/gateway-$tag.err" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    ready="$(wait_ready "$TMP/gateway-$tag.out" "READY listen=" "$GW_PID" "shardcat")"
    listen="$(echo "$ready" | sed -n 's/^READY listen=\([^ ]*\) admin=.*/\1/p')"
    GW_ADMIN="$(echo "$ready" | sed -n 's/.* admin=\(.*\)$/\1/p')"
    log "shardcat: pid $GW_PID on $listen (admin $GW_ADMIN) -> $DEMO_URL"
    TARGET_URL="http://$listen/mcp"
}

# One initialize through the target: must be 200 with an Mcp-Session-Id; the session is then
# DELETEd again.
preflight() {
    local name="$1" url="$2" hdr body code sid
    hdr="$TMP/preflight-$name.hdr"
    body="$(curl -sS --max-time 5 -D "$hdr" -o - -w '\n%{http_code}' "$url" \
        -H 'Content-Type: application/json' \
        -H 'Accept: application/json, text/event-stream' \
        -H 'MCP-Protocol-Version: 2025-06-18' \
        -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"compare.sh","version":"1"}}}')" ||
        die "$name: preflight initialize failed"
    code="${body##*$'\n'}"
    sid="$(awk 'tolower($1) == "mcp-session-id:" {print $2}' "$hdr" | tr -d '\r')"
    [ "$code" = 200 ] && [ -n "$sid" ] || die "$name: unexpected preflight answer (HTTP $code, session '$sid'): $body"
    code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -X DELETE "$url" \
        -H 'MCP-Protocol-Version: 2025-06-18' -H "Mcp-Session-Id: $sid")" || die "$name: preflight DELETE failed"
    [ "$code" = 200 ] || die "$name: preflight DELETE answered HTTP $code"
}

# --- loadgen ---------------------------------------------------------------------------------
# run_loadgen OUTPREFIX SECONDS URL WORKLOAD [loadgen flags...]: loadgen pinned to the client
# core, in the background (so a signal interrupts the wait), under the rusage wrapper. Sets LG_RC.
run_loadgen() {
    local out="$1" dur="$2" url="$3" workload="$4" pid
    shift 4
    LG_RC=0
    taskset -c "$CLIENT_CPU" python3 "$RUSAGE" "$out.rusage.json" \
        "$LOADGEN" --target "$url" --workload "$workload" --connections "$CONNS" \
        --threads 1 --pin "$CLIENT_CPU" --duration-s "$dur" --calls-per-session "$CALLS_PER_SESSION" \
        "$@" >"$out.txt" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || LG_RC=$?
    forget "$pid"
    # 0: pass, 1: ran but failed its checks (errors): reported; anything else: could not run.
    if [ "$LG_RC" -ne 0 ] && [ "$LG_RC" -ne 1 ]; then
        cat "$out.txt" >&2
        die "loadgen exited with $LG_RC"
    fi
}

# Prints "key=value" lines from a loadgen --json report (and the rusage file) for eval.
parse_json() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ru = json.load(open(sys.argv[2]))
w = r.get("watch") or {}
n = max(r["requests"], 1)
f = {
    "requests": r["requests"], "rps": "%.0f" % r["rps"],
    "p50": "%.2f" % r["latency"]["p50_ms"], "p99": "%.2f" % r["latency"]["p99_ms"],
    "errors": r["errors"], "rejected": r["rejected"], "reconnects": r["reconnects"],
    "cpu": "%.1f" % w["cpu_us_per_req"] if w else "-",
    "rss": "%.1f" % (w["peak_rss_kb"] / 1024) if w else "-",
    "gen": "%.1f" % (ru["cpu_s"] * 1e6 / n),
    "samples": "; ".join("%d x %s" % (c, m) for m, c in r["error_samples"]).replace("'", ""),
}
for k, v in f.items():
    print("%s='%s'" % (k, v))
EOF
}

# Results keyed "workload/target".
declare -A R_RPS R_P50 R_P99 R_CPU R_RSS R_ERR R_UP R_GEN R_BUSY R_REQS R_NOTE R_OTHER

# measure WORKLOAD NAME URL WATCH_PID [PROXY_PIDS...]: warmup, measured run, figures.
measure() {
    local w="$1" name="$2" url="$3" watch="$4" key="$1/$2" out up0 up1 c0a c1a c0b c1b p0=0 p1=0
    shift 4
    local proxy=("$@")
    local requests rps p50 p99 errors rejected reconnects cpu rss gen samples werr=0 left n note=""
    out="$TMP/loadgen-$w-$name"

    preflight "$name" "$url"
    log "$key: warmup ${WARMUP}s"
    run_loadgen "$out-warmup" "$WARMUP" "$url" "$w" --json "$out-warmup.json"
    werr="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["errors"] + r["rejected"])' "$out-warmup.json")"
    [ "$werr" -eq 0 ] || { log "$key: warmup had $werr errors/rejections:"; sed 's/^/    /' "$out-warmup.txt" >&2; }

    log "$key: measuring ${DURATION}s with $CONNS connections (watching pid $watch)"
    up0="$(cpu_ticks "$DEMO_PID")"
    [ "${#proxy[@]}" -eq 0 ] || p0="$(cpu_ticks "${proxy[@]}")"
    c0a="$(core_jiffies "$PROXY_CPU")"
    c1a="$(core_jiffies "$CLIENT_CPU")"
    run_loadgen "$out" "$DURATION" "$url" "$w" --watch-pid "$watch" --json "$out.json"
    c0b="$(core_jiffies "$PROXY_CPU")"
    c1b="$(core_jiffies "$CLIENT_CPU")"
    [ "${#proxy[@]}" -eq 0 ] || p1="$(cpu_ticks "${proxy[@]}")"
    up1="$(cpu_ticks "$DEMO_PID")"
    sed 's/^/    /' "$out.txt" >&2
    [ -s "$out.json" ] || die "$key: loadgen wrote no JSON ($out.txt)"

    parse_json "$out.json" "$out.rusage.json" >"$out.vars" || die "$key: cannot read $out.json"
    # shellcheck disable=SC1090
    . "$out.vars"
    # Sessions left behind: on the demo upstream (all targets), and in the gateway. An
    # unreadable count counts as one.
    left=0
    n="$(wait_zero demo_sessions)"
    if [ "$n" != 0 ]; then
        note="demo upstream holds $n sessions after the run"
        [[ "$n" =~ ^[0-9]+$ ]] && left=$((left + n)) || left=$((left + 1))
    fi
    if [ "$name" = shardcat ]; then
        n="$(wait_zero gateway_sessions)"
        if [ "$n" != 0 ]; then
            note="${note:+$note; }shardcat holds $n sessions after the run"
            [[ "$n" =~ ^[0-9]+$ ]] && left=$((left + n)) || left=$((left + 1))
        fi
    fi

    R_REQS[$key]="$requests"
    R_RPS[$key]="$rps"
    R_P50[$key]="$p50"
    R_P99[$key]="$p99"
    R_CPU[$key]="$cpu"
    R_RSS[$key]="$rss"
    R_ERR[$key]=$((errors + rejected + werr + left))
    R_GEN[$key]="$gen"
    R_UP[$key]="$(awk -v d=$((up1 - up0)) -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { if (n > 0) printf "%.1f", d * 1e6 / hz / n; else print "n/a" }')"
    R_BUSY[$key]="$(busy_pct "$c0a" "$c0b")/$(busy_pct "$c1a" "$c1b")"
    R_OTHER[$key]="$(other_pct "$c0a" "$c0b" "$c1a" "$c1b" $((p1 - p0 + up1 - up0)) "$out.rusage.json")"
    if [ "${R_OTHER[$key]}" -gt "$OTHER_WARN" ]; then
        note="${note:+$note; }other processes used ${R_OTHER[$key]}% of a core during the run"
        log "$key: WARNING: other processes used ${R_OTHER[$key]}% of a core during the run; now:"
        ps -eo pid,pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-150 >&2
    fi
    [ "$reconnects" = 0 ] || note="${note:+$note; }$reconnects reconnects"
    [ "$werr" = 0 ] || note="${note:+$note; }warmup: $werr errors"
    [ -z "$samples" ] || note="${note:+$note; }$samples"
    R_NOTE[$key]="$note"
}

run_target() {
    local w="$1" t="$2"
    start_demo "$w-$t"
    case "$t" in
        direct)
            log "$w/direct: demo at $DEMO_URL (demo and loadgen share core $CLIENT_CPU)"
            measure "$w" direct "$DEMO_URL" "$DEMO_PID"
            ;;
        nginx)
            start_nginx "$w"
            measure "$w" nginx "$TARGET_URL" "$NGINX_WORKER" "$NGINX_PID" "$NGINX_WORKER"
            log "nginx master RSS after the run: $(awk -v k="$(rss_kb "$NGINX_PID")" 'BEGIN { printf "%.1f MB", k / 1024 }')"
            if [ -s "$NGINX_LOGDIR/error.log" ]; then
                log "nginx error log:"
                tail -5 "$NGINX_LOGDIR/error.log" >&2
            fi
            stop "$NGINX_PID"
            rm -f "$TMP/nginx-workers"
            ;;
        shardcat)
            start_shardcat "$w"
            measure "$w" shardcat "$TARGET_URL" "$GW_PID" "$GW_PID"
            if grep -qE '^\[[^]]* (WARN|ERROR) ' "$TMP/gateway-$w.err"; then
                log "shardcat logged warnings/errors:"
                grep -E '^\[[^]]* (WARN|ERROR) ' "$TMP/gateway-$w.err" | tail -20 >&2
            fi
            stop "$GW_PID"
            ;;
    esac
    stop "$DEMO_PID"
}

NGINX_VERSION="$(nginx -v 2>&1)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src loadgen Cargo.toml 2>/dev/null || echo '+dirty')"
log "$NGINX_VERSION; $("$LOADGEN" -V); shardcat $GIT_REV"
log "temp dir $TMP; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

for w in $WORKLOADS; do
    for t in "${TARGETS[@]}"; do
        run_target "$w" "$t"
    done
done

# --- report ----------------------------------------------------------------------------------
echo
echo "$NGINX_VERSION; $("$LOADGEN" -V); shardcat $GIT_REV; $(nproc) cores; load now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "loadgen --connections $CONNS --threads 1 --duration-s $DURATION (closed loop, after a ${WARMUP}s warmup run);"
echo "proxy on core $PROXY_CPU, demo upstream + loadgen on core $CLIENT_CPU (direct: they share core $CLIENT_CPU)."
echo "CPU-us/req and RSS: the watched process (nginx: its worker; direct: the demo upstream). up-us/req:"
echo "the demo upstream's CPU; gen-us/req: loadgen's own CPU. c$PROXY_CPU/c$CLIENT_CPU%: busy share of each core;"
echo "other%: busy time of both cores not spent in our processes, in % of one core (other tenants of the box)."
FAILED=0
for w in $WORKLOADS; do
    echo
    case "$w" in
        call) echo "workload call: tools/call echo on one session per connection (measured: the calls)" ;;
        session) echo "workload session: initialize, initialized, $CALLS_PER_SESSION x tools/call, DELETE, repeated (measured: every request)" ;;
    esac
    printf '%-9s %9s %8s %8s %11s %8s %7s %10s %11s %8s %7s\n' target req/s p50_ms p99_ms CPU-us/req RSS_MB errors up-us/req gen-us/req "c$PROXY_CPU/c$CLIENT_CPU%" other%
    for t in "${TARGETS[@]}"; do
        k="$w/$t"
        printf '%-9s %9s %8s %8s %11s %8s %7s %10s %11s %8s %7s\n' "$t" "${R_RPS[$k]}" "${R_P50[$k]}" "${R_P99[$k]}" \
            "${R_CPU[$k]}" "${R_RSS[$k]}" "${R_ERR[$k]}" "${R_UP[$k]}" "${R_GEN[$k]}" "${R_BUSY[$k]}" "${R_OTHER[$k]}"
    done
    awk -v s="${R_RPS[$w/shardcat]}" -v n="${R_RPS[$w/nginx]}" -v d="${R_RPS[$w/direct]}" \
        -v sc="${R_CPU[$w/shardcat]}" -v nc="${R_CPU[$w/nginx]}" -v dc="${R_CPU[$w/direct]}" 'BEGIN {
        printf "shardcat/nginx:  req/s %.3f, CPU-us/req %.3f\n", s / n, sc / nc
        printf "shardcat/direct: req/s %.3f, CPU-us/req %.3f (direct: the upstream'"'"'s own CPU-us/req)\n", s / d, sc / dc }'
    for t in "${TARGETS[@]}"; do
        k="$w/$t"
        [ -z "${R_NOTE[$k]}" ] || echo "note $t: ${R_NOTE[$k]}"
        if [ "${R_ERR[$k]}" -gt 0 ]; then
            echo "FAIL $w/$t: ${R_ERR[$k]} errors/rejections/left sessions (measured requests ${R_REQS[$k]})" >&2
            FAILED=1
        fi
    done
done
if [ "$FAILED" -ne 0 ]; then
    KEEP_TMP=1
    exit 1
fi
