#!/usr/bin/env bash
# What recording costs, through the gateway (tuning.md, "Recording on and off"): the same
# gateway binary with and without `--tapes DIR`, alternated ROUNDS times, one fresh gateway
# and demo upstream per run.
#
#   loadgen --workload call --connections 64 --duration-s DURATION --pin 1 --watch-pid GATEWAY
#
# The gateway runs 1 shard on core 0; the demo upstream (this build's `shardcat demo-upstream`)
# and loadgen on core 1, and so does the persistence thread (the first core without a shard).
# Tapes go to a directory under /dev/shm, so the disk is not what is measured. The call workload
# is stateless 2026-07-28 echo: every request is a tape session of its own (four frames).
# CPU-µs/req counts the whole gateway process, persistence thread included.
#
# Env: ROUNDS (3), DURATION (8), CONNS (64), SHARDCAT_BIN (default: build this tree),
# KEEP_TMP=1. Exits non-zero on any loadgen error or a recorded run that wrote no tape.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-8}"
CONNS="${CONNS:-64}"
PROXY_CPU=0
CLIENT_CPU=1

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "[compare-recording] $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(nproc)" -ge 2 ] || die "needs at least 2 cores"
[ -d /dev/shm ] || die "needs /dev/shm for the tapes"
if [ -z "${SHARDCAT_BIN:-}" ]; then
    log "building (cargo build --release -p shardcat -p loadgen)"
    cargo build --release -p shardcat -p loadgen >&2
fi
TMP="$(mktemp -d /tmp/compare-recording.XXXXXX)"
TAPES="$(mktemp -d /dev/shm/shardcat-tapes.XXXXXX)"
PIDS=()
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"
trap 'rm -rf "$TAPES"; cleanup' EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

cp "${SHARDCAT_BIN:-$REPO/target/release/shardcat}" "$TMP/shardcat"
cp "$REPO/target/release/loadgen" "$TMP/loadgen"
BIN="$TMP/shardcat"

# measure MODE ROUND: MODE is off or on; the report lands in $TMP/MODE-ROUND.json.
measure() {
    local mode="$1" round="$2" tag="$1-$2" demo gw url ready record=()
    taskset -c "$CLIENT_CPU" "$BIN" demo-upstream --listen 127.0.0.1:0 \
        >"$TMP/demo-$tag.out" 2>"$TMP/demo-$tag.err" &
    demo=$!
    PIDS+=("$demo")
    url="$(wait_ready "$TMP/demo-$tag.out" "READY demo=" "$demo" "demo upstream")"
    url="${url#READY demo=}"
    if [ "$mode" = on ]; then
        mkdir -p "$TAPES/$tag"
        record=(--tapes "$TAPES/$tag")
    fi
    taskset -c "$PROXY_CPU" "$BIN" serve --listen 127.0.0.1:0 --upstream "$url" --shards 1 \
        --admin off "${record[@]}" >"$TMP/gw-$tag.out" 2>"$TMP/gw-$tag.err" &
    gw=$!
    PIDS+=("$gw")
    ready="$(wait_ready "$TMP/gw-$tag.out" "READY listen=" "$gw" "shardcat")"
    url="http://$(echo "$ready" | sed -n 's/^READY listen=\([^ ]*\).*/\1/p')/mcp"
    log "recording $mode (round $round) -> $url"
    taskset -c "$CLIENT_CPU" "$TMP/loadgen" --target "$url" --workload call \
        --connections "$CONNS" --duration-s "$DURATION" --pin "$CLIENT_CPU" --watch-pid "$gw" \
        --json "$TMP/$tag.json" >"$TMP/$tag.txt" 2>&1 || { cat "$TMP/$tag.txt" >&2; die "loadgen failed ($tag)"; }
    stop_pid "$gw"
    forget "$gw"
    stop_pid "$demo"
    forget "$demo"
    if [ "$mode" = on ]; then
        [ -n "$(find "$TAPES/$tag" -type f -size +0 | head -1)" ] || die "recorded run $tag wrote no tape"
        du -sk "$TAPES/$tag" | awk '{print $1}' >"$TMP/$tag.tape_kb"
        rm -rf "${TAPES:?}/$tag"
    fi
}

for r in $(seq 1 "$ROUNDS"); do
    measure off "$r"
    measure on "$r"
done

echo
echo "loadgen --workload call --connections $CONNS --duration-s $DURATION; gateway 1 shard on core $PROXY_CPU; demo + loadgen on core $CLIENT_CPU"
python3 - "$TMP" "$ROUNDS" <<'EOF'
import json, os, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'recording':<10} {'round':>5} {'req/s':>9} {'CPU-us/req':>11} {'peak RSS MB':>12} {'errors':>7} {'tape KB':>8}")
mean = {}
bad = 0
for r in range(1, rounds + 1):
    for mode in ("off", "on"):
        j = json.load(open(f"{tmp}/{mode}-{r}.json"))
        w = j["watch"]
        errors = j["errors"] + j["rejected"]
        bad += errors
        kb = open(f"{tmp}/{mode}-{r}.tape_kb").read().strip() if mode == "on" else "-"
        print(f"{mode:<10} {r:>5} {j['rps']:>9.0f} {w['cpu_us_per_req']:>11.2f} {w['peak_rss_kb'] / 1024:>12.1f} {errors:>7} {kb:>8}")
        m = mean.setdefault(mode, [0.0, 0.0])
        m[0] += j["rps"] / rounds
        m[1] += w["cpu_us_per_req"] / rounds
for mode, (rps, cpu) in mean.items():
    print(f"mean {mode}: {rps:.0f} req/s, {cpu:.2f} CPU-us/req")
off, on = mean["off"], mean["on"]
print(f"recording on/off: {on[1] / off[1]:.3f}x CPU per request, {on[0] / off[0]:.3f}x req/s")
sys.exit(1 if bad else 0)
EOF
