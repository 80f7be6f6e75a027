#!/usr/bin/env bash
# CI's short fuzz run: every target in fuzz/ for 20 s (10 targets: ~3.5 min plus the
# fuzz workspace build). Fails on any crash, timeout, OOM or build error. The long run
# and its results are in docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec fuzz/run.sh "${FUZZ_SECONDS:-20}"
