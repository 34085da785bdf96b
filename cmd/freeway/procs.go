package main

import (
	"log/slog"
	"os"
	"runtime"
)

// widenProcs gives the Go scheduler twice as many Ps as there are CPUs
// (GOMAXPROCS), unless the environment sets GOMAXPROCS or the runtime's
// default is below the CPU count (a cgroup's CPU quota: more Ps would
// run into its throttling). Freeway's goroutines block in fsyncs and
// file writes (the agent's queue, the writers' segments, the store); a
// goroutine in a system call keeps its P until the runtime takes it
// back, and meanwhile the CPUs idle with work runnable. Measured on two
// cores: end to end +17 % (`freeway all`, five alternated pairs, median
// 795 k → 927 k entries/s) at the same CPU per entry, freshness and
// durable acknowledgement alike (bench/PROFILE.md, "GOMAXPROCS").
func widenProcs(log *slog.Logger) {
	_, set := os.LookupEnv("GOMAXPROCS")
	n := procsFor(set, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	if n == 0 {
		log.Info("GOMAXPROCS left as it is", "procs", runtime.GOMAXPROCS(0), "cpus", runtime.NumCPU(), "from_environment", set)
		return
	}
	runtime.GOMAXPROCS(n)
	log.Info("GOMAXPROCS set to twice the CPUs (GOMAXPROCS in the environment overrides)", "procs", n, "cpus", runtime.NumCPU())
}

// procsFor is the GOMAXPROCS widenProcs sets, 0 to leave it: with
// GOMAXPROCS in the environment (set), or a runtime default (current)
// below the CPUs (a CPU quota), nothing; else twice the CPUs.
func procsFor(set bool, cpus, current int) int {
	if set || current < cpus || cpus < 1 {
		return 0
	}
	return 2 * cpus
}
