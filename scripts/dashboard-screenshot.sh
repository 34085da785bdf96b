#!/usr/bin/env bash
# Takes the README's picture of the dashboard (docs/dashboard.png): runs
# `freeway --config examples/freeway.yaml --demo` on spare ports in a
# temporary directory for a few minutes, then has headless Chromium
# (scripts/deps.sh installs it) load the page and save a PNG.
#   scripts/dashboard-screenshot.sh [seconds of demo load, default 300] [out.png]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
out=${2:-docs/dashboard.png}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
go build -o "$dir/freeway" ./cmd/freeway
"$dir/freeway" --config examples/freeway.yaml --demo --data-dir "$dir/data" \
  --agent.listen 127.0.0.1:31463 --calligraphus.listen 127.0.0.1:31464 \
  --serving.listen 127.0.0.1:38080 --serving.thrift-listen 127.0.0.1:31465 >"$dir/log" 2>&1 &
pid=$!
echo "demo load for ${secs}s (log: $dir/log)"
sleep "$secs"
go run ./internal/browser/screenshot -width 1400 -height 1050 -out "$out" \
  -url 'http://127.0.0.1:38080/#app=http_status&range=900&aggs=hits,bytes&split=status&top=5&refresh=0'
