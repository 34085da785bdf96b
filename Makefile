# Freeway. `make run` runs the whole pipeline with a demo load; `make test`
# runs every test, against real ZooKeeper, HDFS and HBase, which it starts.

GO       ?= go
GOFLAGS  ?=
ENGINES  := deploy/engines/engines.sh
PKGS     := ./...
# Where tests leave what a person may want to see (screenshots).
ARTIFACTS ?= $(CURDIR)/test-artifacts

.PHONY: all build run test test-unit chaos check vet lint fmt-check generate check-generated \
        engines engines-down engines-status bench bench-go bench-smoke deps clean

all: build

build:
	$(GO) build -o bin/freeway ./cmd/freeway

## run: the whole pipeline, embedded, with a built-in demo load
run:
	$(GO) run ./cmd/freeway --config examples/freeway.yaml --demo

## test: static checks, every test with -race against the real engines, 2s
## of each fuzz target, the bench harness at tiny sizes (bench-smoke), then
## the short chaos test on both backends (on its own: it restarts engine
## processes, which the other tests must not see)
test: deps check engines
	export $$($(ENGINES) env) && FREEWAY_REQUIRE_ENGINES=1 FREEWAY_ARTIFACTS=$(ARTIFACTS) $(GO) test -race -count=1 -timeout 30m $(PKGS)
	@echo "test artifacts (the dashboard's screenshots): $(ARTIFACTS)"
	GO=$(GO) scripts/fuzz.sh 2s
	GO=$(GO) bench/bench.sh --smoke
	export $$($(ENGINES) env) && FREEWAY_REQUIRE_ENGINES=1 FREEWAY_CHAOS=short \
		$(GO) test -race -count=1 -timeout 20m -v -run '^TestChaos' ./cmd/freeway/

## chaos: the long chaos test (minutes per backend); FREEWAY_CHAOS_SEED=N replays a run
chaos: deps engines
	export $$($(ENGINES) env) && FREEWAY_REQUIRE_ENGINES=1 FREEWAY_CHAOS=long \
		$(GO) test -race -count=1 -timeout 60m -v -run '^TestChaos' ./cmd/freeway/

## test-unit: every test on the embedded backends only (real-engine suites skip)
test-unit:
	$(GO) test -race -count=1 $(PKGS)

## check: the static checks (make test runs them first)
check: vet fmt-check check-generated lint

vet:
	$(GO) vet $(PKGS)

# golangci-lint, pinned: built from the Go module proxy into bin/tools on
# first use, so a fresh machine needs nothing installed beyond Go. Bump the
# version here (and fix what the new version finds) in one commit.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := bin/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/bin/tools/install $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv bin/tools/install/golangci-lint $@
	rmdir bin/tools/install

## lint: golangci-lint with the repository's .golangci.yml (linters, import rule)
lint: $(GOLANGCI_LINT)
	$(GOLANGCI_LINT) run $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

generate:
	scripts/gen-thrift.sh

check-generated:
	scripts/gen-thrift.sh --check

deps:
	scripts/deps.sh

engines:
	$(ENGINES) up

engines-down:
	$(ENGINES) down

engines-status:
	$(ENGINES) status

## bench: Freeway and its peers (DuckDB, Flink, a hand-written limit) side by side on the
## same lines; installs the peers; writes bench/results/<date>.md and .json (not CI)
bench:
	GO=$(GO) BENCH_COMMAND="make bench" bench/bench.sh

## bench-smoke: the same harness at tiny sizes, in seconds (make test runs it)
bench-smoke:
	GO=$(GO) BENCH_COMMAND="make bench-smoke" bench/bench.sh --smoke

## bench-go: the Go micro-benchmarks
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 $(PKGS)

.PHONY: fuzz soak
FUZZTIME ?= 1m
SOAKTIME ?= 1h

## fuzz: every fuzz target (func FuzzX) for FUZZTIME each; failing inputs land in testdata/fuzz
fuzz:
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME)

## soak: freeway all at half its maximum load (found first) for SOAKTIME; report in bench/results (not CI)
soak: build
	GO=$(GO) SOAK_COMMAND="make soak SOAKTIME=$(SOAKTIME)" bench/soak.sh $(SOAKTIME)

clean:
	rm -rf bin freeway-data test-artifacts
