#!/usr/bin/env bash
# bench.sh [--smoke] [flags of bench/run]: make bench and make bench-smoke.
#
# Builds bin/freeway and the harness (bench/run) and the hand-written
# limit (bench/limit), installs the peers unless --smoke (DuckDB from PyPI
# in a venv under the work directory, the Flink job of bench/flink with
# Maven), then runs Freeway and the peers side by side on the very same
# lines and writes bench/results/<date>.md and .json (make bench), or a
# report in the work directory (--smoke: tiny sizes, seconds; peers only
# if already installed).
#
#   bench/bench.sh                       # make bench
#   bench/bench.sh --smoke               # make bench-smoke (in make test)
#   BENCH_ENGINES=1 bench/bench.sh       # also end to end on make engines' HDFS, HBase, ZooKeeper
#   BENCH_PROFILE=20s BENCH_KEEP=1 bench/bench.sh   # a CPU profile of freeway in the first end-to-end run
#
# DuckDB's venv lives in $BENCH_CACHE (default ~/.cache/freeway-bench).
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
DUCKDB_VERSION=2.0.1
mode=full
if [ "${1:-}" = --smoke ]; then
	mode=smoke
	shift
fi
# The peers' installs are kept between runs; each run works in a
# directory of its own (the lines file, data directories), removed at
# the end unless BENCH_KEEP=1.
cache=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/freeway-bench}
mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/tmp}/freeway-bench.XXXXXX")
if [ -z "${BENCH_KEEP:-}" ]; then
	trap 'rm -rf "$work"; [ "$mode" = smoke ] && echo "bench: smoke report removed with $work (BENCH_KEEP=1 keeps it)"' EXIT
fi

"$GO" build -o bin/freeway ./cmd/freeway
"$GO" build -o bin/benchrun ./bench/run
"$GO" build -o bin/benchlimit ./bench/limit

venv="$cache/venv"
if [ "$mode" = full ]; then
	if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
		echo "bench: installing duckdb==$DUCKDB_VERSION into $venv"
		python3 -m venv "$venv"
		"$venv/bin/pip" install -q "duckdb==$DUCKDB_VERSION"
	fi
	echo "bench: building the Flink job (bench/flink)"
	mvn -q -B -f bench/flink/pom.xml package
fi

args=(-mode "$mode" -work "$work" -freeway bin/freeway -limit bin/benchlimit)
if "$venv/bin/python" -c "import duckdb" 2>/dev/null; then
	args+=(-python "$venv/bin/python" -duckdb-script bench/duckdb/groupby.py)
fi
if [ -f bench/flink/target/classpath.txt ] && { [ "$mode" = full ] || [ -n "${BENCH_SMOKE_FLINK:-}" ]; }; then
	args+=(-flink bench/flink)
fi
if [ -n "${BENCH_ENGINES:-}" ]; then
	args+=(-engines)
	if [ -z "${FREEWAY_TEST_HDFS:-}" ]; then
		export $(deploy/engines/engines.sh env)
	fi
fi
if [ -n "${BENCH_PROFILE:-}" ]; then
	args+=(-profile "$BENCH_PROFILE")
fi
cmdline=${BENCH_COMMAND:-"bench/bench.sh${*:+ $*}"}
[ "$mode" = smoke ] && cmdline=${BENCH_COMMAND:-"bench/bench.sh --smoke${*:+ $*}"}
for v in BENCH_PROFILE BENCH_ENGINES; do
	if [ -n "${!v:-}" ]; then
		cmdline="$v=${!v} $cmdline"
	fi
done
bin/benchrun "${args[@]}" -command "$cmdline" "$@"
