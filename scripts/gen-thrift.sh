#!/usr/bin/env bash
# Regenerates the Go code for every IDL in thrift/ into thrift/gen (or into
# the directory given as $1), with Debian's thrift-compiler 0.17, then gofmt.
# `scripts/gen-thrift.sh --check` fails when the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
module=$(go list -m)
want="0.17.0"

if ! command -v thrift >/dev/null; then
  echo "gen-thrift: thrift compiler not found; install it with: sudo apt-get install -y thrift-compiler" >&2
  exit 1
fi
have=$(thrift --version | awk '{print $3}')
if [ "$have" != "$want" ]; then
  echo "gen-thrift: thrift $have found, $want wanted (Debian bookworm's thrift-compiler)" >&2
  exit 1
fi

generate() {
  local out=$1
  rm -rf "$out"
  mkdir -p "$out"
  for idl in thrift/*.thrift; do
    thrift --gen "go:package_prefix=$module/thrift/gen/,skip_remote" -out "$out" "$idl"
  done
  gofmt -w "$out"
}

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  generate "$tmp/gen"
  if ! diff -r thrift/gen "$tmp/gen" >"$tmp/diff"; then
    head -50 "$tmp/diff" >&2
    echo "gen-thrift: thrift/gen is stale; run 'make generate' and commit the result" >&2
    exit 1
  fi
  echo "gen-thrift: thrift/gen is current"
  exit 0
fi

generate thrift/gen
