#!/usr/bin/env bash
# Run every fuzz target for a fixed time; fail on any crash, timeout or OOM.
#   fuzz/run.sh [SECONDS_PER_TARGET]   (CI uses a short run; see README for the long one)
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP lets this machine's stable
# toolchain accept them (no other toolchain can be installed here).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
    echo "== fuzz $t for ${secs}s"
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==.*ERROR|SUMMARY|Done)" || true
    if ls artifacts/"$t"/ 2>/dev/null | grep -qE '^(crash|timeout|oom|leak)-'; then
        echo "fuzz target $t found a problem: fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz: all targets ran ${secs}s without a crash"
