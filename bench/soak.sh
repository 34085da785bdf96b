#!/usr/bin/env bash
# soak.sh [duration] [flags of bench/soak]: runs bin/freeway all (embedded
# backends, a temporary data directory) at half its maximum load for
# duration (default 1h), found first by a short flat-out run, and writes
# bench/results/<date>-soak.md (and .csv). Fails if the totals are not
# exact, freeway dies, or RSS, heap, goroutines or open fds grow. A bench
# for a quiet machine, not a CI step: make soak (SOAKTIME=10m for a short one).
#
#   bench/soak.sh 10m
#   bench/soak.sh 1h -rate 20000      # a fixed rate, no flat-out run
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
duration=${1:-1h}
shift || true

"$GO" build -o bin/freeway ./cmd/freeway
"$GO" build -o bin/soak ./bench/soak
SOAK_COMMAND=${SOAK_COMMAND:-"bench/soak.sh $duration${*:+ $*}"} exec bin/soak -binary bin/freeway -duration "$duration" "$@"
