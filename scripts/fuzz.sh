#!/usr/bin/env bash
# fuzz.sh [duration]: runs every Go fuzz target of the module (func FuzzX
# in a _test.go file) for duration each (default 5s; Go's -fuzztime, so
# "30s", "1m" or "1000x"), one after the other, and fails if any finds an
# input that fails. A new target is picked up without editing this file:
# `go test -list` names the targets of each package that declares one.
#
#   scripts/fuzz.sh          # 5s a target
#   scripts/fuzz.sh 1m       # make fuzz
#
# Environment: GO (go), FUZZPARALLEL (fuzzing processes per target,
# default 2), FUZZPKGS (packages to look in, default every package).
#
# A failing input is written by Go to <package>/testdata/fuzz/<target>/<hash>;
# the summary prints the command that replays it. Fix the defect, then
# commit the file (renamed to say what it is) as a regression seed: plain
# `go test` runs it from then on.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
fuzztime=${1:-5s}
parallel=${FUZZPARALLEL:-2}

# Packages whose test files declare a fuzz target (gofmt puts every func
# at the start of a line); `go test -list` then says which targets they hold.
if [ -n "${FUZZPKGS:-}" ]; then
	pkgs=$FUZZPKGS
else
	pkgs=$(grep -rl --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata --exclude-dir=vendor '^func Fuzz[A-Z0-9_]' . |
		xargs -n1 dirname | sort -u)
fi

# double 5s -> 10s, 1m -> 2m, 1000x -> 2000x.
double() {
	local n=${1%%[!0-9]*}
	echo "$((n * 2))${1#"$n"}"
}

# bare_deadline OUTPUT: the run failed with Go's own deadline error only.
bare_deadline() {
	printf '%s\n' "$1" | grep -q 'context deadline exceeded' &&
		! printf '%s\n' "$1" | grep -q -e 'Failing input written' -e 'failure while testing seed corpus'
}

failed=()
count=0
start=$SECONDS
for pkg in $pkgs; do
	targets=$("$GO" test -run '^$' -list '^Fuzz' "$pkg" | grep '^Fuzz' || true)
	for target in $targets; do
		count=$((count + 1))
		printf 'fuzz %-40s %-24s ' "$pkg" "$target"
		t0=$SECONDS
		ok=0
		out=$("$GO" test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel "$parallel" "$pkg" 2>&1) && ok=1
		# Go 1.26's fuzz coordinator can report a bare "context deadline
		# exceeded" at the end of a duration -fuzztime, with no failing
		# input, when a loaded machine delays its workers' shutdown
		# (go.dev/issue/75804, fixed in Go 1.27). Nothing failed then: run
		# the target again, with the time doubled, up to twice.
		for _ in 1 2; do
			if [ "$ok" = 1 ] || ! bare_deadline "$out"; then
				break
			fi
			out=$("$GO" test -run '^$' -fuzz "^${target}\$" -fuzztime "$(double "$fuzztime")" -parallel "$parallel" "$pkg" 2>&1) && ok=1
		done
		if [ "$ok" = 1 ]; then
			execs=$(printf '%s\n' "$out" | grep -o 'execs: [0-9]*' | tail -1 || true)
			echo "ok ($((SECONDS - t0))s, ${execs:-seed corpus only})"
			continue
		fi
		echo "FAIL"
		printf '%s\n' "$out" | grep -v '^fuzz: elapsed' | tail -40 | sed 's/^/    /'
		input=$(printf '%s\n' "$out" | sed -n 's|.*Failing input written to \(testdata/fuzz/[^ ]*\).*|\1|p' | tail -1)
		seed=$(printf '%s\n' "$out" | sed -n 's|.*failure while testing seed corpus entry: [^/]*/\(.*\)$|\1|p' | tail -1)
		if [ -n "$input" ]; then
			failed+=("$target in $pkg: new input ${pkg#./}/$input; replay: $GO test -run '^${target}\$/^${input##*/}\$' $pkg")
		elif [ -n "$seed" ]; then
			failed+=("$target in $pkg: seed $seed fails; replay: $GO test -run '^${target}\$/^${seed}\$' $pkg")
		else
			failed+=("$target in $pkg (no input written: see the output above); replay: $GO test -run '^${target}\$' $pkg")
		fi
	done
done

echo "fuzz: $count targets, $fuzztime each, $((SECONDS - start))s"
if [ "${#failed[@]}" -gt 0 ]; then
	echo "fuzz: ${#failed[@]} target(s) found a failing input:"
	for f in "${failed[@]}"; do
		echo "  $f"
	done
	echo "Fix the defect, then commit the input (renamed to say what it is) as a regression seed."
	exit 1
fi
