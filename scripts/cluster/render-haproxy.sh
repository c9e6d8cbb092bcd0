#!/usr/bin/env bash
# Renders scripts/cluster/haproxy.cfg.in for N shardcat nodes to stdout (rules: the
# template's header; tests/support/cluster.rs renders it the same way).
#
#   render-haproxy.sh N [PORT] [ADMIN_PORT] [FRONTEND] [STATS_SOCKET]
#
# Node i (1..N) is n<i> on 127.0.0.<1+i>:PORT (default 8080), admin 127.0.0.<1+i>:ADMIN_PORT
# (default 9090); FRONTEND defaults to 127.0.0.1:8000, STATS_SOCKET to
# /tmp/shardcat-haproxy.sock. `render-haproxy.sh 3 > haproxy.cfg` makes the shipped file.
set -euo pipefail

n="${1:?usage: render-haproxy.sh N [PORT] [ADMIN_PORT] [FRONTEND] [STATS_SOCKET]}"
port="${2:-8080}"
admin_port="${3:-9090}"
frontend="${4:-127.0.0.1:8000}"
socket="${5:-/tmp/shardcat-haproxy.sock}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "$n" in
    '' | *[!0-9]*) echo "render-haproxy.sh: N must be a number, got $n" >&2; exit 2 ;;
esac
if [ "$n" -lt 1 ] || [ "$n" -gt 253 ]; then
    echo "render-haproxy.sh: N must be 1 to 253 (127.0.0.2 .. 127.0.0.254)" >&2
    exit 2
fi

awk -v n="$n" -v port="$port" -v aport="$admin_port" -v fe="$frontend" -v sock="$socket" '
    function fill(line, i,   addr) {
        addr = "127.0.0." (1 + i)
        gsub(/@NODE@/, "n" i, line)
        gsub(/@ADMIN_ADDR@/, addr, line)
        gsub(/@ADMIN_PORT@/, aport, line)
        gsub(/@ADDR@/, addr, line)
        gsub(/@PORT@/, port, line)
        return line
    }
    /^[ \t]*#/ { print; next }
    {
        gsub(/@FRONTEND@/, fe)
        gsub(/@STATS_SOCKET@/, sock)
    }
    /@NODE@/ { for (i = 1; i <= n; i++) print fill($0, i); next }
    { print }
' "$here/haproxy.cfg.in"
