# The pieces of a local cluster on loopback (run-local.sh, failover.sh, sealed-bench.sh);
# sourced, not run, after scripts/lib.sh. The sourcing script defines log and die, sets TMP
# and PIDS as scripts/lib.sh asks, and BIN (the shardcat binary). Knobs, with defaults:
#   PORT (8080), ADMIN_PORT (9090): every node's listener and admin port; node i is
#     n<i> on 127.0.0.<1+i>.
#   SHARDS (2): shards per node.
#   NODE_CPUS, DEMO_CPUS, HAPROXY_CPUS: taskset -c lists for the nodes, the demo upstream
#     and HAProxy (empty: not pinned).
# Every process started is appended to PIDS, so cleanup stops it.

PORT="${PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9090}"
SHARDS="${SHARDS:-2}"
NODE_CPUS="${NODE_CPUS:-}"
DEMO_CPUS="${DEMO_CPUS:-}"
HAPROXY_CPUS="${HAPROXY_CPUS:-}"
CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Pid of node i (index i), set by cluster_start_node.
NODE_PID=()

# `taskset -c LIST` when LIST is not empty (word-split on purpose by the callers).
pin_to() { [ -n "$1" ] && echo "taskset -c $1"; }

node_addr() { echo "127.0.0.$((1 + $1))"; }

# Sets HAPROXY, installing haproxy with apt-get when it is not on PATH.
cluster_haproxy() {
    if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
        log "haproxy missing: apt-get install -y haproxy"
        DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >"$TMP/apt.log" 2>&1 ||
            { cat "$TMP/apt.log" >&2; die "could not install haproxy"; }
    fi
    HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
}

# One session key for every node: $TMP/session.key.
cluster_key() { "$BIN" gen-key >"$TMP/session.key"; }

# Starts the demo upstream on a free loopback port; sets DEMO_URL and DEMO_PID.
cluster_demo() {
    # shellcheck disable=SC2046
    $(pin_to "$DEMO_CPUS") "$BIN" demo-upstream --listen 127.0.0.1:0 \
        >"$TMP/demo.out" 2>"$TMP/demo.err" &
    DEMO_PID=$!
    PIDS+=("$DEMO_PID")
    DEMO_URL="$(wait_ready "$TMP/demo.out" READY "$DEMO_PID" demo | sed 's/.*demo=//')"
    log "demo upstream $DEMO_URL"
}

# Writes $TMP/n<i>.toml: the demo upstream, and [cluster] (node_id n<i>, the shared key)
# unless CLUSTER=0 (then a plain node with unsealed session ids). The node expects HAProxy's
# PROXY protocol header (send-proxy-v2) unless PROXY=0 (a node loaded directly; start its
# HAProxy with PROXY=0 too).
cluster_node_config() {
    local i="$1"
    {
        if [ "${PROXY:-1}" = 1 ]; then
            printf '[server]\nproxy_protocol = true\n\n'
        fi
        printf '[[upstream]]\nurl = "%s"\n' "$DEMO_URL"
        if [ "${CLUSTER:-1}" = 1 ]; then
            printf '\n[cluster]\nnode_id = "n%s"\nsession_key_file = "%s"\n' "$i" "$TMP/session.key"
        fi
    } >"$TMP/n$i.toml"
}

# Starts node i with its config (written first if missing) and waits for READY; sets
# NODE_PID[i]. Its output goes to $TMP/n<i>.out/.err (appended: a restart keeps the first
# run's lines).
cluster_start_node() {
    local i="$1" addr
    addr="$(node_addr "$i")"
    [ -f "$TMP/n$i.toml" ] || cluster_node_config "$i"
    : >"$TMP/n$i.out"
    # shellcheck disable=SC2046
    $(pin_to "$NODE_CPUS") "$BIN" serve --listen "$addr:$PORT" --admin "$addr:$ADMIN_PORT" \
        --shards "$SHARDS" --config "$TMP/n$i.toml" >>"$TMP/n$i.out" 2>>"$TMP/n$i.err" &
    NODE_PID[i]=$!
    PIDS+=("${NODE_PID[i]}")
    wait_ready "$TMP/n$i.out" READY "${NODE_PID[i]}" "n$i" >/dev/null
    log "n$i on $addr:$PORT (admin $addr:$ADMIN_PORT), pid ${NODE_PID[i]}"
}

# Renders HAProxy's config for nodes 1..N (BALANCE, if set, replaces the template's balance
# line, e.g. BALANCE=roundrobin) and starts it; sets HAPROXY_PID, HAPROXY_SOCK. FRONTEND
# defaults to 127.0.0.1:8000.
cluster_start_haproxy() {
    local n="$1"
    HAPROXY_SOCK="$TMP/haproxy.sock"
    "$CLUSTER_DIR/render-haproxy.sh" "$n" "$PORT" "$ADMIN_PORT" "${FRONTEND:-127.0.0.1:8000}" \
        "$HAPROXY_SOCK" >"$TMP/haproxy.cfg"
    if [ -n "${BALANCE:-}" ]; then
        sed -i "s/^\([[:space:]]*\)balance .*/\1balance $BALANCE/" "$TMP/haproxy.cfg"
    fi
    if [ "${PROXY:-1}" = 0 ]; then
        sed -i 's/ send-proxy-v2//' "$TMP/haproxy.cfg"
    fi
    "$HAPROXY" -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects $TMP/haproxy.cfg"
    # shellcheck disable=SC2046
    $(pin_to "$HAPROXY_CPUS") "$HAPROXY" -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
}

# HAProxy's view: "name status" of every node, one a line (its stats CSV over the socket).
haproxy_status() {
    python3 - "$HAPROXY_SOCK" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
lines = data.decode().splitlines()
cols = lines[0].lstrip("# ").split(",")
px, sv, st = cols.index("pxname"), cols.index("svname"), cols.index("status")
for l in lines[1:]:
    f = l.split(",")
    if l and f[px] == "shardcat" and f[sv] not in ("BACKEND", "FRONTEND"):
        print(f[sv], f[st])
PY
}

# Waits (up to 10 s) until HAProxy has N nodes UP.
cluster_wait_up() {
    local n="$1" up=0
    for _ in $(seq 1 100); do
        alive "$HAPROXY_PID" || { cat "$TMP/haproxy.log" >&2; die "haproxy exited"; }
        up="$(haproxy_status 2>/dev/null | grep -c ' UP$' || true)"
        [ "$up" = "$n" ] && return 0
        sleep 0.1
    done
    die "HAProxy has $up of $n nodes up; see $TMP/haproxy.log"
}

# Sum of a metric's samples (all shards) on node i's /metrics; LABEL_RE filters the lines.
node_metric() {
    local i="$1" name="$2" filter="${3:-}"
    curl -sf --max-time 2 "http://$(node_addr "$i"):$ADMIN_PORT/metrics" |
        awk -v n="$name" -v f="$filter" '$1 ~ "^" n "({|$)" && (f == "" || $1 ~ f) { s += $NF }
            END { printf "%d\n", s }'
}
