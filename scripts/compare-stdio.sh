#!/usr/bin/env bash
# Side-by-side comparison of gateways that serve a stdio MCP server over Streamable HTTP. Every
# target runs the same server, fixtures' mcp-stdio-server (rmcp, built in release), and loadgen
# drives the same MCP traffic through each:
#   supergateway      loadgen -> supergateway (node) --stateful -> one child per session
#   mcp-proxy         loadgen -> mcp-proxy (python) -> one shared child
#   shardcat          loadgen -> shardcat serve --shards 1 --upstream-cmd -> one child per session
#   shardcat-prewarm  the same, from a config file with prewarm = $PREWARM started children
#
# What each bridge does with its children (read from their source, versions below):
# - supergateway 4.0.0 (npm; --stdio CMD --outputTransport streamableHttp): stateless by
#   default, where every HTTP POST spawns a fresh child, auto-initializes it (protocol version
#   from --protocolVersion) and kills it once the response is done: no session id is ever
#   issued, so the session workloads below cannot run against it. With --stateful it keeps one
#   child per MCP session: an initialize without Mcp-Session-Id spawns the child
#   (`sh -c CMD`, shell: true, in its own process group) and relays the client's initialize to
#   it unchanged; every later message of the session goes to that child and its output lines
#   go back on the request's SSE response (POST answers are always text/event-stream), or, for
#   a message unrelated to any request, on the GET stream. DELETE, --sessionTimeout (default
#   30 min of idleness) or the child's exit end both (SIGTERM to the group, SIGKILL after 5 s;
#   pending requests get -32603). The endpoint is --streamableHttpPath (default /mcp), on
#   --port, all interfaces. --logLevel info (the default) logs every message both ways; we run
#   it with --logLevel none so it pays for no logging shardcat does not do. Its children get
#   socketpairs, not pipes, for stdio (node's child_process), and /bin/sh here (dash) forks
#   rather than execs the command: two processes per session (srv counts the servers only).
# - mcp-proxy 0.13.0 (PyPI; `mcp-proxy --port P -- CMD ARGS`): spawns ONE child at startup and
#   initializes it itself (its own client info and capabilities), before any client arrives.
#   The HTTP side is the Python SDK's StreamableHTTPSessionManager (path /mcp, answered as
#   /mcp/; json_response=True, so POST answers are application/json): each HTTP session is a
#   proxy server whose initialize is answered by the proxy from the child's capabilities (the
#   client's own initialize never reaches the child), and whose tools/call requests are
#   forwarded through the one shared client session: all sessions share the child, its ids and
#   its notifications. Progress is forwarded when the client gave a token; other notifications
#   and server-to-client requests of the child do not reach HTTP clients. --stateless drops the
#   HTTP session ids (then the session workloads cannot run) but still shares the one child.
# - shardcat: one child per session (issue 4), spawned at initialize or taken from the
#   per-shard prewarm pool; the client's initialize is relayed to it.
#
# Measured per target, one loadgen run each (after a preflight: initialize, initialized, one
# tools/call echo, DELETE, all checked), after a WARMUP closed-loop run:
#   call       closed loop, CONNS sessions (one connection and one session each), tools/call
#              echo as fast as they go: req/s, p50, p99 of tools/call. Mid-run, the number of
#              stdio server processes and their summed RSS are sampled (srv, srv_MB).
#   open       open loop at RATE req/s in total over CONNS sessions, tools/call echo:
#              coordinated-omission-free p50/p99 below saturation.
#   churn      CHURN_RATE cycles per second, each a fresh connection: initialize,
#              notifications/initialized, one tools/call, DELETE. loadgen times each request on
#              its own (by_method): initialize p50/p99 (the connect included) is
#              spawn-to-initialized for targets that start a child per session, and the
#              pool hand-off with prewarm; cycle p50 is the whole cycle from its schedule.
#   spawn      directly, no gateway: SPAWN_SAMPLES times, start mcp-stdio-server, write an
#              initialize line, read its response (python subprocess, pinned to the client
#              core): the floor of any spawn-per-session initialize.
# Columns besides: CPU-us/req and RSS_MB of the gateway process itself (loadgen --watch-pid
# during the call run: node, python, shardcat; children excluded); c0/c1%: busy share of each
# core from /proc/stat during the call run (all processes); left: stdio servers still
# running 2 s after the last run, beyond those the target keeps by design (mcp-proxy: 1,
# prewarm: PREWARM), plus zombie children of the gateway; errors: loadgen errors and
# rejections over all runs, warmup included.
#
# Pinning (meant for a 2-core machine): the gateway on core 0; loadgen and the stdio servers on
# core 1 (each server pins itself with --cpu, since a child inherits its gateway's core). With
# STDIO_PIN=0 the children stay on the gateway's core.
#
# shardcat is started as
#   shardcat serve --listen 127.0.0.1:0 --admin off --shards 1 --upstream-cmd "SERVER ARGS"
#   shardcat serve --config FILE --listen 127.0.0.1:0 --admin off --shards 1
# with FILE holding one [[upstream]] kind = "stdio", command, args, prewarm = PREWARM.
#
# Env: TARGETS ("supergateway mcp-proxy shardcat shardcat-prewarm"), DURATION (10, seconds),
# WARMUP (3), CONNS (32), RATE (200), CHURN_RATE (20), PREWARM (8), SPAWN_SAMPLES (50),
# STDIO_PIN (1), SHARDCAT_BIN (a shardcat binary to run instead of this tree's), OTHER_WARN
# (10: a note when other processes keep a core busier than this, in %, just before a target
# starts), SUPERGATEWAY_VERSION (4.0.0), MCP_PROXY_VERSION (0.13.0), KEEP_TMP=1 keeps the temp
# dir (configs, logs, loadgen output and JSON). Tools are installed once under
# target/compare-tools/ (npm and a python venv).
# Exits non-zero if any target had errors, rejections or left stdio servers behind.
set -euo pipefail

secs() { local v="${1%s}"; [[ "$v" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "bad duration: $1" >&2; exit 2; }; echo "$v"; }
DURATION="$(secs "${DURATION:-10}")"
WARMUP="$(secs "${WARMUP:-3}")"
CONNS="${CONNS:-32}"
RATE="${RATE:-200}"
CHURN_RATE="${CHURN_RATE:-20}"
PREWARM="${PREWARM:-8}"
SPAWN_SAMPLES="${SPAWN_SAMPLES:-50}"
OTHER_WARN="${OTHER_WARN:-10}"
STDIO_PIN="${STDIO_PIN:-1}"
SUPERGATEWAY_VERSION="${SUPERGATEWAY_VERSION:-4.0.0}"
MCP_PROXY_VERSION="${MCP_PROXY_VERSION:-0.13.0}"
read -r -a TARGETS <<<"${TARGETS:-supergateway mcp-proxy shardcat shardcat-prewarm}"
PROXY_CPU=0
CLIENT_CPU=1

cd "$(dirname "$0")/.."
REPO="$(pwd)"
TOOLS="$REPO/target/compare-tools"

log() { echo "[compare-stdio] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------------
for t in taskset python3 curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found"
done
if [ "$(nproc)" -lt 2 ]; then
    die "needs at least 2 cores (core $PROXY_CPU for the gateway, core $CLIENT_CPU for loadgen + stdio servers)"
fi
WANT_SHARDCAT=0
for t in "${TARGETS[@]}"; do
    case "$t" in
        supergateway)
            command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || die "supergateway needs node and npm"
            SG_JS="$TOOLS/node_modules/supergateway/dist/index.js"
            if [ ! -f "$SG_JS" ] || ! grep -q "\"version\": \"$SUPERGATEWAY_VERSION\"" "$TOOLS/node_modules/supergateway/package.json"; then
                log "installing supergateway@$SUPERGATEWAY_VERSION under $TOOLS"
                mkdir -p "$TOOLS"
                npm install --prefix "$TOOLS" --no-audit --no-fund "supergateway@$SUPERGATEWAY_VERSION" >&2
            fi
            ;;
        mcp-proxy)
            MP_BIN="$TOOLS/venv/bin/mcp-proxy"
            if [ ! -x "$MP_BIN" ] || [ "$("$TOOLS/venv/bin/pip" show mcp-proxy 2>/dev/null | awk '/^Version:/ {print $2}')" != "$MCP_PROXY_VERSION" ]; then
                log "installing mcp-proxy==$MCP_PROXY_VERSION in $TOOLS/venv"
                python3 -m venv "$TOOLS/venv" >&2
                "$TOOLS/venv/bin/pip" install --quiet "mcp-proxy==$MCP_PROXY_VERSION" >&2
            fi
            ;;
        shardcat | shardcat-prewarm) WANT_SHARDCAT=1 ;;
        *) die "TARGETS: unknown target $t" ;;
    esac
done

PKGS=(-p loadgen -p shardcat-fixtures)
[ "$WANT_SHARDCAT" = 0 ] || PKGS+=(-p shardcat)
log "building (cargo build --release ${PKGS[*]})"
cargo build --release "${PKGS[@]}" >&2

# --- process bookkeeping and cleanup ---------------------------------------------------------
TMP="$(mktemp -d /tmp/compare-stdio.XXXXXX)"
PIDS=()

# Process handling, cleanup and /proc readings shared by the benchmark scripts.
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Run private copies: the shared target dir may be rebuilt by someone else mid-run. The
# server's private path also tells its processes apart from any other copy on the machine.
cp "$REPO/target/release/loadgen" "$TMP/loadgen"
cp "$REPO/target/release/mcp-stdio-server" "$TMP/mcp-stdio-server"
[ "$WANT_SHARDCAT" = 0 ] || cp "${SHARDCAT_BIN:-$REPO/target/release/shardcat}" "$TMP/shardcat"
LOADGEN="$TMP/loadgen"
SRV="$TMP/mcp-stdio-server"
SRV_ARGS=()
[ "$STDIO_PIN" = 0 ] || SRV_ARGS=(--cpu "$CLIENT_CPU")
SRV_CMD="$SRV${SRV_ARGS[*]:+ ${SRV_ARGS[*]}}"

stop() { stop_pid "$1"; forget "$1"; }

# Pids of the running stdio servers (our private copy only; zombies have no command line).
srv_pids() { pgrep -f "^$SRV( |\$)" || true; }
# Zombie children of PID.
zombies() { ps --ppid "$1" -o stat= 2>/dev/null | grep -c '^Z' || true; }

# Polls URL until it answers at all (any HTTP status), PID dies, or 30 s pass.
wait_http() {
    local url="$1" pid="$2" name="$3" i
    for i in $(seq 1 300); do
        alive "$pid" || { tail -20 "$TMP/$name.err" >&2 2>/dev/null; die "$name exited before answering"; }
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null)" != 000 ] && return 0
        sleep 0.1
    done
    die "$name did not answer on $url within 30 s"
}

# --- targets: each sets GW_PID (the process loadgen watches) and TARGET_URL ----------------
start_supergateway() {
    local port
    port="$(free_port)"
    taskset -c "$PROXY_CPU" node "$SG_JS" --stdio "$SRV_CMD" --outputTransport streamableHttp \
        --stateful --port "$port" --streamableHttpPath /mcp --healthEndpoint /healthz --logLevel none \
        >"$TMP/supergateway.out" 2>"$TMP/supergateway.err" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_http "http://127.0.0.1:$port/healthz" "$GW_PID" supergateway
    TARGET_URL="http://127.0.0.1:$port/mcp"
    log "supergateway: pid $GW_PID on :$port (--stateful, one child per session)"
}

start_mcp_proxy() {
    local port
    port="$(free_port)"
    taskset -c "$PROXY_CPU" "$MP_BIN" --host 127.0.0.1 --port "$port" --log-level WARNING \
        -- "$SRV" "${SRV_ARGS[@]}" >"$TMP/mcp-proxy.out" 2>"$TMP/mcp-proxy.err" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_http "http://127.0.0.1:$port/status" "$GW_PID" mcp-proxy
    TARGET_URL="http://127.0.0.1:$port/mcp"
    log "mcp-proxy: pid $GW_PID on :$port (one shared child)"
}

# start_shardcat NAME [PREWARM]: by flags without a prewarm count, else by a config file.
start_shardcat() {
    local name="$1" prewarm="${2:-}" ready listen cfg args
    args=(serve --listen 127.0.0.1:0 --admin off --shards 1)
    if [ -z "$prewarm" ]; then
        args+=(--upstream-cmd "$SRV_CMD")
    else
        cfg="$TMP/$name.toml"
        {
            echo '[[upstream]]'
            echo 'kind = "stdio"'
            echo "command = \"$SRV\""
            printf 'args = [%s]\n' "$(printf '"%s", ' "${SRV_ARGS[@]+"${SRV_ARGS[@]}"}" | sed 's/, $//; s/^""$//')"
            echo "prewarm = $prewarm"
        } >"$cfg"
        args=(serve --config "$cfg" --listen 127.0.0.1:0 --admin off --shards 1)
    fi
    taskset -c "$PROXY_CPU" "$TMP/shardcat" "${args[@]}" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    ready="$(wait_ready "$TMP/$name.out" "READY listen=" "$GW_PID" "$name")"
    listen="$(echo "$ready" | sed -n 's/^READY listen=\([^ ]*\).*/\1/p')"
    TARGET_URL="http://$listen/mcp"
    log "$name: pid $GW_PID on $listen (one child per session${prewarm:+, prewarm $prewarm})"
}

# --- preflight -------------------------------------------------------------------------------
# mcp_post URL SID BODY OUT: one POST; prints the HTTP status, writes headers to OUT.hdr and
# the body to OUT.
mcp_post() {
    local url="$1" sid="$2" body="$3" out="$4"
    curl -sS --max-time 10 -D "$out.hdr" -o "$out" -w '%{http_code}' "$url" \
        -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
        -H 'MCP-Protocol-Version: 2025-06-18' ${sid:+-H "Mcp-Session-Id: $sid"} -d "$body"
}

# initialize (200 with a session id), initialized (202), tools/call echo (the text comes back,
# as JSON or in an SSE event), DELETE (200).
preflight() {
    local name="$1" url="$2" out="$TMP/preflight-$1" code sid
    code="$(mcp_post "$url" "" '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"compare-stdio.sh","version":"1"}}}' "$out.init")" ||
        die "$name: preflight initialize failed"
    sid="$(awk 'tolower($1) == "mcp-session-id:" {print $2}' "$out.init.hdr" | tr -d '\r')"
    [ "$code" = 200 ] && [ -n "$sid" ] || die "$name: initialize answered HTTP $code, session '$sid': $(head -c 300 "$out.init")"
    code="$(mcp_post "$url" "$sid" '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$out.note")" || die "$name: preflight initialized failed"
    [ "$code" = 202 ] || die "$name: notifications/initialized answered HTTP $code"
    code="$(mcp_post "$url" "$sid" '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"preflight-echo"}}}' "$out.call")" ||
        die "$name: preflight tools/call failed"
    [ "$code" = 200 ] && grep -q '"text":"preflight-echo"' "$out.call" ||
        die "$name: tools/call echo answered HTTP $code: $(head -c 300 "$out.call")"
    code="$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X DELETE "$url" \
        -H 'MCP-Protocol-Version: 2025-06-18' -H "Mcp-Session-Id: $sid")" || die "$name: preflight DELETE failed"
    [ "$code" = 200 ] || die "$name: DELETE answered HTTP $code"
}

# --- loadgen ---------------------------------------------------------------------------------
# run_loadgen OUT [loadgen flags...]: pinned to the client core, in the background (so a signal
# interrupts the wait); writes OUT.txt and OUT.json.
run_loadgen() {
    local out="$1" pid rc=0
    shift
    taskset -c "$CLIENT_CPU" "$LOADGEN" --target "$TARGET_URL" --threads 1 --pin "$CLIENT_CPU" \
        --json "$out.json" "$@" >"$out.txt" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    # 0: pass, 1: ran but failed its checks (errors): reported; anything else: could not run.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
        cat "$out.txt" >&2
        die "loadgen exited with $rc"
    fi
    [ -s "$out.json" ] || die "loadgen wrote no JSON ($out.txt)"
    sed 's/^/    /' "$out.txt" >&2
}

# Prints "key=value" lines (sourced by read_json) from a loadgen JSON report: PREFIX_rps, _p50, _p99, _err,
# _cpu, _rss, _init50, _init99, _samples.
parse_json() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
r, p = json.load(open(sys.argv[1])), sys.argv[2]
w = r.get("watch") or {}
init = next((m["latency"] for m in r.get("by_method", []) if m["method"] == "initialize"), None)
f = {
    "rps": "%.0f" % r["rps"],
    "p50": "%.2f" % r["latency"]["p50_ms"], "p99": "%.2f" % r["latency"]["p99_ms"],
    "err": r["errors"] + r["rejected"],
    "cpu": "%.1f" % w["cpu_us_per_req"] if w else "-",
    "rss": "%.1f" % (w["peak_rss_kb"] / 1024) if w else "-",
    "init50": "%.2f" % init["p50_ms"] if init else "-",
    "init99": "%.2f" % init["p99_ms"] if init else "-",
    "samples": "; ".join("%d x %s" % (c, m) for m, c in r["error_samples"]).replace("'", ""),
}
for k, v in f.items():
    print("%s_%s='%s'" % (p, k, v))
EOF
}

# read_json OUT PREFIX: sets PREFIX_* from OUT.json (in the caller's scope).
read_json() {
    parse_json "$1.json" "$2" >"$1.vars" || die "cannot read $1.json"
    # shellcheck disable=SC1090
    . "$1.vars"
}

declare -A R_CALL_RPS R_CALL_P50 R_CALL_P99 R_OPEN_P50 R_OPEN_P99 R_INIT50 R_INIT99 R_CYCLE50
declare -A R_CPU R_RSS R_SRV R_SRV_MB R_LEFT R_ERR R_NOTE R_QUIET R_BUSY

# Expected stdio servers while a target idles: mcp-proxy's shared child, the prewarm pool.
expected_children() {
    case "$1" in
        mcp-proxy) echo 1 ;;
        shardcat-prewarm) echo "$PREWARM" ;;
        *) echo 0 ;;
    esac
}

measure() {
    local name="$1" out="$TMP/loadgen-$1" err=0 note="" n kids z left sampler c0a c1a
    preflight "$name" "$TARGET_URL"

    log "$name: warmup ${WARMUP}s"
    run_loadgen "$out-warmup" --workload call --connections "$CONNS" --duration-s "$WARMUP"
    read_json "$out-warmup" w
    err=$((err + w_err))
    [ -z "$w_samples" ] || note="warmup: $w_samples"

    log "$name: call, closed loop, $CONNS sessions, ${DURATION}s"
    (
        sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')"
        p="$(srv_pids)"
        # shellcheck disable=SC2086
        echo "$(echo $p | wc -w) $(rss_kb $p)" >"$out-srv.txt"
    ) &
    sampler=$!
    PIDS+=("$sampler")
    c0a="$(core_jiffies "$PROXY_CPU")"
    c1a="$(core_jiffies "$CLIENT_CPU")"
    run_loadgen "$out-call" --workload call --connections "$CONNS" --duration-s "$DURATION" --watch-pid "$GW_PID"
    R_BUSY[$name]="$(busy_pct "$c0a" "$(core_jiffies "$PROXY_CPU")")/$(busy_pct "$c1a" "$(core_jiffies "$CLIENT_CPU")")"
    wait "$sampler" 2>/dev/null || true
    forget "$sampler"
    read_json "$out-call" c
    read -r n kids <"$out-srv.txt" || { n="?"; kids=0; }
    R_SRV[$name]="$n"
    R_SRV_MB[$name]="$(awk -v k="$kids" 'BEGIN { printf "%.1f", k / 1024 }')"

    log "$name: call, open loop at $RATE req/s over $CONNS sessions, ${DURATION}s"
    run_loadgen "$out-open" --workload call --connections "$CONNS" --rate "$RATE" --duration-s "$DURATION"
    read_json "$out-open" o

    log "$name: churn at $CHURN_RATE cycles/s, ${DURATION}s"
    run_loadgen "$out-churn" --scenario churn --rate "$CHURN_RATE" --duration-s "$DURATION"
    read_json "$out-churn" h

    R_CALL_RPS[$name]="$c_rps"
    R_CALL_P50[$name]="$c_p50"
    R_CALL_P99[$name]="$c_p99"
    R_CPU[$name]="$c_cpu"
    R_RSS[$name]="$c_rss"
    R_OPEN_P50[$name]="$o_p50"
    R_OPEN_P99[$name]="$o_p99"
    R_INIT50[$name]="$h_init50"
    R_INIT99[$name]="$h_init99"
    R_CYCLE50[$name]="$h_p50"
    err=$((err + c_err + o_err + h_err))
    for s in "$c_samples" "$o_samples" "$h_samples"; do
        [ -z "$s" ] || note="${note:+$note; }$s"
    done

    # Sessions were all DELETEd: what still runs beyond what the target keeps by design?
    sleep 2
    n="$(srv_pids | wc -l)"
    z="$(zombies "$GW_PID")"
    left=$((n - $(expected_children "$name")))
    [ "$left" -ge 0 ] || left=0
    left=$((left + z))
    [ "$left" = 0 ] || note="${note:+$note; }$n stdio servers running and $z zombies after the run"
    R_LEFT[$name]="$left"
    R_ERR[$name]="$err"
    R_NOTE[$name]="$note"
}

# Stops the gateway, then (by pid) any stdio server it left running.
stop_target() {
    local name="$1" p
    stop "$GW_PID"
    for p in $(srv_pids); do
        log "$name: stdio server $p outlived its gateway; stopping it"
        stop_pid "$p"
        R_LEFT[$name]=$((${R_LEFT[$name]:-0} + 1))
    done
    if grep -qE '^\[[^]]* (WARN|ERROR) ' "$TMP/$name.err" 2>/dev/null; then
        log "$name logged warnings/errors:"
        grep -E '^\[[^]]* (WARN|ERROR) ' "$TMP/$name.err" | tail -10 >&2
    fi
}

# Busy share of both cores over 1 s while none of our processes runs: other tenants of a shared
# machine. Above OTHER_WARN % the target's row gets a note.
quiet_check() {
    local t="$1" c0a c1a c0b c1b b0 b1
    c0a="$(core_jiffies "$PROXY_CPU")"
    c1a="$(core_jiffies "$CLIENT_CPU")"
    sleep 1
    c0b="$(core_jiffies "$PROXY_CPU")"
    c1b="$(core_jiffies "$CLIENT_CPU")"
    b0="$(busy_pct "$c0a" "$c0b")"
    b1="$(busy_pct "$c1a" "$c1b")"
    if [ "$b0" -gt "$OTHER_WARN" ] || [ "$b1" -gt "$OTHER_WARN" ]; then
        log "$t: WARNING: before starting, with none of ours running, cores were $b0%/$b1% busy; now:"
        ps -eo pid,pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-150 >&2
        R_QUIET[$t]="other processes kept cores $PROXY_CPU/$CLIENT_CPU $b0%/$b1% busy just before this target"
    fi
}

run_target() {
    local t="$1"
    quiet_check "$t"
    case "$t" in
        supergateway) start_supergateway ;;
        mcp-proxy) start_mcp_proxy ;;
        shardcat) start_shardcat shardcat ;;
        shardcat-prewarm) start_shardcat shardcat-prewarm "$PREWARM" ;;
    esac
    measure "$t"
    stop_target "$t"
}

# --- spawn-to-initialized, no gateway ---------------------------------------------------------
SPAWN_PY="$TMP/spawn.py"
cat >"$SPAWN_PY" <<'EOF'
# Start the server, write initialize, read the response: SAMPLES times; print ms quantiles.
import json, subprocess, sys, time
srv, samples, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
init = (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "compare-stdio.sh", "version": "1"}}}) + "\n").encode()
ms = []
for _ in range(samples):
    t0 = time.perf_counter()
    p = subprocess.Popen([srv, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    p.stdin.write(init)
    p.stdin.flush()
    line = p.stdout.readline()
    ms.append((time.perf_counter() - t0) * 1000)
    p.stdin.close()
    p.wait(timeout=10)
    if b'"result"' not in line:
        sys.exit("no initialize result: %r" % line)
ms.sort()
q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]
print("%.2f %.2f %.2f %.2f" % (q(0.5), q(0.99), ms[0], ms[-1]))
EOF
log "spawn-to-initialized: $SPAWN_SAMPLES direct starts of mcp-stdio-server"
read -r SPAWN_P50 SPAWN_P99 SPAWN_MIN SPAWN_MAX < <(taskset -c "$CLIENT_CPU" python3 "$SPAWN_PY" "$SRV" "$SPAWN_SAMPLES" "${SRV_ARGS[@]+"${SRV_ARGS[@]}"}") ||
    die "direct spawn measurement failed"

# --- run -------------------------------------------------------------------------------------
VERSIONS="$("$LOADGEN" -V)"
for t in "${TARGETS[@]}"; do
    case "$t" in
        supergateway) VERSIONS="$VERSIONS; supergateway $SUPERGATEWAY_VERSION (node $(node -v))" ;;
        mcp-proxy) VERSIONS="$VERSIONS; mcp-proxy $MCP_PROXY_VERSION ($("$TOOLS/venv/bin/python" -V))" ;;
        shardcat) VERSIONS="$VERSIONS; shardcat $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '+dirty')" ;;
    esac
done
log "$VERSIONS"
log "temp dir $TMP; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in "${TARGETS[@]}"; do
    run_target "$t"
done

# --- report ----------------------------------------------------------------------------------
echo
echo "$VERSIONS; $(nproc) cores; load now $(cut -d' ' -f1-3 /proc/loadavg)"
echo "stdio server: fixtures' mcp-stdio-server (rmcp)${SRV_ARGS[*]:+, ${SRV_ARGS[*]}}; gateway on core $PROXY_CPU, loadgen + stdio servers on core $CLIENT_CPU."
echo "call: closed loop, $CONNS sessions, ${DURATION}s (after ${WARMUP}s warmup); open: $RATE req/s over $CONNS sessions;"
echo "churn: $CHURN_RATE cycles/s of connect + initialize + initialized + tools/call + DELETE (init: initialize alone)."
echo "CPU-us/req, RSS_MB: the gateway process during the call run; c$PROXY_CPU/c$CLIENT_CPU%: busy share of each core (all"
echo "processes) during the call run; srv/srv_MB: stdio servers and their RSS mid-run."
printf '%-16s %7s %7s %7s | %8s %8s | %7s %7s %8s | %10s %6s %7s | %4s %6s | %4s %6s\n' \
    target req/s p50_ms p99_ms open_p50 open_p99 init_50 init_99 cycle_50 CPU-us/req RSS_MB "c$PROXY_CPU/c$CLIENT_CPU%" \
    srv srv_MB left errors
for t in "${TARGETS[@]}"; do
    printf '%-16s %7s %7s %7s | %8s %8s | %7s %7s %8s | %10s %6s %7s | %4s %6s | %4s %6s\n' "$t" \
        "${R_CALL_RPS[$t]}" "${R_CALL_P50[$t]}" "${R_CALL_P99[$t]}" "${R_OPEN_P50[$t]}" "${R_OPEN_P99[$t]}" \
        "${R_INIT50[$t]}" "${R_INIT99[$t]}" "${R_CYCLE50[$t]}" "${R_CPU[$t]}" "${R_RSS[$t]}" "${R_BUSY[$t]}" \
        "${R_SRV[$t]}" "${R_SRV_MB[$t]}" "${R_LEFT[$t]}" "${R_ERR[$t]}"
done
echo "spawn-to-initialized, direct (python Popen + initialize round trip, $SPAWN_SAMPLES runs): p50 $SPAWN_P50 ms, p99 $SPAWN_P99 ms, min $SPAWN_MIN, max $SPAWN_MAX"
for t in "${TARGETS[@]}"; do
    case "$t" in
        mcp-proxy) echo "note mcp-proxy: initialize is answered by the proxy itself; its one child was initialized at startup" ;;
        shardcat-prewarm) echo "note shardcat-prewarm: init is the hand-off of a started child from the pool of $PREWARM" ;;
    esac
done
if [ -n "${R_INIT50[shardcat]:-}" ] && [ -n "${R_INIT50[shardcat-prewarm]:-}" ]; then
    echo "initialize p50 through shardcat: ${R_INIT50[shardcat]} ms without prewarm, ${R_INIT50[shardcat-prewarm]} ms with prewarm = $PREWARM"
fi
FAILED=0
for t in "${TARGETS[@]}"; do
    [ -z "${R_NOTE[$t]}" ] || echo "note $t: ${R_NOTE[$t]}"
    [ -z "${R_QUIET[$t]:-}" ] || echo "note $t: ${R_QUIET[$t]}"
    if [ "${R_ERR[$t]}" -gt 0 ] || [ "${R_LEFT[$t]}" -gt 0 ]; then
        echo "FAIL $t: ${R_ERR[$t]} errors/rejections, ${R_LEFT[$t]} stdio servers left behind" >&2
        FAILED=1
    fi
done
if [ "$FAILED" -ne 0 ]; then
    KEEP_TMP=1
    exit 1
fi
