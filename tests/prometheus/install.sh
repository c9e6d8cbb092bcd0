#!/usr/bin/env bash
# Installs promtool (Debian package `prometheus`) on first use, for tests/metrics.rs, which runs
# `promtool check metrics` on the gateway's /metrics. Idempotent; test binaries running at once
# wait for one another. Prints `promtool ready: PATH` on success. Exits non-zero, saying why,
# when promtool is missing and cannot be installed (the test then fails with that reason).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${SHARDCAT_PROMETHEUS_DIR:-$root/target/prometheus}"
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if command -v promtool >/dev/null; then
    echo "promtool ready: $(command -v promtool)"
    exit 0
fi
log="$dir/install.log"
: >"$log"
fail() { echo "promtool install failed: $1 (log: $log)" >&2; tail -n 20 "$log" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "promtool is not installed and this is not root (Debian: apt-get install prometheus)"
command -v apt-get >/dev/null || fail "promtool is not installed and there is no apt-get (Debian package: prometheus)"
# The package's postinst may try to start a prometheus service; nothing here relies on it.
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } \
    >>"$log" 2>&1 || fail "apt-get install prometheus"
command -v promtool >/dev/null || fail "the prometheus package installed no promtool"
echo "promtool ready: $(command -v promtool)"
