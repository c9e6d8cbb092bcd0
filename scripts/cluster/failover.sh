#!/usr/bin/env bash
# Failover of one node under load: 3 clustered nodes behind HAProxy in front of the demo
# upstream; loadgen --workload call (a session per user, set up once, then tools/call) through
# HAProxy at a fixed open-loop rate; node n2 is SIGKILLed T_KILL s into the measured window
# and started again at T_RESTART s. Prints what was served and failed over the run and around
# the kill, how long after the kill the last error came (after it, every session's calls
# succeed), whether any session had to re-initialize (a 404 to its sealed id), what the
# restarted n2 served after it came back, and each node's adoptions.
#
# Pinning (2 cores): the three nodes (SHARDS=2 each) share core 0, the system under test;
# HAProxy (one thread: its affinity is one core), the demo upstream and loadgen share core 1.
# At 2000 req/s neither core is near saturation, so the figures are about failover, not
# throughput.
#
# Env: RATE (2000 req/s), CONNS (60), DURATION (30 s), T_KILL (10 s), T_RESTART (20 s),
# SHARDS (2), NODE_CPUS (0), HAPROXY_CPUS (1), DEMO_CPUS (1), LG_CPUS (1), KEEP_TMP=1 keeps
# the temp dir (timeline.csv, loadgen.json, logs). Needs release builds:
#   cargo build --release -p shardcat -p loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE="${RATE:-2000}"; CONNS="${CONNS:-60}"; DURATION="${DURATION:-30}"
T_KILL="${T_KILL:-10}"; T_RESTART="${T_RESTART:-20}"
NODE_CPUS="${NODE_CPUS-0}"; HAPROXY_CPUS="${HAPROXY_CPUS-1}"; DEMO_CPUS="${DEMO_CPUS-1}"
LG_CPUS="${LG_CPUS-1}"
BIN=target/release/shardcat; LG=target/release/loadgen
TMP="$(mktemp -d /tmp/shardcat-failover.XXXXXX)"; PIDS=()
log() { echo "failover: $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=../lib.sh
. scripts/lib.sh
# shellcheck source=lib.sh
. scripts/cluster/lib.sh
trap cleanup EXIT INT TERM
for b in "$BIN" "$LG"; do [ -x "$b" ] || die "$b missing (see the header)"; done
awk -v k="$T_KILL" -v r="$T_RESTART" -v d="$DURATION" 'BEGIN { exit !(0 < k && k < r && r < d) }' ||
    die "need 0 < T_KILL < T_RESTART < DURATION"

now_ms() { date +%s%3N; }
calls_on() { node_metric "$1" shardcat_requests_total 'method="tools/call"'; }

cluster_haproxy
cluster_key
cluster_demo
for i in 1 2 3; do cluster_start_node "$i"; done
cluster_start_haproxy 3
cluster_wait_up 3
log "3 nodes up; pinned: nodes ${NODE_CPUS:-any}, HAProxy ${HAPROXY_CPUS:-any}, demo ${DEMO_CPUS:-any}, loadgen ${LG_CPUS:-any}"

# shellcheck disable=SC2046
$(pin_to "$LG_CPUS") "$LG" --target http://127.0.0.1:8000/mcp --workload call \
    --connections "$CONNS" --rate "$RATE" --duration-s "$DURATION" \
    --timeline-csv "$TMP/timeline.csv" --json "$TMP/loadgen.json" >"$TMP/loadgen.log" 2>&1 &
LGP=$!
PIDS+=("$LGP")
# The CSV appears (header only) when the measured window starts.
for _ in $(seq 1 300); do
    [ -f "$TMP/timeline.csv" ] && break
    alive "$LGP" || die "loadgen exited early: $(tail -5 "$TMP/loadgen.log")"
    sleep 0.05
done
[ -f "$TMP/timeline.csv" ] || die "loadgen's window did not start in 15 s"
t0="$(now_ms)"
log "window started; killing n2 at +${T_KILL}s, restarting it at +${T_RESTART}s"

sleep_until() { # $1: seconds after t0
    local left
    left="$(awk -v t0="$t0" -v s="$1" -v now="$(now_ms)" 'BEGIN { printf "%.3f", (t0 + s * 1000 - now) / 1000 }')"
    awk -v l="$left" 'BEGIN { exit !(l > 0) }' && sleep "$left"
    return 0
}

# The counters just before the kill (read half a second early, so the kill lands on time).
sleep_until "$(awk -v k="$T_KILL" 'BEGIN { print k - 0.5 }')"
calls_n2_before="$(calls_on 2)"
for i in 1 2 3; do node_metric "$i" shardcat_cluster_sessions_adopted_total; done >"$TMP/adopted-before.txt"
sleep_until "$T_KILL"
# Taken before the kill: no error can come earlier. Disowned, so bash does not report it.
kill_ms="$(now_ms)"
disown "${NODE_PID[2]}"
kill -KILL "${NODE_PID[2]}"
while running "${NODE_PID[2]}"; do sleep 0.01; done
forget "${NODE_PID[2]}"
for _ in $(seq 1 40); do
    haproxy_status | grep -q '^n2 DOWN' && break
    sleep 0.05
done
down_ms="$(now_ms)"
log "n2 killed (had served $calls_n2_before calls); HAProxy saw it DOWN after $((down_ms - kill_ms)) ms"

sleep_until "$T_RESTART"
restart_ms="$(now_ms)"
cluster_start_node 2
for _ in $(seq 1 100); do
    haproxy_status | grep -q '^n2 UP' && break
    sleep 0.05
done
up_ms="$(now_ms)"
log "n2 restarted; READY and UP in HAProxy after $((up_ms - restart_ms)) ms"

wait "$LGP" || log "loadgen exited $? (errors fail its run; expected here)"
forget "$LGP"

# Per node: calls served (n2: since its restart) and adoptions.
for i in 1 2 3; do
    echo "n$i $(calls_on "$i") $(node_metric "$i" shardcat_cluster_sessions_adopted_total) $(node_metric "$i" shardcat_cluster_ids_refused_total)"
done >"$TMP/nodes.txt"
haproxy_stats="$(python3 - "$HAPROXY_SOCK" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
lines = data.decode().splitlines()
cols = lines[0].lstrip("# ").split(",")
for l in lines[1:]:
    f = dict(zip(cols, l.split(",")))
    if f.get("pxname") == "shardcat" and f.get("svname") == "BACKEND":
        print(f"retries {f['wretr']}, redispatches {f['wredis']}, 5xx answered {f['hrsp_5xx']}")
PY
)"

python3 - "$TMP/loadgen.json" "$TMP/timeline.csv" "$TMP/nodes.txt" "$kill_ms" "$down_ms" \
    "$restart_ms" "$up_ms" "$calls_n2_before" "$haproxy_stats" "$RATE" "$CONNS" \
    "$TMP/adopted-before.txt" <<'PY'
import csv, json, sys
r = json.load(open(sys.argv[1]))
rows = list(csv.DictReader(open(sys.argv[2])))
kill, down, restart, up = (int(x) for x in sys.argv[4:8])
n2_before, hap, rate, conns = sys.argv[8], sys.argv[9], sys.argv[10], sys.argv[11]
start = r["steps"][0]["start_unix_ms"]
k, rs = (kill - start) / 1000, (restart - start) / 1000
tot = lambda key, a=0, b=10**9: sum(int(x[key]) for x in rows if a <= int(x["second"]) < b)
print(f"loadgen call, open loop {rate} req/s, {conns} connections, through HAProxy to 3 nodes")
print(f"  window      {r['seconds']:.1f} s: served {r['requests']} calls ({r['rps']:.0f}/s), "
      f"failed {tot('failed')}, rejected {tot('rejected')}, re-initialized sessions {r['reinits']}"
      f" (outside the window: {r['errors'] - tot('failed')} errors)")
l = r["latency"]
print(f"  latency     p50 {l['p50_ms']:.3f} ms, p99 {l['p99_ms']:.3f}, p99.9 {l['p999_ms']:.3f}, max {l['max_ms']:.3f}")
print(f"  kill        n2 SIGKILLed at +{k:.3f} s (it had served {n2_before} calls by 0.5 s before); "
      f"HAProxy marked it DOWN {down - kill} ms later")
ks = int(k)
print(f"  around it   seconds {ks-1}..{ks+3}: served {tot('ok', ks-1, ks+4)}, failed {tot('failed', ks-1, ks+4)}")
for x in rows[max(ks - 1, 0):ks + 4]:
    print(f"              s{x['second']:>3}: ok {x['ok']:>5} failed {x['failed']:>4} rejected {x['rejected']:>3} reinits {x['reinits']:>3}")
first, last = r["steps"][0]["first_error_s"], r["steps"][0]["last_error_s"]
if first is None:
    print("  recovery    no call failed in the window")
else:
    bad = [int(x["second"]) for x in rows if int(x["failed"]) > 0]
    print(f"  errors      first at +{first:.3f} s, last at +{last:.3f} s; seconds with failures: {bad}")
    print(f"  recovery    {1000 * (last - k):.0f} ms from the kill to the last failed call "
          f"(after it every session's calls succeeded)" if first >= k else
          f"  recovery    errors before the kill too (first at +{first:.3f} s): see the CSV")
after = [x for x in rows if int(x["second"]) >= int(rs)]
print(f"  restart     n2 started at +{rs:.3f} s, READY and UP in HAProxy after {up - restart} ms; "
      f"failed from second {int(rs)} on: {sum(int(x['failed']) for x in after)}")
before = [int(x) for x in open(sys.argv[12]).read().split()]
for line, b in zip(open(sys.argv[3]), before):
    n, calls, adopted, refused = line.split()
    if n == "n2":
        print(f"  node n2     since its restart: tools/call served {calls}, sessions adopted {adopted}, ids refused {refused}")
    else:
        print(f"  node {n}     tools/call served {calls}, sessions adopted {adopted} "
              f"({int(adopted) - b} after the kill), ids refused {refused}")
print(f"  HAProxy     {hap}")
for msg, n in r["error_samples"]:
    print(f"  error       {n} x {msg}")
PY
