package puma

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestHandBackAfterGracePeriods: a shard whose preferred node does not
// take it is taken by another once its lease has been free for the
// takeover grace, kept for handBackAfter grace periods (not handed back
// at once, which would bounce it while the preferred node is slow to
// start), and handed back at the end of them. Driven pass by pass on an
// injected clock: no test timing.
func TestHandBackAfterGracePeriods(t *testing.T) {
	const grace = time.Minute
	e := newEnv(t, orders(t))
	e.buckets = 1
	var mu sync.Mutex
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	p := e.node("a", func(c *Config, d *Deps) {
		c.TakeoverGrace = config.Duration(grace)
		d.Advertise, d.Now, d.Metrics = "a:1", clock, prometheus.NewPedanticRegistry()
	})
	id := shardID{"orders", 0}
	pref := map[string]string{id.lease(): "b"} // b never takes it
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	running := func() *shard {
		p.mu.RLock()
		defer p.mu.RUnlock()
		return p.shards[id]
	}
	pass := func() { p.tryStart(ctx, &wg, id, pref) }

	pass() // free from now on
	advance(grace - time.Second)
	pass()
	if running() != nil {
		t.Fatal("taken before the lease was free for the takeover grace")
	}
	advance(time.Second)
	pass()
	s := running()
	if s == nil || s.tookFrom != "b" {
		t.Fatalf("not taken once the lease was free for the grace: %+v", s)
	}
	taken := clock()
	kept := func() {
		t.Helper()
		pass()
		if running() != s || s.handingOff.Load() {
			t.Fatalf("handed back %v after it was taken, before %d grace periods", clock().Sub(taken), handBackAfter)
		}
	}
	for range 2*handBackAfter - 1 {
		advance(grace / 2)
		kept()
	}
	advance(grace/2 - time.Second)
	kept()
	if testutil.ToFloat64(p.bm.handoffs) != 0 {
		t.Fatal("a hand-off counted")
	}
	advance(time.Second)
	pass()
	if !s.handingOff.Load() || testutil.ToFloat64(p.bm.handoffs) != 1 {
		t.Fatalf("not handed back after %d grace periods", handBackAfter)
	}
	testkit.Eventually(t, "the shard to stop", func() error {
		if running() != nil {
			return errors.New("still running")
		}
		return nil
	})
	// Stopped, its lease released: the preferred node may take it now.
	if holder, _, err := p.deps.Coord.Holder(ctx, id.lease()); err != nil || holder != "" {
		t.Fatalf("lease held by %q after the hand-back (%v)", holder, err)
	}
}
