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
# temp dir (configs, key, logs). The pieces are scripts/cluster/lib.sh (shared with
# failover.sh and sealed-bench.sh); SHARDS (2) and the *_CPUS pinning knobs are read there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
n="${1:-3}"
frontend="${FRONTEND:-127.0.0.1:8000}"

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

BIN="${SHARDCAT_BIN:-$repo/target/release/shardcat}"
# shellcheck source=lib.sh
. "$here/lib.sh"
cluster_haproxy
if [ ! -x "$BIN" ]; then
    log "building $BIN (cargo build --release)"
    (cd "$repo" && cargo build --release) || die "cargo build --release failed"
fi

cluster_key
cluster_demo
for i in $(seq 1 "$n"); do
    cluster_start_node "$i"
done
FRONTEND="$frontend" cluster_start_haproxy "$n"
cluster_wait_up "$n"

log "$n nodes up behind HAProxy; logs and configs in $TMP"
echo "http://$frontend/mcp"
log "Ctrl-C stops everything"
wait "$HAPROXY_PID"
