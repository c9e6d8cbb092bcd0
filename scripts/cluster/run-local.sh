#!/usr/bin/env bash
# Runs a local shardcat cluster on loopback: N nodes behind HAProxy, in front of one demo
# upstream, until Ctrl-C (everything it started is stopped on exit).
#
#   scripts/cluster/run-local.sh [N]          (N: 1 to 253, default 3)
#
# Node i (1..N) is n<i>: `shardcat serve --shards 2` on 127.0.0.<1+i>:$PORT (default 8080),
# admin (/health, /metrics) on 127.0.0.<1+i>:$ADMIN_PORT (default 9090), with a config of its
# own holding [cluster] (node_id n<i>, one session key for all, from `shardcat gen-key`).
# HAProxy's config is scripts/cluster/haproxy.cfg.in rendered for N nodes
# (render-haproxy.sh); its frontend is $FRONTEND (default 127.0.0.1:8000) and its runtime
# API a socket in the run's temp dir (`echo "show stat" | socat - UNIX:...` if you have socat).
#
# Uses target/release/shardcat (built with `cargo build --release` if missing), or
# $SHARDCAT_BIN. Installs haproxy with apt-get when it is not on PATH. KEEP_TMP=1 keeps the
# temp dir (configs, key, logs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
n="${1:-3}"
port="${PORT:-8080}"
admin_port="${ADMIN_PORT:-9090}"
frontend="${FRONTEND:-127.0.0.1:8000}"
shards="${SHARDS:-2}"

log() { echo "run-local: $*" >&2; }
die() { log "$*"; exit 1; }

case "$n" in
    '' | *[!0-9]*) die "N must be a number, got $n" ;;
esac
[ "$n" -ge 1 ] && [ "$n" -le 253 ] || die "N must be 1 to 253 (127.0.0.2 .. 127.0.0.254)"
case "$frontend" in
    127.*) ;;
    *) die "FRONTEND must be a loopback address (127.0.0.0/8), got $frontend" ;;
esac

TMP="$(mktemp -d /tmp/shardcat-cluster.XXXXXX)"
PIDS=()
# shellcheck source=../lib.sh
. "$repo/scripts/lib.sh"
trap cleanup EXIT
trap 'exit 0' INT TERM

if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    log "haproxy missing: apt-get install -y haproxy"
    DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >"$TMP/apt.log" 2>&1 ||
        { cat "$TMP/apt.log" >&2; die "could not install haproxy"; }
fi
haproxy="$(command -v haproxy || echo /usr/sbin/haproxy)"

bin="${SHARDCAT_BIN:-$repo/target/release/shardcat}"
if [ ! -x "$bin" ]; then
    log "building $bin (cargo build --release)"
    (cd "$repo" && cargo build --release) || die "cargo build --release failed"
fi

"$bin" gen-key >"$TMP/session.key"

# The demo upstream, on a free loopback port.
"$bin" demo-upstream --listen 127.0.0.1:0 >"$TMP/demo.out" 2>"$TMP/demo.err" &
PIDS+=("$!")
demo_url="$(wait_ready "$TMP/demo.out" READY "$!" demo | sed 's/.*demo=//')"
log "demo upstream $demo_url"

for i in $(seq 1 "$n"); do
    addr="127.0.0.$((1 + i))"
    cat >"$TMP/n$i.toml" <<TOML
[server]
proxy_protocol = true           # HAProxy names each client (send-proxy-v2)

[[upstream]]
url = "$demo_url"

[cluster]
node_id = "n$i"
session_key_file = "$TMP/session.key"
TOML
    "$bin" serve --listen "$addr:$port" --admin "$addr:$admin_port" --shards "$shards" \
        --config "$TMP/n$i.toml" >"$TMP/n$i.out" 2>"$TMP/n$i.err" &
    PIDS+=("$!")
    wait_ready "$TMP/n$i.out" READY "$!" "n$i" >/dev/null
    log "n$i on $addr:$port (admin $addr:$admin_port)"
done

"$here/render-haproxy.sh" "$n" "$port" "$admin_port" "$frontend" "$TMP/haproxy.sock" \
    >"$TMP/haproxy.cfg"
"$haproxy" -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects $TMP/haproxy.cfg"
"$haproxy" -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
PIDS+=("$!")
hpid="$!"

# Until HAProxy's health checks have every node up (its stats CSV, read with python3).
up=0
for _ in $(seq 1 100); do
    alive "$hpid" || { cat "$TMP/haproxy.log" >&2; die "haproxy exited"; }
    up="$(python3 - "$TMP/haproxy.sock" <<'PY' 2>/dev/null || echo 0
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
print(sum(1 for l in lines[1:] if l and (f := l.split(","))[px] == "shardcat"
          and f[sv] not in ("BACKEND", "FRONTEND") and f[st] == "UP"))
PY
)"
    [ "$up" = "$n" ] && break
    sleep 0.1
done
[ "$up" = "$n" ] || die "HAProxy has $up of $n nodes up; see $TMP/haproxy.log"

log "$n nodes up behind HAProxy; logs and configs in $TMP"
echo "http://$frontend/mcp"
log "Ctrl-C stops everything"
wait "$hpid"
