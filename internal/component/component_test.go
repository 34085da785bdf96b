package component

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func gathered(t *testing.T, g prometheus.Gatherer) []string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	return names
}

// TestOwnMetrics: a component's metrics land in its own registry and in
// the process's; a collector the process's refuses is not kept in the
// component's either.
func TestOwnMetrics(t *testing.T) {
	process := prometheus.NewRegistry()
	process.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "other_total", Help: "h"}))
	own, reg := Common{Metrics: process}.OwnMetrics()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "mine_total", Help: "h"}))
	if got := gathered(t, own); len(got) != 1 || got[0] != "mine_total" {
		t.Fatalf("own registry: %v", got)
	}
	if got := gathered(t, process); len(got) != 2 {
		t.Fatalf("process registry: %v", got)
	}
	dup := prometheus.NewCounter(prometheus.CounterOpts{Name: "other_total", Help: "h"})
	if err := reg.Register(dup); err == nil {
		t.Fatal("a collector the process registry refuses was registered")
	}
	if got := gathered(t, own); len(got) != 1 {
		t.Fatalf("own registry after a refusal: %v", got)
	}
	own, reg = Common{}.OwnMetrics()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "alone_total", Help: "h"}))
	if got := gathered(t, own); len(got) != 1 {
		t.Fatalf("without process metrics: %v", got)
	}
}
