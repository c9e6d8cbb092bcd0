#!/usr/bin/env bash
# Cluster-wide p99 from the gateways' histograms, next to loadgen's p99, for one run:
#
#   loadgen (open loop, one worker thread per node) --> node A  127.0.0.1:LISTEN  (admin 127.0.0.1:ADMIN)
#                                                   \-> node B  127.0.0.2:LISTEN  (admin 127.0.0.2:ADMIN)
#   both nodes --> one demo upstream on 127.0.0.1;  Prometheus on 127.0.0.1:PROM_PORT scrapes
#   both admin endpoints every second.
#
# Each node is a `shardcat serve --shards 1` (node A pinned to core 0, node B to core 1; the demo
# upstream, loadgen and Prometheus float). After the run, Prometheus' HTTP API answers
#   histogram_quantile(Q, sum by (le) (rate(shardcat_request_duration_seconds_bucket[W])))
# at the time loadgen's measured window ended, W = the window's length: the p50 and p99 of both
# nodes together, next to loadgen's own (timed from each scheduled send, so it also holds
# loopback transit and loadgen's own delays; the gateway times from the request head to the end
# of the response). Per node figures, the share of requests under a few bucket bounds (the p99
# without interpolation inside a bucket) and the request counts of both sides are printed too.
# Last, every query of the Grafana dashboard (scripts/grafana/shardcat.json) is run against the
# same Prometheus: the script fails if one does not parse.
#
# Needs a release build (`cargo build --release -p loadgen -p shardcat`; done here) and the
# Debian package `prometheus` (installed with apt-get when missing). Loopback addresses only.
#
# Env: DURATION (30, seconds), RATE (4000, requests/s over both nodes), CONNS (64), LISTEN
# (18480), ADMIN (19480), PROM_PORT (19490), KEEP_TMP=1 keeps the temp dir (configs, logs,
# loadgen JSON, Prometheus answers).
set -euo pipefail

DURATION="${DURATION:-30}"
RATE="${RATE:-4000}"
CONNS="${CONNS:-64}"
LISTEN="${LISTEN:-18480}"
ADMIN="${ADMIN:-19480}"
PROM_PORT="${PROM_PORT:-19490}"
NODES=(127.0.0.1 127.0.0.2)

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "[prom-2node] $*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    log "installing prometheus (Debian package)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
for t in prometheus promtool taskset python3 curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (one per node)"

log "building (cargo build --release -p loadgen -p shardcat)"
cargo build --release -p loadgen -p shardcat >&2

TMP="$(mktemp -d /tmp/prom-2node.XXXXXX)"
PIDS=()
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Private copies: the shared target dir may be rebuilt by someone else mid-run.
cp "$REPO/target/release/shardcat" "$TMP/shardcat"
cp "$REPO/target/release/loadgen" "$TMP/loadgen"

# --- upstream and nodes ----------------------------------------------------------------------
"$TMP/shardcat" demo-upstream --listen 127.0.0.1:0 >"$TMP/demo.out" 2>"$TMP/demo.err" &
pid=$!
PIDS+=("$pid")
DEMO_URL="$(wait_ready "$TMP/demo.out" "READY demo=" "$pid" "demo upstream")"
DEMO_URL="${DEMO_URL#READY demo=}"

TARGETS=()
SCRAPE=()
for i in "${!NODES[@]}"; do
    ip="${NODES[$i]}"
    taskset -c "$i" "$TMP/shardcat" serve --listen "$ip:$LISTEN" --admin "$ip:$ADMIN" \
        --shards 1 --upstream "$DEMO_URL" >"$TMP/node$i.out" 2>"$TMP/node$i.err" &
    pid=$!
    PIDS+=("$pid")
    wait_ready "$TMP/node$i.out" "READY listen=" "$pid" "node $i ($ip)" >/dev/null
    TARGETS+=("http://$ip:$LISTEN/mcp")
    SCRAPE+=("'$ip:$ADMIN'")
    # What Prometheus will read must pass promtool first.
    curl -sf "http://$ip:$ADMIN/metrics" | promtool check metrics >&2 \
        || die "promtool check metrics failed on node $i"
done

# --- Prometheus ------------------------------------------------------------------------------
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: shardcat
    static_configs:
      - targets: [$(IFS=,; echo "${SCRAPE[*]}")]
EOF
promtool check config "$TMP/prometheus.yml" >&2
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
PIDS+=("$PROM_PID")
PROM="http://127.0.0.1:$PROM_PORT"
for _ in $(seq 1 100); do
    curl -sf "$PROM/-/ready" >/dev/null 2>&1 && break
    alive "$PROM_PID" || { tail -n 20 "$TMP/prometheus.log" >&2; die "prometheus exited"; }
    sleep 0.1
done
curl -sf "$PROM/-/ready" >/dev/null || die "prometheus not ready after 10 s"

# Instant query at time $2 (Unix seconds); prints the answer's JSON.
query() {
    curl -sf "$PROM/api/v1/query" --data-urlencode "query=$1" --data-urlencode "time=$2"
}
# Both targets up, scraped at least twice.
for _ in $(seq 1 100); do
    up="$(query 'sum(up{job="shardcat"})' "$(date +%s.%N)" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')"
    [ "$up" = 2 ] && break
    sleep 0.1
done
[ "$up" = 2 ] || die "Prometheus does not see both nodes up (up = $up)"
sleep 2

# --- load ------------------------------------------------------------------------------------
log "loadgen: ${#TARGETS[@]} nodes, $CONNS connections, $RATE req/s, ${DURATION}s"
"$TMP/loadgen" --target "$(IFS=,; echo "${TARGETS[*]}")" --threads "${#TARGETS[@]}" \
    --workload call --connections "$CONNS" --rate "$RATE" --duration-s "$DURATION" \
    --json "$TMP/loadgen.json" >"$TMP/loadgen.out" 2>&1 || { cat "$TMP/loadgen.out" >&2; die "loadgen failed"; }
END="$(date +%s.%N)"
cat "$TMP/loadgen.out" >&2
# Two more scrapes past the window's end.
sleep 2.5

# --- figures ---------------------------------------------------------------------------------
W="${DURATION%.*}s"
H='shardcat_request_duration_seconds_bucket'
for q in 0.5 0.99; do
    query "histogram_quantile($q, sum by (le) (rate(${H}[$W])))" "$END" >"$TMP/q$q.json"
    query "histogram_quantile($q, sum by (instance, le) (rate(${H}[$W])))" "$END" >"$TMP/q$q-node.json"
done
query "sum(increase(shardcat_request_duration_seconds_count[$W]))" "$END" >"$TMP/count.json"
# Share of requests at or under a few bounds: where the p99 falls without interpolation.
for le in 0.001 0.0025 0.005 0.01; do
    query "sum(rate(${H}{le=\"$le\"}[$W])) / sum(rate(shardcat_request_duration_seconds_count[$W]))" \
        "$END" >"$TMP/le$le.json"
done
query "sum by (instance) (increase(shardcat_requests_total{method=\"tools/call\"}[$W]))" "$END" >"$TMP/calls.json"

python3 - "$TMP" "$RATE" "$CONNS" "$W" <<'EOF'
import json, sys
tmp, rate, conns, w = sys.argv[1:]
def result(name):
    return json.load(open(f"{tmp}/{name}.json"))["data"]["result"]
def one(name):
    r = result(name)
    return float(r[0]["value"][1]) if r else float("nan")
lg = json.load(open(f"{tmp}/loadgen.json"))
lat = lg["latency"]
print(f"2 nodes x 1 shard, open loop {rate} req/s, {conns} connections, window {w}")
print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
print(f"{'Prometheus, both nodes':28}{one('q0.5')*1e3:>10.3f}{one('q0.99')*1e3:>10.3f}")
for r50, r99 in zip(result("q0.5-node"), result("q0.99-node")):
    inst = r99["metric"].get("instance", "?")
    print(f"{'  node ' + inst:28}{float(r50['value'][1])*1e3:>10.3f}{float(r99['value'][1])*1e3:>10.3f}")
print(f"{'loadgen':28}{lat['p50_ms']:>10.3f}{lat['p99_ms']:>10.3f}")
print(f"requests: loadgen {lg['requests']} measured ({lg['rps']:.0f}/s, errors {lg['errors']}, "
      f"rejected {lg['rejected']}); gateways observed {one('count'):.0f} in the window")
print("gateways, share of requests at or under: " + ", ".join(
    f"{float(le)*1e3:g} ms {one('le' + le)*100:.2f}%" for le in ["0.001", "0.0025", "0.005", "0.01"]))
for r in result("calls"):
    print(f"  tools/call on {r['metric'].get('instance', '?')}: {float(r['value'][1]):.0f}")
EOF

# The dashboard's queries against the same Prometheus: each must parse; most return data here
# (rejections, upstream trouble and tape drops have none in a clean run without recording).
python3 - "$PROM" "$END" "$REPO/scripts/grafana/shardcat.json" <<'EOF'
import json, sys, urllib.parse, urllib.request
prom, end, path = sys.argv[1:]
exprs = [t["expr"] for p in json.load(open(path))["panels"] for t in p.get("targets", [])]
ok = with_data = 0
for e in exprs:
    q = e.replace("$instance", ".*").replace("$__rate_interval", "5s")
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": end})
    try:
        r = json.load(urllib.request.urlopen(url, timeout=5))
    except Exception as err:  # Prometheus answers 400 to a query it cannot parse
        print(f"dashboard query failed: {q}: {err}", file=sys.stderr)
        continue
    ok += r["status"] == "success"
    with_data += bool(r["data"]["result"])
print(f"dashboard: {ok} of {len(exprs)} queries valid, {with_data} with data")
sys.exit(0 if ok == len(exprs) else 1)
EOF
