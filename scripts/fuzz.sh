#!/usr/bin/env bash
# Fuzzes rmroute's input path (not part of CI's time): 10,000 mutated records each through `prepare`,
# `score` and `serve`'s endpoints, built from the shipped sample (byte flips, truncations, wrong types, huge
# fields, deep nesting, invalid UTF-8, NUL bytes, missing and extra keys). Prints the counts; exit status 1
# when a case panicked, hung, got a 5xx, was rejected without naming its file and line (or field), or
# lost a good record. Failing cases are kept under fuzz-failures/ for replay. See scripts/fuzz.py.
#
#   scripts/fuzz.sh                       # 10,000 cases per target (about 30 minutes on 2 cores)
#   scripts/fuzz.sh --cases 500 --targets serve
#
# Environment: RMROUTE_BIN, an rmroute binary to use instead of building target/release/rmroute.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RMROUTE_BIN:-target/release/rmroute}
[ -n "${RMROUTE_BIN:-}" ] || cargo build --release --locked --quiet
exec python3 scripts/fuzz.py --bin "$bin" "$@"
