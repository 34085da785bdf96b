package copier

import (
	"context"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
)

// TestSlowListingsAreFewInPasses: a copier whose source bucket takes a
// second to list (a local disk holding days of 100 ms segments) lists it
// at most once per layout.ListBudget seconds in its passes, copying meanwhile
// what the last listing found; segments published since wait for the
// next listing. A fresh pass (CopyOnce, Backfill) lists every time. Before, each pass (every
// Interval) listed every bucket.
func TestSlowListingsAreFewInPasses(t *testing.T) {
	e := newEnv(t)
	src := dfstest.NewFaulty(e.src)
	dir := layout.BucketDir("access", 0)
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpReadDir && c.Name == dir {
			clk.Add(time.Second)
		}
		return nil
	})
	listings := func() int {
		n := 0
		for _, c := range src.Calls(dfstest.OpReadDir) {
			if c.Name == dir {
				n++
			}
		}
		return n
	}
	n := e.copier(t, "a", withSource(src), func(_ *Config, deps *Deps) { deps.Now = clk.Now })
	lease, err := n.session.Acquire(context.Background(), "copier", "a")
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(context.Background()) //nolint:errcheck // released when the test ends, best effort
	passFresh := func(fresh bool) {
		t.Helper()
		if _, err := n.pass(context.Background(), lease, nil, fresh); err != nil {
			t.Fatal(err)
		}
	}
	pass := func() { t.Helper(); passFresh(false) }
	var names []string
	for s := uint64(1); s <= 3; s++ {
		names = append(names, publish(t, e.src, "access", 0, 1, s, 1))
	}
	pass()
	sameTree(t, e, names)
	later := []string{publish(t, e.src, "access", 0, 1, 4, 1), publish(t, e.src, "access", 0, 1, 5, 1)}
	for range 5 {
		clk.Add(time.Second)
		pass()
	}
	if got := listings(); got != 1 {
		t.Fatalf("%d listings of a bucket that takes 1 s to list in 5 s of passes, want 1", got)
	}
	sameTree(t, e, names) // 4 and 5 wait for the next listing
	clk.Add(layout.ListBudget * time.Second)
	pass()
	names = append(names, later...)
	sameTree(t, e, names)
	if got := listings(); got != 2 {
		t.Fatalf("%d listings once layout.ListBudget allowed one, want 2", got)
	}
	names = append(names, publish(t, e.src, "access", 0, 1, 6, 1))
	passFresh(true) // CopyOnce's and Backfill's pass, under the same grant
	sameTree(t, e, names)
	if got := listings(); got != 3 {
		t.Fatalf("%d listings after a fresh pass, want 3: it lists every bucket", got)
	}
}
