# Shared by the benchmark scripts (compare*.sh, generator-ceiling.sh); sourced, not run.
# The sourcing script defines log and die, and sets TMP (its temp dir) and PIDS (the pids it
# started, oldest first) before any of these run.

# Installs nginx and the further Debian packages named (each package is the tool it provides,
# e.g. wrk) with apt-get when any is missing, then checks that they, taskset, python3 and curl
# are on PATH.
need_tools() {
    local t missing=0
    for t in nginx "$@"; do command -v "$t" >/dev/null 2>&1 || missing=1; done
    if [ "$missing" = 1 ]; then
        log "installing nginx $*"
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y nginx "$@" >&2
    fi
    for t in nginx taskset python3 curl "$@"; do
        command -v "$t" >/dev/null 2>&1 || die "$t not found"
    done
}

# True while PID exists (zombies included).
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Process state letter from /proc/PID/stat ("" when gone).
pstate() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $1}'; }

# Alive and not a zombie/dead entry waiting to be reaped.
running() { local s; s="$(pstate "$1")"; [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]; }

# SIGTERM, up to 5 s for a clean exit, then SIGKILL; reaps the pid either way.
stop_pid() {
    local pid="$1" i
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            log "pid $pid still running (state $(pstate "$pid")) 5 s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# EXIT trap: stops every started process, newest first (load generator, proxy, upstream), and
# removes TMP unless the run failed or KEEP_TMP=1.
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
    # nginx workers are children of the master and go with it; make sure regardless.
    for p in $(cat "$TMP"/nginx-workers 2>/dev/null); do stop_pid "$p"; done
    if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

# Drops PID from PIDS once it was stopped by hand.
forget() {
    local pid="$1" keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# Waits until FILE has a line starting with PREFIX (prints the line), or PID dies, or 10 s pass.
wait_ready() {
    local file="$1" prefix="$2" pid="$3" name="$4" i line
    for i in $(seq 1 100); do
        line="$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)"
        if [ -n "$line" ]; then echo "$line"; return 0; fi
        alive "$pid" || { cat "${file%.out}.err" >&2 2>/dev/null; die "$name exited before READY"; }
        sleep 0.1
    done
    die "$name not ready after 10 s"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

CLK_TCK="$(getconf CLK_TCK)"

# utime+stime (clock ticks) of every pid given, whole thread group each.
cpu_ticks() {
    local total=0 p t
    for p in "$@"; do
        t="$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')"
        total=$((total + t))
    done
    echo "$total"
}

# "busy total" jiffies of one cpu from /proc/stat (busy excludes idle and iowait).
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}

# Busy percentage of a core between two core_jiffies readings.
busy_pct() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        t = y[2] - x[2]; if (t > 0) printf "%.0f", 100 * (y[1] - x[1]) / t; else print "?" }'
}

# VmRSS (kB) of every pid given, summed; 0 for a pid that is gone.
rss_kb() {
    local total=0 p v
    for p in "$@"; do
        v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Writes DIR/nginx.conf (worker_connections NGINX_CONNS, default 4096): one worker pinned to CPU, no access log, temp paths and logs under DIR,
# client keep-alive without nginx's per-connection request cap (1000, which would close the load
# generator's connections), then the http-block lines read from standard input.
write_nginx_conf() {
    local dir="$1" cpu="$2"
    mkdir -p "$dir/logs" "$dir/tmp"
    {
        cat <<EOF
user root;
worker_processes 1;
worker_cpu_affinity 1$(printf '%*s' "$cpu" '' | tr ' ' 0);
worker_rlimit_nofile $((2 * ${NGINX_CONNS:-4096} + 64));
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections ${NGINX_CONNS:-4096};
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
EOF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

# Checks DIR/nginx.conf and starts nginx on CPU in the foreground (background job); sets
# NGINX_PID and adds it to PIDS.
launch_nginx() {
    local dir="$1" cpu="$2"
    nginx -t -p "$dir" -c "$dir/nginx.conf" 2>"$dir/logs/test.log" || { cat "$dir/logs/test.log" >&2; die "nginx config test failed ($dir)"; }
    taskset -c "$cpu" nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' \
        >"$dir/logs/stdout" 2>"$dir/logs/stderr" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

# Starts nginx (1 worker on PROXY_CPU, upstream keepalive) in front of the demo at UPORT; sets
# NGINX_PID, NGINX_WORKER, NGINX_LOGDIR and TARGET_URL. TAG names its directory under TMP.
start_nginx() {
    local tag="$1" NPORT NGX
    NPORT="$(free_port)"
    NGX="$TMP/nginx-$tag"
    write_nginx_conf "$NGX" "$PROXY_CPU" <<EOF
    upstream demo {
        server 127.0.0.1:$UPORT;
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$NPORT;
        location = /ready {
            return 204;
        }
        # Mcp-Session-Id passes through both ways (nginx forwards and returns unknown headers).
        location /mcp {
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:$UPORT;
        }
    }
EOF
    launch_nginx "$NGX" "$PROXY_CPU"
    NGINX_WORKER=""
    for _ in $(seq 1 100); do
        alive "$NGINX_PID" || { cat "$NGX/logs/stderr" "$NGX/logs/error.log" >&2 2>/dev/null; die "nginx exited"; }
        NGINX_WORKER="$(pgrep -P "$NGINX_PID" | head -1 || true)"
        if [ -n "$NGINX_WORKER" ] && curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$NPORT/ready"; then break; fi
        sleep 0.1
    done
    [ -n "$NGINX_WORKER" ] || die "nginx worker did not start"
    echo "$NGINX_WORKER" >"$TMP/nginx-workers"
    NGINX_LOGDIR="$NGX/logs"
    log "nginx: master $NGINX_PID, worker $NGINX_WORKER (affinity $(taskset -cp "$NGINX_WORKER" | awk '{print $NF}')) on :$NPORT -> demo :$UPORT"
    TARGET_URL="http://127.0.0.1:$NPORT/mcp"
}

# Writes $TMP/rusage.py and sets RUSAGE to it. `python3 $RUSAGE OUT CMD...` runs CMD as its
# child and, when it exits, writes the child's CPU time (rusage from wait4: the same
# utime/stime the kernel shows in /proc/PID/stat, at microsecond resolution and covering the
# whole process up to its exit) as JSON to OUT. It forwards TERM/INT/HUP to the child, so
# cleanup stopping it stops the child too, and exits with the child's status.
write_rusage_helper() {
    RUSAGE="$TMP/rusage.py"
    cat >"$RUSAGE" <<'EOF'
import json, os, signal, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
def forward(sig, _frame):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"cpu_s": ru.ru_utime + ru.ru_stime, "utime_s": ru.ru_utime, "stime_s": ru.ru_stime,
               "wall_s": time.monotonic() - t0, "maxrss_kb": ru.ru_maxrss}, f)
rc = os.waitstatus_to_exitcode(status)
sys.exit(rc if rc >= 0 else 128 - rc)
EOF
}

# Busy time of both cores that none of our processes account for, in % of one core:
# other_pct C0A C0B C1A C1B OUR_TICKS RUSAGE_JSON (OUR_TICKS: the measured servers' ticks from
# /proc, e.g. proxy + upstream; RUSAGE_JSON: the load generator's, from write_rusage_helper).
# A shared machine's other tenants show up here; a few % is accounting noise.
other_pct() {
    python3 -c '
import json, sys
c0a, c0b, c1a, c1b = ([int(x) for x in a.split()] for a in sys.argv[1:5])
ours, ru, hz = int(sys.argv[5]), json.load(open(sys.argv[6])), int(sys.argv[7])
busy = (c0b[0] - c0a[0]) + (c1b[0] - c1a[0])
span = max((c0b[1] - c0a[1] + c1b[1] - c1a[1]) / 2, 1)
print(max(0, round(100 * (busy - ours - ru["cpu_s"] * hz) / span)))' "$@" "$CLK_TCK"
}

# The answers of the static upstream: discover (the gateway's era probe: this upstream speaks
# 2026-07-28) and the echo result the demo gives the benchmarks' tools/call.
STATIC_DISCOVER='{"jsonrpc":"2.0","id":0,"result":{"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"static","version":"1"}},"cacheScope":"public","capabilities":{"tools":{}},"resultType":"complete","supportedVersions":["2026-07-28"],"ttlMs":60000}}'
STATIC_ANSWER='{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false,"resultType":"complete"}}'

# Starts nginx serving STATIC_ANSWER to every request on /mcp (1 worker on the client core):
# an upstream cheaper than the demo, so the proxy's core is the bottleneck. Sets DEMO_PID and
# DEMO_URL. Needs CLIENT_CPU.
start_static() {
    local tag="$1" port dir
    port="$(free_port)"
    dir="$TMP/static-$tag"
    write_nginx_conf "$dir" "$CLIENT_CPU" <<EOF
    server {
        listen 127.0.0.1:$port;
        location /mcp {
            default_type application/json;
            # The gateway's era probe: this upstream speaks 2026-07-28.
            if (\$http_mcp_method = "server/discover") {
                return 200 '$STATIC_DISCOVER';
            }
            return 200 '$STATIC_ANSWER';
        }
    }
EOF
    launch_nginx "$dir" "$CLIENT_CPU"
    DEMO_PID=$NGINX_PID
    DEMO_URL="http://127.0.0.1:$port/mcp"
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 -X POST "$DEMO_URL" && return 0
        alive "$DEMO_PID" || { cat "$dir/logs/stderr" >&2; die "static nginx exited"; }
        sleep 0.1
    done
    die "static nginx not ready"
}
