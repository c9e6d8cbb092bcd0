#!/usr/bin/env bash
# Soak: scripts/soak.sh [DURATION_S]   (default 1800)
#
#   loadgen --scenario soak (session + stateless + SSE users, open loop)
#       --> shardcat serve (2 shards, recording into a temp tape dir, admin on loopback)
#       --> shardcat demo-upstream (GET streams push an event every PUSH_MS)
#
# loadgen samples the gateway's RSS, fds and summed /metrics gauges every SAMPLE_S seconds and
# judges them (the criterion is in `loadgen --help`). Then this script reads the tape counters
# from /metrics, stops the gateway (SIGTERM: it writes what is queued and logs its tape totals),
# runs `shardcat tape verify` on the tapes, and prints a table of the samples (one a minute; the
# CSV has them all) and the verdict. It fails if loadgen fails, if a recorded frame was dropped,
# shed, lost or too large, if verify finds corruption or a torn tail (the gateway stopped
# cleanly), or if the tapes hold fewer records than the gateway says it wrote.
#
# Pinning (tuning.md, GUIDE §5): the gateway's two shards pin themselves to cores 0 and 1; the
# demo upstream and loadgen are pinned to core 1, the persistence thread floats (no core is
# free of a shard). A soak looks for leaks, not peak figures: this keeps the layout of the
# benchmarks without starving either shard.
#
# Env: CONNS (64), RATE (500 req/s of the session and stateless users), SAMPLE_S (10), PUSH_MS
# (250), LISTEN / ADMIN (free loopback ports), EXTRA_CONFIG (TOML appended to the gateway's
# config, e.g. $'[timeouts]\nsession_idle_timeout_ms = 3600000'), TAPES_EXTRA (lines added to
# its [tapes] table, e.g. 'segment_max_bytes = 8388608'), OUT (target/soak/DATE: CSV, JSON,
# logs, summary), KEEP_TMP=1 keeps the temp dir with the tapes (also kept when the run fails).
set -euo pipefail

# All of it is one function, parsed before it runs: editing this file or checking out another
# commit during a 30-minute run cannot change what the rest of the run does.
main() {
DURATION="${1:-1800}"
CONNS="${CONNS:-64}"
RATE="${RATE:-500}"
SAMPLE_S="${SAMPLE_S:-10}"
PUSH_MS="${PUSH_MS:-250}"

cd "$(dirname "$0")/.."
REPO="$(pwd)"
OUT="${OUT:-$REPO/target/soak/$(date +%Y%m%d-%H%M%S)}"

log() { echo "[soak] $*" >&2; }
die() { log "error: $*"; exit 1; }

for t in taskset python3 curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (2 shards; upstream and loadgen on core 1)"

log "building (cargo build --release -p loadgen -p shardcat)"
cargo build --release -p loadgen -p shardcat >&2

TMP="$(mktemp -d /tmp/soak.XXXXXX)"
PIDS=()
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM
mkdir -p "$OUT"

# Private copies: the shared target dir may be rebuilt by someone else mid-run.
cp "$REPO/target/release/shardcat" "$TMP/shardcat"
cp "$REPO/target/release/loadgen" "$TMP/loadgen"

LISTEN="${LISTEN:-$(free_port)}"
ADMIN="${ADMIN:-$(free_port)}"
ADMIN_URL="http://127.0.0.1:$ADMIN"

# --- upstream and gateway --------------------------------------------------------------------
taskset -c 1 "$TMP/shardcat" demo-upstream --listen 127.0.0.1:0 --push-interval-ms "$PUSH_MS" \
    >"$TMP/demo.out" 2>"$TMP/demo.err" &
pid=$!
PIDS+=("$pid")
DEMO_URL="$(wait_ready "$TMP/demo.out" "READY demo=" "$pid" "demo upstream")"
DEMO_URL="${DEMO_URL#READY demo=}"

mkdir -p "$TMP/tapes"
cat >"$TMP/shardcat.toml" <<EOF
[server]
listen = "127.0.0.1:$LISTEN"
admin = "127.0.0.1:$ADMIN"
shards = 2

[upstream]
url = "$DEMO_URL"

[tapes]
dir = "$TMP/tapes"
${TAPES_EXTRA:-}
EOF
[ -z "${EXTRA_CONFIG:-}" ] || printf '\n%s\n' "$EXTRA_CONFIG" >>"$TMP/shardcat.toml"
cp "$TMP/shardcat.toml" "$OUT/shardcat.toml"
"$TMP/shardcat" serve --config "$TMP/shardcat.toml" >"$TMP/gateway.out" 2>"$OUT/gateway.log" &
GW_PID=$!
PIDS+=("$GW_PID")
wait_ready "$TMP/gateway.out" "READY listen=" "$GW_PID" "gateway" >/dev/null
curl -sf "$ADMIN_URL/metrics" >/dev/null || die "no /metrics on $ADMIN_URL"
log "gateway pid $GW_PID on :$LISTEN (admin :$ADMIN) -> demo $DEMO_URL; tapes in $TMP/tapes; results in $OUT"

# --- the soak --------------------------------------------------------------------------------
CMD=("$TMP/loadgen" --target "http://127.0.0.1:$LISTEN/mcp" --scenario soak
    --duration-s "$DURATION" --sample-s "$SAMPLE_S" --connections "$CONNS" --rate "$RATE"
    --admin "$ADMIN_URL" --watch-pid "$GW_PID" --pin 1
    --samples-csv "$OUT/samples.csv" --json "$OUT/soak.json")
echo "taskset -c 1 ${CMD[*]}" >"$OUT/command"
log "loadgen --scenario soak: ${DURATION}s, $CONNS connections, $RATE req/s"
set +e
taskset -c 1 "${CMD[@]}" 2>&1 | tee "$OUT/loadgen.out"
LOADGEN_RC="${PIPESTATUS[0]}"
set -e

# --- tapes -----------------------------------------------------------------------------------
curl -sf "$ADMIN_URL/metrics" >"$OUT/metrics-end.txt" || die "no /metrics after the run"
# Sums a family over its series (per-shard families have a shard label, no aggregate).
msum() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }' "$OUT/metrics-end.txt"; }
TAPE_LOST=0
TAPE_LINE=""
for f in frames_dropped frames_shed frames_lost_io frames_oversize io_errors; do
    v="$(msum "shardcat_tape_${f}_total")"
    TAPE_LINE+="$f $v, "
    TAPE_LOST=$((TAPE_LOST + v))
done
TAPE_LINE+="offered $(msum shardcat_tape_frames_offered_total), written $(msum shardcat_tape_frames_written_total)"

# SIGTERM and wait: the gateway drains (at most drain_timeout_ms, 10 s) and writes what is
# queued; it is not killed early, so the tapes end cleanly.
kill -TERM "$GW_PID"
for _ in $(seq 1 300); do running "$GW_PID" || break; sleep 0.1; done
running "$GW_PID" && die "gateway still running 30 s after SIGTERM"
wait "$GW_PID" 2>/dev/null || true
forget "$GW_PID"
TOTALS="$(grep -o 'tapes: offered .*' "$OUT/gateway.log" | tail -1 || true)"
WRITTEN="$(echo "$TOTALS" | sed -n 's/.* written \([0-9]*\).*/\1/p')"

set +e
"$TMP/shardcat" tape verify "$TMP/tapes" >"$OUT/verify.txt" 2>&1
VERIFY_RC=$?
set -e
VERIFY_TOTAL="$(tail -1 "$OUT/verify.txt")"
RECORDS="$(echo "$VERIFY_TOTAL" | sed -n 's/.* segments, \([0-9]*\) records intact.*/\1/p')"
TORN="$(echo "$VERIFY_TOTAL" | sed -n 's/.* \([0-9]*\) torn tails.*/\1/p')"
TAPE_BYTES="$(du -sb "$TMP/tapes" | cut -f1)"

# --- summary ---------------------------------------------------------------------------------
{
    echo
    echo "soak: ${DURATION}s, $CONNS connections, $RATE req/s, samples every ${SAMPLE_S}s (one a minute below; all in $OUT/samples.csv)"
    python3 - "$OUT/samples.csv" "$SAMPLE_S" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
every = max(1, round(60 / float(sys.argv[2])))
cols = [("t_s", "t s", "{:.0f}"), ("rss_kb", "rss MB", "kb"), ("fds", "fds", ""),
        ("cpu_pct", "cpu%", "{:.1f}"), ("sessions", "sess", ""), ("connections", "conns", ""),
        ("pool_open", "pool", ""), ("pool_idle", "idle", ""), ("sse_streams", "sse", ""),
        ("sse_pending_events", "pend", ""), ("req_per_s", "req/s", "{:.0f}"),
        ("req_p99_ms", "p99 ms", "{:.2f}"), ("events_per_s", "ev/s", "{:.1f}"),
        ("errors", "err", ""), ("rejected", "rej", ""), ("gw_client_errors_total", "gw cl", ""),
        ("gw_sessions_ended_by_gateway_total", "gw end", "")]
def cell(r, key, fmt):
    v = r[key]
    if v == "":
        return "-"
    if fmt == "kb":
        return f"{int(v) / 1024:.1f}"
    return fmt.format(float(v)) if fmt else v
print(" ".join(f"{h:>7}" for _, h, _ in cols))
for i, r in enumerate(rows):
    if i % every == 0 or i == len(rows) - 1:
        print(" ".join(f"{cell(r, k, f):>7}" for k, _, f in cols))
EOF
    echo
    sed -n '/^soak against/,$p' "$OUT/loadgen.out"
    echo
    echo "tapes: $TAPE_LINE ($((TAPE_BYTES / 1048576)) MiB on disk)"
    echo "gateway at exit: ${TOTALS:-no tape totals logged}"
    echo "tape verify: $VERIFY_TOTAL (exit $VERIFY_RC)"
} | tee "$OUT/summary.txt"

FAIL=()
[ "$LOADGEN_RC" -eq 0 ] || FAIL+=("loadgen exit $LOADGEN_RC")
[ "$TAPE_LOST" -eq 0 ] || FAIL+=("$TAPE_LOST recorded frames dropped, shed, lost or oversize, or write errors")
[ "$VERIFY_RC" -eq 0 ] || FAIL+=("tape verify exit $VERIFY_RC")
[ "${TORN:-1}" = 0 ] || FAIL+=("torn tails: ${TORN:-unknown} after a clean stop")
[ -n "$WRITTEN" ] && [ "${RECORDS:-0}" = "$WRITTEN" ] \
    || FAIL+=("tapes hold ${RECORDS:-?} records, the gateway wrote ${WRITTEN:-?}")
if [ "${#FAIL[@]}" -eq 0 ]; then
    echo "SOAK PASS" | tee -a "$OUT/summary.txt"
else
    echo "SOAK FAIL: $(IFS=';'; echo "${FAIL[*]}")" | tee -a "$OUT/summary.txt"
    exit 1
fi
}

main "$@"
