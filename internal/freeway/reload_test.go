package freeway

import (
	"strings"
	"testing"
)

// TestLoweredBucketCountRefused: a category's bucket count lowered
// (buckets: 3, then 2) left bucket 2's lines out of every answer (its
// shard no longer ran, serving no longer read its committed cells) and
// retention deleted its segments unread. A process that would read or
// hold the category refuses to start with it, saying so, and the count
// put back answers everything exactly.
func TestLoweredBucketCountRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	first := orders(2000, 0, base)
	r := start(t, cfg)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
	r.stop(t)

	lowered := cfg
	lowered.Buckets = 2
	if err := lowered.Validate(); err != nil {
		t.Fatal(err)
	}
	lowered.Resolve()
	for _, target := range []string{All, Puma, Retention} {
		p, err := New(lowered, target, Options{Version: "test", AdminListen: "off"})
		if err == nil {
			_ = p.Close()
			t.Fatalf("%s started with the bucket count lowered from 3 to 2", target)
		}
		if !strings.Contains(err.Error(), `category "orders" has bucket 2 in the dfs but is configured with 2 buckets`) {
			t.Fatalf("%s: %v", target, err)
		}
	}

	second := orders(1500, 11, base)
	r = start(t, cfg)
	defer r.stop(t)
	send(t, r.p.Agent.Addr(), second, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(first, second...)))
}

// TestAppRemovedAndAddedBackIsExact: lines sent while a category has no
// app go to its bucket 0; stopped (a reload) while the agent had batches
// of them in flight, the agent sent them again after the restart, where
// the app added back routed them by its key to other buckets, whose Puma
// shards had not seen them: they were counted twice. The agent's stop
// now waits for its batches' answers.
func TestAppRemovedAndAddedBackIsExact(t *testing.T) {
	cfg := testConfig(t.TempDir())
	var all []order
	for i := range 3 {
		r := start(t, cfg)
		batch := orders(1000, 2*i, base)
		send(t, r.p.Agent.Addr(), batch, 50)
		all = append(all, batch...)
		waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(all))
		r.stop(t)

		removed := cfg
		removed.Apps = nil
		r = start(t, removed)
		batch = orders(1000, 2*i+1, base)
		send(t, r.p.Agent.Addr(), batch, 50)
		all = append(all, batch...)
		r.stop(t) // at once, batches in flight
	}
	r := start(t, cfg)
	defer r.stop(t)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(all))
}
