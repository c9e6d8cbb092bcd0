#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) on the stable
# toolchain, and prints one line per target: execs, exec/s, corpus size, crashes.
#
#   scripts/fuzz.sh [--asan] [--jobs N] [--runs N] [SECONDS] [TARGET...]
#
#   SECONDS   time per target (default 20)
#   TARGET    fuzz/fuzz_targets/<TARGET>.rs (default: all)
#   --asan    AddressSanitizer build (RUSTC_BOOTSTRAP=1, about 5x slower); default: -s none
#   --jobs N  targets run at once, one libFuzzer process each (default and at most: the cores)
#   --runs N  also stop a target after N executions
#
# Installs cargo-fuzz (into cargo's bin dir) when it is missing. Builds go to
# fuzz/target-none or fuzz/target-asan; inputs the fuzzer finds go to fuzz/corpus-run/<target>
# (the committed seeds in fuzz/corpus/<target> are only read); crashes to
# fuzz/artifacts/<target>/ and logs to fuzz/logs/. fuzz/options/<target>.args adds libFuzzer
# flags for one target. Exits non-zero when any target crashed:
# copy the input to tests/fixtures/fuzz/<target>/ and `cargo test --test fuzz_regressions`
# fails until it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "fuzz.sh: $*" >&2; }
die() { log "$*"; exit 2; }

seconds=20
asan=0
runs=0
cores=$(nproc)
jobs=$cores
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --asan) asan=1 ;;
        --jobs) jobs=$2; shift ;;
        --runs) runs=$2; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        [0-9]*) seconds=$1 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[ "$jobs" -ge 1 ] || jobs=1
[ "$jobs" -le "$cores" ] || jobs=$cores
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
    [ -f "fuzz/fuzz_targets/$t.rs" ] || die "no fuzz target '$t' (fuzz/fuzz_targets/$t.rs)"
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $asan = 1 ]; then
    export RUSTC_BOOTSTRAP=1
    build=(--sanitizer address --target-dir target-asan)
    bindir=fuzz/target-asan
else
    build=(--sanitizer none --target-dir target-none)
    bindir=fuzz/target-none
fi
bindir=$bindir/$(rustc -vV | sed -n 's/^host: //p')/release
# One build for all targets shares the instrumented crate graph; one target builds only itself.
if [ ${#targets[@]} -eq 1 ]; then
    (cd fuzz && cargo fuzz build "${build[@]}" "${targets[0]}")
else
    (cd fuzz && cargo fuzz build "${build[@]}")
fi

mkdir -p fuzz/logs
run_one() {
    local t=$1
    local args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10
        -artifact_prefix="fuzz/artifacts/$t/")
    [ "$runs" -gt 0 ] && args+=(-runs="$runs")
    local dict="fuzz/dict/$t.dict"
    [ -f "$dict" ] && args+=(-dict="$dict")
    # Per-target libFuzzer flags, one per line ('#' comments), e.g. a smaller -max_len.
    local opts="fuzz/options/$t.args"
    [ -f "$opts" ] && while read -r a; do
        case "$a" in ''|'#'*) ;; *) args+=("$a") ;; esac
    done <"$opts"
    set +e
    "$bindir/$t" "${args[@]}" "fuzz/corpus-run/$t" "fuzz/corpus/$t" >"fuzz/logs/$t.log" 2>&1
    echo $? >"fuzz/logs/$t.rc"
    set -e
}

# Crash artifacts already present are old news; only new ones count.
declare -A before
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-run/$t" "fuzz/artifacts/$t" "fuzz/corpus/$t"
    before[$t]=$(find "fuzz/artifacts/$t" -type f | wc -l)
done

log "fuzzing ${#targets[@]} target(s), ${seconds}s each, $jobs at a time ($([ $asan = 1 ] && echo asan || echo 'no sanitizer'))"
running=0
for t in "${targets[@]}"; do
    if [ $running -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$t" &
    running=$((running + 1))
done
wait

stat() { sed -n "s/^stat::$1: *//p" "fuzz/logs/$2.log" | tail -1; }
failed=0
printf '%-15s %12s %9s %8s %8s\n' target execs exec/s corpus crashes
for t in "${targets[@]}"; do
    execs=$(stat number_of_executed_units "$t")
    rate=$(stat average_exec_per_sec "$t")
    corpus=$(grep -o 'corp: [0-9]*' "fuzz/logs/$t.log" | tail -1 | cut -d' ' -f2)
    new=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - ${before[$t]} ))
    rc=$(cat "fuzz/logs/$t.rc")
    crashes=$new
    [ "$rc" = 0 ] || [ "$crashes" -gt 0 ] || crashes=1
    printf '%-15s %12s %9s %8s %8s\n' "$t" "${execs:--}" "${rate:--}" "${corpus:--}" "$crashes"
    if [ "$crashes" -gt 0 ]; then
        failed=1
        grep -m1 -A3 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "fuzz/logs/$t.log" | sed 's/^/    /' || true
        echo "    log: fuzz/logs/$t.log; input: $(ls -t "fuzz/artifacts/$t" | head -1 | sed "s|^|fuzz/artifacts/$t/|")"
    fi
done
exit $failed
