#!/usr/bin/env bash
# Run every fuzz target for a fixed time; fail on any crash, timeout, OOM or build error.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]   (CI: scripts/fuzz-ci.sh; long run: docs/fuzzing.md)
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP lets this machine's stable
# toolchain accept them (no other toolchain can be installed here).
# Each target's full libFuzzer output is kept in fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
# With no targets named, every file under fuzz_targets/ must run: an empty or short
# `cargo fuzz list` would otherwise end in a green run that fuzzed nothing.
expected=()
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
    for f in fuzz_targets/*.rs; do expected+=("$(basename "$f" .rs)"); done
    [ ${#expected[@]} -gt 0 ] || { echo "fuzz: no targets under fuzz/fuzz_targets/" >&2; exit 1; }
fi
ran=()
# One build for all targets, so a compile error fails here instead of looking like a quiet run.
cargo fuzz build
mkdir -p logs
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
    echo "== fuzz $t for ${secs}s"
    rc=0
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
    grep -E "DONE|^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY" "logs/$t.log" || true
    if [ "$rc" -ne 0 ] || ls artifacts/"$t"/ 2>/dev/null | grep -qE '^(crash|timeout|oom|leak|slow-unit)-'; then
        tail -n 40 "logs/$t.log" >&2
        echo "fuzz target $t failed (exit $rc): see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
        exit 1
    fi
    # Ran means libFuzzer executed inputs, not only that cargo exited 0.
    units=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -n 1)
    if [ "${units:-0}" -eq 0 ]; then
        echo "fuzz target $t executed no inputs: see fuzz/logs/$t.log" >&2
        exit 1
    fi
    ran+=("$t")
done
for t in "${expected[@]}"; do
    if ! printf '%s\n' "${ran[@]}" | grep -qx -- "$t"; then
        echo "fuzz target $t (fuzz/fuzz_targets/$t.rs) did not run; \`cargo fuzz list\` gave: ${targets[*]}" >&2
        exit 1
    fi
done
[ ${#ran[@]} -gt 0 ] || { echo "fuzz: no target ran" >&2; exit 1; }
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
